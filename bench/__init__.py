"""Benchmark suite of edx-harvester (issue #7): ``python -m bench`` or ``make bench``.

Modules:

* :mod:`bench.procs`: the simulator and benchmarked processes (start, measure, always stop);
* :mod:`bench.baseline`: the bare aiohttp and serial reference clients;
* :mod:`bench.scenarios`: the four scenarios and their targets;
* :mod:`bench.report`: the terminal table, ``docs/throughput.png`` and ``docs/benchmarks.md``.
"""
