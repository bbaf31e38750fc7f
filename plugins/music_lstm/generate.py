"""``python -m framework task=music generate``: write tunes, check them, render them.

    generate.region=irish generate.num_tunes=8 generate.length=600 generate.temperature=0.9
    generate.top_k=0 generate.top_p=0.95 generate.prompt='M:6/8\\nK:Dm\\n' seed=1 ckpt_path=...

All tunes are sampled in one batch by stateful decoding (:mod:`plugins.music_lstm.decoding`),
then each gets a proper header, a light repair and a music21 check (:mod:`.abc_check`), and its
files (:mod:`.render`). With no label, the tunes cycle through every label the model knows.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from framework import UserError, checkpoints, runs
from plugins.music_lstm import abc_check, render
from plugins.music_lstm.abc import label_slug
from plugins.music_lstm.bars import BarGuard, Form, count_bars
from plugins.music_lstm.decoding import Generated, Sampling, StepModel, generate
from plugins.music_lstm.model import MusicLSTM

log = logging.getLogger(__name__)


def load_model(cfg: DictConfig) -> tuple[MusicLSTM, Path]:
    """The model named by ``ckpt_path`` or the latest successful train run, in eval mode on CPU."""
    path = runs.resolve_checkpoint(cfg)
    ckpt = checkpoints.load(path)
    try:
        model = MusicLSTM(**ckpt["hyper_parameters"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise UserError(f"{path} is not a music model checkpoint: {str(e).splitlines()[0]}") from e
    return model.eval(), path


def requested_labels(asked: str | None, known: list[str], num_tunes: int) -> list[str]:
    """The label of every tune: the one asked for, else each known label in turn. An unknown label
    is a one-line error listing the known ones."""
    if asked is None or str(asked) == "":
        if not known:
            raise UserError("the model has no labels")
        return [known[i % len(known)] for i in range(num_tunes)]
    asked = str(asked)
    if asked not in known:
        # Accept the label as the data names it ("Liyue", "Old Time" for "liyue", "old_time").
        folded = {label_slug(k): k for k in known}
        if label_slug(asked) not in folded:
            raise UserError(f"unknown label {asked!r}; the model knows: {', '.join(known)}")
        asked = folded[label_slug(asked)]
    return [asked] * num_tunes


CHARS_PER_BAR = 40  # room a requested bar gets in the length limit (the corpus averages about 12)


def tune_form(form: str | None, bars: int | None) -> Form | None:
    """The shape ``bars``/``form`` ask for (None: the model chooses)."""
    try:
        return Form.parse(form, None if bars is None else int(bars))
    except ValueError as e:
        raise UserError(str(e)) from None


def length_for(length: int, form: Form | None) -> int:
    """The length limit, raised so that a requested number of bars fits in it."""
    return length if form is None else max(length, CHARS_PER_BAR * form.bars + 100)


def normalise_prompt(prompt: str | None) -> str:
    """The prompt as the model saw its training text: newline-separated lines, no blank lines."""
    if not prompt:
        return ""
    text = str(prompt).replace("\\n", "\n").replace("\r\n", "\n")
    lines = [line.strip() for line in text.split("\n")]
    out = "\n".join(line for line in lines if line)
    # A prompt that ends with a complete line continues on a new line.
    return out + "\n" if text.rstrip(" ").endswith("\n") else out


@dataclass(frozen=True)
class GenerationSettings:
    """How tunes are written: the ``generate:`` config section (:meth:`from_config`), checked once.

    Generate mode writes with it; evaluate with its own ``num_tunes`` and the model's own tune
    shapes; the studio with each request's sampling, length, shape and prompt (:meth:`replace`).
    """

    num_tunes: int = 8
    length: int = 600  # characters a tune writes after its prompt (raised to fit a requested form)
    sampling: Sampling = field(default_factory=Sampling)
    prompt: str = ""  # as normalise_prompt() leaves it
    region: str | None = None  # the label of every tune; None: each label the model knows in turn
    quantize: bool = False  # dynamic int8 matmuls (CPU)
    candidates: int = 1  # draws per tune, the best one kept
    form: Form | None = None  # the tune's shape (bars.Form); None: the model chooses
    min_bars: int = 0  # a tune that ends with fewer written bars is drawn again (0: off)
    bar_guard: dict = field(default_factory=dict)  # enabled, retries, restarts, budget (bars.BarGuard)
    repair: tuple[str, ...] = abc_check.REPAIRS
    header_defaults: dict | None = None  # for a header field the model left out or garbled
    render: tuple[str, ...] = ()  # files per tune (render.FORMATS)
    soundfont: str | None = None
    sample_rate: int = 22050

    def __post_init__(self):
        if self.num_tunes < 1 or self.length < 1:
            raise UserError(f"generate.num_tunes and generate.length must be >= 1, got {self.num_tunes} and {self.length}")
        if self.candidates < 1:
            raise UserError(f"candidates must be >= 1, got {self.candidates}")
        unknown = set(self.render) - set(render.FORMATS)
        if unknown:
            raise UserError(f"unknown generate.render format(s) {sorted(unknown)}; known: {', '.join(render.FORMATS)}")
        unknown = set(self.repair) - set(abc_check.REPAIRS)
        if unknown:
            raise UserError(f"unknown generate.repair {sorted(unknown)}; known: {', '.join(abc_check.REPAIRS)}")

    @classmethod
    def from_config(cls, section, **changes) -> "GenerationSettings":
        """From a ``generate:`` section; ``changes`` are config values in place of the section's own."""
        g = OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else dict(section)
        g |= changes
        try:
            sampling = Sampling(temperature=float(g.get("temperature", 1.0)), top_k=int(g.get("top_k") or 0),
                                top_p=float(g.get("top_p") or 1.0))
        except ValueError as e:
            raise UserError(str(e)) from None
        return cls(
            num_tunes=int(g.get("num_tunes", 8)),
            length=int(g.get("length", 600)),
            sampling=sampling,
            prompt=normalise_prompt(g.get("prompt")),
            region=g.get("region") or g.get("label"),
            quantize=bool(g.get("quantize")),
            candidates=int(g.get("candidates") or 1),
            form=tune_form(g.get("form"), g.get("bars")),
            min_bars=int(g.get("min_bars") or 0),
            bar_guard=dict(g.get("bar_guard") or {}),
            repair=tuple(g.get("repair") or ()),
            header_defaults=dict(g["header_defaults"]) if g.get("header_defaults") else None,
            render=tuple(g.get("render") or ()),
            soundfont=g.get("soundfont"),
            sample_rate=int(g.get("sample_rate", 22050)),
        )

    def replace(self, **changes) -> "GenerationSettings":
        return dataclasses.replace(self, **changes)

    @property
    def max_length(self) -> int:
        return length_for(self.length, self.form)

    @property
    def guarded(self) -> bool:
        """Whether decoding is bar-aware: bars of the wrong length redrawn, a shape, a minimum of bars."""
        return bool(self.bar_guard.get("enabled", False)) or self.form is not None or self.min_bars > 0

    def guard(self, model: MusicLSTM, listener=None) -> BarGuard | None:
        """The decoder's referee (None when nothing asks for one): ``bar_guard`` redraws bars of the
        wrong length, ``form`` gives the tune its shape, ``min_bars`` redraws a tune that ends too soon."""
        if not self.guarded and listener is None:
            return None
        try:
            return BarGuard(
                model.vocabulary.tokens,
                retries=int(self.bar_guard.get("retries", 4)),
                restarts=int(self.bar_guard.get("restarts", 2)),
                budget=float(self.bar_guard.get("budget", 2.0)),
                header_defaults=self.header_defaults,
                judge=bool(self.bar_guard.get("enabled", False)),
                form=self.form,
                min_bars=self.min_bars,
                listener=listener,
            )
        except ValueError as e:
            raise UserError(f"bar_guard: {e}") from None


@dataclass
class TuneResult:
    index: int
    label: str
    title: str
    raw: str  # prompt + what the model wrote, before any fixing
    abc: str  # with header, repaired
    ended: bool
    header_fixes: list[str]
    repairs: list[str]
    check: abc_check.Check
    bars: int = 0  # written bars (bars.count_bars)


def sample_tunes(
    model: MusicLSTM,
    labels: list[str],
    prompt: str,
    length: int,
    sampling: Sampling,
    seed: int,
    quantize: bool = False,
    step_model: StepModel | None = None,
    guard: BarGuard | None = None,
) -> tuple[list[str], Generated]:
    """Texts (prompt + continuation) for one tune per entry of ``labels``, in one batch."""
    vocab = model.vocabulary
    missing = vocab.missing(prompt)
    if missing:
        raise UserError(f"prompt has characters the model does not know: {''.join(sorted(missing))!r}")
    step_model = step_model or StepModel(model, quantize=quantize)
    prompt_ids = vocab.encode(prompt)
    prefixes = [vocab.prefix(label) + prompt_ids for label in labels]
    rows = [vocab.label_index(label) for label in labels]
    out = generate(step_model, prefixes, rows, max_new=length, eos_id=vocab.eos_id, sampling=sampling, seed=seed, guard=guard)
    texts = [prompt + vocab.decode(ids) for ids in out.tokens]
    return texts, out


def finish_tunes(
    texts: list[str],
    labels: list[str],
    ended: list[bool],
    fixes=abc_check.REPAIRS,
    header_defaults: dict | None = None,
) -> list[TuneResult]:
    """Header, light repair, music21 check for each generated text."""
    results = []
    counters: dict[str, int] = {}
    for i, (text, label, end) in enumerate(zip(texts, labels, ended), start=1):
        counters[label] = counters.get(label, 0) + 1
        title = f"{label} {counters[label]}"
        repaired, repairs = abc_check.repair(text, truncated=not end, fixes=fixes)
        abc, header_fixes = abc_check.fix_header(repaired, index=i, title=title, defaults=header_defaults)
        results.append(TuneResult(i, label, title, text, abc, end, header_fixes, repairs, abc_check.check(abc), count_bars(abc)))
    return results


def _quality(r: TuneResult) -> tuple:
    return (r.check.parses, r.check.bars_consistent, -len(r.check.bad_bars), r.ended, r.check.measures)


def best_of(results: list[TuneResult], candidates: int) -> list[TuneResult]:
    """Keep the best of each run of ``candidates`` consecutive results (one tune's candidates):
    parses, then bars consistent, then fewest bad bars, then ended by itself, then more bars.
    The kept tunes are numbered again (X: and T:)."""
    if candidates <= 1:
        return results
    kept, counters = [], {}
    for start in range(0, len(results), candidates):
        group = results[start : start + candidates]
        best = max(group, key=_quality)  # max keeps the first of equals: no bias to later draws
        index = len(kept) + 1
        counters[best.label] = counters.get(best.label, 0) + 1
        title = f"{best.label} {counters[best.label]}"
        lines = best.abc.split("\n")
        abc = "\n".join([f"X:{index}", f"T:{title}", *lines[2:]])
        kept.append(dataclasses.replace(best, index=index, title=title, abc=abc))
    return kept


def write_tunes(
    model: MusicLSTM,
    labels: list[str],
    settings: GenerationSettings,
    seed: int,
    step_model: StepModel | None = None,
    guard: BarGuard | None = None,
) -> tuple[list[TuneResult], list[TuneResult], Generated]:
    """Sample, fix, check, and keep the best of ``settings.candidates`` per tune (all in one batch).

    Returns (kept tunes, every candidate, the decoding record)."""
    expanded = [label for label in labels for _ in range(settings.candidates)]
    texts, out = sample_tunes(
        model, expanded, settings.prompt, settings.max_length, settings.sampling, seed,
        quantize=settings.quantize, step_model=step_model, guard=guard,
    )
    everything = finish_tunes(texts, expanded, out.ended, fixes=settings.repair, header_defaults=settings.header_defaults)
    return best_of(everything, settings.candidates), everything, out


def bar_distribution(counts: list[int], short: int = 8) -> dict:
    """Median, quartiles and the share under ``short`` written bars."""
    if not counts:
        return {"median": None, "q1": None, "q3": None, "under_8": None}
    import numpy as np

    q1, median, q3 = (float(x) for x in np.percentile(counts, [25, 50, 75]))
    return {"median": median, "q1": q1, "q3": q3, f"under_{short}": sum(c < short for c in counts) / len(counts)}


def summarise(results: list[TuneResult]) -> dict:
    n = max(1, len(results))
    bars = bar_distribution([r.bars for r in results])
    return {
        "tunes": len(results),
        "bars_median": bars["median"],
        "bars_under_8_share": bars["under_8"],
        "parse_share": sum(r.check.parses for r in results) / n,
        "bars_consistent_share": sum(r.check.bars_consistent for r in results) / n,
        "repaired_share": sum(bool(r.repairs) for r in results) / n,
        "header_fixed_share": sum(bool(r.header_fixes) for r in results) / n,
        "ended_share": sum(r.ended for r in results) / n,
    }


def table(rows: list[list], header: list[str]) -> str:
    """A plain text table for the log."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict:
    settings = GenerationSettings.from_config(cfg.generate)
    model, path = load_model(cfg)
    labels = requested_labels(settings.region, model.vocabulary.labels, settings.num_tunes)
    log.info("model %s: %s, labels %s", path, model.vocabulary, ", ".join(model.vocabulary.labels))
    guard = settings.guard(model)
    results, every, out = write_tunes(model, labels, settings, int(cfg.seed), guard=guard)
    chars_per_s = out.num_chars / max(out.seconds, 1e-9)
    log.info(
        "generated %d tunes, %d characters in %.3f s (%.0f chars/s, %s)",
        len(every), out.num_chars, out.seconds, chars_per_s, "int8" if settings.quantize else "float32",
    )
    if guard is not None:
        log.info(guard.describe())

    out_dir = runs.run_dir()
    tunes = [
        {
            "name": f"tune_{r.index:03d}_{r.label}",
            "title": r.title,
            "label": r.label,
            "abc": r.abc,
            "chars": len(r.raw) - len(settings.prompt),
            "bars": r.bars,
            "ended": r.ended,
            "header_fixes": r.header_fixes,
            "repairs": r.repairs,
            "check": r.check.to_dict(),
        }
        for r in results
    ]
    start = time.perf_counter()
    formats = list(settings.render)
    index = render.render_tunes(tunes, out_dir, formats=formats, soundfont=settings.soundfont, sample_rate=settings.sample_rate)
    render_s = time.perf_counter() - start
    if set(formats) & set(render.AUDIO) and index["audio"].startswith("no audio"):
        log.info(index["audio"])

    rows = []
    for r, entry in zip(results, index["tunes"]):
        rows.append([
            entry["name"], entry["chars"], r.bars, "yes" if r.ended else "limit",
            "yes" if r.check.parses else "NO", "yes" if r.check.bars_consistent else "no",
            ",".join(r.repairs) or "-", ",".join(entry["files"]) or "-", ",".join(entry["errors"]) or "-",
        ])
    log.info("\n%s", table(rows, ["tune", "chars", "bars", "ended", "parses", "bars ok", "repairs", "files", "failed"]))
    summary = summarise(results)
    if settings.candidates > 1:
        raw = summarise(every)
        summary |= {"candidates": settings.candidates, "raw_parse_share": raw["parse_share"], "raw_bars_consistent_share": raw["bars_consistent_share"]}
        log.info("best of %d candidates per tune; over all %d candidates: parse %.0f%%, bars consistent %.0f%%",
                 settings.candidates, len(every), 100 * raw["parse_share"], 100 * raw["bars_consistent_share"])
    log.info(
        "parse %.0f%%, bars consistent %.0f%%, repaired %.0f%%; files in %s (index.html)",
        100 * summary["parse_share"], 100 * summary["bars_consistent_share"], 100 * summary["repaired_share"], out_dir,
    )
    failures = sum(len(e["errors"]) for e in index["tunes"])
    return {
        **summary,
        "chars": out.num_chars,
        "generate_seconds": out.seconds,
        "chars_per_second": chars_per_s,
        "render_seconds": render_s,
        "render_failures": failures,
        "quantized": settings.quantize,
        **(guard.stats() if guard is not None else {}),
        "checkpoint": str(path),
        "index": str(Path(out_dir) / "index.html"),
    }
