"""Ray Tune (2 concurrent trials) versus a serial loop and joblib, on the same set of trials.

The same 8 HistGradientBoosting configurations (1 thread each) run: serially in one process;
with joblib on 2 processes; through the project's Tune path (``run_trial``: fit in steps,
validation metrics, a checkpoint per report) with ``reuse_actors`` on and off. Then 12
one-second-scale trials (10 boosting iterations) for trials/s. ``ray.init`` is timed apart and
not counted in the ratios. Synthetic data sized so one trial takes about 5 s on this machine.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

NAME = "tune"
DESCRIPTION = ("Same trials: Ray Tune (2 concurrent, project trial wrapper) vs serial loop vs joblib(2); "
               "wall-time ratio, per-trial overhead, trials/s for short trials")

N_TRAIN, N_VAL, WIDTH = 150_000, 30_000, 40


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N_TRAIN + N_VAL, WIDTH))
    y = (X[:, 0] + X[:, 1] * X[:, 2] - 0.5 * X[:, 3] ** 2 + rng.normal(size=len(X)) > 0).astype(np.int64)
    return X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]


def _configs(family: str, n: int) -> list[dict]:
    if family == "hist_gradient_boosting":
        return [{"family": family, family: {"max_iter": 100, "learning_rate": 0.05 + 0.02 * i,
                                            "max_leaf_nodes": 15 + 4 * i}} for i in range(n)]
    # short trials (about a second): 10 boosting iterations
    return [{"family": "hist_gradient_boosting",
             "hist_gradient_boosting": {"max_iter": 10, "learning_rate": 0.1 + 0.01 * i}} for i in range(n)]


def _fit_one(config: dict, X, y, Xv, yv) -> float:
    """The serial/joblib unit of work: the same fit (1 thread) and validation metrics as a trial."""
    from threadpoolctl import threadpool_limits

    from mlops_ray.tune.families import fit_in_steps
    from mlops_ray.tune.trial import validation_metrics

    fam = config["family"]
    with threadpool_limits(1):
        model = fit_in_steps(fam, config[fam], X, y, seed=0, iterations_per_report=25)
        return validation_metrics(yv, model.predict_proba(Xv)[:, 1])["roc_auc"]


def _serial(configs, data) -> float:
    t = time.perf_counter()
    for c in configs:
        _fit_one(c, *data)
    return time.perf_counter() - t


def _joblib(configs, data) -> float:
    from joblib import Parallel, delayed

    t = time.perf_counter()
    Parallel(n_jobs=2, backend="loky")(delayed(_fit_one)(c, *data) for c in configs)
    return time.perf_counter() - t


def _tune(configs, data, reuse_actors: bool, storage: str) -> float:
    from ray import tune

    from mlops_ray.config import TuneConfig
    from mlops_ray.tune.trial import TrialSettings, run_trial, scheduler_milestones

    X, y, Xv, yv = data
    d = TuneConfig()  # the defaults: a report every 25 iterations, checkpoints where ASHA could stop a trial
    settings = TrialSettings(metric="roc_auc", seed=0, cpus=1, iterations_per_report=d.iterations_per_report,
                             checkpoint_at=scheduler_milestones(d.asha_grace_period, d.asha_reduction_factor))

    def trainable(config, data=None):
        run_trial(config["cfg"], data, settings)  # the grid is over whole trial configs

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tuner = tune.Tuner(tune.with_resources(tune.with_parameters(trainable, data={"X_train": X, "y_train": y,
                                                                                 "X_val": Xv, "y_val": yv}),
                                           {"cpu": 1}),
                       param_space={"cfg": tune.grid_search(configs)},
                       tune_config=tune.TuneConfig(metric="roc_auc", mode="max", max_concurrent_trials=2,
                                                   reuse_actors=reuse_actors),
                       run_config=tune.RunConfig(storage_path=storage, verbose=0))
    t = time.perf_counter()
    grid = tuner.fit()
    elapsed = time.perf_counter() - t
    errors = [str(r.error) for r in grid if r.error]
    if errors:
        raise RuntimeError(f"benchmark trials failed: {errors[:2]}")
    return elapsed


def run() -> dict:
    import ray

    data = _data()
    hgb, lr = _configs("hist_gradient_boosting", 8), _configs("short", 12)
    results: dict = {"data": {"train_rows": N_TRAIN, "validation_rows": N_VAL, "features": WIDTH}}
    t = time.perf_counter()
    _fit_one(hgb[0], *data)  # warms the imports; times one trial
    results["one_hgb_trial_s"] = round(time.perf_counter() - t, 2)
    results["serial_s"] = round(_serial(hgb, data), 2)
    results["joblib_2_s"] = round(_joblib(hgb, data), 2)
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results["ray_init_s"] = round(time.perf_counter() - t, 2)
    try:
        with tempfile.TemporaryDirectory() as d:
            results["tune_reuse_actors_s"] = round(_tune(hgb, data, True, d + "/a"), 2)
            results["tune_no_reuse_s"] = round(_tune(hgb, data, False, d + "/b"), 2)
            results["short_serial_s"] = round(_serial(lr, data), 2)
            results["short_tune_s"] = round(_tune(lr, data, True, d + "/c"), 2)
    finally:
        ray.shutdown()
    n = len(hgb)
    ratio = results["tune_reuse_actors_s"] / results["serial_s"]
    ideal = results["serial_s"] / 2
    results["ratio_tune_vs_serial"] = round(ratio, 3)
    results["ratio_tune_no_reuse_vs_serial"] = round(results["tune_no_reuse_s"] / results["serial_s"], 3)
    results["ratio_joblib_vs_serial"] = round(results["joblib_2_s"] / results["serial_s"], 3)
    results["tune_overhead_per_trial_s"] = round((results["tune_reuse_actors_s"] - ideal) * 2 / n, 3)
    results["short_trial_s"] = round(results["short_serial_s"] / len(lr), 3)
    results["short_trials_per_s_tune"] = round(len(lr) / results["short_tune_s"], 2)
    results["short_trials_per_s_serial"] = round(len(lr) / results["short_serial_s"], 2)
    per_trial = results["serial_s"] / n
    table = ["| path | wall s (8 HGB trials) | ratio to serial |", "|---|---|---|"]
    for k, label in (("serial_s", "serial loop, 1 process"), ("joblib_2_s", "joblib, 2 processes"),
                     ("tune_reuse_actors_s", "Ray Tune, 2 concurrent, reuse_actors"),
                     ("tune_no_reuse_s", "Ray Tune, 2 concurrent, no actor reuse")):
        table.append(f"| {label} | {results[k]} | {results[k] / results['serial_s']:.3f} |")
    table += ["", f"One HGB trial ≈ {per_trial:.1f} s serial; `ray.init` {results['ray_init_s']} s (not counted). "
              f"Short trials ({results['short_trial_s']} s each, 10 boosting iterations): Tune "
              f"{results['short_trials_per_s_tune']} trials/s vs serial {results['short_trials_per_s_serial']}."]
    goals = [{"goal": "Tune wall time / serial loop, 8 trials of >= 5 s, 2 concurrent", "target": "<= 0.6",
              "value": results["ratio_tune_vs_serial"], "met": ratio <= 0.6},
             {"goal": "Tune vs joblib(2) wall time", "target": "<= 1.05 x joblib",
              "value": round(results["tune_reuse_actors_s"] / results["joblib_2_s"], 3),
              "met": results["tune_reuse_actors_s"] <= 1.05 * results["joblib_2_s"]},
             {"goal": "trials/s for ~1 s trials (Tune, 2 concurrent)", "target": "reported",
              "value": results["short_trials_per_s_tune"], "met": True}]
    return {"results": results, "goals": goals, "table": table}
