"""Generated alert rules: valid for promtool, and each alert fires once its condition is planted, not before.

``promtool test rules`` evaluates the generated rules over planted series exactly as the
Prometheus server would (Debian's prometheus package; the test command installs it).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from mlops_ray.config import MonitorConfig
from mlops_ray.monitor.alerts import alert_rules, write_alert_rules

CFG = MonitorConfig(psi_threshold=0.2, min_roc_auc=0.6, max_error_rate=0.01, max_latency_p99_ms=500, alert_for_s=120)


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: scripts/test.sh installs Debian's prometheus package")
    return path


def _labels(severity: str, **extra) -> dict:
    return {"pipeline": "flights", "severity": severity, **extra}


def _case(series: list[dict], alert: str, before: int, after: int, labels: dict, summary: str) -> dict:
    return {"interval": "1m", "input_series": series, "alert_rule_test": [
        {"eval_time": f"{before}m", "alertname": alert, "exp_alerts": []},
        {"eval_time": f"{after}m", "alertname": alert,
         "exp_alerts": [{"exp_labels": labels, "exp_annotations": {
             "summary": summary,
             "description": next(r for r in alert_rules(CFG, "flights")["groups"][0]["rules"]
                                 if r["alert"] == alert)["annotations"]["description"]}}]}]}


# PSI above the threshold from minute 10 on, on one of two replicas; "for" is 2 minutes, so the alert
# is pending at 10-11 and fires from 12.
DRIFT = _case([{"series": 'ray_mlops_feature_psi{feature="temp",replica="a"}', "values": "0.05x9 0.5x10"},
               {"series": 'ray_mlops_feature_psi{feature="temp",replica="b"}', "values": "0.05x20"},
               {"series": 'ray_mlops_feature_psi{feature="distance",replica="a"}', "values": "0.01x20"}],
              "MlopsFeatureDrift", 11, 13, _labels("warning", feature="temp"), "Feature temp drifted: PSI 0.500 > 0.2")
ACCURACY = _case([{"series": 'ray_mlops_rolling_metric{metric="roc_auc",replica="a"}', "values": "0.7x9 0.55x10"},
                  {"series": 'ray_mlops_rolling_metric{metric="f1",replica="a"}', "values": "0.1x20"}],
                 "MlopsAccuracyDrop", 11, 13, _labels("critical"), "Rolling ROC AUC 0.550 < 0.6")
# 100 requests a minute answered 200; from minute 10 on also 5 a minute answered 503
ERRORS = _case([{"series": 'ray_serve_num_http_requests_total{status_code="200",replica="a"}', "values": "0+100x30"},
                {"series": 'ray_serve_num_http_requests_total{status_code="422",replica="a"}', "values": "0+50x30"},
                {"series": 'ray_serve_num_http_requests_total{status_code="503",replica="a"}', "values": "0x10 5+5x20"}],
               "MlopsHighErrorRate", 11, 17, _labels("critical"), "5xx share 3.226% > 0.01")
# 60 requests a minute under 50 ms; from minute 10 on they take between 500 and 1000 ms
_B = 'ray_serve_http_request_latency_ms_bucket{{le="{le}",replica="a"}}'
LATENCY = _case([{"series": _B.format(le="50"), "values": "0+60x10 600x20"},
                 {"series": _B.format(le="500"), "values": "0+60x10 600x20"},
                 {"series": _B.format(le="1000"), "values": "0+60x30"},
                 {"series": _B.format(le="+Inf"), "values": "0+60x30"}],
                "MlopsHighLatencyP99", 11, 17, _labels("warning"), "p99 latency 995 ms > 500 ms")


@pytest.mark.parametrize("case", [DRIFT, ACCURACY, ERRORS, LATENCY], ids=["drift", "accuracy", "errors", "latency"])
def test_each_alert_fires_once_its_condition_holds_and_not_before(case, tmp_path):
    write_alert_rules(CFG, "flights", tmp_path / "rules.yml")
    res = subprocess.run([_promtool(), "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert res.returncode == 0 and "SUCCESS: 4 rules found" in res.stdout, res.stdout + res.stderr
    (tmp_path / "test.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m",
                                                       "tests": [case]}, sort_keys=False))
    res = subprocess.run([_promtool(), "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_rule_test_catches_an_alert_that_fires_too_early(tmp_path):
    early = yaml.safe_load(yaml.safe_dump(DRIFT))
    early["alert_rule_test"][0]["eval_time"] = "13m"  # expects silence while the alert fires
    write_alert_rules(CFG, "flights", tmp_path / "rules.yml")
    (tmp_path / "test.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m",
                                                       "tests": [early]}, sort_keys=False))
    res = subprocess.run([_promtool(), "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode != 0 and "MlopsFeatureDrift" in res.stdout + res.stderr


def test_thresholds_come_from_the_config():
    rules = {r["alert"]: r for r in alert_rules(MonitorConfig(psi_threshold=0.3, alert_for_s=30), "credit")
             ["groups"][0]["rules"]}
    assert rules["MlopsFeatureDrift"]["expr"].endswith("> 0.3") and rules["MlopsFeatureDrift"]["for"] == "30s"
    assert rules["MlopsAccuracyDrop"]["labels"] == {"pipeline": "credit", "severity": "critical"}
