"""A registry of its own (not the shared pipeline home): v1 = the tuned model, v2 = a worse one."""

from __future__ import annotations

import numpy as np
import pytest

from mlops_ray.evaluate import EvaluateResult, run_evaluate
from mlops_ray.home import Home
from mlops_ray.preprocess import load_split
from mlops_ray.registry import run_register
from mlops_ray.tune import TuneResult, save_model


def register_from_run(cfg, home, record, *, model_path=None, evaluation=None, run_id="test"):
    st = record["stages"]
    tun = TuneResult(**st["tune"]["outputs"])
    pre = st["preprocess"]["outputs"]
    return run_register(cfg.register_, home, model_path=model_path or tun.model_path, preprocess_path=pre["path"],
                        evaluation=evaluation or EvaluateResult(**st["evaluate"]["outputs"]), tune_result=tun,
                        data_fingerprint=pre["fingerprint"], run_id=run_id, config_hash="cfg-hash",
                        explain_path=st["explain"]["outputs"]["path"])


def register_worse(cfg, home, record, out_dir):
    """Register a model fit on shuffled labels (no signal): the gate must keep the champion."""
    from sklearn.linear_model import LogisticRegression

    pre = record["stages"]["preprocess"]["outputs"]
    X, y = load_split(pre["path"], "train")
    worse = LogisticRegression(max_iter=300).fit(X, np.random.default_rng(0).permutation(y))
    model_path = save_model(worse, out_dir)
    ev = run_evaluate(cfg.evaluate.model_copy(update={"n_bootstrap": 20}), worse, pre["path"], out_dir)
    return register_from_run(cfg, home, record, model_path=str(model_path), evaluation=ev, run_id="worse")


@pytest.fixture(scope="module")
def registry(pipeline_run, tmp_path_factory):
    """(cfg, home, v1, v2, preprocess outputs) in a fresh home."""
    cfg, _, record = pipeline_run
    home = Home.resolve(tmp_path_factory.mktemp("registry_home")).ensure()
    v1 = register_from_run(cfg, home, record, run_id="good")
    v2 = register_worse(cfg, home, record, tmp_path_factory.mktemp("worse"))
    return cfg, home, v1, v2, record["stages"]["preprocess"]["outputs"]
