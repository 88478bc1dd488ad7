"""The whole pipeline on a sample of the real 2013 flights, run once (conftest.pipeline_run)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mlops_ray.pipeline import STAGES, list_runs, run_pipeline
from mlops_ray.registry import list_versions

pytestmark = pytest.mark.timeout(900)


def test_every_stage_succeeded_and_run_json_written(pipeline_run):
    cfg, home, record = pipeline_run
    assert record["status"] == "succeeded"
    assert [s for s in STAGES if record["stages"][s]["status"] == "succeeded"] == list(STAGES)
    on_disk = json.loads((home.run_dir(record["run_id"]) / "run.json").read_text())
    assert on_disk["status"] == "succeeded" and on_disk["config_hash"] == cfg.fingerprint()
    assert list_runs(home)[0]["run_id"] == record["run_id"]


def test_row_accounting_adds_up(pipeline_run):
    _, _, record = pipeline_run
    st = record["stages"]
    ing, val, pre = st["ingest"]["outputs"], st["validate"]["outputs"], st["preprocess"]["outputs"]
    assert ing["rows"]["flights"] == val["rows_in"]
    assert val["rows_in"] == val["rows_valid"] + sum(val["quarantined"].values())
    assert val["quarantined"].get("no_outcome", 0) > 0  # cancelled/diverted flights are counted, not dropped
    manifest = json.loads((Path(pre["path"]) / "data" / "manifest.json").read_text())
    assert sum(manifest["rows"].values()) + manifest["rows_unassigned"] == val["rows_valid"]
    quarantine = pq.read_table(Path(val["path"]) / "quarantine", columns=["reason"]).to_pandas()
    assert quarantine["reason"].value_counts().to_dict() == val["quarantined"]


def test_splits_are_by_month_and_features_fixed_width(pipeline_run):
    cfg, _, record = pipeline_run
    pre = record["stages"]["preprocess"]["outputs"]
    for split, months in (("train", cfg.preprocess.split.train_months),
                          ("validation", cfg.preprocess.split.validation_months),
                          ("test", cfg.preprocess.split.test_months)):
        t = pq.read_table(Path(pre["path"]) / "data" / split, columns=["month", "features"]).to_pandas()
        assert set(t["month"]) <= set(months) and len(t) == pre["rows"][split]
        assert t["features"].map(len).eq(pre["width"]).all()
    assert len(pre["fingerprint"]) == 64


def test_tune_ran_parallel_trials_over_two_families(pipeline_run):
    _, _, record = pipeline_run
    tun = record["stages"]["tune"]["outputs"]
    assert tun["trials"] == 2 and tun["trials_failed"] == 0
    best = json.loads((Path(tun["path"]) / "best.json").read_text())
    assert {t["family"] for t in best["all_trials"]} == {"logistic_regression", "hist_gradient_boosting"}
    assert tun["best_score"] == max(t["roc_auc"] for t in best["all_trials"])
    assert list((Path(tun["path"]) / "tune").glob("experiment_state-*.json"))  # Ray Tune's own storage


def test_evaluate_reports_metrics_beside_baselines(pipeline_run):
    _, _, record = pipeline_run
    ev = record["stages"]["evaluate"]["outputs"]
    for m in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert 0.0 <= ev["model"][m] <= 1.0
    assert ev["baselines"]["majority_class"]["roc_auc"] == 0.5
    # On this 4% sample the default logistic regression is often the best trial itself, so the tuned
    # model can only tie it; the strict win on the full data is measured by benchmarks/pipeline_stages.py.
    assert ev["model"]["roc_auc"] >= ev["baselines"]["logistic_regression"]["roc_auc"] - 1e-12


def test_first_version_is_champion_with_fingerprint(pipeline_run):
    cfg, home, record = pipeline_run
    versions = list_versions(cfg.register_, home)
    assert (versions[0]["version"], versions[0]["aliases"]) == ("1", ["champion"])  # tests/serve/test_swap adds v2
    reg = record["stages"]["register"]["outputs"]
    assert reg["alias"] == "champion" and "first version" in reg["reason"]


def test_smoke_printed_real_answers(pipeline_run):
    _, _, record = pipeline_run
    sm = record["stages"]["smoke"]["outputs"]
    preds = sm["answer"]["predictions"]
    assert len(preds) == len(sm["records"]) == 3
    assert all(0.0 < p["probability"] < 1.0 and p["label"] in (0, 1) for p in preds)


def test_rerun_of_a_stage_hits_the_cache_and_resume_continues_the_run(pipeline_run, sessions):
    cfg, home, record = pipeline_run
    again = run_pipeline(cfg, sessions=sessions, home=home, run_id=record["run_id"], only=("preprocess", "evaluate"),
                         release_spark=False)
    assert again["run_id"] == record["run_id"]
    assert again["stages"]["preprocess"]["outputs"]["cache_hit"] is True
    assert again["stages"]["evaluate"]["outputs"]["model"] == record["stages"]["evaluate"]["outputs"]["model"]


def test_batch_predict_scores_valid_rows_and_reports_invalid_ones(pipeline_run, tmp_path, monkeypatch):
    import pandas as pd
    from typer.testing import CliRunner

    from mlops_ray.cli import app
    from mlops_ray.preprocess.derive import INPUT_SCHEMA
    from mlops_ray.serve.model import load_served_model

    cfg, home, record = pipeline_run
    pre = record["stages"]["preprocess"]["outputs"]
    rows = pd.read_parquet(Path(pre["path"]) / "data" / "test", columns=list(INPUT_SCHEMA)).head(6)
    rows.loc[rows.index[2], "day"] = 31
    rows.loc[rows.index[2], "month"] = 11  # 2013-11-31 does not exist
    rows.loc[rows.index[4], "sched_dep_time"] = 2575
    src = tmp_path / "in.csv"
    rows.to_csv(src, index=False)
    monkeypatch.setenv("MLOPS_RAY_HOME", str(home.root))
    res = CliRunner().invoke(app, ["predict", "--data", str(src), "--out", str(tmp_path / "out.csv")])
    assert res.exit_code == 1, res.output  # rows were rejected: not a success, every row still written
    assert "scored 4 of 6 rows; 2 rejected" in res.output
    parts = sorted((tmp_path / "out.csv").glob("*.csv"))  # Ray Data writes a folder of part files, in order
    out = pd.concat([pd.read_csv(f) for f in parts], ignore_index=True)
    assert out["error"].notna().tolist() == [False, False, True, False, True, False]
    assert "not a calendar date" in out["error"][2] and "sched_dep_time" in out["error"][4]
    served = load_served_model(cfg.register_, home, "models:/flights@champion", tmp_path / "dl")
    good = rows.drop(index=rows.index[[2, 4]])
    scored = out["probability"].dropna().to_numpy()
    assert abs(scored - served.predict_proba(good)).max() < 1e-9


def test_runs_show_summarises_and_json_gives_the_record(pipeline_run, monkeypatch):
    from typer.testing import CliRunner

    from mlops_ray.cli import app

    _, home, record = pipeline_run
    monkeypatch.setenv("MLOPS_RAY_HOME", str(home.root))
    res = CliRunner().invoke(app, ["runs", "show", record["run_id"]])
    assert res.exit_code == 0, res.output
    assert "preprocess" in res.output and "succeeded" in res.output and "report:" in res.output
    res = CliRunner().invoke(app, ["runs", "show", record["run_id"], "--json"])
    assert json.loads(res.output)["run_id"] == record["run_id"]
    assert CliRunner().invoke(app, ["runs", "show", "nope"]).exit_code == 2


def test_second_run_reuses_every_stage_through_register(pipeline_run, sessions):
    cfg, home, record = pipeline_run
    again = run_pipeline(cfg, sessions=sessions, home=home, release_spark=False)
    st = again["stages"]
    assert again["status"] == "succeeded" and again["run_id"] != record["run_id"]
    for stage in ("ingest", "validate", "preprocess", "tune", "evaluate", "explain", "register"):
        assert st[stage]["outputs"]["cache_hit"] is True, stage
    assert st["register"]["outputs"]["version"] == "1" and "not registered again" in st["register"]["outputs"]["reason"]
    assert len(list_versions(cfg.register_, home)) == len({v["version"] for v in list_versions(cfg.register_, home)})
