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
