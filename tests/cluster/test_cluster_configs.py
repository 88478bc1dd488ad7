"""cluster/ files are valid for the Ray tools that read them."""

from __future__ import annotations

import importlib

import yaml

from tests.conftest import REPO


def test_serve_config_matches_rays_schema_and_import_path_resolves():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((REPO / "cluster" / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(raw)
    app = schema.applications[0]
    module, attr = app.import_path.split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    assert app.args["model_uri"] == "models:/flights@champion"


def test_serve_config_has_no_keys_serve_would_ignore_and_matches_the_rayservice():
    from tests.cluster.kuberay_schema import check_serve_config_v2

    local = check_serve_config_v2((REPO / "cluster" / "serve_config.yaml").read_text(), "serve_config.yaml")
    kuberay = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    on_k8s = check_serve_config_v2(kuberay["spec"]["serveConfigV2"], "rayservice.yaml serveConfigV2")
    for a, b in zip(local.applications, on_k8s.applications, strict=True):
        assert (a.name, a.import_path, a.args) == (b.name, b.import_path, b.args)


def _written_serve_config(tmp_path, *args: str) -> str:
    """What `mlops-ray deploy --write-serve-config` writes (run through the real CLI)."""
    from typer.testing import CliRunner

    from mlops_ray.cli import app

    out = tmp_path / "serve_config.yaml"
    res = CliRunner().invoke(app, ["deploy", "--write-serve-config", str(out), *args])
    assert res.exit_code == 0, res.output
    return out.read_text()


def test_serve_config_is_what_mlops_ray_deploy_writes_from_the_bundled_config(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from mlops_ray.config import load_config

    checked_in = (REPO / "cluster" / "serve_config.yaml").read_text()
    assert _written_serve_config(tmp_path) == checked_in, \
        "cluster/serve_config.yaml is stale: mlops-ray deploy --write-serve-config cluster/serve_config.yaml"
    # what Serve will apply is the bundled config's deploy slice
    deploy = load_config(None).deploy
    app = ServeDeploySchema.model_validate(yaml.safe_load(checked_in)).applications[0]
    options = app.deployments[0]
    assert (app.name, options.name) == (deploy.app_name, "ModelServer")
    assert options.autoscaling_config == deploy.autoscaling.to_serve()
    assert options.ray_actor_options.model_dump(exclude_unset=True) == {"num_cpus": deploy.num_cpus_per_replica}


def test_a_changed_deploy_slice_writes_a_different_serve_config(tmp_path):
    """The comparison above can fail: another deploy.autoscaling gives another file, and --config is passed on."""
    from mlops_ray.config import config_to_yaml, load_config

    raw = yaml.safe_load(config_to_yaml(load_config(None)))
    raw["deploy"]["autoscaling"]["max_replicas"] = 5
    cfg_path = tmp_path / "mine.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    written = _written_serve_config(tmp_path, "--config", str(cfg_path))
    assert written != (REPO / "cluster" / "serve_config.yaml").read_text()
    app = yaml.safe_load(written)["applications"][0]
    assert app["deployments"][0]["autoscaling_config"]["max_replicas"] == 5
    assert app["args"] == {"model_uri": "models:/flights@champion", "config": str(cfg_path)}
