"""The studio (``task=music serve``): its API, the stream, form control, the serve lifecycle."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, cli_env, last_json_line
from music_toy import save_toy_checkpoint
from plugins.music_lstm import render
from plugins.music_lstm.bars import count_bars

AUDIO = bool(shutil.which("fluidsynth") and render.find_soundfont())


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory) -> Path:
    return save_toy_checkpoint(tmp_path_factory.mktemp("toy") / "toy.ckpt")


def studio_config(**serve):
    cfg = OmegaConf.load(REPO / "plugins" / "music_lstm" / "conf" / "task" / "music.yaml")
    cfg = OmegaConf.merge({"generate": cfg.generate, "serve": cfg.serve})
    cfg.serve.render = ["abc", "mid", "svg", "ogg"]
    for key, value in serve.items():
        cfg.serve[key] = value
    return cfg


@pytest.fixture(scope="module")
def client(toy_checkpoint, tmp_path_factory):
    from fastapi.testclient import TestClient

    from framework import checkpoints
    from plugins.music_lstm.model import MusicLSTM
    from plugins.music_lstm.studio import Studio, create_app

    ckpt = checkpoints.load(toy_checkpoint)
    model = MusicLSTM(**ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    out = tmp_path_factory.mktemp("studio_run")
    studio = Studio(studio_config(max_prompt_chars=300), model.eval(), toy_checkpoint, out)
    with TestClient(create_app(studio)) as c:
        c.out_dir = out
        yield c
    studio.close()


def events(text: str) -> list[tuple[str, dict]]:
    """Server-sent events as (event, data)."""
    out = []
    for block in text.strip().split("\n\n"):
        event = re.search(r"^event: (.*)$", block, re.M).group(1)
        out.append((event, json.loads(re.search(r"^data: (.*)$", block, re.M).group(1))))
    return out


def body_of(abc: str) -> str:
    return "\n".join(line for line in abc.strip().split("\n") if not re.match(r"^[A-Za-z]:", line))


def test_api_writes_checks_and_serves_tunes(client):
    model = client.get("/api/model").json()
    assert model["ready"] and model["labels"] == ["irish", "german"] and model["layers"] == 2
    r = client.post("/api/tunes", json={"region": "german", "num_tunes": 2, "seed": 3, "temperature": 0.8})
    assert r.status_code == 200, r.text
    tunes = r.json()["tunes"]
    assert [t["label"] for t in tunes] == ["german", "german"]
    for tune in tunes:
        assert tune["check"]["parses"] and tune["abc"].startswith(f"X:{int(tune['id'])}\nT:german {tune['id']}\n")
        assert tune["bars"] == count_bars(tune["abc"]) >= 8
        assert tune["settings"]["seed"] == 3
        abc = client.get(tune["urls"]["abc"])
        assert abc.status_code == 200 and abc.text == tune["abc"]
        assert client.get(tune["urls"]["svg"]).text.lstrip().startswith(("<?xml", "<svg"))
        assert client.get(tune["urls"]["mid"]).content[:4] == b"MThd"
        if AUDIO:
            assert client.get(tune["urls"]["ogg"]).content[:4] == b"OggS"
        assert client.get(f"/api/tunes/{tune['id']}/abc").text == tune["abc"]  # by format, too
    # the same settings and seed write the same tune
    again = client.post("/api/tunes", json={"region": "german", "num_tunes": 2, "seed": 3, "temperature": 0.8}).json()
    assert [body_of(t["abc"]) for t in again["tunes"]] == [body_of(t["abc"]) for t in tunes]
    # the gallery: this session's tunes, newest last, in the run directory's index.json
    gallery = client.get("/api/gallery").json()["tunes"]
    on_disk = json.loads((client.out_dir / "index.json").read_text())["tunes"]
    assert [t["id"] for t in gallery] == [t["id"] for t in on_disk][: len(gallery)]
    assert {t["id"] for t in tunes + again["tunes"]} <= {t["id"] for t in gallery}


@pytest.mark.parametrize("settings, status, message", [
    ({"region": "klingon"}, 422, "unknown label 'klingon'; the model knows: irish, german"),
    ({"num_tunes": 0}, 422, "num_tunes"),
    ({"num_tunes": 99}, 422, "serve.max_tunes"),
    ({"bars": 0}, 422, "bars"),
    ({"temperature": 9}, 422, "temperature"),
    ({"top_p": 0}, 422, "top_p"),
    ({"form": "ABA"}, 422, "comes back"),
    ({"form": "AABB", "bars": 15}, 422, "does not divide"),
    ({"prompt": "A" * 301}, 422, "the model's limit is 300"),
    ({"prompt": "M:6/8\nK:G\n|:GAB ~\u00e9"}, 422, "characters the model does not know"),
    ({"metre": "seven"}, 422, "metre='seven'"),
])
def test_bad_settings_are_a_4xx_with_a_clear_message(client, settings, status, message):
    before = len(client.get("/api/gallery").json()["tunes"])
    for r in (client.post("/api/tunes", json=settings), client.get("/api/tunes/stream", params=settings)):
        assert r.status_code == status, r.text
        assert message in json.dumps(r.json())
    assert len(client.get("/api/gallery").json()["tunes"]) == before  # nothing written


def test_uploads_and_missing_files(client):
    tune = "X:7\nT:Upload\nM:6/8\nL:1/8\nK:G\n% a comment\n|:GAB cBA|dBG AFD|GAB cBA|dBG G3:|\n"
    r = client.post("/api/prompt?filename=mine.abc", content=tune.encode())
    assert r.status_code == 200 and r.json()["prompt"].startswith("M:6/8\nL:1/8\nK:G\n|:GAB cBA|")
    assert "comment" not in r.json()["prompt"]
    midi = client.post("/api/prompt?filename=tune.mid", content=b"MThd\x00\x00\x00\x06")
    assert midi.status_code == 415 and "MIDI and MusicXML uploads are not supported" in midi.json()["detail"]
    assert client.post("/api/prompt?filename=x.abc", content=b"\xff\xfe\x00garbage").status_code == 422
    assert "no usable ABC tune" in client.post("/api/prompt", content=b"just some words").json()["detail"]
    assert client.get("/api/tunes/9999/abc").status_code == 404
    first = client.get("/api/gallery").json()["tunes"][0]
    assert client.get(f"/api/tunes/{first['id']}/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_stream_sends_each_bar_in_order_then_the_finished_tune(client):
    r = client.get("/api/tunes/stream", params={"region": "irish", "bars": 16, "form": "AABB", "seed": 5})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    stream = events(r.text)
    kinds = [kind for kind, _ in stream]
    assert kinds[-3:] == ["written", "tune", "done"] and kinds.count("bar") >= 16
    restarts = [i for i, (kind, _) in enumerate(stream) if kind == "restart"]
    last_try = stream[restarts[-1] + 1:] if restarts else stream  # a restart begins the tune again
    bars = [data for kind, data in last_try if kind == "bar"]
    counts = [data["bars"] for data in bars]
    assert counts == sorted(counts) and counts[-1] == 16
    # every bar event shows the tune so far: each one extends the one before, unless a bar was redrawn
    for (kind_a, a), (kind_b, b) in zip(stream, stream[1:]):
        if kind_a == kind_b == "bar":
            assert body_of(b["abc"]).startswith(body_of(a["abc"]))
    tune = dict(stream)["tune"]
    assert body_of(tune["abc"]).startswith(body_of(bars[-1]["abc"]).rstrip())

    # form control: 16 written bars in two sections of 8, each between repeat signs
    assert tune["bars"] == count_bars(tune["abc"]) == 16
    body = body_of(tune["abc"]).replace("\n", "")
    sections = [s for s in re.split(r":\|:?", body) if s.strip(":| ")]
    assert len(sections) == 2 and body.rstrip().endswith(":|"), body
    header = "\n".join(line for line in tune["abc"].split("\n") if re.match(r"^[MLK]:", line)) + "\n"
    assert [count_bars(header + s) for s in sections] == [8, 8], body
    assert tune["check"]["parses"]


def test_a_redrawn_bar_is_shown_then_replaced():
    """The stream of a model that loses count: a `redraw` event shows the rejected bar, the next
    `bar` event of that tune has the same number of bars before it, with the bar drawn again."""
    from plugins.music_lstm.bars import BarGuard
    from test_music_bars import VOCAB, _run

    heard = []
    guard = BarGuard(VOCAB.tokens, retries=20, budget=4.0, listener=lambda *e: heard.append(e))
    _run(guard, n=1)
    redraws = [i for i, (kind, *_) in enumerate(heard) if kind == "redraw"]
    assert redraws
    for i in redraws:
        _, _, rejected, kept_before = heard[i]
        following = next(e for e in heard[i + 1:] if e[0] == "bar")
        assert following[3] == kept_before + 1  # the replacement is the bar that was rejected
        assert following[2] != rejected and following[2].count("|") == rejected.count("|")


# ---- the serve mode: a real server ------------------------------------------------------------------

def start_serve(outputs: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "framework", "task=music", "serve", "serve.port=0", *args],
        cwd=REPO, env=cli_env(outputs, **(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline, url = time.time() + 120, None
    proc.banner = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        proc.banner.append(line)
        m = re.match(r"studio:\s+(http://\S+)/", line)
        url = m.group(1) if m else url
        if line.startswith("running"):
            return proc, url
    raise AssertionError(f"the studio did not start: {proc.stderr.read()[-2000:]}")


def stop(proc: subprocess.Popen) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return out, err


def get(url: str, token: str | None = None, data: bytes | None = None):
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.slow
def test_serve_runs_until_sigterm_with_offline_docs(toy_checkpoint, tmp_path):
    proc, url = start_serve(tmp_path / "out", f"ckpt_path={toy_checkpoint}")
    try:
        assert url.startswith("http://127.0.0.1:")  # loopback by default
        status, page = get(url + "/")
        assert status == 200 and b"abcjs-basic-min.js" in page
        status, docs = get(url + "/docs")
        assert status == 200 and b"/docs-assets/swagger-ui-bundle.js" in docs
        assert not re.search(rb"https?://", docs.replace(b"http://www.w3.org", b""))  # no CDN, no external favicon
        assert get(url + "/docs-assets/swagger-ui-bundle.js")[0] == 200
        assert json.loads(get(url + "/openapi.json")[1])["paths"]["/api/tunes/stream"]
        status, body = get(url + "/api/tunes", data=json.dumps({"region": "irish", "seed": 1}).encode())
        assert status == 200 and json.loads(body)["tunes"][0]["check"]["parses"]
    finally:
        out, err = stop(proc)
    assert proc.returncode == 0, err[-2000:]
    metrics = last_json_line(out)
    assert metrics["stopped_by"] == "SIGTERM" and metrics["tunes"] == 1
    assert json.loads(Path(metrics["gallery"]).read_text())["tunes"][0]["label"] == "irish"


@pytest.mark.slow
def test_off_loopback_needs_a_token_and_refuses_requests_without_it(toy_checkpoint, tmp_path, run_cli):
    refused = run_cli("task=music", "serve", "serve.host=0.0.0.0", f"ckpt_path={toy_checkpoint}", check=False, timeout=120)
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "not a loopback address" in lines[0] and "MUSIC_STUDIO_TOKEN" in lines[0]

    token = "t" * 24
    proc, url = start_serve(tmp_path / "out", "serve.host=0.0.0.0", f"ckpt_path={toy_checkpoint}",
                            env={"MUSIC_STUDIO_TOKEN": token})
    try:
        local = url.replace("0.0.0.0", "127.0.0.1")
        assert json.loads(get(local + "/api/model")[1])["token_required"] is True
        settings = json.dumps({"region": "german", "seed": 2}).encode()
        assert get(local + "/api/tunes", data=settings)[0] == 401
        assert get(local + "/api/tunes/stream?region=german")[0] == 401
        assert get(local + "/api/tunes", token="wrong" * 5, data=settings)[0] == 401
        assert get(local + "/api/tunes", token=token, data=settings)[0] == 200
    finally:
        stop(proc)


@pytest.mark.slow
def test_serve_without_a_model_says_how_to_train_one(tmp_path):
    proc, url = start_serve(tmp_path / "empty")
    try:
        info = json.loads(get(url + "/api/model")[1])
        assert info["ready"] is False and info["train"] == "python -m framework task=music train"
        status, body = get(url + "/api/tunes", data=b"{}")
        assert status == 503 and b"no trained music model" in body
    finally:
        stop(proc)
    assert "no model yet: no trained music model" in "".join(proc.banner)


# ---- the page, in Debian's chromium ---------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (scripts/install-system-deps.sh)")
def test_page_streams_a_tune_onto_the_staff_and_plays_it(toy_checkpoint, tmp_path):
    from playwright.sync_api import sync_playwright

    proc, url = start_serve(tmp_path / "out", f"ckpt_path={toy_checkpoint}", "serve.render=[abc,mid,svg,ogg]")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run"])
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_function("document.querySelectorAll('#region option').length > 2")
            page.select_option("#region", "irish")
            page.fill("input[name=bars]", "16")
            page.fill("input[name=form]", "AABB")
            page.fill("input[name=seed]", "5")
            page.click("#generate")
            page.wait_for_selector(".tune .score svg")
            page.wait_for_selector(".tune audio" if AUDIO else ".tune .actions a", timeout=60_000)
            log = page.evaluate("window.studioLog")
            drawn = [entry for entry in log if entry["event"] == "bar"]
            assert len(drawn) >= 16  # the staff was drawn again as each bar arrived ...
            assert 0 < drawn[0]["notes"] < drawn[-1]["notes"]  # ... and grew
            assert log[-1]["event"] == "tune" and log[-1]["bars"] == 16
            if AUDIO:
                page.wait_for_function("document.querySelector('.tune audio').readyState >= 1", timeout=30_000)
                assert page.evaluate("document.querySelector('.tune audio').duration") > 1
                assert page.evaluate("document.querySelector('.tune audio').src").endswith(".ogg")
            assert "16 bars" in page.inner_text(".tune .meta")
            page.screenshot(path=str(tmp_path / "studio.png"), full_page=True)
            assert (tmp_path / "studio.png").stat().st_size > 10_000
            # the gallery survives a reload
            page.reload()
            page.wait_for_selector(".tune .score svg")
            assert page.locator(".tune").count() == 1
            assert not errors, errors
            browser.close()
    finally:
        stop(proc)
