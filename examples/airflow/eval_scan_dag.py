"""vtok eval scan every hour from Airflow (2.4+): one BashOperator running `vtok submit eval-scan`."""

from datetime import datetime

from airflow import DAG
from airflow.operators.bash import BashOperator

# The scan's leases make overlapping scans safe; max_active_runs=1 is the second guard, and a retried task
# within the hour gets the same submission id, so Ray starts no second job ("already submitted: ...").
with DAG("vtok_eval_scan", schedule="5 * * * *", start_date=datetime(2026, 1, 1), catchup=False,
         max_active_runs=1, default_args={"retries": 2}):
    BashOperator(
        task_id="eval_scan",
        bash_command="vtok submit --follow eval-scan run=s3://my-runs/mllm1 data=s3://my-tokens/heldout "
                     "'suites=[tv_align,vbench]' decoder=s3://my-runs/decoder1 max_checkpoints=4 --no-progress",
        env={"RAY_ADDRESS": "http://ray-head.internal:8265"}, append_env=True,
    )
