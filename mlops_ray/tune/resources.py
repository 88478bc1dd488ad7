"""What one trial may use: its CPU allotment becomes its thread caps, and requests are checked up front.

A trial reserves ``tune.cpus_per_trial`` Ray CPUs; without caps, OpenMP (gradient boosting),
BLAS (logistic regression) and TensorFlow would each start one thread per core of the node and
trials would oversubscribe it. :func:`cap_threads` pins every pool to the allotment.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from mlops_ray.errors import TuneError

logger = logging.getLogger(__name__)


def thread_limits() -> dict[str, int]:
    """The thread pools this process has now: ``{"blas": n, "openmp": n, "tf_intra_op": n, "tf_inter_op": n}``.

    BLAS/OpenMP from threadpoolctl (the largest pool of each API loaded); TensorFlow's from its
    threading getters (0 means TensorFlow's default, one per core), only when TensorFlow is loaded.
    """
    from threadpoolctl import threadpool_info

    out: dict[str, int] = {}
    for pool in threadpool_info():
        api = pool.get("user_api")
        out[api] = max(out.get(api, 0), int(pool.get("num_threads", 0)))
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        out["tf_intra_op"] = int(tf.config.threading.get_intra_op_parallelism_threads())
        out["tf_inter_op"] = int(tf.config.threading.get_inter_op_parallelism_threads())
    return out


def cap_tensorflow_threads(n: int) -> None:
    """Set TensorFlow's intra- and inter-op pools to ``n`` threads (before its runtime starts).

    Raises:
        TuneError: TensorFlow already started with other pool sizes in this process (they are fixed
            at its first operation); names both values.
    """
    import tensorflow as tf

    cur = (tf.config.threading.get_intra_op_parallelism_threads(), tf.config.threading.get_inter_op_parallelism_threads())
    if cur == (n, n):
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError as e:
        raise TuneError(f"TensorFlow in this trial worker already runs with intra/inter-op threads {cur}, "
                        f"not the trial's {n} (tune.cpus_per_trial); they cannot change once TensorFlow started. "
                        "Use one cpus_per_trial for all trials, or set tune.reuse_actors: false.") from e


@contextmanager
def cap_threads(n: int, tensorflow: bool = False) -> Iterator[dict[str, int]]:
    """Cap BLAS and OpenMP pools (threadpoolctl) and, with ``tensorflow``, TensorFlow's pools to ``n`` threads.

    Also sets ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS`` for libraries loaded
    later. Yields :func:`thread_limits` as seen inside the cap (what a trial reports).
    """
    from threadpoolctl import threadpool_limits

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if tensorflow:
        cap_tensorflow_threads(n)
    import sklearn.ensemble  # noqa: F401  (loads the OpenMP runtime so that the cap below reaches it)

    with threadpool_limits(limits=n):
        yield thread_limits()


def check_resources(nodes: list[dict[str, Any]], cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Fail fast when no single node can ever hold one trial (a trial never spans nodes).

    Args:
        nodes: ``ray.nodes()`` (alive and dead; only alive ones count).

    Raises:
        TuneError: naming what one trial asks and what the largest node has.
    """
    alive = [n for n in nodes if n.get("Alive", n.get("alive", False))]
    cpu = max((n.get("Resources", {}).get("CPU", 0.0) for n in alive), default=0.0)
    gpu = max((n.get("Resources", {}).get("GPU", 0.0) for n in alive), default=0.0)
    if cpus_per_trial > cpu or gpus_per_trial > gpu:
        raise TuneError(f"one trial asks for {cpus_per_trial:g} CPU and {gpus_per_trial:g} GPU "
                        f"(tune.cpus_per_trial, tune.gpus_per_trial) but the largest of the {len(alive)} Ray node(s) "
                        f"has {cpu:g} CPU and {gpu:g} GPU, so no trial could ever start. Lower the request or add a "
                        "node that large.")
