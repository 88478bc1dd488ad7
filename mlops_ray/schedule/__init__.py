"""Schedule: the pipeline as an orchestrator's workflow, one Ray job per stage.

:mod:`mlops_ray.schedule.airflow` renders an Apache Airflow DAG file. The generated file
imports only Airflow and the Python standard library, so it runs in Airflow's own virtual
environment (``scripts/setup_airflow.sh``), apart from Ray and mlops_ray.
"""

from __future__ import annotations

from mlops_ray.schedule.airflow import airflow_dag_source, write_airflow_dag

__all__ = ["airflow_dag_source", "write_airflow_dag"]
