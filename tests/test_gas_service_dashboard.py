"""The dashboard in a real headless browser: Debian's chromium driven by Playwright (no download)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from plugins.gasleak_lstm_svm.estimators import ThresholdDetector
from plugins.gasleak_lstm_svm.service.alerts import AlertRules
from plugins.gasleak_lstm_svm.service.app import ServiceSettings, create_app
from plugins.gasleak_lstm_svm.service.pipeline import Pipeline
from plugins.gasleak_lstm_svm.service.schemas import Reading
from plugins.gasleak_lstm_svm.service.storage import Storage
from plugins.gasleak_lstm_svm.simulator import LeakEvent, simulate_series

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (.ci/run installs it)")


@pytest.fixture
def live_service(tmp_path):
    import uvicorn

    storage = Storage(tmp_path / "dash.sqlite")
    pipeline = Pipeline(ThresholdDetector(), storage, AlertRules(), interval_s=0.05).start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(create_app(pipeline, ServiceSettings()), log_config=None, access_log=False,
                                           lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", pipeline
    server.should_exit = True
    thread.join(10)
    pipeline.stop()
    storage.close()


def play_history(pipeline, seconds=240):
    """Three nodes' last four minutes from the simulator; node-2 has a gas burst two minutes ago."""
    now = time.time()
    for i in range(3):
        leaks = [LeakEvent(120.0, 121.0, "burst", 1500.0)] if i == 1 else []
        s = simulate_series(seconds, seed=i, leaks=leaks, hard_negatives=False)
        readings = [Reading(sensor_id=f"node-{i + 1}", timestamp=now - seconds + k,
                            gas_concentration=float(s["gas_concentration"][k]), temperature=float(s["temperature"][k]),
                            humidity=float(s["humidity"][k])) for k in range(seconds)]
        pipeline.ingest(readings, "demo")
    assert pipeline.drain(20)


def test_dashboard_shows_sensors_charts_alerts_and_acknowledges(live_service, tmp_path):
    url, pipeline = live_service
    play_history(pipeline)
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/")
            # one card per sensor with its state
            page.wait_for_selector(".card[data-sensor='node-3']", timeout=15_000)
            assert page.locator(".card").count() == 3
            page.wait_for_function("document.querySelector(\".card[data-sensor='node-2']\").dataset.state === 'danger'",
                                   timeout=15_000)
            assert page.locator(".card[data-sensor='node-1']").get_attribute("data-state") == "normal"
            assert "Threshold" in page.locator("#model").inner_text()
            # the charts are drawn: a good share of the canvas is not blank
            page.wait_for_timeout(2500)  # a data refresh
            inked = page.evaluate("""() => [...document.querySelectorAll('canvas')].map(c => {
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
                return n / (c.width * c.height); })""")
            assert len(inked) == 3 and all(f > 0.01 for f in inked), inked
            # the alert list, and acknowledging from the page
            row = page.locator("tr[data-alert-id]").first
            row.wait_for(timeout=10_000)
            assert row.get_attribute("data-level") == "danger" and "node-2" in row.inner_text()
            alert_id = int(row.get_attribute("data-alert-id"))
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            row.locator("button.ack").click()
            page.wait_for_selector(f"tr[data-alert-id='{alert_id}'] .acked", timeout=10_000)
            assert pipeline.storage.alert(alert_id)["acknowledged"] is True
            page.screenshot(path=str(tmp_path / "dashboard-acknowledged.png"), full_page=True)
            # a silenced sensor says so on its card, and its alerts are marked in the list
            pipeline.silence("node-3", time.time() + 3600)
            page.wait_for_selector(".card[data-sensor='node-3'] .silenced", timeout=10_000)
            assert "silenced until" in page.locator(".card[data-sensor='node-3']").inner_text()
            assert page.locator(".card[data-sensor='node-1'] .silenced").count() == 0
            pipeline.silence("node-1", time.time() + 3600)
            burst = simulate_series(30, seed=9, leaks=[LeakEvent(5.0, 6.0, "burst", 1500.0)], hard_negatives=False)
            start = time.time() + 1  # after node-1's history, within the pipeline's allowance for clock skew
            pipeline.ingest([Reading(sensor_id="node-1", timestamp=start + k, gas_concentration=float(burst["gas_concentration"][k]),
                                     temperature=20.0, humidity=40.0) for k in range(30)], "demo")
            assert pipeline.drain(20)
            page.wait_for_selector("tr[data-level='danger']:has-text('node-1') .silenced", timeout=10_000)
            assert not errors, errors
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    # keep one for the README when asked to (GASLEAK_SCREENSHOT_DIR=docs)
    import os

    if os.environ.get("GASLEAK_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["GASLEAK_SCREENSHOT_DIR"]) / "gasleak_dashboard.png")
