"""Open-loop load on the live gas-leak service, on loopback, bounded in time.

    python benchmarks/bench_gas_load.py --detector <bundle>            # 250, 500, 1000 req/s, batches, MQTT
    python benchmarks/bench_gas_load.py --rates 500 --seconds 30 --repeat 3 --no-batch --no-mqtt

The service runs as its own process (`python -m framework task=gasleak serve`, SQLite with
synchronous=FULL) with the latest trained detector (or `--detector <bundle>`, or `--detector
threshold`).

Open loop: requests leave on a fixed schedule (request i at start + i/rate) whatever the answers,
and each latency is measured from its *scheduled* send time, so a server that stalls is charged for
every request that should have left meanwhile (no coordinated omission). A pool of keep-alive
connections (--connections) carries them; a request waiting for a free connection is waiting on the
server. The client is a small asyncio HTTP/1.1 writer (no HTTP library), and its own CPU use is
printed beside the server's (the service and its scoring process), so a reader sees which side
was the limit.

Before the first phase of each kind every sensor gets --warmup readings (untimed), so that every
timed reading ends a full window and the detector works at the rate of the load.

Printed per phase: the rate asked and achieved, p50/p99/p99.9, errors, readings acknowledged, and
detection (windows scored/skipped, the largest detector lag seen on /api/status while loading).
At the end: readings in SQLite vs acknowledged. With mosquitto installed, MQTT QoS 1 too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
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
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def start_service(workdir: Path, detector: str, extra: list[str]) -> tuple[subprocess.Popen, str, list[str]]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", FRAMEWORK_OUTPUTS=os.environ.get("FRAMEWORK_OUTPUTS", str(workdir / "outputs")))
    args = [sys.executable, "-m", "framework", "task=gasleak", "serve", "serve.port=0", "storage.synchronous=FULL",
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


def service_cpu(server: psutil.Process) -> float:
    """CPU seconds of the service and its children (the scoring process) so far."""
    total = 0.0
    for p in [server, *server.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


class Clock:
    """Sensor timestamps: each sensor's readings one second apart, starting in the past."""

    def __init__(self, sensors: int, prefix: str):
        self.sensors, self.prefix = sensors, prefix
        self.t = [time.time() - 3000.0] * sensors
        self.i = 0  # readings so far
        self.k = 0  # the sensor whose turn it is

    def reading(self, k: int | None = None) -> dict:
        """The next reading of sensor ``k`` (default: the sensors in turn)."""
        if k is None:
            k, self.k = self.k, (self.k + 1) % self.sensors
        self.i += 1
        self.t[k] += 1.0
        return {"sensor_id": f"{self.prefix}-{k}", "timestamp": round(self.t[k], 3),
                "gas_concentration": round(60.0 + 3.0 * np.sin(self.i), 2), "temperature": 21.0, "humidity": 45.0}

    def request(self, batch: int) -> tuple[int, bytes]:
        """(sensor, body): the next sensor's next reading, or its next ``batch`` readings (a sensor or
        gateway sending what it buffered)."""
        k, self.k = self.k, (self.k + 1) % self.sensors
        body = self.reading(k) if batch == 1 else [self.reading(k) for _ in range(batch)]
        return k, json.dumps(body).encode()


async def open_loop(host: str, port: int, rate: float, seconds: float, batch: int, clock: Clock,
                    connections: int, status_url: str) -> dict:
    n = int(rate * seconds)
    # Batches: each sensor's requests go through one connection, one after the other, as a real
    # sensor's do; spread over the pool, requests of a sensor sending 60 readings a second overtook each
    # other (60 % of them reached the service out of order). One reading a request: any free connection
    # (a sensor's readings are 0.2 s or more apart, and pinned, a request would wait behind another
    # sensor's on its connection: a client-side queue a sensor with a connection of its own has not).
    queues = [asyncio.Queue() for _ in range(connections if batch > 1 else 1)]
    latencies = np.full(n, np.nan)
    codes: dict[int, int] = {}
    result = {"acked": 0, "errors": 0}

    async def worker(queue: asyncio.Queue):
        reader = writer = None
        while True:
            item = await queue.get()
            if item is None:
                break
            i, scheduled, body = item
            request = (b"POST /api/sensor/readings HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            try:
                for attempt in range(2):
                    reused = writer is not None
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    writer.write(request)
                    try:
                        head = await reader.readuntil(b"\r\n\r\n")
                        break
                    except asyncio.IncompleteReadError as exc:
                        # the server closed a connection that sat idle past its keep-alive timeout
                        # (low rates) before reading this request: send it again on a new one
                        if not reused or exc.partial or attempt:
                            raise
                        writer.close()
                        reader = writer = None
                code = int(head[9:12])
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                answer = await reader.readexactly(length)
                latencies[i] = time.perf_counter() - scheduled
                codes[code] = codes.get(code, 0) + 1
                if code == 201:
                    result["acked"] += json.loads(answer)["accepted"]
            except (OSError, asyncio.IncompleteReadError, ValueError, AttributeError):
                result["errors"] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    lag = {"max_s": 0.0}

    async def watch():  # the detector's lag, as an operator would see it
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                try:
                    d = (await client.get(status_url)).json()["detection"]
                    lag["max_s"] = max(lag["max_s"], d.get("lag_s", 0.0), d.get("last_round_lag_s") or 0.0)
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(1.0)

    workers = [asyncio.create_task(worker(queues[c % len(queues)])) for c in range(connections)]
    watcher = asyncio.create_task(watch())
    bodies = [clock.request(batch) for _ in range(n)]  # built before the clock starts: the client's work is the sending
    cpu0, t0 = _cpu(), time.perf_counter()
    for i in range(n):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        k, body = bodies[i]
        queues[k % len(queues)].put_nowait((i, scheduled, body))
    for c in range(connections):
        queues[c % len(queues)].put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - t0
    cpu = _cpu() - cpu0
    watcher.cancel()
    lat = latencies[~np.isnan(latencies)] * 1000
    pct = (lambda q: float(np.percentile(lat, q))) if len(lat) else (lambda q: float("nan"))
    return {"requests": n, "answered": len(lat), "elapsed_s": elapsed, "rps": len(lat) / elapsed,
            "readings_per_s": result["acked"] / elapsed, "p50_ms": pct(50), "p99_ms": pct(99), "p999_ms": pct(99.9),
            "max_ms": float(lat.max()) if len(lat) else float("nan"), "codes": codes, "errors": result["errors"],
            "acked": result["acked"], "client_cpu": cpu / elapsed, "lag_max_s": lag["max_s"]}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mqtt_load(port: int, url: str, sensors: int, messages: int, seconds: float) -> dict:
    """QoS 1 publishes as fast as the client goes, then wait until the service has stored them all."""
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
    return {"published": published, "stored": received, "elapsed_s": elapsed, "msgs_per_s": received / elapsed}


def warm_up(url: str, clock: Clock, per_sensor: int) -> float:
    """Fill every sensor's first window (untimed), so that each timed reading ends a window to score."""
    t0 = time.perf_counter()
    total = clock.sensors * per_sensor
    with httpx.Client(base_url=url, timeout=60) as client:
        for start in range(0, total, 1000):
            body = [clock.reading() for _ in range(min(1000, total - start))]
            client.post("/api/sensor/readings", json=body).raise_for_status()
    return time.perf_counter() - t0


def catch_up(url: str, limit_s: float = 120) -> dict:
    t0 = time.perf_counter()
    while (st := httpx.get(url + "/api/status", timeout=10).json()["detection"])["pending"] and \
            time.perf_counter() - t0 < limit_s:
        time.sleep(0.2)
    return dict(st, catch_up_s=time.perf_counter() - t0)


def server_side(url: str) -> None:
    """Where the server's time went, from its own /metrics histograms (the whole run, warm-up included):
    a slow commit holds back every acknowledgement of its group; a slow detection round, alerts."""
    from prometheus_client.parser import text_string_to_metric_families

    names = {"gasleak_storage_commit_seconds": "commits", "gasleak_detector_round_seconds": "detection rounds",
             "gasleak_ingest_latency_seconds": "ingest calls (validated to committed)"}
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name not in names:
            continue
        buckets: dict[float, float] = {}
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
        total = buckets.get(float("inf"), 0.0)
        if not total:
            continue
        over = ", ".join(f"> {1000 * le:g} ms {100 * (1 - buckets[le] / total):.2f} %"
                         for le in sorted(buckets) if le in (0.005, 0.01, 0.02, 0.05, 0.1))
        print(f"server: {names[family.name]}: {total:.0f}; {over}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="250,500,1000", help="requests per second, one reading each, comma-separated")
    ap.add_argument("--seconds", type=float, default=20, help="length of each phase")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each rate (medians printed)")
    ap.add_argument("--sensors", type=int, default=200, help="distinct sensor ids the readings cycle through")
    ap.add_argument("--connections", type=int, default=64, help="keep-alive connections in the client's pool")
    ap.add_argument("--warmup", type=int, default=70, help="readings per sensor sent first, untimed (a window is 60)")
    ap.add_argument("--batch", type=int, default=100, help="readings per request in the batch phase")
    ap.add_argument("--batch-rate", type=float, default=250, help="requests per second in the batch phase")
    ap.add_argument("--no-batch", action="store_true")
    ap.add_argument("--mqtt-messages", type=int, default=20000)
    ap.add_argument("--no-mqtt", action="store_true")
    ap.add_argument("--detector", default="latest", help="a bundle dir, 'latest' (the latest train run) or 'threshold'")
    ap.add_argument("--serve", default="", help="extra service overrides, space-separated")
    args = ap.parse_args()
    try:
        import uvloop  # the client's loop: less of its own CPU in the figures

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    work = Path(tempfile.mkdtemp(prefix="gas-load-"))
    detector = args.detector
    if detector == "threshold":
        from plugins.gasleak_lstm_svm.estimators import ThresholdDetector

        detector = str(ThresholdDetector().save(work / "detector"))
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker, extra = None, args.serve.split()
    if not args.no_mqtt and Path(mosquitto).exists():
        port = free_port()
        # mosquitto's defaults (20 in flight, 1000 queued per client) drop QoS 1 messages beyond that
        # for a slow subscriber; a load test needs room for a burst
        (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                             "max_inflight_messages 1000\nmax_queued_messages 1000000\n")
        broker = subprocess.Popen([mosquitto, "-c", str(work / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        extra += ["mqtt.enabled=true", f"mqtt.port={port}"]
    proc, url, lines = start_service(work, detector, extra)
    server = psutil.Process(proc.pid)
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()
    acked, five, failed = 0, 0, False
    try:
        status = httpx.get(url + "/api/status", timeout=10).json()
        print(f"service: {url}  detector: {status['model_status']['model_type']}  "
              f"storage: synchronous={status['storage']['synchronous']}  cpus: {os.cpu_count()}  "
              f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        phases = [(float(r), 1) for r in args.rates.split(",") if r]
        if not args.no_batch:
            phases.append((args.batch_rate, args.batch))
        clocks = {1: Clock(args.sensors, "load"), args.batch: Clock(2 * args.sensors, "batch")}
        for rate, batch in phases:
            clock = clocks[batch]
            if args.warmup and clock.i == 0:
                took = warm_up(url, clock, args.warmup)
                st = catch_up(url)
                print(f"  warm-up: {clock.sensors} sensors x {args.warmup} readings in {took:.1f} s, detection "
                      f"caught up {st['catch_up_s']:.1f} s later", flush=True)
                acked += clock.sensors * args.warmup
            runs = []
            for _ in range(args.repeat):
                s0 = service_cpu(server)
                before = httpx.get(url + "/api/status", timeout=10).json()["detection"]
                h = asyncio.run(open_loop(host, int(port), rate, args.seconds, batch, clock, args.connections,
                                          url + "/api/status"))
                h["server_cpu"] = (service_cpu(server) - s0) / h["elapsed_s"]
                st = catch_up(url)
                h["skipped"] = st["windows_skipped"] - before["windows_skipped"]
                h["scored"] = st["windows_scored"] - before["windows_scored"]
                h["out_of_order"] = st["readings_out_of_order"] - before["readings_out_of_order"]
                h["catch_up_s"] = st["catch_up_s"]
                acked += h["acked"]
                bad = sum(n for code, n in h["codes"].items() if code >= 500)
                five += bad
                failed |= bool(h["errors"] or bad or h["answered"] < h["requests"])
                runs.append(h)
                print(f"  {rate:6.0f} req/s x {batch:3d}: {h['rps']:6.0f} req/s {h['readings_per_s']:7.0f} readings/s  "
                      f"p50 {h['p50_ms']:7.1f}  p99 {h['p99_ms']:7.1f}  p99.9 {h['p999_ms']:7.1f}  max {h['max_ms']:7.1f} ms  "
                      f"errors {h['errors']}  5xx {bad}  codes {h['codes']}  client CPU {100 * h['client_cpu']:.0f} %  "
                      f"server CPU {100 * h['server_cpu']:.0f} %  windows {h['scored']} scored {h['skipped']} skipped  "
                      f"{h['out_of_order']} readings out of order  "
                      f"detector lag max {h['lag_max_s']:.2f} s  caught up {h['catch_up_s']:.1f} s after", flush=True)
            med = {k: float(np.median([r[k] for r in runs])) for k in
                   ("rps", "readings_per_s", "p50_ms", "p99_ms", "p999_ms", "client_cpu", "server_cpu", "lag_max_s")}
            print(f"HTTP open loop {rate:.0f} req/s x {batch} reading(s), median of {len(runs)}: {med['rps']:.0f} req/s, "
                  f"{med['readings_per_s']:.0f} readings/s, p50 {med['p50_ms']:.1f} ms, p99 {med['p99_ms']:.1f} ms, "
                  f"p99.9 {med['p999_ms']:.1f} ms; client CPU {100 * med['client_cpu']:.0f} % of a core, server "
                  f"{100 * med['server_cpu']:.0f} %; windows scored {sum(r['scored'] for r in runs)}, skipped "
                  f"{sum(r['skipped'] for r in runs)}, detector lag "
                  f"max {med['lag_max_s']:.2f} s", flush=True)
        m = None
        if broker is not None:
            m = mqtt_load(int(extra[-1].split("=")[1]), url, 20, args.mqtt_messages, args.seconds)
            print(f"MQTT  {m['published']} QoS-1 messages from 20 sensors: {m['msgs_per_s']:.0f} msgs/s "
                  f"stored end to end ({m['stored']} stored in {m['elapsed_s']:.1f} s)", flush=True)
            catch_up(url)
        server_side(url)
    finally:
        stop_service(proc)
        if broker is not None:
            broker.terminate()
            broker.wait(5)
    with sqlite3.connect(work / "load.sqlite") as conn:
        stored = conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
    expected = acked + (m["stored"] if m else 0)
    lost_mqtt = (m["published"] - m["stored"]) if m else 0
    if m:
        print(f"MQTT: {m['published']} published, {m['stored']} stored ({lost_mqtt} lost)")
    verdict = "OK" if stored == expected and five == 0 and lost_mqtt == 0 else "FAIL"
    print(f"SQLite: {stored} readings stored, {expected} acknowledged -> {verdict}"
          + ("" if not failed else " (some requests failed or went unanswered: see above)"))
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if verdict == "OK" else 1)


if __name__ == "__main__":
    main()
