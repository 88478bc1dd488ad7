"""The search itself: four families with Optuna + ASHA, per-step reports, MLflow runs, refit, reproducibility.

Real Ray Tune experiments on the session's local Ray, over synthetic preprocess outputs (the
Parquet layout preprocess writes), so each experiment takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlops_ray.home import Home
from mlops_ray.preprocess import load_split
from mlops_ray.tune import load_model, run_tune, validation_metrics
from tests.tune.conftest import tune_config, write_preprocess

pytestmark = pytest.mark.timeout(600)


def _results(path: str) -> dict[str, list[dict]]:
    """trial_id -> every result Tune recorded for it (from the experiment folder)."""
    out = {}
    for f in Path(path, "tune").glob("*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


@pytest.fixture(scope="module")
def four_families(sessions, small_data, tmp_path_factory):
    """One experiment over all four families, tracked in MLflow (SQLite in the test home)."""
    from mlflow import MlflowClient

    home = Home.resolve(tmp_path_factory.mktemp("home")).ensure()
    cfg = tune_config(track_trials=True, asha_grace_period=1, asha_reduction_factor=2)
    client = MlflowClient(tracking_uri=home.mlflow_tracking_uri())

    def tracking():
        exp = client.get_experiment_by_name("tune-test")
        return client, exp.experiment_id if exp else client.create_experiment("tune-test")

    result = run_tune(cfg, sessions.ray, str(small_data), "pre-1", home, tracking=tracking)
    return cfg, result, json.loads(Path(result.path, "best.json").read_text()), client


def test_every_family_gets_its_trials_and_the_best_is_chosen_by_the_metric(four_families):
    cfg, result, best, _ = four_families
    trials = best["all_trials"]
    assert sorted(t["family"] for t in trials) == sorted(["logistic_regression", "random_forest",
                                                          "hist_gradient_boosting", "keras_mlp"] * 2)
    assert [t["error"] for t in trials] == [None] * 8
    assert result.trials == 8 and result.trials_failed == 0
    scores = {f: fb["score"] for f, fb in result.family_best.items()}
    assert result.best_score == max(scores.values()) and result.family == max(scores, key=scores.get)
    # every trial's thread pools were capped at its 1-CPU allotment
    rows = [r[-1] for r in _results(result.path).values()]
    assert all(r["threads_openmp"] == 1 and r["threads_blas"] == 1 for r in rows), rows
    assert all(r["threads_tf_intra_op"] == 1 == r["threads_tf_inter_op"] for r in rows if r["family"] == "keras_mlp")


def test_iterative_families_report_per_step_and_asha_stops_poor_trials_early(four_families):
    cfg, result, best, _ = four_families
    results = _results(result.path)
    by_family: dict[str, list[list[int]]] = {}
    for rows in results.values():
        by_family.setdefault(rows[0]["family"], []).append([r["iterations"] for r in rows])
    for steps in by_family["hist_gradient_boosting"]:  # every 10 boosting iterations (iterations_per_report)
        assert steps == list(range(10, 10 * len(steps) + 1, 10)) and len(steps) >= 1
    for steps in by_family["keras_mlp"]:  # once per epoch, through Tune's Keras callback
        assert steps == list(range(1, len(steps) + 1))
    assert by_family["logistic_regression"] == [[1], [1]]
    stopped = [t for t in best["all_trials"] if t["stopped_early"]]
    assert result.trials_stopped_early == len(stopped) >= 1, best["all_trials"]
    for t in stopped:  # stopped before the planned 60 iterations / 4 epochs
        assert t["iterations"] < {"hist_gradient_boosting": 60, "keras_mlp": 4}[t["family"]]


def test_the_handed_over_model_and_each_familys_best_reproduce_their_validation_score(four_families, small_data):
    cfg, result, best, _ = four_families
    X_va, y_va = load_split(small_data, "validation")
    chosen = load_model(result.model_path)
    assert validation_metrics(y_va, chosen.predict_proba(X_va)[:, 1])["roc_auc"] == pytest.approx(result.best_score,
                                                                                                  abs=1e-9)
    for fam, fb in result.family_best.items():
        model = load_model(fb["model_path"])
        assert Path(fb["model_path"]).name == ("model.keras" if fam == "keras_mlp" else "model.skops")
        assert validation_metrics(y_va, model.predict_proba(X_va)[:, 1])["roc_auc"] == pytest.approx(fb["score"],
                                                                                                    abs=1e-6)


def test_mlflow_has_one_parent_run_with_a_nested_child_per_trial(four_families):
    cfg, result, best, client = four_families
    parent = client.get_run(result.mlflow_run_id)
    assert parent.data.params["best_family"] == result.family and parent.data.params["search"] == "optuna"
    assert parent.data.metrics["best_validation_roc_auc"] == pytest.approx(result.best_score)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'")
    assert len(children) == 8 and {c.info.status for c in children} == {"FINISHED"}
    hgb = [c for c in children if c.data.params["family"] == "hist_gradient_boosting"]
    assert {"hist_gradient_boosting.learning_rate", "hist_gradient_boosting.max_iter"} <= set(hgb[0].data.params)
    history = client.get_metric_history(hgb[0].info.run_id, "roc_auc")
    assert [m.step for m in history] == list(range(10, 10 * len(history) + 1, 10))


def _trials(cfg, sessions, data, home_dir):
    res = run_tune(cfg, sessions.ray, str(data), "pre-1", Home.resolve(home_dir).ensure())
    return [(t["family"], t["params"], t["roc_auc"]) for t in
            json.loads(Path(res.path, "best.json").read_text())["all_trials"]], res


def test_a_rerun_at_concurrency_1_is_identical(sessions, small_data, tmp_path):
    space = {"logistic_regression": {"C": {"distribution": "loguniform", "low": 0.01, "high": 1.0}},
             "hist_gradient_boosting": {"max_iter": {"distribution": "fixed", "value": 20},
                                        "learning_rate": {"distribution": "loguniform", "low": 0.03, "high": 0.3}}}
    cfg = tune_config(max_concurrent_trials=1, search_space=space, early_stopping="none")
    first, _ = _trials(cfg, sessions, small_data, tmp_path / "a")
    second, _ = _trials(cfg, sessions, small_data, tmp_path / "b")
    assert sorted(first, key=str) == sorted(second, key=str)
    assert len({json.dumps(p, sort_keys=True) for _, p, _ in first}) == 4  # the sampler did propose 4 configs
    other, _ = _trials(tune_config(max_concurrent_trials=1, search_space=space, early_stopping="none", seed=1),
                       sessions, small_data, tmp_path / "c")
    assert sorted(other, key=str) != sorted(first, key=str)  # the seed does matter


def test_refit_on_train_and_validation(sessions, small_data, tmp_path):
    space = {"logistic_regression": {"C": {"distribution": "fixed", "value": 0.5}}}
    cfg = tune_config(num_samples=1, search_space=space, refit="train_validation")
    _, res = _trials(cfg, sessions, small_data, tmp_path)
    best = json.loads(Path(res.path, "best.json").read_text())
    X_tr, _ = load_split(small_data, "train")
    X_va, _ = load_split(small_data, "validation")
    assert best["refit_rows"] == len(X_tr) + len(X_va)
    refit, trial_model = load_model(res.model_path), load_model(res.family_best["logistic_regression"]["model_path"])
    assert not np.allclose(refit.coef_, trial_model.coef_)  # fit again, on more rows


@pytest.mark.parametrize("family", ["logistic_regression", "random_forest", "hist_gradient_boosting", "keras_mlp"])
def test_balanced_class_weights_raise_the_minority_class_probability(family):
    from mlops_ray.tune.families import fit_in_steps

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 5))
    y = (X[:, 0] + rng.normal(size=3000) > 1.6).astype(int)  # about 10 % positives
    params = {"keras_mlp": {"epochs": 3, "batch_size": 128}, "random_forest": {"n_estimators": 20, "max_depth": 4},
              "hist_gradient_boosting": {"max_iter": 30}}.get(family, {})
    plain = fit_in_steps(family, params, X, y, seed=0)
    weighted = fit_in_steps(family, params, X, y, seed=0, class_weight="balanced")
    assert plain.predict_proba(X)[:, 1].mean() < 0.2 < weighted.predict_proba(X)[:, 1].mean()


def test_an_unknown_family_names_the_known_ones():
    from mlops_ray.tune.families import build_estimator

    with pytest.raises(ValueError, match="unknown model family 'xgboost'; expected one of logistic_regression, "
                                         "random_forest, hist_gradient_boosting, keras_mlp"):
        build_estimator("xgboost", {}, 0)


def test_a_keras_model_round_trips_through_its_file(tmp_path):
    from mlops_ray.tune import save_model
    from mlops_ray.tune.families import KerasMLPClassifier

    X, y = write_preprocess(tmp_path / "d", n_train=800) and load_split(tmp_path / "d", "train")
    model = KerasMLPClassifier(epochs=2, batch_size=64, hidden_units=8).fit(X, y)
    path = save_model(model, tmp_path / "m")
    assert path.name == "model.keras"
    again = load_model(tmp_path / "m")
    np.testing.assert_allclose(again.predict_proba(X), model.predict_proba(X), rtol=0, atol=1e-7)
    assert again.predict_proba(X).shape == (len(X), 2)


def test_the_readme_tuning_example_is_a_valid_config():
    import re

    import yaml

    from mlops_ray.config import config_from_mapping

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"## Tuning\n.*?```yaml\n(.*?)```", readme, re.S).group(1)
    cfg = config_from_mapping(yaml.safe_load(block)).tune
    assert (cfg.search, cfg.early_stopping, cfg.refit) == ("optuna", "asha", "train")
    assert set(cfg.search_space) == {"hist_gradient_boosting", "keras_mlp"}
