"""The studio's streaming speed: time to the first bar on the wire, and to the whole tune.

    python benchmarks/bench_music_stream.py [--ckpt PATH | --random] [--requests 15] [--bars 16]

Starts the studio's app (plugins/music_lstm/studio.py) on a loopback port with a real uvicorn
server, then for each request opens ``GET /api/tunes/stream`` over HTTP (one tune, bar-aware
decoding on, a new seed each time) and times, from sending the request:

- the first ``bar`` event (the first bar the page can draw; goal: under 100 ms for the default
  3 x 256 model on the 2-core CPU),
- the ``written`` event (the whole tune's text, checked by music21),
- the ``tune`` event (its files rendered: ``--render``, abc only by default),

and, for comparison, ``POST /api/tunes`` with the same settings (the answer comes when everything
is done). Medians over ``--requests`` requests, side by side in one run. Speed does not depend on
the weights, so without a trained model the default preset's shape with fresh weights is used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_music_generate import load  # noqa: E402

from framework import serving  # noqa: E402
from plugins.music_lstm.studio import Studio, create_app  # noqa: E402


def timed_stream(client: httpx.Client, params: dict) -> dict:
    start = time.perf_counter()
    marks: dict[str, float] = {}
    bars = 0
    with client.stream("GET", "/api/tunes/stream", params=params) as r:
        r.raise_for_status()
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
                marks.setdefault(event, time.perf_counter() - start)
            elif line.startswith("data: ") and event == "written":
                bars = json.loads(line[6:])["bars"]
    return {"first_bar": marks.get("bar"), "written": marks["written"], "tune": marks["tune"], "bars": bars,
            "redraws": "redraw" in marks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="a music checkpoint (default: the latest music train run)")
    ap.add_argument("--random", action="store_true", help="fresh weights of the default preset's shape")
    ap.add_argument("--requests", type=int, default=15)
    ap.add_argument("--bars", type=int, default=None, help="generate.bars for every request (default: the model's choice)")
    ap.add_argument("--form", default=None)
    ap.add_argument("--render", default="abc", help="files per tune, comma-separated (default: abc)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, source = load("/nonexistent" if args.random else args.ckpt)
    cfg = OmegaConf.load(ROOT / "plugins" / "music_lstm" / "conf" / "task" / "music.yaml")
    cfg = OmegaConf.merge({"generate": cfg.generate, "serve": cfg.serve})
    cfg.serve.render = args.render.split(",")
    out = Path("/tmp/bench_music_stream")
    studio = Studio(cfg, model, Path(source), out)
    app = create_app(studio)
    label = model.vocabulary.labels[0]
    params = {"region": label, **({"bars": args.bars} if args.bars else {}), **({"form": args.form} if args.form else {})}
    rows = []
    with serving.Server(app, serving.bind("127.0.0.1", 0)) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        timed_stream(client, {**params, "seed": 10_000})  # warm-up: first request pays for lazy imports
        for seed in range(args.requests):
            row = timed_stream(client, {**params, "seed": seed})
            start = time.perf_counter()
            client.post("/api/tunes", json={**params, "seed": seed}).raise_for_status()
            row["post"] = time.perf_counter() - start
            rows.append(row)
    studio.close()

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rows if r[key] is not None)

    first = median("first_bar")
    print(f"model: {source} ({len(model.lstms)} x {model.lstms[0].hidden_size}), {args.threads} thread(s), "
          f"{args.requests} requests, settings {params}, files {args.render}")
    print(f"{'':40s} {'median':>9s} {'min':>9s} {'max':>9s}")
    for key, name in (("first_bar", "stream: first bar event"), ("written", "stream: whole tune written"),
                      ("tune", "stream: tune event (files rendered)"), ("post", "POST /api/tunes (whole answer)")):
        values = [r[key] for r in rows if r[key] is not None]
        print(f"{name:40s} {1000 * statistics.median(values):8.1f}ms {1000 * min(values):8.1f}ms {1000 * max(values):8.1f}ms")
    print(f"bars per tune: median {median('bars'):.0f}; requests with a redrawn bar: {sum(r['redraws'] for r in rows)}")
    print(f"first bar: {1000 * first:.1f} ms against the goal of 100 ms -> {'met' if first < 0.1 else 'NOT met'} "
          f"({0.1 / first:.1f}x headroom); the first bar arrives {median('post') / first:.0f}x sooner than the POST answer")


if __name__ == "__main__":
    main()
