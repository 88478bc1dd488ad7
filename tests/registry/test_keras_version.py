"""A Keras MLP version goes through evaluate, register and serving like a scikit-learn one.

The model is fit on the session pipeline's real (sample) training split; the version is
registered in a fresh home, loaded through MLflow's pyfunc and through the server's loader,
and both answer raw records identically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlops_ray.evaluate import run_evaluate
from mlops_ray.home import Home
from mlops_ray.preprocess import load_split
from mlops_ray.preprocess.derive import INPUT_SCHEMA
from mlops_ray.registry import client, download_version
from mlops_ray.serve.model import ServedModel
from mlops_ray.tune import save_model
from mlops_ray.tune.families import fit_in_steps
from tests.registry.conftest import register_from_run


def test_a_keras_version_registers_and_answers_raw_records(pipeline_run, tmp_path):
    import mlflow

    cfg, _, record = pipeline_run
    pre = record["stages"]["preprocess"]["outputs"]
    X, y = load_split(pre["path"], "train")
    model = fit_in_steps("keras_mlp", {"epochs": 2, "batch_size": 256, "hidden_units": 16}, X, y, seed=0)
    path = save_model(model, tmp_path / "model")
    assert path.name == "model.keras"
    ev = run_evaluate(cfg.evaluate.model_copy(update={"n_bootstrap": 20}), model, pre["path"], tmp_path / "ev")
    assert 0.5 < ev.model["roc_auc"] < 1.0
    home = Home.resolve(tmp_path / "home").ensure()
    v = register_from_run(cfg, home, record, model_path=str(path), evaluation=ev, run_id="keras")
    client(cfg.register_, home)
    raw = pd.read_parquet(Path(pre["path"]) / "data" / "test", columns=list(INPUT_SCHEMA)).head(30)
    out = mlflow.pyfunc.load_model(f"models:/{cfg.register_.model_name}/{v.version}").predict(raw)
    _, local = download_version(cfg.register_, home, f"models:/{cfg.register_.model_name}/{v.version}", tmp_path / "dl")
    assert (local / "model.keras").is_file() and not (local / "model.skops").exists()
    served = ServedModel.from_dir(local, name="flights", version=v.version, alias=None)
    np.testing.assert_allclose(out["probability"].to_numpy(), served.predict_proba(raw), rtol=0, atol=1e-6)
    assert served.predict_proba(raw).shape == (30,)
