"""Model families the search can try: how a sampled configuration becomes a fitted model.

Four families, all with the scikit-learn classifier interface (``fit``, ``predict_proba`` of
shape (n_rows, 2), ``classes_``), so evaluation, explanation and serving treat them alike:
``logistic_regression`` (LogisticRegression), ``random_forest`` (RandomForestClassifier),
``hist_gradient_boosting`` (HistGradientBoostingClassifier) and ``keras_mlp`` (a TensorFlow/Keras
multi-layer perceptron, :class:`KerasMLPClassifier`). Search spaces come from
``tune.search_space``; each family's sampled hyperparameters go to its constructor unchanged.

:func:`fit_in_steps` fits one model and calls back after every step of training, so a trial
can report per step and ASHA can stop it early: gradient boosting every
``iterations_per_report`` boosting iterations (``warm_start``), the Keras MLP every epoch
(through Ray Tune's Keras callback), the one-shot families once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from mlops_ray.config import Distribution

FAMILIES = ("logistic_regression", "random_forest", "hist_gradient_boosting", "keras_mlp")


class StopTraining(Exception):
    """Raised by a step callback to end a fit early (the trial was stopped)."""


def build_estimator(family: str, params: dict[str, Any], seed: int, n_jobs: int = 1,
                    class_weight: str | None = None):
    """An unfitted classifier for ``family`` with ``params`` (which override the defaults set here, except ``n_jobs``).

    Args:
        n_jobs: threads of the families that take ``n_jobs`` (random forest; the Keras MLP's
            TensorFlow thread pools are capped by :func:`mlops_ray.tune.resources.cap_threads`).
        class_weight: ``"balanced"`` or None, scikit-learn's meaning, for every family.

    Raises:
        ValueError: unknown family (names the known ones).
    """
    if family == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(**{"max_iter": 2000, "random_state": seed, "class_weight": class_weight, **params})
    if family == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(**{"random_state": seed, "early_stopping": False,
                                                 "class_weight": class_weight, **params})
    if family == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(**{"random_state": seed, "class_weight": class_weight, **params, "n_jobs": n_jobs})
    if family == "keras_mlp":
        return KerasMLPClassifier(**{"seed": seed, "class_weight": class_weight, **params})
    raise ValueError(f"unknown model family '{family}'; expected one of {', '.join(FAMILIES)}")


def fit_in_steps(family: str, params: dict[str, Any], X, y, *, seed: int, n_jobs: int = 1,
                 class_weight: str | None = None, iterations_per_report: int = 25,
                 on_step: Callable[[Any, int, bool], None] | None = None, stop: threading.Event | None = None):
    """Fit ``family`` on ``X`` (n_rows, n_features) and ``y`` (n_rows,), calling ``on_step(model, iterations, final)``.

    ``iterations`` is the training done so far: boosting iterations, epochs, or 1 for a one-shot
    family. The returned model equals one fitted in a single call with the same parameters.

    Raises:
        StopTraining: ``stop`` was set (checked between steps and, for Keras, between batches).
    """
    on_step = on_step or (lambda model, it, final: None)
    stop = stop or threading.Event()
    model = build_estimator(family, params, seed, n_jobs=n_jobs, class_weight=class_weight)
    if family == "hist_gradient_boosting":
        total = int(model.max_iter)
        model.set_params(warm_start=True)
        done = 0
        while done < total:
            if stop.is_set():
                raise StopTraining("stopped between boosting steps")
            done = min(total, done + iterations_per_report)
            model.set_params(max_iter=done)
            model.fit(X, y)
            on_step(model, done, done >= total)
        model.set_params(warm_start=False, max_iter=total)
        return model
    if family == "keras_mlp":
        model.fit(X, y, on_epoch=on_step, stop=stop)
        return model
    model.fit(X, y)
    on_step(model, 1, True)
    return model


# --------------------------------------------------------------------------- Keras MLP
def _tensorflow():
    try:
        import tensorflow as tf
    except ImportError as e:  # pragma: no cover - tensorflow-cpu is a dependency
        raise ImportError("the keras_mlp family needs TensorFlow: pip install tensorflow-cpu==2.21.* "
                          "(GPU clusters: pip install 'tensorflow[and-cuda]==2.21.*')") from e
    return tf


def _tune_keras_callback(on_epoch: Callable[[Any, int, bool], None], owner: "KerasMLPClassifier",
                         stop: threading.Event):
    """Ray Tune's Keras callback (``TuneReportCheckpointCallback``), reporting through ``on_epoch``.

    Tune's callback calls ``tune.report`` with Keras' own logs; here every epoch goes through the
    trial's ``on_epoch`` instead, which scores the validation split with the project's metrics and
    checkpoints the whole classifier (so the checkpoint loads like any other family's).
    """
    from ray.tune.integration.keras import TuneReportCheckpointCallback

    class _Callback(TuneReportCheckpointCallback):
        def __init__(self):
            super().__init__(checkpoint_on=[], report_metrics_on="epoch_end")

        def _handle(self, logs, when):
            owner.epochs_done_ += 1
            on_epoch(owner, owner.epochs_done_, owner.epochs_done_ >= int(owner.epochs))
            if stop.is_set():
                self.model.stop_training = True

        def on_train_batch_end(self, batch, logs=None):
            if stop.is_set():
                self.model.stop_training = True

    return _Callback()


class KerasMLPClassifier(ClassifierMixin, BaseEstimator):
    """A Keras multi-layer perceptron with the scikit-learn classifier interface.

    Inputs are standardised by a ``keras.layers.Normalization`` layer adapted on the training
    rows (so the model file is self-contained), then ``layers`` dense ReLU layers of
    ``hidden_units`` with dropout, and a sigmoid output trained with binary cross-entropy and Adam.

    Args:
        hidden_units: units per hidden layer.
        layers: hidden layers.
        dropout: dropout rate after each hidden layer, in [0, 1).
        learning_rate: Adam's learning rate.
        batch_size: rows per gradient step.
        epochs: passes over the training rows.
        seed: seeds Keras (weights, dropout, shuffling).
        class_weight: ``"balanced"`` (scikit-learn's n_rows / (2 * count) per class) or None.
    """

    def __init__(self, hidden_units: int = 64, layers: int = 1, dropout: float = 0.0, learning_rate: float = 1e-3,
                 batch_size: int = 1024, epochs: int = 5, seed: int = 0, class_weight: str | None = None):
        self.hidden_units = hidden_units
        self.layers = layers
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.seed = seed
        self.class_weight = class_weight

    def fit(self, X, y, on_epoch: Callable[[Any, int, bool], None] | None = None, stop: threading.Event | None = None):
        """Train on ``X`` (n_rows, n_features) and 0/1 ``y``; ``on_epoch(self, epochs_done, last)`` after each epoch.

        Raises:
            StopTraining: ``stop`` was set before the first epoch ended.
        """
        tf = _tensorflow()
        keras = tf.keras
        keras.utils.set_random_seed(int(self.seed))
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y).astype(np.float32)
        norm = keras.layers.Normalization()
        norm.adapt(X)
        inputs = keras.Input(shape=(X.shape[1],))
        h = norm(inputs)
        for _ in range(int(self.layers)):
            h = keras.layers.Dense(int(self.hidden_units), activation="relu")(h)
            if self.dropout:
                h = keras.layers.Dropout(float(self.dropout), seed=int(self.seed))(h)
        model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
        model.compile(optimizer=keras.optimizers.Adam(float(self.learning_rate)), loss="binary_crossentropy")
        weights = None
        if self.class_weight == "balanced":
            counts = np.bincount(y.astype(int), minlength=2)
            weights = {k: float(len(y) / (2 * counts[k])) for k in (0, 1) if counts[k]}
        self.model_ = model
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = X.shape[1]
        self.epochs_done_ = 0
        stop = stop or threading.Event()
        callbacks = [_tune_keras_callback(on_epoch, self, stop)] if on_epoch else []
        model.fit(X, y, batch_size=int(self.batch_size), epochs=int(self.epochs), class_weight=weights,
                  shuffle=True, verbose=0, callbacks=callbacks)
        if stop.is_set() and self.epochs_done_ < int(self.epochs):
            raise StopTraining(f"stopped after {self.epochs_done_} epochs")
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, float64 of shape (n_rows, 2): columns P(0), P(1)."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "model_")
        p = self.model_.predict(np.asarray(X, dtype=np.float32), batch_size=8192, verbose=0).reshape(-1)
        p = p.astype(np.float64)
        return np.column_stack([1.0 - p, p])

    def predict(self, X) -> np.ndarray:
        """0/1 labels at probability 0.5, shape (n_rows,)."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def save(self, path: str | Path) -> None:
        """Write the fitted network as one ``.keras`` file (Keras' own zip format; no pickle)."""
        self.model_.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> "KerasMLPClassifier":
        """Load a ``.keras`` file written by :meth:`save` (Keras ``safe_mode``: no arbitrary code)."""
        tf = _tensorflow()
        model = tf.keras.models.load_model(str(path), compile=False, safe_mode=True)
        est = cls()
        est.model_ = model
        est.classes_ = np.array([0, 1])
        est.n_features_in_ = int(model.inputs[0].shape[-1])
        est.epochs_done_ = None
        return est


# --------------------------------------------------------------------------- search space
def to_tune_domain(d: Distribution):
    """One :class:`Distribution` as a Ray Tune search-space domain (or a constant)."""
    from ray import tune

    if d.distribution == "fixed":
        return d.value
    if d.distribution == "uniform":
        return tune.uniform(d.low, d.high)
    if d.distribution == "loguniform":
        return tune.loguniform(d.low, d.high)
    if d.distribution == "randint":
        return tune.randint(int(d.low), int(d.high) + 1)  # inclusive upper bound in the config
    return tune.choice(list(d.values or ()))


def to_param_space(search_space: dict[str, dict[str, Distribution]]) -> dict[str, Any]:
    """Tune ``param_space`` for random search: a grid over families, each family's own sampled sub-dict."""
    from ray import tune

    space: dict[str, Any] = {"family": tune.grid_search(sorted(search_space))}
    for fam, params in search_space.items():
        space[fam] = {name: to_tune_domain(d) for name, d in params.items()}
    return space


class OptunaSpace:
    """A define-by-run Optuna search space over all families (for Ray Tune's ``OptunaSearch``).

    Families take turns by Optuna trial number (trial k tries family k mod n, families sorted by
    name), so each family gets exactly ``num_samples`` trials; within a family the sampler
    (TPE) proposes that family's hyperparameters, named ``<family>/<name>`` so Tune unflattens them
    into ``config[<family>][<name>]``. Fixed values are returned as constants. A module-level
    class, so the searcher's state can be pickled into the experiment checkpoint (for resume).
    """

    def __init__(self, search_space: dict[str, dict[str, Distribution]]):
        self.search_space = {f: dict(p) for f, p in search_space.items()}
        self.families = sorted(search_space)

    def __call__(self, trial) -> dict[str, Any]:
        family = self.families[trial.number % len(self.families)]
        fixed: dict[str, Any] = {"family": family}
        for name, d in self.search_space[family].items():
            key = f"{family}/{name}"
            if d.distribution == "fixed":
                fixed[key] = d.value
            elif d.distribution == "uniform":
                trial.suggest_float(key, d.low, d.high)
            elif d.distribution == "loguniform":
                trial.suggest_float(key, d.low, d.high, log=True)
            elif d.distribution == "randint":
                trial.suggest_int(key, int(d.low), int(d.high))
            else:
                trial.suggest_categorical(key, list(d.values or ()))
        return fixed
