"""The run report in headless Chromium: every figure renders and the page logs no errors.

The same check run on a copy with one image planted broken must fail (the check is not vacuous).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager try to download a browser
    for exe in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not Path(exe).exists():
            pytest.fail(f"{exe} missing: scripts/test.sh installs Debian's chromium and chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={tempfile.mkdtemp(prefix='mlops_ray_chrome_')}",
                "--window-size=1280,2000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    yield driver
    driver.quit()


def page_problems(driver, path: Path) -> dict:
    """Open the report; return image counts, broken images and severe console messages."""
    driver.get(path.as_uri())
    driver.execute_script("return document.readyState")
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
    broken = [alt for alt, complete, w, h in images if not complete or w == 0 or h == 0]
    severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return {"images": len(images), "broken": broken, "errors": severe, "title": driver.title}


def _report(pipeline_run) -> Path:
    return Path(pipeline_run[2]["stages"]["register"]["outputs"]["report"])


def test_every_figure_renders_and_no_console_errors(browser, pipeline_run):
    path = _report(pipeline_run)
    html = path.read_text()
    for section in ("Champion / challenger decision", "Test metrics", "Slices", "Drift reference", "Data",
                    "Permutation importance"):
        assert section in html, section
    found = page_problems(browser, path)
    expected = len(re.findall(r"<img ", html))
    assert expected >= 8  # ROC, PR, calibration, confusion, importance, >= 3 partial dependence
    assert found["images"] == expected and not found["broken"] and not found["errors"], found
    assert "run " in found["title"]


def test_the_check_catches_a_planted_broken_image(browser, pipeline_run, tmp_path):
    html = _report(pipeline_run).read_text()
    planted = re.sub(r'src="data:image/png;base64,[^"]{40}', 'src="data:image/png;base64,AAAAnotapng', html, count=1)
    assert planted != html
    bad = tmp_path / "report.html"
    bad.write_text(planted)
    found = page_problems(browser, bad)
    assert len(found["broken"]) == 1
