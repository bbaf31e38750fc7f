"""Sustained ingest into the live gas-leak service, on loopback, bounded in time and count.

    python benchmarks/bench_gas_load.py                      # 20 sensors over HTTP for 20 s, then MQTT
    python benchmarks/bench_gas_load.py --sensors 50 --seconds 30 --batch 10 --no-mqtt

The service runs as its own process (`python -m framework task=gasleak serve`, SQLite with
synchronous=FULL) with the latest trained detector (or `--detector <bundle>`, or `--detector
threshold`). Each simulated sensor is one client that sends its next reading as soon as the previous
one is acknowledged. Printed: requests and readings per second, p50/p99 latency, status codes (no 5xx
allowed), and the check that matters -- the number of readings in SQLite equals the number the
service acknowledged. With mosquitto installed the same is measured for MQTT (QoS 1 publishes until
the service has stored them all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def start_service(workdir: Path, detector: str, extra: list[str]) -> tuple[subprocess.Popen, str, list[str]]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", FRAMEWORK_OUTPUTS=os.environ.get("FRAMEWORK_OUTPUTS", str(REPO / "outputs")))
    args = [sys.executable, "-m", "framework", "task=gasleak", "serve", "serve.port=0",
            f"storage.path={workdir / 'load.sqlite'}", "serve.max_future_s=3600", *extra]
    if detector != "latest":
        args.append(f"ckpt_path={detector}")
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"dashboard: (http://\S+?)/?$", line)
            if m:
                url.append(m.group(1))
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    found.wait(180)
    if not url:
        proc.kill()
        sys.exit("the service did not start:\n" + "".join(lines[-30:]))
    return proc, url[0], lines


def stop_service(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


async def http_load(url: str, sensors: int, seconds: float, max_requests: int, batch: int) -> dict:
    latencies: list[float] = []
    codes: dict[int, int] = {}
    acked = 0
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=sensors, max_keepalive_connections=sensors)

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        async def sensor(k: int):
            nonlocal acked, errors, sent
            rng = np.random.default_rng(k)
            t = time.time() - 3600  # one reading per "second" of sensor time, starting an hour ago
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                body = []
                for _ in range(batch):
                    t += 1.0
                    body.append({"sensor_id": f"load-{k}", "timestamp": t,
                                 "gas_concentration": float(60 + rng.normal(0, 3)),
                                 "temperature": 21.0, "humidity": 45.0})
                t0 = time.perf_counter()
                try:
                    r = await client.post("/api/sensor/readings", json=body if batch > 1 else body[0])
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code == 201:
                    acked += r.json()["accepted"]

        t_start = time.perf_counter()
        await asyncio.gather(*(sensor(k) for k in range(sensors)))
        elapsed = time.perf_counter() - t_start
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "elapsed_s": elapsed, "rps": len(latencies) / elapsed,
            "readings_per_s": acked / elapsed, "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None, "codes": codes, "errors": errors,
            "acked": acked}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mqtt_load(port: int, url: str, sensors: int, messages: int, seconds: float) -> dict:
    import paho.mqtt.client as paho

    before = httpx.get(url + "/api/status", timeout=10).json()["mqtt"]["received"]
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-nodes")
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    t_start = time.perf_counter()
    infos = []
    t = time.time() - 3600
    for i in range(messages):
        k = i % sensors
        if k == 0:
            t += 1.0
        payload = {"timestamp": t, "gas_concentration": 60.0, "temperature": 21.0, "humidity": 45.0}
        infos.append(client.publish(f"gas_detection/sensor/mqtt-{k}", json.dumps(payload), qos=1))
        if time.perf_counter() - t_start > seconds:
            break
    published = len(infos)
    for info in infos:
        info.wait_for_publish(30)
    t_published = time.perf_counter() - t_start
    deadline = time.perf_counter() + 60
    received = 0
    while time.perf_counter() < deadline:
        st = httpx.get(url + "/api/status", timeout=10).json()["mqtt"]
        received = st["received"] - before
        if received + st["rejected"] >= published:
            break
        time.sleep(0.1)
    elapsed = time.perf_counter() - t_start
    client.loop_stop()
    client.disconnect()
    return {"published": published, "stored": received, "publish_s": t_published, "elapsed_s": elapsed,
            "msgs_per_s": received / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sensors", type=int, default=20, help="concurrent sensor clients")
    ap.add_argument("--seconds", type=float, default=20, help="HTTP phase length")
    ap.add_argument("--max-requests", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1, help="readings per request")
    ap.add_argument("--mqtt-messages", type=int, default=5000)
    ap.add_argument("--no-mqtt", action="store_true")
    ap.add_argument("--detector", default="latest", help="a bundle dir, 'latest' (the latest train run) or 'threshold'")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gas-load-"))
    detector = args.detector
    if detector == "threshold":
        from plugins.gasleak_lstm_svm.detector import ThresholdDetector

        detector = str(ThresholdDetector().save(work / "detector"))
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = None
    extra = []
    if not args.no_mqtt and Path(mosquitto).exists():
        port = free_port()
        # mosquitto's defaults (20 in flight, 1000 queued per client) drop QoS 1 messages beyond that
        # for a slow subscriber; a load test needs room for a burst
        (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                             "max_inflight_messages 1000\nmax_queued_messages 1000000\n")
        broker = subprocess.Popen([mosquitto, "-c", str(work / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        extra = ["mqtt.enabled=true", f"mqtt.port={port}"]
    proc, url, lines = start_service(work, detector, extra)
    try:
        status = httpx.get(url + "/api/status", timeout=10).json()
        print(f"service: {url}  detector: {status['model_status']['model_type']}  "
              f"storage: synchronous={status['storage']['synchronous']}  cpus: {os.cpu_count()}")
        h = asyncio.run(http_load(url, args.sensors, args.seconds, args.max_requests, args.batch))
        five = sum(n for code, n in h["codes"].items() if code >= 500)
        print(f"HTTP  {args.sensors} sensors x {args.batch} reading(s)/request for {h['elapsed_s']:.1f} s: "
              f"{h['rps']:.0f} req/s, {h['readings_per_s']:.0f} readings/s, p50 {h['p50_ms']:.1f} ms, "
              f"p99 {h['p99_ms']:.1f} ms, status {h['codes']}, 5xx {five}, client errors {h['errors']}")
        m = None
        if broker is not None:
            m = mqtt_load(int(extra[1].split("=")[1]), url, args.sensors, args.mqtt_messages, args.seconds)
            print(f"MQTT  {m['published']} QoS-1 messages from {args.sensors} sensors: {m['msgs_per_s']:.0f} msgs/s "
                  f"stored end to end ({m['stored']} stored in {m['elapsed_s']:.1f} s)")
        t_wait = time.perf_counter()  # let detection catch up with what was acknowledged
        while (st := httpx.get(url + "/api/status", timeout=10).json()["detection"])["pending"] and \
                time.perf_counter() - t_wait < 120:
            time.sleep(0.5)
        st["catch_up_s"] = time.perf_counter() - t_wait
    finally:
        stop_service(proc)
        if broker is not None:
            broker.terminate()
            broker.wait(5)
    with sqlite3.connect(work / "load.sqlite") as conn:
        stored = conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
    expected = h["acked"] + (m["stored"] if m else 0)
    print(f"detection: {st['windows_scored']} windows scored, {st['windows_skipped']} skipped under load, "
          f"{st['detect_seconds']:.1f} s in the detector ({st['windows_scored'] / max(st['detect_seconds'], 1e-9):.0f} "
          f"windows/s), caught up {st['catch_up_s']:.1f} s after the load ended, {st['pending']} left")
    lost_mqtt = (m["published"] - m["stored"]) if m else 0
    if m:
        print(f"MQTT: {m['published']} published, {m['stored']} stored ({lost_mqtt} lost)")
    verdict = "OK" if stored == expected and five == 0 and lost_mqtt == 0 else "FAIL"
    print(f"SQLite: {stored} readings stored, {expected} acknowledged -> {verdict}")
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if verdict == "OK" else 1)


if __name__ == "__main__":
    main()
