"""Registry: version records, verification, pyfunc, promotion gate, promote and rollback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mlops_ray.cli import app
from mlops_ray.errors import RegistryError
from mlops_ray.preprocess.derive import INPUT_SCHEMA
from mlops_ray.registry import client, download_version, list_versions, promote, resolve_version, rollback
from mlops_ray.registry import check_libraries
from mlops_ray.serve.model import ServedModel

pytestmark = pytest.mark.timeout(600)


def _champion(cfg, home) -> str:
    return str(resolve_version(cfg.register_, home, "models:/flights@champion").version)


def test_first_version_is_champion_and_a_worse_one_becomes_challenger_with_reason(registry):
    cfg, home, v1, v2, _ = registry
    assert (v1.version, v1.alias) == ("1", "champion")
    assert (v2.version, v2.alias) == ("2", "challenger")
    assert "does not beat the champion" in v2.reason and "paired bootstrap" in v2.reason
    rows = {r["version"]: r for r in list_versions(cfg.register_, home)}
    assert rows["1"]["aliases"] == ["champion"] and rows["2"]["aliases"] == ["challenger"]
    assert rows["2"]["reason"] == v2.reason


def test_version_records_params_metrics_signature_and_provenance(registry):
    import mlflow

    cfg, home, v1, _, pre = registry
    c = client(cfg.register_, home)
    mv = c.get_model_version("flights", "1")
    for tag in ("data_fingerprint", "artifact_sha256", "git_commit", "config_hash", "library.scikit-learn",
                "library.ray", "library.pyspark", "library.skops"):
        assert mv.tags.get(tag), tag
    assert mv.tags["data_fingerprint"] == pre["fingerprint"]
    run = c.get_run(mv.run_id)
    assert run.data.params["family"] in ("logistic_regression", "hist_gradient_boosting")
    assert {"test_roc_auc", "test_pr_auc", "test_brier", "validation_roc_auc"} <= set(run.data.metrics)
    sig = mlflow.models.get_model_info("models:/flights/1").signature
    assert [c.name for c in sig.inputs.inputs] == list(INPUT_SCHEMA)


def test_pyfunc_takes_raw_records_and_matches_the_server_model(registry, tmp_path):
    import mlflow

    cfg, home, _, _, pre = registry
    client(cfg.register_, home)  # sets the tracking URI
    raw = pd.read_parquet(Path(pre["path"]) / "data" / "test", columns=list(INPUT_SCHEMA)).head(40)
    out = mlflow.pyfunc.load_model("models:/flights/1").predict(raw)
    mv, local = download_version(cfg.register_, home, "models:/flights/1", tmp_path)
    served = ServedModel.from_dir(local, name="flights", version="1", alias=None)
    np.testing.assert_allclose(out["probability"].to_numpy(), served.predict_proba(raw), rtol=0, atol=1e-12)
    assert set(out["label"]) <= {0, 1}


def test_mlflow_models_predict_cli_works_on_a_version(registry, tmp_path):
    cfg, home, _, _, pre = registry
    raw = pd.read_parquet(Path(pre["path"]) / "data" / "test", columns=list(INPUT_SCHEMA)).head(5)
    inp = tmp_path / "in.json"
    inp.write_text(json.dumps({"dataframe_split": json.loads(raw.to_json(orient="split", index=False))}))
    res = subprocess.run([str(Path(sys.executable).parent / "mlflow"), "models", "predict", "-m", "models:/flights/1",
                          "-i", str(inp), "-t", "json", "--env-manager", "local", "-o", str(tmp_path / "out.json")],
                         env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                              "MLFLOW_TRACKING_URI": home.mlflow_tracking_uri(), "HOME": str(tmp_path)},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    preds = json.loads((tmp_path / "out.json").read_text())["predictions"]
    assert len(preds) == 5 and all(0 < p["probability"] < 1 for p in preds)


def test_tampered_artifact_is_refused(registry, tmp_path):
    cfg, home, _, _, _ = registry
    skops_files = sorted((home.root / "mlartifacts").rglob("model_dir/model.skops"))
    target = skops_files[0]
    original = target.read_bytes()
    try:
        target.write_bytes(original + b"\0")
        with pytest.raises(RegistryError, match="fail verification: SHA-256"):
            for v in ("1", "2"):
                download_version(cfg.register_, home, f"models:/flights/{v}", tmp_path / v)
    finally:
        target.write_bytes(original)


@pytest.mark.parametrize(("recorded", "allow", "match"), [
    ({"scikit-learn": "0.24.2"}, False, r"scikit-learn 0\.24\.2 recorded, .* installed"),
    ({"skops": "0.1.0"}, False, r"skops 0\.1\.0 recorded"),
])
def test_library_mismatch_is_refused_unless_allowed(recorded, allow, match):
    with pytest.raises(RegistryError, match=match):
        check_libraries(recorded, allow, "flights v9")
    check_libraries(recorded, True, "flights v9")  # allowed: no error


def test_unknown_uri_names_what_exists(registry):
    cfg, home, *_ = registry
    with pytest.raises(RegistryError, match=r"'flights' has no alias 'nobody'; its aliases: \[.*'champion'"):
        resolve_version(cfg.register_, home, "models:/flights@nobody")
    with pytest.raises(RegistryError, match=r"does not resolve .* registered models: \['flights'\]"):
        resolve_version(cfg.register_, home, "models:/nomodel@champion")
    with pytest.raises(RegistryError, match="is not valid"):
        resolve_version(cfg.register_, home, "flights:1")


def test_promote_and_rollback_from_the_cli(registry, monkeypatch):
    cfg, home, *_ = registry
    monkeypatch.setenv("MLOPS_RAY_HOME", str(home.root))
    runner = CliRunner()
    res = runner.invoke(app, ["models", "promote", "flights", "2", "--no-switch"])
    assert res.exit_code == 0, res.output
    assert _champion(cfg, home) == "2"
    assert "challenger" not in (client(cfg.register_, home).get_registered_model("flights").aliases or {})
    res = runner.invoke(app, ["models", "rollback", "flights", "--no-switch"])
    assert res.exit_code == 0, res.output
    assert "from v2 to v1" in res.output and _champion(cfg, home) == "1"
    for ref in ("flights", "flights@champion", "models:/flights@champion", "flights/1"):  # a bare name: the champion
        res = runner.invoke(app, ["models", "show", ref])
        assert res.exit_code == 0 and str(json.loads(res.output)["version"]) == "1", (ref, res.output)
    res = runner.invoke(app, ["models", "rollback", "flights", "--no-switch"])
    assert res.exit_code == 2 and "no earlier champion" in res.output
    assert runner.invoke(app, ["models", "promote", "flights", "99"]).exit_code == 2


def test_crash_mid_promotion_never_leaves_no_champion(registry, monkeypatch):
    from mlflow import MlflowClient

    cfg, home, *_ = registry
    assert _champion(cfg, home) == "1"

    def boom(*a, **k):
        raise RuntimeError("crash after the alias write")

    monkeypatch.setattr(MlflowClient, "set_registered_model_tag", boom)
    with pytest.raises(RuntimeError, match="crash"):
        promote(cfg.register_, home, "flights", "2")
    monkeypatch.undo()
    assert _champion(cfg, home) == "2"  # the alias moved in one write: a champion exists
    assert rollback(cfg.register_, home, "flights") == ("2", "1")  # and the previous one is still reachable
    assert _champion(cfg, home) == "1"


@pytest.mark.parametrize("verb", ["predict", "monitor"])
def test_commands_that_read_a_model_refuse_a_home_without_a_registry_and_create_nothing(verb, tmp_path,
                                                                                           monkeypatch):
    from typer.testing import CliRunner

    from mlops_ray.cli import app

    data = tmp_path / "in.csv"
    data.write_text("year,month\n2013,1\n")
    home = tmp_path / "elsewhere"
    monkeypatch.setenv("MLOPS_RAY_HOME", str(home))
    args = [verb, "--data", str(data)] + (["--out", str(tmp_path / "out.csv")] if verb == "predict" else [])
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert f"no model registry at {home} (MLOPS_RAY_HOME={home})" in " ".join(res.output.split())
    assert not home.exists()  # no empty mlflow.db left behind
