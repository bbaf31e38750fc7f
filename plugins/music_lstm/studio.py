"""``python -m framework task=music serve``: the studio, a page that writes tunes while you watch.

    python -m framework task=music serve                       # http://127.0.0.1:8090/
    python -m framework task=music serve serve.port=0 ckpt_path=...

The page (``static/studio.html``) and scripts use one API (OpenAPI at /docs):

- ``GET /api/model``: labels, size and checkpoint of the model;
- ``POST /api/tunes``: settings in (JSON, the generate section's names), tunes out (ABC, checks,
  file URLs);
- ``GET /api/tunes/stream?region=irish&bars=16&seed=3``: the same as server-sent events, one
  ``bar`` event per bar as the decoder keeps it (``redraw`` when bar-aware decoding draws one again,
  ``restart`` when a tune starts over), ``written`` when a tune's text is done, ``tune`` with its
  files, then ``done``;
- ``GET /api/tunes/{id}/{file}``, ``GET /api/gallery`` (this session's tunes, kept in the run
  directory's index.json), ``POST /api/prompt`` (an uploaded .abc file as a prompt).

Decoding is the generate mode's (:func:`plugins.music_lstm.generate.write_tunes` with the generate
section's :class:`~plugins.music_lstm.generate.GenerationSettings`, a request's in place of some;
bar-aware, with ``bars``/``form``); one request decodes at a time, on ``torch_threads.serve`` threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, Field

from framework import UserError, runs, serving
from plugins.music_lstm import abc, abc_check, render

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
TOKEN_HOW = "set MUSIC_STUDIO_TOKEN (or serve.token)"
TRAIN_HINT = "python -m framework task=music train"


class TuneSettings(BaseModel):
    """What to write: the generate section's names, plus header fields for the page's controls."""

    region: str | None = Field(None, description="style/region label (one of GET /api/model's labels); none: each in turn")
    num_tunes: int = Field(1, ge=1, description="how many tunes (at most serve.max_tunes)")
    length: int = Field(600, ge=1, description="maximum characters a tune writes after its prompt (at most serve.max_length)")
    bars: int | None = Field(None, ge=1, le=256, description="written bars (repeats not expanded, pickup not counted)")
    form: str | None = Field(None, max_length=16, description="sections, e.g. AABB, ABAB, AB")
    temperature: float = Field(1.0, ge=0.0, le=5.0, description="0: greedy")
    top_k: int = Field(0, ge=0, description="0: off")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling; 1: off")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="same seed, same tunes; none: a new one")
    prompt: str = Field("", description="ABC every tune starts with (header fields and/or opening notes)")
    key: str | None = Field(None, max_length=20, description="K: field, e.g. G, Dm, Ador (prepended to the prompt)")
    metre: str | None = Field(None, max_length=10, description="M: field, e.g. 6/8")
    unit: str | None = Field(None, max_length=6, description="L: field, e.g. 1/8")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Studio:
    """The model, the session's gallery and the settings shared by every request."""

    def __init__(self, cfg: DictConfig, model, checkpoint: Path | None, out_dir: Path, missing: str | None = None):
        from plugins.music_lstm.decoding import StepModel
        from plugins.music_lstm.generate import GenerationSettings

        self.cfg, self.model, self.checkpoint, self.missing = cfg, model, checkpoint, missing
        self.serve = cfg.serve
        # A request sets sampling, length, shape and prompt; one draw per tune (the page shows it as
        # it is written), the files are serve.render's.
        self.settings = GenerationSettings.from_config(cfg.generate, candidates=1, render=list(cfg.serve.render))
        self.out_dir = Path(out_dir)
        self.tunes_dir = self.out_dir / "tunes"
        self.tunes_dir.mkdir(parents=True, exist_ok=True)
        self.step_model = StepModel(model, quantize=self.settings.quantize) if model is not None else None
        self.lock = threading.Lock()  # one decoding at a time: a small LSTM step is latency-bound
        self.gallery: list[dict] = []
        self.index_path = self.out_dir / "index.json"
        self.header_defaults = self.settings.header_defaults
        self.svg = render.SvgRenderer()

    # ---- settings -> a job ----------------------------------------------------------------------
    def model_info(self) -> dict:
        if self.model is None:
            return {"ready": False, "message": self.missing, "train": TRAIN_HINT}
        vocab = self.model.vocabulary
        return {
            "ready": True, "labels": vocab.labels, "checkpoint": str(self.checkpoint),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "layers": len(self.model.lstms), "hidden_size": self.model.lstms[0].hidden_size,
            "vocabulary": len(vocab), "token_required": bool(getattr(self, "token", None)),
            "limits": {"num_tunes": int(self.serve.max_tunes), "length": int(self.serve.max_length),
                       "prompt_chars": int(self.serve.max_prompt_chars)},
            "defaults": {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
                         for k, v in self.cfg.generate.items() if k in TuneSettings.model_fields},
        }

    def job(self, s: TuneSettings) -> dict:
        """Check the settings against the model and the limits; ApiError (4xx) names what is wrong."""
        from plugins.music_lstm.decoding import Sampling
        from plugins.music_lstm.generate import normalise_prompt, requested_labels, tune_form

        if self.model is None:
            raise ApiError(503, f"{self.missing}")
        if s.num_tunes > int(self.serve.max_tunes):
            raise ApiError(422, f"num_tunes={s.num_tunes} is over the limit of {self.serve.max_tunes} (serve.max_tunes)")
        if s.length > int(self.serve.max_length):
            raise ApiError(422, f"length={s.length} is over the limit of {self.serve.max_length} (serve.max_length)")
        if len(s.prompt) > int(self.serve.max_prompt_chars):
            raise ApiError(422, f"the prompt has {len(s.prompt)} characters; the model's limit is "
                                f"{self.serve.max_prompt_chars} (serve.max_prompt_chars)")
        try:
            labels = requested_labels(s.region, self.model.vocabulary.labels, s.num_tunes)
            form = tune_form(s.form, s.bars)
        except UserError as e:
            raise ApiError(422, str(e)) from None
        prompt = normalise_prompt(header_prompt(s) + s.prompt)
        missing = self.model.vocabulary.missing(prompt)
        if missing:
            raise ApiError(422, f"the prompt has characters the model does not know: {''.join(sorted(missing))!r}")
        seed = s.seed if s.seed is not None else random.randrange(2**31)
        generation = self.settings.replace(
            num_tunes=s.num_tunes, length=s.length, form=form, prompt=prompt,
            sampling=Sampling(temperature=float(s.temperature), top_k=int(s.top_k), top_p=float(s.top_p)),
        )
        return {"labels": labels, "generation": generation, "seed": seed, "settings": s.model_dump() | {"seed": seed}}

    # ---- writing ----------------------------------------------------------------------------------
    def write(self, job: dict, listener=None, on_written=None) -> list[dict]:
        """Decode, check, render and keep the tunes of one job; ``listener`` hears every bar."""
        from plugins.music_lstm.generate import write_tunes

        settings, s = job["generation"], job["settings"]
        with self.lock:
            guard = settings.guard(self.model, listener=listener)
            start = time.perf_counter()
            results, _, _ = write_tunes(self.model, job["labels"], settings, job["seed"], step_model=self.step_model, guard=guard)
            seconds = time.perf_counter() - start
            first = len(self.gallery) + 1
            tunes = []
            for offset, r in enumerate(results):
                tune_id = f"{first + offset:04d}"
                tunes.append({
                    "id": tune_id, "name": f"tune_{tune_id}_{r.label}", "title": f"{r.label} {tune_id}",
                    "label": r.label, "abc": retitle(r.abc, int(tune_id), f"{r.label} {tune_id}"),
                    "bars": r.bars, "ended": r.ended, "repairs": r.repairs, "check": r.check.to_dict(),
                    "settings": s, "seconds": round(seconds, 3), "created": time.time(),
                })
            if on_written is not None:
                for i, tune in enumerate(tunes):
                    on_written(i, tune)
            index = render.render_tunes(
                tunes, self.tunes_dir, formats=list(settings.render), soundfont=settings.soundfont,
                sample_rate=settings.sample_rate, write_index=False, svg=self.svg,
            )
            kept = []
            for tune, entry in zip(tunes, index["tunes"]):
                entry = {**entry, "abc": tune["abc"],
                         "urls": {fmt: f"/api/tunes/{tune['id']}/{name}" for fmt, name in entry["files"].items()}}
                kept.append(entry)
            self.gallery.extend(kept)
            self._save_gallery()
        return kept

    def _save_gallery(self) -> None:
        tmp = self.index_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"tunes": self.gallery, "audio": render.audio_tools(self.settings.soundfont)[2]
                                   or "fluidsynth"}, indent=1))
        tmp.replace(self.index_path)

    def file(self, tune_id: str, name: str) -> Path:
        entry = next((t for t in self.gallery if t["id"] == tune_id), None)
        if entry is None:
            raise ApiError(404, f"no tune {tune_id!r} in this session")
        files = entry["files"]
        name = files.get(name, name)  # a format ("abc") or a file name
        if name not in files.values():
            raise ApiError(404, f"tune {tune_id} has no file {name!r}; it has {', '.join(files.values())}")
        return self.tunes_dir / name

    def close(self) -> None:
        self.svg.close()


def header_prompt(s: TuneSettings) -> str:
    """The page's key/metre/unit controls as header lines before the prompt (K: last, as the corpus writes it)."""
    checks = {"M": (s.metre, abc_check._METRE), "L": (s.unit, abc_check._UNIT), "K": (s.key, abc_check._KEY)}
    lines = []
    for name, (value, pattern) in checks.items():
        if value:
            if not pattern.match(value) or "\n" in value:
                raise ApiError(422, f"{ {'M': 'metre', 'L': 'unit', 'K': 'key'}[name]}={value!r} is not a valid {name}: value")
            lines.append(f"{name}:{value.strip()}")
    return "\n".join(lines) + "\n" if lines else ""


def retitle(text: str, index: int, title: str) -> str:
    lines = text.split("\n")
    return "\n".join([f"X:{index}", f"T:{title}", *lines[2:]])


def prompt_from_upload(data: bytes, filename: str) -> str:
    """An uploaded .abc file as a prompt: its first tune, cleaned as the training data is."""
    suffix = Path(filename or "").suffix.lower()
    if data[:4] == b"MThd" or suffix in (".mid", ".midi", ".xml", ".musicxml", ".mxl"):
        raise ApiError(415, "MIDI and MusicXML uploads are not supported (no ABC converter is installed): upload an .abc file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(422, "the upload is not UTF-8 text: upload an .abc file") from None
    tunes = abc.split_tunes(text) or ([text] if text.strip() else [])  # a file without X: is one tune
    reason = "empty"
    for tune in tunes:
        try:
            return abc.clean_tune(tune, max_chars=None)
        except abc.SkipTune as e:
            reason = e.reason
    raise ApiError(422, f"no usable ABC tune in the upload ({reason})")


# ---- the app ------------------------------------------------------------------------------------
def create_app(studio: Studio, token: str | None = None):
    app = serving.new_app("Music studio", "Tunes in ABC notation from a character-level LSTM, written while you watch.",
                          token=token)
    studio.token = token
    app.state.studio = studio
    guarded = [Depends(serving.require_bearer(TOKEN_HOW))]
    api = APIRouter(prefix="/api", tags=["tunes"])

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @api.get("/model", summary="The model: labels, size, checkpoint, the API's limits and defaults")
    def get_model() -> dict:
        return studio.model_info()

    @api.post("/tunes", dependencies=guarded, summary="Write tunes; answers when they are checked and rendered")
    def post_tunes(settings: TuneSettings) -> dict:
        return {"tunes": studio.write(studio.job(settings))}

    @api.get("/tunes/stream", dependencies=guarded,
             summary="Write tunes as server-sent events: bar, redraw, restart, written, tune, done (or error)")
    async def stream(settings: Annotated[TuneSettings, Query()]) -> StreamingResponse:
        job = studio.job(settings)  # bad settings are a 4xx before the stream starts
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        labels = job["labels"]

        def put(event: str, data: dict | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (event, data))

        def listener(event: str, tune: int, text: str, bars: int) -> None:
            data = {"tune": tune, "label": labels[tune], "bars": bars}
            if text:
                data["abc"] = abc_check.fix_header(text, tune + 1, f"{labels[tune]} (writing)", studio.header_defaults)[0]
            put(event, data)

        def work() -> None:
            try:
                tunes = studio.write(job, listener, on_written=lambda i, t: put("written", {"tune": i, **t}))
                for i, tune in enumerate(tunes):
                    put("tune", {"tune": i, **tune})
                put("done", {"tunes": len(tunes), "seed": job["seed"]})
            except Exception as e:  # the stream ends with the reason instead of hanging
                log.exception("studio: writing failed")
                put("error", {"detail": f"{type(e).__name__}: {e}"})
            finally:
                put("", None)

        threading.Thread(target=work, name="studio-write", daemon=True).start()

        async def events():
            while True:
                event, data = await queue.get()
                if data is None:
                    return
                yield f"event: {event}\ndata: {json.dumps(data)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    @api.get("/tunes/{tune_id}/{file}", summary="A tune's file: a format (abc, mid, musicxml, svg, ogg, ...) or its file name")
    def get_file(tune_id: str, file: str) -> FileResponse:
        path = studio.file(tune_id, file)
        return FileResponse(path, filename=path.name)

    @api.get("/gallery", summary="This session's tunes, newest last (the run directory's index.json)")
    def get_gallery() -> dict:
        return {"tunes": studio.gallery}

    @api.post("/prompt", dependencies=guarded, summary="An uploaded .abc file (the request body) as a prompt")
    async def post_prompt(request: Request, filename: str = Query("", max_length=200)) -> dict:
        data = await request.body()
        if len(data) > 1_000_000:
            raise HTTPException(413, "the upload is over 1 MB")
        prompt = prompt_from_upload(data, filename)
        limit = int(studio.serve.max_prompt_chars)
        if len(prompt) > limit:
            raise ApiError(422, f"the tune has {len(prompt)} characters; the model's limit for a prompt is {limit}")
        return {"prompt": prompt}

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "studio.html", headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# ---- the mode -----------------------------------------------------------------------------------
def run(cfg: DictConfig) -> dict:
    from plugins.music_lstm.generate import load_model

    sc = cfg.serve
    host = str(sc.host)
    token = serving.check_token(host, sc.get("token"), TOKEN_HOW)
    model = path = missing = None
    try:
        model, path = load_model(cfg)
    except UserError as e:
        if cfg.get("ckpt_path"):
            raise  # a checkpoint that was asked for and cannot be read is the user's to fix
        missing = str(e)
    out_dir = runs.run_dir()
    studio = Studio(cfg, model, path, out_dir, missing)
    app = create_app(studio, token)
    sock = serving.bind(host, int(sc.port))
    try:
        with serving.Server(app, sock) as server:
            print(f"studio:    {server.url}/", flush=True)
            print(f"API docs:  {server.url}/docs", flush=True)
            if model is None:
                print(f"no model yet: {missing}", flush=True)
            else:
                print(f"model:     {path} ({', '.join(model.vocabulary.labels)})", flush=True)
            print(f"gallery:   {studio.index_path}", flush=True)
            print("running" + (f" for {float(sc.duration):g} s" if sc.get("duration") else "")
                  + "; Ctrl-C or SIGTERM stops it", flush=True)
            server.wait(sc.get("duration"))
    finally:
        studio.close()
    print(f"stopped ({server.stopped_by}): {len(studio.gallery)} tunes in {studio.index_path}", flush=True)
    return {"tunes": len(studio.gallery), "stopped_by": server.stopped_by, "url": server.url,
            "gallery": str(studio.index_path), "checkpoint": str(path) if path else None}
