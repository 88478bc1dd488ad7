"""Config: one YAML -> one closed, typed model; every bad input names the field."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from mlops_ray.cli import app
from mlops_ray.config import config_from_mapping, config_to_yaml, default_config_path, load_config
from mlops_ray.errors import ConfigError


def test_bundled_config_loads_with_flights_defaults():
    cfg = load_config()
    assert cfg.name == "flights"
    assert cfg.preprocess.split.test_months == (11, 12)
    assert set(cfg.tune.search_space) == {"logistic_regression", "random_forest", "hist_gradient_boosting", "keras_mlp"}
    assert (cfg.tune.search, cfg.tune.early_stopping) == ("optuna", "asha")
    assert cfg.register_.model_name == "flights"


def test_resolved_yaml_round_trips():
    cfg = load_config()
    assert config_from_mapping(yaml.safe_load(config_to_yaml(cfg))) == cfg


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ({"tune": {"num_sampels": 3}}, r"tune\.num_sampels: unknown key"),
        ({"bogus": 1}, r"bogus: unknown key"),
        ({"tune": {"num_samples": "many"}}, r"tune\.num_samples: .*integer.*got 'many'"),
        ({"tune": {"num_samples": 0}}, r"tune\.num_samples: .*greater than or equal to 1"),
        ({"deploy": {"autoscaling": {"min_replicas": 3, "max_replicas": 1}}},
         r"max_replicas must be >= min_replicas \(3\)\. Got 1 instead"),
        ({"preprocess": {"numeric_features": ["distance", "dep_delay"]}}, r"'dep_delay' is an outcome column"),
        ({"preprocess": {"categorical_features": ["arr_delay"]}}, r"'arr_delay' is an outcome column"),
        ({"preprocess": {"numeric_features": ["colour"]}}, r"feature 'colour' is unknown"),
        ({"preprocess": {"split": {"validation_months": [9]}}}, r"train_months and preprocess\.split\.validation_months must not overlap"),
        ({"tune": {"search_space": {"logistic_regression": {"C": {"distribution": "loguniform", "low": 0, "high": 1}}}}},
         r"loguniform needs low > 0"),
        ({"tune": {"search_space": {"xgboost": {}}}}, r"tune\.search_space\.xgboost"),
        ({"ingest": {"source": "files"}}, r"ingest\.data_dir is required"),
        ({"deploy": {"port": 70000}}, r"deploy\.port: .*less than or equal to 65535"),
    ],
)
def test_bad_config_names_the_field(mapping, match):
    with pytest.raises(ConfigError, match=match):
        config_from_mapping(mapping)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_malformed_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("tune: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(p)


def test_top_level_must_be_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a YAML mapping"):
        load_config(p)


def test_cli_config_check_exit_codes(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", str(default_config_path())])
    assert ok.exit_code == 0, ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("tune:\n  num_samples: -1\n")
    res = runner.invoke(app, ["config", "check", str(bad)])
    assert res.exit_code == 2
    assert "tune.num_samples" in res.output


def test_every_stage_is_a_cli_verb():
    """../shared/CONTRACTS.md: each stage name is a CLI verb (`mlops-ray <stage> --config PATH [--run-id ID]`)."""
    from mlops_ray.pipeline import STAGES

    runner = CliRunner()
    for stage in STAGES:
        res = runner.invoke(app, [stage, "--help"])
        assert res.exit_code == 0 and "--run-id" in res.output, (stage, res.output)
    assert runner.invoke(app, ["no-such-stage", "--help"]).exit_code == 2  # the check can fail


def test_cli_run_with_bad_config_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_RAY_HOME", str(tmp_path / "home"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: {sample_fraction: 2}\n")
    res = CliRunner().invoke(app, ["run", "--config", str(bad)])
    assert res.exit_code == 2
    assert "ingest.sample_fraction" in res.output
    assert not (tmp_path / "home").exists()


def test_import_starts_nothing():
    import subprocess
    import sys

    code = ("import sys, mlops_ray, mlops_ray.config, mlops_ray.pipeline;"
            "bad=[m for m in ('pyspark','ray','mlflow','tensorflow') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_yaml_syntax_error_is_shown_verbatim_with_the_file_name(tmp_path):
    bad = tmp_path / "syntax.yaml"
    bad.write_text("tune: [num_samples: 3\n")
    res = CliRunner().invoke(app, ["config", "check", str(bad)])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "expected ',' or ']'" in text and "syntax.yaml" in text


@pytest.mark.parametrize("master", ["local", "local[*]", "local[2]", "local[4,3]", "spark://127.0.0.1:7077",
                                    "spark://master-0.spark:7077,master-1.spark:7077", "sc://127.0.0.1:15002",
                                    "sc://connect.example.com", "sc://h:15002/;token=abc;use_ssl=true"])
def test_spark_master_accepts_local_standalone_and_connect_urls(master):
    cfg = config_from_mapping({"engines": {"spark": {"master": master}}})
    assert cfg.engines.spark.master == master
    assert (cfg.engines.spark.is_local, cfg.engines.spark.is_connect) == \
        (master.startswith("local"), master.startswith("sc://"))


def test_spark_master_defaults_to_all_local_cores():
    assert config_from_mapping({}).engines.spark.master == "local[*]"


@pytest.mark.parametrize("master", ["local[0]", "local[two]", "spark://host", "spark://:7077", "sc:/host:15002",
                                    "http://127.0.0.1:7077", "yarn ", "", "local[*] "])
def test_spark_master_of_another_form_names_the_field_and_the_accepted_forms(master):
    with pytest.raises(ConfigError, match=r"engines\.spark.*master must be one of local, local\[\*\], local\[N\].*"
                                          r"spark://HOST:PORT.*sc://HOST\[:PORT\].*got '"):
        config_from_mapping({"engines": {"spark": {"master": master}}})


@pytest.mark.parametrize(("bins", "ok"), [(2, True), (10, True), (1000, True), (1, False), (1001, False)])
def test_preprocess_reference_bins_range(bins, ok):
    mapping = {"preprocess": {"reference_bins": bins}}
    if ok:
        assert config_from_mapping(mapping).preprocess.reference_bins == bins
    else:
        with pytest.raises(ConfigError, match=r"preprocess\.reference_bins"):
            config_from_mapping(mapping)
