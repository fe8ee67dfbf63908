"""Airflow DAG: the nightly edX catalog sync through harvester's Python API, then the
learner export through the CLI.

Copy this file into your DAGs folder on workers that have ``edx-harvester[s3]``
installed. ``sync_catalog`` calls :func:`harvester.sync` in the worker (no shell, typed
result): a promoted snapshot is published to ``PUBLISH_CATALOG`` (data, then manifest,
then ``latest.json``), and a failed publish raises ``harvester.PublishError`` so Airflow
retries the task; the store's sync index stays on the worker's volume. ``learners``
shows the CLI form. Credentials: ``EDX_CLIENT_ID`` / ``EDX_CLIENT_SECRET`` and the AWS
provider chain in the worker's environment.

tests/features/test_deploy.py parses this file (without Airflow) and checks every harvester call
and command line against the real API and argument parser.
"""

from __future__ import annotations

import pendulum
from airflow.decorators import dag, task
from airflow.operators.bash import BashOperator

CONFIG = "/etc/edx-harvester/harvester.toml"
STORE = "/data/edx-store"
PUBLISH_CATALOG = "s3://my-data-lake/edx/catalog"


@dag(schedule="15 2 * * *", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
     catchup=False, max_active_runs=1, tags=["edx"])
def edx_harvester() -> None:
    """Nightly: sync the catalogs (published to S3), then export learner summaries."""

    @task(retries=2, retry_delay=pendulum.duration(minutes=10))
    def sync_catalog() -> dict[str, object]:
        import harvester

        settings = harvester.Settings.load(CONFIG, overrides={
            "publish.url": PUBLISH_CATALOG,
            "output.log_format": "json",
            "rates.lms": "60/min",
        })
        night = harvester.sync(settings, store=STORE, keep=14)
        if not night.promoted:
            raise RuntimeError(f"snapshot {night.snapshot} did not become latest "
                               f"(status {night.status}); see its errors.ndjson")
        return {"snapshot": str(night.snapshot), "status": night.status}

    learners = BashOperator(
        task_id="learners",
        bash_command=("harvester learners --config /etc/edx-harvester/harvester.toml "
                      "--out /data/edx-learners --pii hash --consented-only "
                      "--publish s3://my-data-lake/edx/learners --progress off"),
        append_env=True,
    )

    sync_catalog() >> learners


edx_harvester()
