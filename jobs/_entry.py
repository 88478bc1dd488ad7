"""Shared start of every ``jobs/<x>.py``: put the uploaded working dir first on sys.path, run the target.

``ray job submit --working-dir .`` runs ``python jobs/<x>.py`` in a temporary copy of the
project; the copy's ``mlops_ray`` must win over any installed one, so the job runs the code
that was submitted.
"""

import sys
from pathlib import Path


def main(target: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mlops_ray.ray_jobs import job_main

    sys.exit(job_main(target, sys.argv[1:]))
