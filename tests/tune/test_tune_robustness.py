"""Tune robustness: non-finite metrics fail the trial, a missing metric is named, impossible requests fail fast.

Runs real Ray Tune experiments (the session's local Ray) on small synthetic arrays.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlops_ray.errors import TuneError
from mlops_ray.tune import check_resources, report_trial, validation_metrics
from mlops_ray.tune.trial import TrialSettings, run_trial


def _data(seed=0, n=400):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    return X, y


def test_validation_metrics_are_the_sklearn_definitions_and_nan_when_undefined():
    y = np.array([0, 0, 1, 1])
    m = validation_metrics(y, np.array([0.1, 0.4, 0.35, 0.8]))
    assert m["roc_auc"] == pytest.approx(0.75) and m["pr_auc"] == pytest.approx(0.8333333)
    assert m["f1"] == pytest.approx(2 / 3) and m["log_loss"] == pytest.approx(0.4722, abs=1e-4)
    assert math.isnan(validation_metrics(np.array([1, 1, 1]), np.array([0.2, 0.5, 0.9]))["roc_auc"])
    assert all(math.isnan(v) for v in validation_metrics(y, np.array([0.1, np.nan, 0.3, 0.9])).values())


@pytest.mark.parametrize("cpus, gpus, match", [
    (4, 0, r"one trial asks for 4 CPU and 0 GPU .* largest of the 2 Ray node\(s\) has 2 CPU and 0 GPU"),
    (1, 1, r"asks for 1 CPU and 1 GPU .* has 2 CPU and 0 GPU, so no trial could ever start"),
])
def test_a_trial_no_node_can_hold_fails_fast(cpus, gpus, match):
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]  # a dead node counts for nothing
    with pytest.raises(TuneError, match=match):
        check_resources(nodes, cpus, gpus)
    check_resources(nodes, 2, 0)  # fits on the larger node: no error


def test_the_real_cluster_has_no_gpu_so_a_gpu_trial_fails_fast(sessions):
    ray = sessions.ray()
    with pytest.raises(TuneError, match="asks for 1 CPU and 1 GPU"):
        check_resources(ray.nodes(), 1, 1)
    check_resources(ray.nodes(), 1, 0)


def _tuner(trainable, tmp_path, metric="roc_auc", samples=None):
    from ray import tune

    space = {"family": tune.grid_search(samples or ["logistic_regression", "hist_gradient_boosting"]),
             "logistic_regression": {}, "hist_gradient_boosting": {"max_iter": 20}}
    return tune.Tuner(tune.with_resources(trainable, {"cpu": 0.5}), param_space=space,
                      tune_config=tune.TuneConfig(metric=metric, mode="max"),
                      run_config=tune.RunConfig(name="t", storage_path=str(tmp_path), verbose=0,
                                                failure_config=tune.FailureConfig(max_failures=0)))


def test_a_nan_metric_fails_its_trial_with_the_reason_and_is_never_best(sessions, tmp_path):
    from ray import tune

    sessions.ray()
    X, y = _data()
    y_one_class = np.ones_like(y[:100])  # ROC AUC is undefined (NaN) on one class

    def trainable(config, X=None, y=None):
        bad = config["family"] == "logistic_regression"
        run_trial(config, {"X_train": X[:300], "y_train": y[:300], "X_val": X[300:],
                           "y_val": y_one_class if bad else y[300:]}, TrialSettings(metric="roc_auc", seed=0, cpus=1))

    grid = _tuner(tune.with_parameters(trainable, X=X, y=y), tmp_path).fit()
    by_family = {r.config["family"]: r for r in grid}
    assert "validation roc_auc is nan (not finite); the trial is failed" in str(by_family["logistic_regression"].error)
    assert by_family["hist_gradient_boosting"].error is None
    best = grid.get_best_result(metric="roc_auc", mode="max", filter_nan_and_inf=True)
    assert best.config["family"] == "hist_gradient_boosting"


def test_a_trial_that_never_reports_the_metric_fails_naming_what_it_reported(sessions, tmp_path):

    sessions.ray()

    def trainable(config):
        if config["family"] == "logistic_regression":
            report_trial({"auc": 0.7, "family": config["family"]}, "roc_auc")  # a typo'd key
        else:
            report_trial({"roc_auc": 0.7, "family": config["family"]}, "roc_auc")

    grid = _tuner(trainable, tmp_path).fit()  # the experiment completes: only that trial fails
    by_family = {r.config["family"]: r for r in grid}
    assert "reported no 'roc_auc' (tune.metric); it reported ['auc', 'family']" in \
        str(by_family["logistic_regression"].error)
    assert by_family["hist_gradient_boosting"].error is None
    assert by_family["hist_gradient_boosting"].metrics["roc_auc"] == 0.7


@pytest.mark.parametrize("metric, mode", [("roc_auc", "max"), ("pr_auc", "max"), ("f1", "max"), ("log_loss", "min")])
def test_the_metric_sets_the_search_direction(metric, mode):
    from mlops_ray.config import TuneConfig

    assert TuneConfig(metric=metric).mode == mode


def test_an_unknown_metric_is_a_config_error():
    from mlops_ray.config import config_from_mapping
    from mlops_ray.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tune.metric: Input should be 'roc_auc', 'pr_auc', 'f1' or 'log_loss'"):
        config_from_mapping({"tune": {"metric": "accuracy"}})


def test_checkpoints_are_written_at_asha_rungs_and_the_last_step_only():
    from mlops_ray.tune.trial import scheduler_milestones

    assert scheduler_milestones(2, 3.0, max_t=100) == (2, 6, 18, 54)
    assert scheduler_milestones(1, 2.0, max_t=20) == (1, 2, 4, 8, 16)
