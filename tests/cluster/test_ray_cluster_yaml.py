"""cluster/ray-*.yaml pass the checks `ray up` makes before it touches a machine.

`ray up` validates a cluster YAML against ray/autoscaler/ray-schema.json (shipped in the ray
wheel), then fills in the provider's defaults and runs ray.autoscaler._private.util.validate_config;
both run here offline. Planted faults show each layer rejects what it should.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import REPO

YAMLS = ["ray-local.yaml", "ray-aws.yaml"]
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "cluster" / name).read_text())


def ray_up_checks(config: dict) -> dict:
    """What `ray up` runs on the YAML before bootstrapping the provider: schema, defaults, checks."""
    jsonschema.validate(config, SCHEMA)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", YAMLS)
def test_cluster_yaml_passes_rays_schema_and_config_validation(name):
    prepared = ray_up_checks(load(name))
    ray_starts = [c for c in prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
                  if "ray start" in c]
    assert len(ray_starts) == 2
    for cmd in ray_starts:
        assert "RAY_AUTH_MODE=token" in cmd and "--metrics-export-port=8080" in cmd, cmd
    head = next(c for c in prepared["head_start_ray_commands"] if "ray start" in c)
    assert "--head" in head and "--include-dashboard=true" in head and "--dashboard-port=8265" in head
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    setup = " ".join(prepared["setup_commands"])
    assert "-r ~/mlops_ray/dist/requirements.lock" in setup and "--find-links ~/mlops_ray/dist mlops_ray" in setup
    for node_type in prepared["available_node_types"].values():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= prepared["max_workers"]


def test_local_provider_lists_placeholder_machines():
    prepared = ray_up_checks(load("ray-local.yaml"))
    assert prepared["provider"]["type"] == "local"
    assert prepared["available_node_types"]["local.cluster.node"]["max_workers"] == len(
        prepared["provider"]["worker_ips"])
    assert "PLACEHOLDER" in (REPO / "cluster" / "ray-local.yaml").read_text()


def test_aws_runs_the_installed_ray_image_with_cpu_workers():
    prepared = ray_up_checks(load("ray-aws.yaml"))
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert prepared["docker"]["image"] == f"rayproject/ray:{ray.__version__}-{py}"
    workers = {k: v for k, v in prepared["available_node_types"].items() if k != prepared["head_node_type"]}
    assert workers and all(v["node_config"]["InstanceType"] and v["max_workers"] >= 1 for v in workers.values())


PLANTED = {
    "misspelt top-level key": (lambda c: c.__setitem__("max_worker", 2), jsonschema.ValidationError,
                               "'max_worker' was unexpected"),
    "wrong type": (lambda c: c.__setitem__("idle_timeout_minutes", "five"), jsonschema.ValidationError,
                   "'five' is not of type 'number'"),
    "misspelt auth key": (lambda c: c["auth"].__setitem__("ssh_usr", "ray"), jsonschema.ValidationError,
                          "'ssh_usr' was unexpected"),
    "commands not a list": (lambda c: c.__setitem__("head_start_ray_commands", "ray start --head"),
                            jsonschema.ValidationError, "'ray start --head' is not of type 'array'"),
    "negative max_workers": (lambda c: c.__setitem__("max_workers", -1), jsonschema.ValidationError,
                             "-1 is less than the minimum of 0"),
}


@pytest.mark.parametrize("name", YAMLS)
@pytest.mark.parametrize("fault", PLANTED)
def test_planted_schema_fault_is_rejected(name, fault):
    plant, error, message = PLANTED[fault]
    config = load(name)
    plant(config)
    with pytest.raises(error, match=re.escape(message)):
        ray_up_checks(config)


@pytest.mark.parametrize("plant, message", [
    (lambda c: c.__setitem__("head_node_type", "ray.head.gpu"), "must be one of `available_node_types`"),
    (lambda c: c["available_node_types"]["ray.worker.cpu"].__setitem__("min_workers", 9), "smaller than the sum"),
], ids=["unknown head type", "min_workers above max_workers"])
def test_planted_fault_beyond_the_schema_is_rejected_by_validate_config(plant, message):
    config = load("ray-aws.yaml")
    plant(config)
    jsonschema.validate(config, SCHEMA)  # the schema alone lets these through
    with pytest.raises(ValueError, match=re.escape(message)):
        ray_up_checks(config)


def test_setup_command_installs_the_wheel_the_yaml_tells_to_build(tmp_path):
    """Build the wheel as the YAML's comment says, then dry-run the YAML's own install command on it."""
    text = (REPO / "cluster" / "ray-local.yaml").read_text()
    assert "python -m pip wheel --no-deps -w dist . && cp requirements.lock dist/" in text
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "MANIFEST.in", "setup.cfg", "setup.py"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "mlops_ray", src / "mlops_ray", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(src)], check=True, capture_output=True, timeout=120)
    wheel = next(dist.glob("mlops_ray-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"mlops_ray/configs/flights.yaml", "mlops_ray/serve/app.py", "mlops_ray/config.py"} <= set(names)

    install = next(c for c in load("ray-local.yaml")["setup_commands"] if "--find-links" in c)
    argv = [sys.executable if a.endswith("/bin/python") else a.replace("~/mlops_ray/dist", str(dist))
            for a in shlex.split(install) if a != "-q"]  # -q would hide pip's "Would install" line
    assert argv[1:4] == ["-m", "pip", "install"], install
    out = subprocess.run(argv[:4] + ["--dry-run"] + argv[4:], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert re.search(r"Would install mlops_ray-\S+", out.stdout), out.stdout


def test_fake_multinode_autoscaling_yaml_passes_rays_schema_and_config_checks():
    """cluster/ray-autoscaling-local.yaml (run for real by test_cluster_autoscaling.py): the schema and
    validate_config pass (prepare_config needs the fake provider's example.yaml, which the wheel lacks), and
    only workers have CPUs, so CPU-hungry Serve replicas can only run on nodes the autoscaler adds."""
    config = load("ray-autoscaling-local.yaml")
    jsonschema.validate(config, SCHEMA)
    validate_config(copy.deepcopy(config))
    assert config["provider"]["type"] == "fake_multinode"
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"]["CPU"] == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["resources"]["CPU"] >= 1 and t["min_workers"] == 0 for t in workers)
    assert 0 < config["idle_timeout_minutes"] <= 0.5
    planted = copy.deepcopy(config)
    planted["available_node_types"]["ray.worker.cpu"]["min_workers"] = 5
    with pytest.raises(ValueError, match="smaller than the sum"):
        validate_config(planted)
