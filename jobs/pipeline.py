"""Entry point for `ray job submit --working-dir . -- python jobs/pipeline.py --config PATH`.

Runs the whole pipeline inside a Ray job: Spark runs locally in the job's driver, Tune and
Serve use the cluster the job was submitted to. MLOPS_RAY_HOME must be an absolute path
shared with the submitter (pass it with --runtime-env-json, see README).
"""

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the uploaded working dir

from mlops_ray.config import load_config  # noqa: E402
from mlops_ray.pipeline import run_pipeline  # noqa: E402
from mlops_ray.sessions import Sessions  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None, help="pipeline YAML (default: bundled flights config)")
    parser.add_argument("--from-stage", default=None)
    parser.add_argument("--run-id", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if "MLOPS_RAY_HOME" not in os.environ:
        logging.warning("MLOPS_RAY_HOME is not set: state goes to %s/.mlops_ray inside the job's temporary "
                        "working dir. Pass --runtime-env-json '{\"env_vars\": {\"MLOPS_RAY_HOME\": \"/shared/path\"}}'.",
                        os.getcwd())
    cfg = load_config(args.config)
    with Sessions(cfg.engines, ray_runtime_env=None) as sessions:
        record = run_pipeline(cfg, sessions=sessions, run_id=args.run_id, from_stage=args.from_stage)
    print(f"run {record['run_id']}: {record['status']}")
