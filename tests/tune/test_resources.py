"""What trials use: thread caps at the CPU allotment, data shared through the object store, the time limit.

Real experiments on the session's local Ray (2 CPUs).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest

from mlops_ray.home import Home
from mlops_ray.tune import run_tune
from tests.tune.conftest import tune_config, write_preprocess

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def medium_data(tmp_path_factory) -> Path:
    """40 000 x 60 training rows: 19 MB of float64, trials of a few seconds."""
    return write_preprocess(tmp_path_factory.mktemp("pre"), n_train=40_000, width=60)


def _last_results(path: str) -> list[dict]:
    out = []
    for f in Path(path, "tune").glob("*/result.json"):
        lines = [line for line in f.read_text().splitlines() if line.strip()]
        if lines:
            out.append(json.loads(lines[-1]))
    return out


def test_each_trial_is_capped_at_its_cpu_allotment(sessions, medium_data, tmp_path):
    import sklearn.ensemble  # noqa: F401  (loads the OpenMP runtime)
    from threadpoolctl import threadpool_info

    # outside a trial, this machine's OpenMP pool has one thread per core: the cap below is real
    assert max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp") == os.cpu_count() >= 2
    space = {"hist_gradient_boosting": {"max_iter": {"distribution": "fixed", "value": 120},
                                        "learning_rate": {"distribution": "fixed", "value": 0.1}},
             "random_forest": {"n_estimators": {"distribution": "fixed", "value": 40}},
             "keras_mlp": {"epochs": {"distribution": "fixed", "value": 3},
                           "batch_size": {"distribution": "fixed", "value": 256}}}
    cfg = tune_config(num_samples=1, search_space=space, early_stopping="none", iterations_per_report=40,
                      cpus_per_trial=1)
    res = run_tune(cfg, sessions.ray, str(medium_data), "pre-m", Home.resolve(tmp_path).ensure())
    rows = _last_results(res.path)
    assert sorted(r["family"] for r in rows) == ["hist_gradient_boosting", "keras_mlp", "random_forest"]
    for r in rows:
        assert r["threads_openmp"] == 1 and r["threads_blas"] == 1, r
        # CPU seconds over wall seconds of the trial's process: at most 1.1 x its 1-CPU allotment
        assert r["wall_s"] > 1.0 and r["cpu_s"] / r["wall_s"] <= 1.1, (r["family"], r["cpu_s"], r["wall_s"])
    keras = next(r for r in rows if r["family"] == "keras_mlp")
    assert keras["threads_tf_intra_op"] == 1 and keras["threads_tf_inter_op"] == 1


def _experiment(sessions, data, home, concurrency: int, monkeypatch) -> tuple[list[dict], int]:
    """LR trials at ``concurrency``; returns their last results and the driver's reads of the data."""
    from mlops_ray import preprocess

    reads = []
    real = preprocess.load_split

    def counting(path, split, columns=()):
        reads.append(split)
        return real(path, split, columns)

    monkeypatch.setattr(preprocess, "load_split", counting)
    space = {"logistic_regression": {"C": {"distribution": "loguniform", "low": 0.01, "high": 1.0},
                                     "max_iter": {"distribution": "fixed", "value": 300}}}
    cfg = tune_config(num_samples=4, search_space=space, max_concurrent_trials=concurrency,
                      cpus_per_trial=2 / concurrency, reuse_actors=False, seed=concurrency)
    res = run_tune(cfg, sessions.ray, str(data), f"pre-c{concurrency}", Home.resolve(home).ensure())
    return _last_results(res.path), len(reads)


def test_training_data_is_read_once_and_shared_so_trial_memory_does_not_grow_with_concurrency(
        sessions, medium_data, tmp_path, monkeypatch):
    data_mb = (40_000 + 10_000) * 60 * 8 / 2**20  # X_train + X_val, float64
    two, reads_two = _experiment(sessions, medium_data, tmp_path / "c2", 2, monkeypatch)
    four, reads_four = _experiment(sessions, medium_data, tmp_path / "c4", 4, monkeypatch)
    # the driver read train and validation once per experiment; no trial read the Parquet
    assert reads_two == reads_four == 2
    assert all(r["data_shared"] for r in two + four)  # read-only views of Ray's shared memory
    # each trial process holds less private memory than one copy of the data
    assert max(r["uss_mb"] for r in two + four) < data_mb + 300, [r["uss_mb"] for r in two + four]
    peak_two = sum(r["peak_rss_mb"] for r in two) / len(two)
    peak_four = sum(r["peak_rss_mb"] for r in four) / len(four)
    assert peak_four <= 1.15 * peak_two, (peak_two, peak_four)
    # all four ran at once in the second experiment (fractional CPUs), each in its own process
    assert len({r["pid"] for r in four}) == 4


def test_a_trial_past_its_time_limit_is_stopped_from_outside_and_the_experiment_completes(sessions, medium_data,
                                                                                         tmp_path):
    space = {"logistic_regression": {"C": {"distribution": "fixed", "value": 0.5}},
             # a one-shot fit that would run for minutes and never report
             "random_forest": {"n_estimators": {"distribution": "fixed", "value": 5000}}}
    cfg = tune_config(num_samples=1, search_space=space, time_limit_per_trial_s=6, max_failures=1,
                      early_stopping="none")
    started = time.monotonic()
    res = run_tune(cfg, sessions.ray, str(medium_data), "pre-t", Home.resolve(tmp_path).ensure())
    elapsed = time.monotonic() - started
    best = json.loads(Path(res.path, "best.json").read_text())
    by_family = {t["family"]: t for t in best["all_trials"]}
    assert res.family == "logistic_regression" and by_family["logistic_regression"]["error"] is None
    err = by_family["random_forest"]["error"]
    assert "trial exceeded tune.time_limit_per_trial_s = 6 s (random_forest" in err, err
    assert "(an earlier attempt; not retried)" in err  # the retry (max_failures=1) failed at once
    assert elapsed < 60, elapsed
    # the process that ran the hung fit is gone (its fit thread with it)
    attempts = [json.loads(line) for f in Path(res.path, "attempts").glob("*.jsonl")
                for line in f.read_text().splitlines() if json.loads(line)["family"] == "random_forest"]
    assert len(attempts) == 2
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and psutil.pid_exists(attempts[0]["pid"]):
        time.sleep(0.5)
    assert not psutil.pid_exists(attempts[0]["pid"]) or \
        psutil.Process(attempts[0]["pid"]).status() == psutil.STATUS_ZOMBIE
