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
