"""Render generated tunes so a person can look and listen: .abc, .mid, .musicxml, .svg, .png, audio.

- MIDI and MusicXML come from music21's score of the tune;
- the staff notation (.svg) from verovio, which reads ABC itself. Verovio can crash its process on
  malformed input (a segfault, not an exception), so it runs in a child process; a crash costs that
  one tune its .svg, never the run;
- the piano roll (.png) is drawn with matplotlib from music21's notes;
- audio is FluidSynth rendering the MIDI with a General-MIDI soundfont, when both exist, into
  Ogg Vorbis (``ogg``, the default: a tenth of the WAV's size or less), FLAC (``flac``, lossless) or ``wav``.

A tune that fails one format still gets the others; every failure is recorded in index.json.
``index.html`` shows every tune's score and piano roll, with an audio player when there is audio.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

AUDIO = {"ogg": "oga", "flac": "flac", "wav": "wav"}  # format -> FluidSynth's file type (-T)
FORMATS = ("abc", "mid", "musicxml", "svg", "png", *AUDIO)
SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2", "/usr/share/soundfonts/FluidR3_GM.sf2")
ENABLE_AUDIO = "apt-get install fluidsynth fluid-soundfont-gm"


def find_soundfont(soundfont: str | None = None) -> str | None:
    if soundfont:
        return soundfont if Path(soundfont).is_file() else None
    return next((p for p in SOUNDFONTS if Path(p).is_file()), None)


def audio_tools(soundfont: str | None = None) -> tuple[str | None, str | None, str | None]:
    """(fluidsynth binary, soundfont, why audio is off or None)."""
    binary = shutil.which("fluidsynth")
    font = find_soundfont(soundfont)
    if binary and font:
        return binary, font, None
    missing = "FluidSynth" if not binary else f"a General-MIDI soundfont{f' at {soundfont}' if soundfont else ''}"
    return binary, font, f"no audio: {missing} not found; enable audio with `{ENABLE_AUDIO}`"


# ---------------------------------------------------------------------------------------------
# One format at a time


def _svg(abc: str, out: str, scale: int) -> int:
    """verovio: ABC -> one SVG file; returns the page count (one tall page by design)."""
    import verovio

    tk = verovio.toolkit()
    tk.setOptions({"inputFrom": "abc", "adjustPageHeight": True, "pageHeight": 60000, "scale": scale, "footer": "none"})
    if not tk.loadData(abc):
        raise RuntimeError("verovio could not read the ABC")
    pages = tk.getPageCount()
    if pages < 1:
        raise RuntimeError("verovio produced no page")
    Path(out).write_text(tk.renderToSVG(1), encoding="utf-8")
    return pages


def svg_worker() -> None:
    """``python -m plugins.music_lstm.render``: one JSON request per stdin line, one reply per line."""
    for line in sys.stdin:
        req = json.loads(line)
        try:
            _svg(req["abc"], req["out"], int(req.get("scale", 40)))
            reply = {"ok": True}
        except Exception as e:
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class SvgRenderer:
    """Verovio in a child process that is started again whenever it dies (it can segfault on
    malformed ABC). Requests are JSON lines over a pipe; a reply that does not come in time kills it."""

    def __init__(self, scale: int = 40, timeout: float = 60.0):
        self.scale, self.timeout = scale, timeout
        self._proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            root = str(Path(__file__).resolve().parents[2])
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "plugins.music_lstm.render"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
            )
        return self._proc

    def render(self, abc: str, out: Path) -> None:
        proc = self._start()
        try:
            proc.stdin.write(json.dumps({"abc": abc, "out": str(out), "scale": self.scale}) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            self.close()
            raise RuntimeError("the verovio worker died") from None
        ready, _, _ = select.select([proc.stdout], [], [], self.timeout)
        if not ready:
            self.close(kill=True)
            raise RuntimeError(f"verovio took more than {self.timeout:.0f} s")
        line = proc.stdout.readline()
        if not line:  # end of file: the worker died on this tune
            self.close(kill=True)
            raise RuntimeError("verovio crashed on this tune")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(reply["error"])

    def close(self, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if kill:
                proc.kill()
            else:
                proc.stdin.close()  # the worker's loop ends at end of input
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def piano_roll(score, out: Path, title: str = "") -> None:
    """Notes as horizontal bars: time in quarter notes across, MIDI pitch up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = []
    for n in score.flatten().notes:
        pitches = n.pitches if n.isChord else [n.pitch]
        for p in pitches:
            bars.append((float(n.offset), float(n.duration.quarterLength) or 0.125, p.midi))
    if not bars:
        raise ValueError("no notes to draw")
    end = max(o + d for o, d, _ in bars)
    fig, ax = plt.subplots(figsize=(min(24.0, 3 + end / 6), 3.2), dpi=80)
    for onset, dur, pitch in bars:
        ax.broken_barh([(onset, dur * 0.95)], (pitch - 0.4, 0.8), color="tab:blue")
    pitches = [p for _, _, p in bars]
    ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
    ax.set_xlim(0, end)
    ax.set_xlabel("quarter notes")
    ax.set_ylabel("MIDI pitch")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def audio(midi: Path, out: Path, binary: str, soundfont: str, sample_rate: int = 22050, timeout: float = 120.0) -> None:
    """FluidSynth renders the MIDI into ``out``; the file type follows its suffix (ogg, flac, wav)."""
    kind = AUDIO[out.suffix.lstrip(".")]
    proc = subprocess.run(
        [binary, "-ni", "-q", "-T", kind, "-F", str(out), "-r", str(sample_rate), soundfont, str(midi)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0 or not out.is_file() or out.stat().st_size <= 44:
        raise RuntimeError(f"fluidsynth failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-200:]}")


# ---------------------------------------------------------------------------------------------
# Every tune, every format


def render_tunes(
    tunes: list[dict],
    out_dir: Path,
    formats=FORMATS,
    soundfont: str | None = None,
    sample_rate: int = 22050,
    svg_scale: int = 40,
    write_index: bool = True,
    svg: "SvgRenderer | None" = None,
) -> dict:
    """Write each tune's files into ``out_dir``; returns the index (also written as index.json/html
    unless ``write_index`` is false: the studio keeps its own gallery index). ``svg``: a running
    verovio worker to reuse (one is started for this call otherwise).

    ``tunes`` are dicts with at least ``name`` (file stem), ``abc`` (text) and ``title``; any other
    keys (label, checks, ...) are copied into the index. Failures are recorded per tune and format.
    """
    from plugins.music_lstm.abc_check import parse

    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown render format {sorted(unknown)}; known: {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    binary, font, audio_off = audio_tools(soundfont)
    audio_formats = [f for f in formats if f in AUDIO]
    if audio_formats and audio_off:
        log.warning(audio_off)
    entries = []
    with contextlib.nullcontext(svg) if svg is not None else SvgRenderer(scale=svg_scale) as svg:
        for tune in tunes:
            name = tune["name"]
            files: dict[str, str] = {}
            errors: dict[str, str] = {}

            def attempt(fmt: str, fn) -> None:
                if fmt not in formats:
                    return
                path = out_dir / f"{name}.{fmt}"
                try:
                    fn(path)
                    files[fmt] = path.name
                except Exception as e:  # one format failing must not stop the others
                    errors[fmt] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
                    path.unlink(missing_ok=True)

            attempt("abc", lambda p: p.write_text(tune["abc"], encoding="utf-8"))
            score = None
            if {"mid", "musicxml", "png", *AUDIO} & set(formats):
                try:
                    # as written: music21's re-barring can take minutes on a garbled tune, and hides its errors
                    score = parse(tune["abc"], rebar=False)
                except Exception as e:
                    reason = f"music21 cannot parse the tune: {type(e).__name__}"
                    for fmt in ("mid", "musicxml", "png", *AUDIO):
                        if fmt in formats:
                            errors[fmt] = reason
            if score is not None:
                attempt("mid", lambda p: score.write("midi", fp=str(p)))
                attempt("musicxml", lambda p: score.write("musicxml", fp=str(p)))
                attempt("png", lambda p: piano_roll(score, p, tune.get("title", name)))
                for fmt in audio_formats:
                    if audio_off:
                        errors[fmt] = audio_off
                    elif "mid" in files:
                        attempt(fmt, lambda p: audio(out_dir / files["mid"], p, binary, font, sample_rate))
                    else:
                        errors[fmt] = "no MIDI to render"
            attempt("svg", lambda p: svg.render(tune["abc"], p))
            entries.append({**{k: v for k, v in tune.items() if k != "abc"}, "files": files, "errors": errors})

    index = {"tunes": entries, "formats": list(formats), "audio": audio_off or f"fluidsynth with {font}"}
    if write_index:
        (out_dir / "index.json").write_text(json.dumps(index, indent=2))
        (out_dir / "index.html").write_text(index_html(index, out_dir))
    return index


def index_html(index: dict, out_dir: Path) -> str:
    """One page: every tune's staff notation (inline SVG), piano roll, audio and links."""
    rows = []
    for t in index["tunes"]:
        files = t["files"]
        parts = [f"<h2>{html.escape(str(t.get('title', t['name'])))}</h2>"]
        check = t.get("check") or {}
        if check:
            verdict = "parses" if check.get("parses") else "does not parse"
            bars = "bars consistent" if check.get("bars_consistent") else "bars inconsistent"
            fixes = ", ".join(t.get("repairs") or []) or "none"
            parts.append(f"<p class=meta>{verdict}; {bars}; repairs: {html.escape(fixes)}</p>")
        if "svg" in files:
            svg_text = (out_dir / files["svg"]).read_text(encoding="utf-8")
            parts.append(f"<div class=score>{svg_text}</div>")
        if "png" in files:
            parts.append(f'<img class=roll src="{html.escape(files["png"])}" alt="piano roll">')
        sound = next((files[f] for f in AUDIO if f in files), None)
        if sound:
            parts.append(f'<audio controls preload="none" src="{html.escape(sound)}"></audio>')
        links = " · ".join(f'<a href="{html.escape(f)}">.{k}</a>' for k, f in files.items())
        parts.append(f"<p>{links}</p>")
        if t.get("errors"):
            errs = "; ".join(f"{k}: {v}" for k, v in t["errors"].items())
            parts.append(f"<p class=err>{html.escape(errs)}</p>")
        if "abc" in files:
            abc = (out_dir / files["abc"]).read_text(encoding="utf-8")
            parts.append(f"<details><summary>ABC</summary><pre>{html.escape(abc)}</pre></details>")
        rows.append("<section>" + "\n".join(parts) + "</section>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto}section{border-bottom:1px solid #ccc;padding:1em 0}"
        ".score svg{max-width:100%;height:auto}.roll{max-width:100%}.meta{color:#555}.err{color:#a00;font-size:90%}"
    )
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>Generated tunes</title>"
        f"<style>{style}</style></head><body><h1>Generated tunes</h1>"
        f"<p>{html.escape(str(index.get('audio', '')))}</p>" + "\n".join(rows) + "</body></html>\n"
    )


if __name__ == "__main__":
    svg_worker()
