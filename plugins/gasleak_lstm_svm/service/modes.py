"""The ``demo`` and ``serve`` modes: the detection service, with or without simulated sensor nodes.

    python -m framework task=gasleak demo                    # 3 simulated nodes, a leak a minute in
    python -m framework task=gasleak demo demo.duration=120  # stops by itself
    python -m framework task=gasleak serve mqtt.enabled=true # real sensors over MQTT and/or HTTP

Both run uvicorn in a thread of this process (framework/serving.py) and wait in the main thread
for Ctrl-C, SIGTERM or ``*.duration``; then they stop cleanly: the nodes stop, the HTTP server finishes its requests,
detection drains what was acknowledged, notifications go out, MQTT disconnects and SQLite is
checkpointed and closed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from framework import UserError, runs, serving
from framework.app import torch_threads

log = logging.getLogger(__name__)

TOKEN_ENV = "GASLEAK_API_TOKEN"


def demo(cfg: DictConfig) -> dict:
    _check_ports(cfg)
    _token(cfg)  # refuse an unprotected public bind before anything slow
    detector, source = _detector(cfg, train_if_missing=True)
    return _run_service(cfg, detector, source, simulate=True)


def serve(cfg: DictConfig) -> dict:
    _check_ports(cfg)
    _token(cfg)
    detector, source = _detector(cfg, train_if_missing=False)
    return _run_service(cfg, detector, source, simulate=False)


# ---- the detector --------------------------------------------------------------------------------
def _detector(cfg: DictConfig, train_if_missing: bool):
    from plugins.gasleak_lstm_svm.bundle import find_detector, load_detector
    from plugins.gasleak_lstm_svm.service.alerts import rules_from_config

    if train_if_missing and not cfg.get("ckpt_path") and runs.latest_train(cfg.task.name, cfg.paths.outputs) is None:
        name = str(cfg.demo.quick_experiment)
        print(f"no trained detector under {cfg.paths.outputs}/{cfg.task.name}: training a quick one first "
              f"(under a minute on CPU; experiment={name})", flush=True)
        from plugins.gasleak_lstm_svm import train

        quick = OmegaConf.merge(cfg, quick_experiment(name))
        t0 = time.perf_counter()
        train.run(quick)
        print(f"quick detector trained in {time.perf_counter() - t0:.0f} s; "
              f"`python -m framework task=gasleak train` trains the full one", flush=True)
    bundle = find_detector(cfg)
    rules = rules_from_config(cfg.alerts)  # the threshold rule takes the configured ppm levels, as the alert engine does
    detector = load_detector(bundle, warning_ppm=rules.warning_ppm, danger_ppm=rules.danger_ppm)
    if getattr(detector, "fallback_reason", None):
        log.warning("detector: %s", detector.fallback_reason)
    return detector, str(bundle)


def quick_experiment(name: str) -> DictConfig:
    """The overrides of ``experiment=<name>`` (this plugin's conf/experiment/<name>.yaml), to merge
    onto a composed config: the demo's quick detector is the command line's."""
    from importlib.resources import files

    path = files("plugins.gasleak_lstm_svm.conf") / "experiment" / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"demo.quick_experiment={name}: no such experiment (plugins/gasleak_lstm_svm/conf/experiment/)")
    overrides = OmegaConf.create(path.read_text())
    if "defaults" in overrides:
        raise UserError(f"demo.quick_experiment={name}: an experiment with a defaults list cannot be merged by the demo")
    return overrides


# ---- the service ---------------------------------------------------------------------------------
def _check_ports(cfg: DictConfig) -> None:
    for key in ("serve.port", "mqtt.port"):
        port = OmegaConf.select(cfg, key)
        if not 0 <= int(port) <= 65535:
            raise UserError(f"{key}={port}: a TCP port is 0 to 65535")


MAX_AUTO_SCORING_PROCESSES = 4  # each holds a copy of torch and the detector (~0.3 GB)


def _scoring_process(setting) -> int:
    """serve.scoring_process: how many scoring processes. true: 1, false: 0 (score in the service's
    process), a number, or auto: one per CPU but one (the service's own), at most 4, none on 1 CPU."""
    if isinstance(setting, bool):
        return int(setting)
    if isinstance(setting, int) and setting >= 0:
        return setting
    if str(setting).lower() != "auto":
        raise UserError(f"serve.scoring_process takes true, false, auto or a number of processes, not {setting!r}")
    return min((os.cpu_count() or 1) - 1, MAX_AUTO_SCORING_PROCESSES)


def _token(cfg: DictConfig) -> str | None:
    token = cfg.serve.get("token") or os.environ.get(TOKEN_ENV) or None
    return serving.check_token(str(cfg.serve.host), token, f"set {TOKEN_ENV} (or serve.token)")


def _run_service(cfg: DictConfig, detector, source: str, *, simulate: bool) -> dict:
    from plugins.gasleak_lstm_svm.service.alerts import rules_from_config
    from plugins.gasleak_lstm_svm.service.app import ServiceSettings, create_app
    from plugins.gasleak_lstm_svm.service.mqtt import MqttBridge
    from plugins.gasleak_lstm_svm.service.notify import Notifier
    from plugins.gasleak_lstm_svm.service.pipeline import Pipeline
    from plugins.gasleak_lstm_svm.service.schemas import Reading
    from plugins.gasleak_lstm_svm.service.sensors import SimulatedNodes
    from plugins.gasleak_lstm_svm.service.storage import Storage

    sc, mc = cfg.serve, cfg.mqtt
    token = _token(cfg)
    rules = rules_from_config(cfg.alerts, detector.operating_point)  # the bundle's calibrated threshold
    wh = cfg.alerts.webhook
    if wh.url and not str(wh.url).startswith(("http://", "https://")):
        raise UserError(f"alerts.webhook.url must be an http:// or https:// URL, not {wh.url!r}")
    db_path = Path(cfg.storage.path) if cfg.storage.get("path") else runs.run_dir() / "gasleak.sqlite"
    try:
        storage = Storage(db_path, synchronous=cfg.storage.synchronous, retention_hours=cfg.storage.retention_hours)
    except (OSError, sqlite3.Error, ValueError) as exc:
        raise UserError(f"cannot open the storage {db_path}: {exc}")
    host = str(sc.host)
    try:
        sock = serving.bind(host, int(sc.port))
    except UserError:
        storage.close()
        raise
    bridge = None
    if mc.enabled:
        bridge = MqttBridge(str(mc.host), int(mc.port), topic_prefix=str(mc.topic_prefix), qos=int(mc.qos),
                            keepalive=int(mc.keepalive), reconnect_max_s=float(mc.reconnect_max_s),
                            client_id=str(mc.client_id), session_expiry_s=int(mc.session_expiry_s),
                            username=mc.get("username"), password=mc.get("password") or os.environ.get("GASLEAK_MQTT_PASSWORD"))
    notifier = Notifier(wh.url, timeout_s=wh.timeout_s, retries=wh.retries, backoff_s=wh.backoff_s,
                        publish=bridge.publish_alert if bridge else None)
    pipeline = Pipeline(detector, storage, rules, notifier, max_future_s=sc.max_future_s, max_gap_s=sc.max_gap_s,
                        max_windows_per_round=sc.max_windows_per_round, interval_s=sc.detect_interval_s,
                        prune_every_s=cfg.storage.prune_every_s, repeat_every_s=cfg.alerts.get("repeat_every_s"),
                        scoring_process=_scoring_process(sc.get("scoring_process", "auto")),
                        torch_threads=torch_threads(cfg.get("torch_threads"), cfg.mode))
    pipeline.detector_source = source
    if bridge is not None:
        bridge.on_readings = pipeline.ingest
        bridge.start()
    pipeline.start()

    app = create_app(pipeline, ServiceSettings(token=token, max_batch=int(sc.max_batch),
                                               max_body_bytes=int(sc.max_body_bytes), bridge=bridge,
                                               max_silence_s=float(cfg.alerts.get("max_silence_hours", 168)) * 3600))
    server = serving.Server(app, sock)
    nodes = publisher = url = None
    t_start = time.time()
    try:
        url = server.start().url
        print(f"dashboard: {url}/", flush=True)
        print(f"API docs:  {url}/docs   status: {url}/api/status", flush=True)
        print(f"detector:  {pipeline.model_status()['model_type']} ({source}); alert at {rules.describe()}", flush=True)
        print(f"storage:   {db_path}", flush=True)
        if bridge is not None:
            print(f"MQTT:      {mc.host}:{mc.port} topics {bridge.sensor_topic}/<sensor_id> -> {bridge.alerts_topic}", flush=True)
        if simulate:
            dc = cfg.demo
            if bridge is not None:
                publisher = MqttBridge(str(mc.host), int(mc.port), topic_prefix=str(mc.topic_prefix), qos=int(mc.qos),
                                       name="nodes").start()

                def sink(batch):
                    for reading in batch:
                        publisher.publish_reading(reading)
            else:
                def sink(batch):
                    pipeline.ingest([Reading.model_validate(r) for r in batch], "demo")
            nodes = SimulatedNodes(sink, sensors=int(dc.sensors), seed=int(dc.seed), seconds=int(dc.series_s),
                                   leak_sensor=dc.leak_sensor, leak_at_s=float(dc.leak_at_s), leak_kind=str(dc.leak_kind),
                                   leak_peak_ppm=float(dc.leak_peak_ppm), hard_negatives=bool(dc.hard_negatives),
                                   start_hour=float(dc.start_hour), rate_hz=float(dc.rate_hz), speed=float(dc.speed))
            print(f"simulated nodes: {', '.join(nodes.ids)} at {float(dc.rate_hz) * float(dc.speed):g} Hz; "
                  f"{nodes.describe()}", flush=True)
            nodes.start()
        duration = cfg.demo.duration if simulate else sc.get("duration")
        print("running" + (f" for {float(duration):g} s" if duration else "") + "; Ctrl-C or SIGTERM stops it", flush=True)
        server.wait(duration)
    finally:
        why = server.stopped_by
        log.info("stopping (%s)", why)
        if nodes is not None:
            nodes.stop()
        server.close()
        # no unsubscribe: the broker keeps queueing for this client's session until it is back
        pipeline.stop()
        notifier.close()
        for b in (publisher, bridge):
            if b is not None:
                b.stop()
        storage.close()
    stats = pipeline.stats
    print(f"stopped ({why}): {stats['readings']} readings, {stats['windows_scored']} windows scored, "
          f"{stats['alerts_opened']} alerts; storage flushed to {db_path}", flush=True)
    return {"duration_s": round(time.time() - t_start, 1), "readings": stats["readings"],
            "windows_scored": stats["windows_scored"], "windows_skipped": stats["windows_skipped"],
            "alerts_opened": stats["alerts_opened"], "model_type": pipeline.model_status()["model_type"],
            "stopped_by": why, "storage": str(db_path), "url": url}
