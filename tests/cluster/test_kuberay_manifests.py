"""cluster/kuberay/: manifests KubeRay accepts, embedding Ray configs that Ray accepts.

Checked offline (tests/cluster/kuberay_schema.py says against what); each kind of check also
rejects a planted fault, so none of them can pass vacuously.
"""

from __future__ import annotations

import copy
import re
import sys

import pytest
import ray
import yaml

from tests.cluster.kuberay_schema import IMAGE_WORKDIR, ManifestError, check_manifest
from tests.conftest import REPO

KUBERAY = REPO / "cluster" / "kuberay"
MANIFESTS = {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob", "rayservice.yaml": "RayService",
             "raycronjob.yaml": "RayCronJob"}


def load(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


def cluster_specs(doc: dict) -> list[dict]:
    spec = doc["spec"]
    return [s for s in (spec, spec.get("rayClusterSpec"), spec.get("rayClusterConfig"),
                        (spec.get("jobTemplate") or {}).get("rayClusterSpec")) if s and "headGroupSpec" in s]


def pod_specs(doc: dict) -> list[dict]:
    return [g["template"]["spec"] for s in cluster_specs(doc) for g in [s["headGroupSpec"], *s["workerGroupSpecs"]]]


@pytest.mark.parametrize("name, kind", MANIFESTS.items())
def test_manifest_is_valid_for_kuberay_and_ray(name, kind):
    doc = check_manifest(load(name), name)
    assert doc["kind"] == kind
    assert re.match(r"^# ", (KUBERAY / name).read_text()), "each manifest starts with a comment citing its source"
    for spec in cluster_specs(doc):
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["authOptions"] == {"mode": "token"}
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            assert group["rayStartParams"]["metrics-export-port"] == "8080"


def test_rayservice_serves_the_champion_through_the_model_server():
    from ray.serve.schema import ServeDeploySchema

    serve_cfg = ServeDeploySchema.model_validate(yaml.safe_load(load("rayservice.yaml")["spec"]["serveConfigV2"]))
    app = serve_cfg.applications[0]
    assert app.import_path == "mlops_ray.serve.app:build_app"
    assert app.args["model_uri"] == "models:/flights@champion"
    assert [d.name for d in app.deployments] == ["ModelServer"]
    assert app.deployments[0].autoscaling_config["max_replicas"] >= app.deployments[0].autoscaling_config["min_replicas"]
    assert app.runtime_env["env_vars"]["MLOPS_RAY_HOME"].startswith("/mnt/shared/")


def test_raycronjob_schedules_exactly_the_rayjob_spec():
    assert load("raycronjob.yaml")["spec"]["jobTemplate"] == load("rayjob.yaml")["spec"]


def test_images_are_the_dockerfile_image_on_the_installed_ray_and_python():
    text = (KUBERAY / "Dockerfile").read_text()
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert re.search(r"^FROM (\S+)$", text, re.M).group(1) == f"rayproject/ray:{ray.__version__}-{py}"
    assert re.search(r"^WORKDIR (\S+)$", text, re.M).group(1) == IMAGE_WORKDIR
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        sources = [s for s in line.split()[:-1] if not s.startswith("--")]
        assert sources and all((REPO / s).exists() for s in sources), line
    image = re.search(r"docker build -f cluster/kuberay/Dockerfile -t (\S+) \.", text).group(1)
    assert image == f"mlops-ray:{ray.__version__}-{py}"
    for name in MANIFESTS:
        images = {c["image"] for pod in pod_specs(load(name)) for c in pod["containers"]}
        assert images == {image}, name


def test_every_pod_mounts_the_shared_claim_of_pvc_yaml():
    pvc = yaml.safe_load((KUBERAY / "pvc.yaml").read_text())
    assert (pvc["apiVersion"], pvc["kind"]) == ("v1", "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in MANIFESTS:
        for pod in pod_specs(load(name)):
            claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
            assert claims == {pvc["metadata"]["name"]}, name
            mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
            assert "/mnt/shared" in mounts, name


def _set(doc: dict, path: str, value) -> dict:
    """Copy of ``doc`` with the dotted ``path`` (list indexes as numbers) set to ``value``."""
    doc = copy.deepcopy(doc)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = doc
    for p in parents:
        node = node[p]
    node[last] = value
    return doc


def _rename(doc: dict, path: str, new_key: str) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[int(p) if p.isdigit() else p]
    node[new_key] = node.pop(last)
    return doc


def _serve_cfg(mutate) -> dict:
    doc = load("rayservice.yaml")
    raw = yaml.safe_load(doc["spec"]["serveConfigV2"])
    mutate(raw)
    return _set(doc, "spec.serveConfigV2", yaml.safe_dump(raw))


def _runtime_env(text: str) -> dict:
    return _set(load("rayjob.yaml"), "spec.runtimeEnvYAML", text)


PLANTED = {
    # RayCluster
    "misspelt spec key": ("raycluster.yaml", lambda d: _rename(d, "spec.enableInTreeAutoscaling",
                                                               "enableInTreeAutoScaling"), "unknown RayClusterSpec"),
    "min > max replicas": ("raycluster.yaml", lambda d: _set(d, "spec.workerGroupSpecs.0.minReplicas", 9),
                           "minReplicas <= replicas <= maxReplicas"),
    "unquoted rayStartParams": ("raycluster.yaml", lambda d: _set(d, "spec.headGroupSpec.rayStartParams."
                                                                     "metrics-export-port", 8080), "must be a string"),
    "container without image": ("raycluster.yaml", lambda d: _set(
        d, "spec.headGroupSpec.template.spec.containers.0.image", None), r"image is required"),
    "bad auth mode": ("raycluster.yaml", lambda d: _set(d, "spec.authOptions.mode", "tokens"), "'disabled' or 'token'"),
    "ray version of another image": ("raycluster.yaml", lambda d: _set(d, "spec.rayVersion", "2.52.0"),
                                     "rayVersion must equal"),
    "wrong kind": ("raycluster.yaml", lambda d: _set(d, "kind", "RayClusters"), "expected apiVersion ray.io/v1"),
    # RayJob
    "entrypoint script missing": ("rayjob.yaml", lambda d: _set(
        d, "spec.entrypoint", "python jobs/pipelin.py --config mlops_ray/configs/flights.yaml"), "not a file"),
    "runtime env var not a string": ("rayjob.yaml", lambda d: _runtime_env(
        "working_dir: /home/ray/mlops_ray\nenv_vars: {MLOPS_RAY_HOME: /mnt/shared/h, PORT: 8080}\n"),
        r"Dict\[str, str\]"),
    "runtime env key misspelt": ("rayjob.yaml", lambda d: _runtime_env(
        "working_dir: /home/ray/mlops_ray\nenv_var: {MLOPS_RAY_HOME: /mnt/shared/h}\n"), "unknown runtime_env"),
    "no MLOPS_RAY_HOME": ("rayjob.yaml", lambda d: _runtime_env("working_dir: /home/ray/mlops_ray\n"),
                          "MLOPS_RAY_HOME"),
    "cluster kept after the job": ("rayjob.yaml", lambda d: _set(d, "spec.shutdownAfterJobFinishes", "yes"),
                                   "shutdownAfterJobFinishes must be true"),
    # RayService
    "serveConfigV2 key misspelt": ("rayservice.yaml", lambda d: _serve_cfg(
        lambda r: r["applications"][0]["deployments"][0].__setitem__(
            "autoscaling_confg", r["applications"][0]["deployments"][0].pop("autoscaling_config"))),
        "does not know"),
    "serveConfigV2 wrong type": ("rayservice.yaml", lambda d: _serve_cfg(
        lambda r: r["applications"][0].__setitem__("route_prefix", ["/"])), "Ray Serve rejects"),
    "unknown deployment name": ("rayservice.yaml", lambda d: _serve_cfg(
        lambda r: r["applications"][0]["deployments"][0].__setitem__("name", "ModelServr")), "is not defined"),
    "import path does not resolve": ("rayservice.yaml", lambda d: _serve_cfg(
        lambda r: r["applications"][0].__setitem__("import_path", "mlops_ray.serve.app:no_such_app")),
        "does not resolve"),
    "autoscaling min > max": ("rayservice.yaml", lambda d: _serve_cfg(
        lambda r: r["applications"][0]["deployments"][0]["autoscaling_config"].__setitem__("min_replicas", 9)),
        "autoscaling_config"),
    # RayCronJob
    "cron with 4 fields": ("raycronjob.yaml", lambda d: _set(d, "spec.schedule", "0 3 * *"), "5 fields"),
    "cron hour out of range": ("raycronjob.yaml", lambda d: _set(d, "spec.schedule", "0 24 * * *"), "valid hour"),
    "jobTemplate wrapped in spec": ("raycronjob.yaml", lambda d: _set(d, "spec.jobTemplate",
                                                                      {"spec": d["spec"]["jobTemplate"]}),
                                    "unknown RayJobSpec"),
}


@pytest.mark.parametrize("fault", PLANTED)
def test_planted_fault_is_rejected(fault):
    name, plant, message = PLANTED[fault]
    with pytest.raises(ManifestError, match=message):
        check_manifest(plant(load(name)), name)
