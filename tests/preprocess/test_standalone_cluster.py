"""Preprocessing on a real standalone Spark cluster gives the same data as local mode.

The session's pipeline run preprocessed its sample in local mode (``local[2]``, 2 shuffle
partitions). Here the same ingest/validate outputs go through ``run_preprocess`` again, in a
subprocess (one SparkContext per process: this one already runs the local session) whose
``engines.spark.master`` is the standalone master started by ``cluster/spark/start-standalone.sh``,
with 3 shuffle partitions and an empty home (no cache hit). The manifest's content fingerprint
must be identical and the feature spec equal within 1e-9.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FAST_JVM

pytestmark = pytest.mark.timeout(600)

SCRIPT = """
import json, logging, sys
from mlops_ray.config import config_from_mapping
from mlops_ray.home import Home
from mlops_ray.preprocess import run_preprocess
from mlops_ray.sessions import Sessions

logging.basicConfig(level=logging.WARNING)
args = json.loads(sys.argv[1])
cfg = config_from_mapping(args["config"])
home = Home.resolve(args["home"]).ensure()
with Sessions(cfg.engines) as sessions:
    res = run_preprocess(cfg.preprocess, lambda: sessions.spark, args["ingest"], args["validate"],
                         args["validate_key"], home)
    sc = sessions.spark.sparkContext
    info = {"master": sc.master, "app_id": sc.applicationId}
print(json.dumps({**info, "path": res.path, "fingerprint": res.fingerprint, "cache_hit": res.cache_hit}))
"""


@pytest.fixture(scope="module")
def cluster_preprocess(pipeline_run, spark_standalone, tmp_path_factory):
    """run_preprocess on the standalone cluster over the pipeline run's validated rows: the script's JSON answer."""
    cfg, _, record = pipeline_run
    ing, val = record["stages"]["ingest"]["outputs"], record["stages"]["validate"]["outputs"]
    home = tmp_path_factory.mktemp("cluster-home")
    args = {"config": {"engines": {"spark": {"master": spark_standalone.url, "driver_host": "127.0.0.1",
                                             "driver_memory": "1g", "shuffle_partitions": 3}},
                       "preprocess": cfg.preprocess.model_dump(mode="json")},
            "home": str(home), "ingest": ing["path"], "validate": val["path"], "validate_key": val["key"]}
    env = {**os.environ, **FAST_JVM, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(args)], capture_output=True, text=True,
                         timeout=420, env=env, cwd=home)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["seconds"] = time.monotonic() - started
    return out


def test_preprocess_ran_on_the_standalone_cluster_not_in_local_mode(cluster_preprocess, spark_standalone):
    assert cluster_preprocess["master"] == spark_standalone.url
    assert cluster_preprocess["app_id"].startswith("app-")  # an application id of a standalone master
    assert cluster_preprocess["cache_hit"] is False
    deadline = time.monotonic() + 30
    while cluster_preprocess["app_id"] not in {a["id"] for a in spark_standalone.state()["completedapps"]}:
        assert time.monotonic() < deadline, "the master never listed the preprocessing job as a completed application"
        time.sleep(0.5)
    (app,) = [a for a in spark_standalone.state()["completedapps"] if a["id"] == cluster_preprocess["app_id"]]
    assert app["cores"] >= 1  # it was given the worker's cores: the tasks ran on its executor


def test_cluster_and_local_mode_give_the_same_fingerprint_and_feature_spec(cluster_preprocess, pipeline_run):
    local = Path(pipeline_run[2]["stages"]["preprocess"]["outputs"]["path"])
    cluster = Path(cluster_preprocess["path"])
    m_local = json.loads((local / "data" / "manifest.json").read_text())
    m_cluster = json.loads((cluster / "data" / "manifest.json").read_text())
    assert m_cluster["fingerprint"] == m_local["fingerprint"] == cluster_preprocess["fingerprint"]
    assert (m_cluster["rows"], m_cluster["feature_names"], m_cluster["schema"]) == \
        (m_local["rows"], m_local["feature_names"], m_local["schema"])

    spec_local = json.loads((local / "feature_spec.json").read_text())
    spec_cluster = json.loads((cluster / "feature_spec.json").read_text())
    for key in ("impute", "mean", "std"):
        np.testing.assert_allclose(spec_cluster[key], spec_local[key], rtol=0, atol=1e-9)
    assert {k: v for k, v in spec_cluster.items() if k not in ("impute", "mean", "std")} == \
        {k: v for k, v in spec_local.items() if k not in ("impute", "mean", "std")}
    # the exact statistics make the drift reference identical too (its SHA-256 is in the manifest)
    assert m_cluster["reference_stats"] == m_local["reference_stats"]
