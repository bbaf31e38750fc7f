"""``python -m framework task=music evaluate``: how good is the model, in numbers.

1. Bits per character on real tunes: the test split of the data the model was trained on (its
   train run's data config) by default, or any folder of tunes with ``data=abc_dir data.path=...``;
   scored are the tune's characters and its end token, given the label.
2. ``evaluate.num_tunes`` generated tunes per label: the share that parse with music21, that have
   bars consistent with their metre, that needed a repair (the same header fix, repair and check
   as generate mode).
3. Style control: a character n-gram TF-IDF + logistic regression classifier, trained on real
   tunes of each label (the train split), scores every generated tune; reported is the share
   recognised as the label it was asked for, against chance (1 / number of labels). Its accuracy
   on the held-out real tunes says how far the classifier itself can be trusted.
4. Generation speed in characters per second.

For comparison the same music21 check runs on a sample of the real held-out tunes
(``evaluate.reference_tunes``): the corpus itself does not score 100% on bars.

Everything is printed as a table and returned as metrics (metrics.json).
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from framework import UserError, checkpoints, runs
from framework.runner import build_datamodule
from plugins.music_lstm import abc_check
from plugins.music_lstm.bars import count_bars
from plugins.music_lstm.decoding import StepModel
from plugins.music_lstm.generate import GenerationSettings, bar_distribution, load_model, summarise, table, write_tunes
from plugins.music_lstm.model import MusicLSTM

log = logging.getLogger(__name__)


@torch.inference_mode()
def bits_per_char(model: MusicLSTM, tunes, batch_size: int = 64) -> tuple[float, int, int]:
    """(bits per character, characters scored, tunes skipped for unknown characters or labels).

    Each tune is framed as in training, ``<label> <s> chars </s>``; scored are the predictions of
    the characters and ``</s>``.
    """
    vocab = model.vocabulary
    seqs, rows, skipped = [], [], 0
    for tune in tunes:
        if tune.label not in vocab.labels or vocab.missing(tune.text):
            skipped += 1
            continue
        seqs.append(vocab.encode_tune(tune.text, tune.label))
        rows.append(vocab.label_index(tune.label))
    if not seqs:
        return float("nan"), 0, skipped
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    nll, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        longest = max(len(seqs[i]) for i in idx)
        x = torch.full((len(idx), longest), vocab.pad_id, dtype=torch.long)
        for r, i in enumerate(idx):
            x[r, : len(seqs[i])] = torch.tensor(seqs[i])
        labels = torch.tensor([rows[i] for i in idx])
        logits, _ = model(x[:, :-1], labels)
        target = x[:, 1:].clone()
        target[:, 0] = vocab.pad_id  # <s> after the label token is given, not predicted
        nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=vocab.pad_id, reduction="sum"))
        count += int((target != vocab.pad_id).sum())
    return nll / count / math.log(2), count, skipped


def classifier_text(abc: str) -> str:
    """What the style classifier reads: the tune without X: and T: (T: names the label)."""
    header, body = abc_check.split_header(abc)
    kept = [f"{k}:{v}" for k, v in header if k not in ("X", "T")]
    return "\n".join(kept + ([body] if body else []))


class StyleClassifier:
    """Character n-gram TF-IDF + logistic regression (scikit-learn), balanced over labels."""

    def __init__(self, ngram_range=(1, 4), max_features: int = 100000, C: float = 10.0, seed: int = 0):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.pipeline = make_pipeline(
            TfidfVectorizer(analyzer="char", ngram_range=tuple(ngram_range), max_features=max_features, sublinear_tf=True, lowercase=False),
            LogisticRegression(C=C, max_iter=2000, class_weight="balanced", random_state=seed),
        )

    def fit(self, texts: list[str], labels: list[str]) -> "StyleClassifier":
        self.pipeline.fit([classifier_text(t) for t in texts], labels)
        self.labels_ = list(self.pipeline.classes_)
        return self

    def predict(self, texts: list[str]) -> list[str]:
        return list(self.pipeline.predict([classifier_text(t) for t in texts]))


def _cap_per_label(tunes, cap: int | None, seed: int):
    if not cap:
        return list(tunes)
    rng = random.Random(seed)
    by_label: dict[str, list] = {}
    for t in tunes:
        by_label.setdefault(t.label, []).append(t)
    out = []
    for label in sorted(by_label):
        group = by_label[label]
        out.extend(rng.sample(group, cap) if len(group) > cap else group)
    return out


def data_config(cfg: DictConfig, checkpoint: Path) -> DictConfig:
    """The data to evaluate on: the training run's own data config (so "the test split" is the
    split the model never saw, whatever ``data.max_samples`` it was trained with), unless this
    command line sets ``data`` or ``data.*`` itself."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not running under Hydra (direct calls)
        overrides = []
    if any(o.lstrip("+~").split("=")[0].split(".")[0] == "data" for o in overrides):
        return cfg.data
    run_dir = runs.run_dir_of(checkpoint)
    train_cfg = runs.saved_config(run_dir) if run_dir is not None else None
    if train_cfg is None or "data" not in train_cfg:
        return cfg.data
    train_cfg.paths = cfg.paths  # this run's outputs/cache locations
    log.info("evaluating on the data config of the training run %s (set data=... to evaluate other tunes)", run_dir)
    return train_cfg.data


def load_tunes(data_cfg: DictConfig, ckpt: dict) -> dict[str, list]:
    """The data's tunes per split, from the configured data module (same split as training)."""
    datamodule = build_datamodule(data_cfg, ckpt)
    tunes = getattr(datamodule, "tunes", None)
    if not tunes:
        raise UserError("the data module has no tunes to evaluate on")
    return tunes


# ---- the stages: each scores one thing and returns its metrics ---------------------------------


def score_bits_per_char(model: MusicLSTM, held_out: list, split: str, max_tunes: int | None, batch_size: int,
                        seed: int) -> dict:
    """1. Bits per character on (at most ``max_tunes`` of) the real held-out tunes."""
    scored = list(held_out)
    if max_tunes and len(scored) > max_tunes:
        scored = random.Random(seed).sample(scored, max_tunes)
    start = time.perf_counter()
    bpc, chars, skipped = bits_per_char(model, scored, batch_size)
    log.info("%s split: %.4f bits per character over %d characters of %d tunes (%d skipped: unknown characters/labels) in %.1f s",
             split, bpc, chars, len(scored) - skipped, skipped, time.perf_counter() - start)
    return {f"{split}/bpc": bpc, f"{split}/chars": chars, f"{split}/tunes": len(scored) - skipped, f"{split}/skipped": skipped}


def train_style_classifier(train: list, held_out: list, settings, seed: int) -> tuple[StyleClassifier | None, dict]:
    """2. The style classifier, trained on real tunes of each label, and its accuracy on held-out real
    tunes (None, no metrics: fewer than two labels to tell apart)."""
    train = _cap_per_label(train, settings.get("max_train_per_label"), seed)
    train_labels = sorted({t.label for t in train})
    if len(train_labels) < 2:
        log.warning("style control not scored: the training split has %d label(s)", len(train_labels))
        return None, {}
    start = time.perf_counter()
    classifier = StyleClassifier(list(settings.ngram_range), int(settings.max_features), float(settings.C), seed).fit(
        [t.text for t in train], [t.label for t in train]
    )
    real = [t for t in held_out if t.label in classifier.labels_]
    real_acc = sum(p == t.label for p, t in zip(classifier.predict([t.text for t in real]), real)) / max(1, len(real))
    log.info("style classifier: %d labels, trained on %d real tunes, %.1f%% accurate on %d held-out real tunes (%.1f s)",
             len(train_labels), len(train), 100 * real_acc, len(real), time.perf_counter() - start)
    return classifier, {"classifier_real_accuracy": real_acc, "classifier_labels": len(train_labels)}


def check_reference_tunes(held_out: list, count: int, seed: int) -> dict:
    """3. The music21 check on real held-out tunes: what the corpus itself scores (no metrics for 0)."""
    if count <= 0:
        return {}
    sample = random.Random(seed + 1).sample(held_out, min(len(held_out), count))
    checks = [abc_check.check(abc_check.fix_header(t.text, i, t.label)[0]) for i, t in enumerate(sample, 1)]
    return {
        "reference_tunes": len(checks),
        "reference_parse_share": sum(c.parses for c in checks) / len(checks),
        "reference_bars_consistent_share": sum(c.bars_consistent for c in checks) / len(checks),
    }


def write_and_check(model: MusicLSTM, settings: GenerationSettings, seed: int, compare_unguarded: bool) -> tuple[list, dict]:
    """4. ``settings.num_tunes`` tunes per label, written and checked as generate mode does; with
    bar-aware decoding and ``compare_unguarded`` also drawn plainly. Returns (kept tunes, metrics)."""
    labels = [label for label in model.vocabulary.labels for _ in range(settings.num_tunes)]
    step_model = StepModel(model, quantize=settings.quantize)
    guard = settings.guard(model)
    results, every, out = write_tunes(model, labels, settings, seed, step_model=step_model, guard=guard)
    metrics = {"generated_tunes": len(results), "generated_chars": out.num_chars, "generate_seconds": out.seconds,
               "chars_per_second": out.num_chars / max(out.seconds, 1e-9)}
    if guard is not None:
        log.info(guard.describe())
        metrics |= guard.stats()
        if compare_unguarded:
            plain, _, plain_out = write_tunes(model, labels, settings, seed, step_model=step_model)
            unguarded = summarise(plain)
            metrics |= {
                "unguarded_bars_median": unguarded["bars_median"],
                "unguarded_bars_under_8_share": unguarded["bars_under_8_share"],
                "unguarded_parse_share": unguarded["parse_share"],
                "unguarded_bars_consistent_share": unguarded["bars_consistent_share"],
                "unguarded_chars_per_second": plain_out.num_chars / max(plain_out.seconds, 1e-9),
            }
    if settings.candidates > 1:
        raw = summarise(every)
        metrics |= {"candidates": settings.candidates, "raw_parse_share": raw["parse_share"],
                    "raw_bars_consistent_share": raw["bars_consistent_share"]}
    return results, metrics


def _spread(d: dict) -> str:
    return "-" if d["median"] is None else f"{d['median']:.0f} ({d['q1']:.0f}-{d['q3']:.0f}), {100 * d['under_8']:.0f}% < 8"


def score_per_label(results: list, held_out: list, labels: list[str], classifier: StyleClassifier | None,
                    split: str) -> dict:
    """5. Per label and over all: parse, bars consistent, repaired, recognised as the label (by the
    classifier), and bars per tune against real held-out tunes of the same label."""
    predicted = classifier.predict([r.abc for r in results]) if classifier else [None] * len(results)
    real_bars = {label: [count_bars(t.text) for t in held_out if t.label == label] for label in labels}
    metrics, rows = {}, []
    totals = {"parse": 0, "bars": 0, "repaired": 0, "style": 0, "style_n": 0}
    for label in labels:
        mine = [(r, p) for r, p in zip(results, predicted) if r.label == label]
        n = len(mine)
        made, real = bar_distribution([r.bars for r, _ in mine]), bar_distribution(real_bars[label])
        metrics[f"bars_median/{label}"] = made["median"]
        metrics[f"real_bars_median/{label}"] = real["median"]
        parse = sum(r.check.parses for r, _ in mine)
        bars = sum(r.check.bars_consistent for r, _ in mine)
        repaired = sum(bool(r.repairs) for r, _ in mine)
        scored_style = classifier is not None and label in classifier.labels_
        style = sum(p == label for _, p in mine) if scored_style else None
        totals["parse"] += parse
        totals["bars"] += bars
        totals["repaired"] += repaired
        if scored_style:
            totals["style"] += style
            totals["style_n"] += n
            metrics[f"style/{label}"] = style / n
        metrics[f"parse/{label}"] = parse / n
        metrics[f"bars/{label}"] = bars / n
        rows.append([label, n, f"{100 * parse / n:.0f}%", f"{100 * bars / n:.0f}%", f"{100 * repaired / n:.0f}%",
                     f"{100 * style / n:.0f}%" if scored_style else "-", _spread(made), _spread(real)])
    n = len(results)
    chance = 1 / len(classifier.labels_) if classifier else None
    style_share = totals["style"] / totals["style_n"] if totals["style_n"] else None
    made_all = bar_distribution([r.bars for r in results])
    real_all = bar_distribution([c for label in labels for c in real_bars[label]])
    rows.append(["all", n, f"{100 * totals['parse'] / n:.0f}%", f"{100 * totals['bars'] / n:.0f}%",
                 f"{100 * totals['repaired'] / n:.0f}%", f"{100 * style_share:.0f}% (chance {100 * chance:.0f}%)" if style_share is not None else "-",
                 _spread(made_all), _spread(real_all)])
    log.info("\n%s", table(rows, ["label", "tunes", "parse", "bars ok", "repaired", "recognised as label",
                                  "bars per tune: median (middle half), share < 8", f"real {split} tunes"]))
    return metrics | {
        "bars_median": made_all["median"],
        "bars_q1": made_all["q1"],
        "bars_q3": made_all["q3"],
        "bars_under_8_share": made_all["under_8"],
        "real_bars_median": real_all["median"],
        "real_bars_q1": real_all["q1"],
        "real_bars_q3": real_all["q3"],
        "real_bars_under_8_share": real_all["under_8"],
        "parse_share": totals["parse"] / n,
        "bars_consistent_share": totals["bars"] / n,
        "repaired_share": totals["repaired"] / n,
        "style_recognised_share": style_share,
        "style_chance": chance,
    }


def summary_table(m: dict, split: str, settings: GenerationSettings) -> str:
    """The evaluation in one table, from the stages' metrics."""
    def share(key: str) -> str:
        return f"{100 * m[key]:.1f}%"

    def bars(prefix: str) -> str:
        keys = {"median": "median", "q1": "q1", "q3": "q3", "under_8": "under_8_share"}
        return _spread({k: m[f"{prefix}bars_{v}"] for k, v in keys.items()})

    rows = [
        ["bits per character", f"{m[f'{split}/bpc']:.4f} ({split} split, {m[f'{split}/chars']} chars)"],
        ["parse", share("parse_share")],
        ["bars consistent", share("bars_consistent_share")],
        ["needed repair", share("repaired_share")],
        *([["real tunes: parse / bars", f"{share('reference_parse_share')} / {share('reference_bars_consistent_share')} "
            f"of {m['reference_tunes']} held-out tunes"]] if "reference_tunes" in m else []),
        ["bars per tune", f"{bars('')} (real {split} tunes: {bars('real_')})"],
        ["style recognised", f"{share('style_recognised_share')} vs chance {share('style_chance')}"
         if m["style_recognised_share"] is not None else "not scored"],
        ["classifier on real tunes", share("classifier_real_accuracy") if "classifier_real_accuracy" in m else "-"],
        ["generation", f"{m['generated_chars']} chars in {m['generate_seconds']:.2f} s = {m['chars_per_second']:.0f} chars/s "
                       f"({'int8' if settings.quantize else 'float32'}, batch {m['generated_tunes']})"],
    ]
    if settings.guarded:
        rows.insert(1, ["decoding", "bar-aware (bar_guard.enabled=true)"])
    if "unguarded_parse_share" in m:
        rows.insert(4, ["  without bar-aware decoding", f"parse {share('unguarded_parse_share')}, "
                        f"bars {share('unguarded_bars_consistent_share')}, median {m['unguarded_bars_median']:.0f} bars a tune, "
                        f"{100 * m['unguarded_bars_under_8_share']:.0f}% < 8"])
    if settings.candidates > 1:
        rows.insert(3, [f"  over all {m['generated_tunes'] * settings.candidates} candidates",
                        f"parse {100 * m['raw_parse_share']:.1f}%, bars {100 * m['raw_bars_consistent_share']:.1f}%"])
        rows.insert(1, ["candidates per tune", f"{settings.candidates} (best kept)"])
    return table(rows, ["evaluate", "value"])


def run(cfg: DictConfig) -> dict:
    e = cfg.evaluate
    seed = int(cfg.seed)
    # The generate section's settings, num_tunes per label, in the model's own shapes (bars per
    # tune is compared with the real tunes').
    settings = GenerationSettings.from_config(cfg.generate, num_tunes=int(e.num_tunes), bars=None, form=None)
    model, path = load_model(cfg)
    tunes = load_tunes(data_config(cfg, path), checkpoints.load(path))
    split = str(e.split)
    if split not in tunes:
        raise UserError(f"evaluate.split={split!r} is not one of the data's splits: {', '.join(tunes)}")
    held_out = tunes[split]
    if not held_out:
        raise UserError(f"the {split} split is empty; use more data or a larger data.test_fraction")

    metrics: dict = {"checkpoint": str(path)}
    metrics |= score_bits_per_char(model, held_out, split, int(e.get("max_eval_tunes") or 0), int(e.batch_size), seed)
    classifier, classifier_metrics = train_style_classifier(tunes.get("train") or [], held_out, e.classifier, seed)
    metrics |= classifier_metrics
    metrics |= check_reference_tunes(held_out, int(e.get("reference_tunes") or 0), seed)
    results, generation_metrics = write_and_check(model, settings, seed, bool(e.get("compare_unguarded")))
    metrics |= generation_metrics
    metrics |= score_per_label(results, held_out, model.vocabulary.labels, classifier, split)
    log.info("\n%s", summary_table(metrics, split, settings))
    return metrics
