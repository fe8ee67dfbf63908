"""When to walk a list again: fed scripted walks, no HTTP."""

from __future__ import annotations

import pytest

from harvester.pipeline import walk_until_complete


async def run(finds: list[int], *, count: int | None = 100, looked: list[bool] | None = None,
              max_rewalks: int = 25) -> tuple[int, list[int]]:
    """Walk n adds ``finds[n-1]`` items; returns (last walk, walks made)."""
    state = {"unique": 0}
    walks: list[int] = []

    async def walk(n: int) -> bool:
        walks.append(n)
        state["unique"] += finds[n - 1] if n <= len(finds) else 0
        return looked[n - 1] if looked and n <= len(looked) else True

    last = await walk_until_complete(walk, lambda: (state["unique"], count), first=1,
                                     max_rewalks=max_rewalks, event_name="test.rewalk")
    return last, walks


async def test_count_reached_means_one_walk() -> None:
    assert await run([100]) == (1, [1])


async def test_walks_go_on_while_they_find_items() -> None:
    assert await run([90, 4, 3, 2, 1]) == (5, [1, 2, 3, 4, 5])


async def test_a_fruitless_rewalk_ends_it() -> None:
    assert await run([90, 4, 0, 5]) == (3, [1, 2, 3])
    assert await run([95]) == (2, [1, 2])  # a lying count: one re-walk, no more


async def test_a_rewalk_cut_short_proves_nothing() -> None:
    """A re-walk whose page failed found nothing: walk again (within the bound)."""
    last, walks = await run([90, 0, 10], looked=[True, False, True])
    assert (last, walks) == (3, [1, 2, 3])


@pytest.mark.parametrize(("bound", "walks"), [(0, 1), (2, 3)])
async def test_the_bound_holds(bound: int, walks: int) -> None:
    last, made = await run([1] * 50, max_rewalks=bound)
    assert last == walks and len(made) == walks


async def test_without_a_count_one_walk() -> None:
    assert await run([7], count=None) == (1, [1])
