"""ABC corpora -> cleaned tunes -> one cached integer array per split -> random windows.

Sources, each its own datamodule class (``data=<name>`` picks its ``_target_``):
- ``music21`` (:class:`Music21Data`): the ABC tunes shipped inside music21's corpus; the label of a file comes from the
  first ``labels`` entry whose glob matches its path inside the corpus (unmatched files are skipped).
- ``hoyomusic`` (:class:`HoyoMusicData`): the HoyoMusic dataset (fields ``prompt``, ``data`` = ABC, ``label`` = region) from a
  local jsonl/json/parquet file or folder (``data.path``), or from the Hugging Face hub when
  ``data.path`` is unset.
- ``abc_dir`` (:class:`AbcDirData`): every ``*.abc`` under ``data.path``; the label is the first sub-folder's name.

Tunes are split train/val/test by tune with a fixed seed, tokenised once with :class:`Vocabulary`
framing and concatenated per split into one int array, cached on disk under a key made of the sources
and every setting that changes the arrays. Training batches are random contiguous windows of it
(as nanoGPT does); validation and test use consecutive, longer windows covering their split
(``eval_seq_len``: each window starts from a zero state, so longer windows score the model closer
to how it generates, with the whole tune as context).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import random
import warnings
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from framework.errors import UserError
from framework.plugin import TaskData
from plugins.music_lstm.abc import SkipTune, Tune, clean_tune, decode_bytes, label_slug, split_tunes
from plugins.music_lstm.vocab import Vocabulary

log = logging.getLogger(__name__)
# RandomWindows has a length (batches per epoch) and yields whole batches; Lightning's warning about
# lengths of iterable datasets under several workers does not apply to it.
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined")

CACHE_FORMAT = 1
HOYOMUSIC_HUB = "Genius-Society/hoyoMusic"
# The hub stores the region as a class index; names in the dataset card's order.
HOYOMUSIC_LABELS = ["Teyvat", "Mondstadt", "Liyue", "Inazuma", "Sumeru", "Fontaine", "Natlan", "Snezhnaya"]


# ----------------------------------------------------------------------------------------------
# Reading sources


def _music21_root() -> Path:
    from music21 import common

    return Path(common.getCorpusFilePath())


def _abc_files(cfg: dict) -> tuple[Path, list[Path]]:
    """(root, sorted .abc files) for the music21 and abc_dir sources."""
    if cfg["source"] == "music21":
        from music21 import corpus

        root = _music21_root()
        files = sorted(Path(p) for p in corpus.getPaths(fileExtensions=("abc",)))
        return root, files
    root = _existing_path(cfg)
    if root.is_file():
        return root.parent, [root]
    return root, sorted(p for p in root.rglob("*") if p.suffix.lower() == ".abc" and p.is_file())


def _existing_path(cfg: dict) -> Path:
    if not cfg.get("path"):
        raise UserError(f"data.path is required for data={cfg['source']}")
    path = Path(str(cfg["path"])).expanduser()
    if not path.exists():
        raise UserError(f"data path does not exist: {path}")
    return path


def _file_label(cfg: dict, rel: str) -> str | None:
    if cfg["source"] == "abc_dir":
        parts = rel.split("/")
        return label_slug(parts[0]) if len(parts) > 1 else label_slug(cfg.get("default_label") or "unlabelled")
    for label, patterns in (cfg.get("labels") or {}).items():
        if isinstance(patterns, str):
            patterns = [patterns]
        if any(fnmatch.fnmatch(rel, pat) for pat in patterns):
            return label_slug(label)
    return None


def _hoyomusic_records(cfg: dict):
    """Yield (abc text, label name, source) from a local file/folder or the hub."""
    if cfg.get("path"):
        path = _existing_path(cfg)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json", ".parquet"))
        if not files:
            raise UserError(f"no .jsonl, .json or .parquet files in {path}")
        for f in files:
            if f.suffix == ".parquet":
                import pyarrow.parquet as pq

                rows = pq.read_table(f).to_pylist()
            elif f.suffix == ".jsonl":
                rows = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
            else:
                loaded = json.loads(f.read_text(encoding="utf-8"))
                rows = loaded if isinstance(loaded, list) else loaded.get("data", [])
            for i, row in enumerate(rows):
                yield row, f"{f.name}#{i}"
        return
    # The original's data, straight from the hub (needs network access and `datasets`).
    try:
        import datasets
    except ImportError:
        raise UserError("data=hoyomusic without data.path needs the `datasets` package (pip install datasets)") from None
    try:
        dsd = datasets.load_dataset(cfg.get("hub_name") or HOYOMUSIC_HUB)
    except Exception as err:  # network, auth, missing dataset: one line for the user
        raise UserError(f"cannot load {cfg.get('hub_name') or HOYOMUSIC_HUB} from the hub ({type(err).__name__}); "
                        "download it and pass data.path=<jsonl or parquet>") from None
    for split, ds in dsd.items():
        for i, row in enumerate(ds):
            yield row, f"{split}#{i}"


def _hoyomusic_label(value, names: list[str]) -> str:
    if isinstance(value, (int, np.integer)) or (isinstance(value, str) and value.isdigit()):
        index = int(value)
        return label_slug(names[index]) if 0 <= index < len(names) else f"label_{index}"
    return label_slug(value)


def source_description(cfg: dict) -> list:
    """What the cache key needs to know about the raw inputs (paths, sizes, modification times)."""
    if cfg["source"] in ("music21", "abc_dir"):
        root, files = _abc_files(cfg)
        return [[str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    if cfg.get("path"):
        path = _existing_path(cfg)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return [cfg.get("hub_name") or HOYOMUSIC_HUB]


def read_corpus(data_cfg: dict) -> tuple[list[Tune], dict]:
    """Read and clean every tune of the configured source.

    Returns (tunes, summary); the summary counts files, tunes read/kept, skipped tunes by reason,
    characters and tunes per label. ``max_samples`` keeps a random subset (seeded by ``split_seed``).
    """
    cfg = dict(data_cfg)
    cleaning = dict(cfg.get("cleaning") or {})
    skipped: Counter = Counter()
    tunes: list[Tune] = []
    read = files = 0
    if cfg["source"] in ("music21", "abc_dir"):
        root, paths = _abc_files(cfg)
        for path in paths:
            rel = path.relative_to(root).as_posix()
            raws = split_tunes(decode_bytes(path.read_bytes()))
            files += 1
            read += len(raws)
            label = _file_label(cfg, rel)
            if label is None:
                skipped["no label for file"] += len(raws)
                continue
            for i, raw in enumerate(raws):
                try:
                    tunes.append(Tune(clean_tune(raw, **cleaning), label, f"{rel}#{i + 1}"))
                except SkipTune as err:
                    skipped[err.reason] += 1
    elif cfg["source"] == "hoyomusic":
        names = list(cfg.get("label_names") or HOYOMUSIC_LABELS)
        for row, src in _hoyomusic_records(cfg):
            text = row.get("data") or ""
            label = _hoyomusic_label(row.get("label"), names)
            raws = split_tunes(text) or [text]  # a record may hold its tune without an X: line
            read += len(raws)
            for raw in raws:
                try:
                    tunes.append(Tune(clean_tune(raw, **cleaning), label, src))
                except SkipTune as err:
                    skipped[err.reason] += 1
        files = 1
    else:
        raise UserError(f"unknown data.source {cfg['source']!r}; sources: music21, hoyomusic, abc_dir")
    if read == 0:
        raise UserError(f"no ABC tunes found in {cfg.get('path') or cfg['source']}")
    max_samples = cfg.get("max_samples")
    if max_samples and len(tunes) > max_samples:
        rng = random.Random(cfg.get("split_seed", 0))
        tunes = rng.sample(tunes, int(max_samples))
    summary = {
        "source": cfg["source"],
        "files": files,
        "tunes_read": read,
        "tunes_kept": len(tunes),
        "tunes_skipped": dict(sorted(skipped.items())),
        "characters": sum(len(t.text) for t in tunes),
        "tunes_per_label": dict(sorted(Counter(t.label for t in tunes).items())),
    }
    return tunes, summary


def split_by_tune(tunes: list[Tune], seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[Tune]]:
    """Shuffle whole tunes with ``seed`` and cut them into train/val/test.

    With at least three tunes, val and test get at least one tune each when their fraction is > 0.
    """
    order = list(range(len(tunes)))
    random.Random(seed).shuffle(order)
    n = len(order)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 and n >= 3 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 and n >= 3 else 0
    val, test, train = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
    return {name: [tunes[i] for i in sorted(idx)] for name, idx in (("train", train), ("val", val), ("test", test))}


def encode_split(tunes: list[Tune], vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """One flat token array for a split and the label index of every position."""
    ids: list[int] = []
    labs: list[int] = []
    for tune in tunes:
        seq = vocab.encode_tune(tune.text, tune.label)
        ids.extend(seq)
        labs.extend([vocab.label_index(tune.label)] * len(seq))
    return np.asarray(ids, dtype=np.int32), np.asarray(labs, dtype=np.int16)


# ----------------------------------------------------------------------------------------------
# Batches


class RandomWindows(IterableDataset):
    """``batches`` batches of ``batch_size`` random windows; each item is a whole batch (x, y, lab)."""

    def __init__(self, tokens: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
                 seq_len: int, batch_size: int, batches: int):
        self.tokens, self.targets, self.labels = tokens, targets, labels
        self.seq_len = min(seq_len, len(tokens))
        self.batch_size, self.batches = batch_size, batches

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        span = len(self.tokens) - self.seq_len + 1
        offsets = torch.arange(self.seq_len)
        for _ in range(self.batches):
            # torch's global generator: seeded by the runner, so runs are reproducible.
            idx = torch.randint(span, (self.batch_size, 1)) + offsets
            yield self.tokens[idx], self.targets[idx], self.labels[idx]


class ConsecutiveWindows(Dataset):
    """Non-overlapping windows covering a split in order (validation and test)."""

    def __init__(self, tokens: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, seq_len: int):
        self.seq_len = min(seq_len, len(tokens))
        n = len(tokens) // self.seq_len if self.seq_len else 0
        cut = n * self.seq_len
        self.x = tokens[:cut].view(n, self.seq_len)
        self.y = targets[:cut].view(n, self.seq_len)
        self.lab = labels[:cut].view(n, self.seq_len)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i], self.lab[i]


class MusicDataModule(TaskData, L.LightningDataModule):
    """ABC tunes as (x, y, lab) int64 batches of shape (B, T); see the module docstring. The
    subclasses below fix ``source``; this class takes it as an argument (train runs saved before
    they existed name it with ``source:``)."""

    def __init__(
        self,
        source: str = "music21",
        path: str | None = None,
        labels: dict | None = None,
        label_names: list | None = None,
        hub_name: str = HOYOMUSIC_HUB,
        default_label: str = "unlabelled",
        cleaning: dict | None = None,
        max_samples: int | None = None,
        split_seed: int = 1234,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        seq_len: int = 128,
        batch_size: int = 64,
        batches_per_epoch: int | None = None,
        eval_seq_len: int | None = None,
        eval_batch_size: int | None = None,
        new_chars: str = "add",
        cache_dir: str | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        if new_chars not in ("add", "skip"):
            raise UserError(f"data.new_chars must be add or skip, got {new_chars!r}")
        self.cfg = dict(
            source=source, path=path, labels=labels, label_names=label_names, hub_name=hub_name,
            default_label=default_label, cleaning=cleaning or {}, max_samples=max_samples, split_seed=split_seed,
            val_fraction=val_fraction, test_fraction=test_fraction,
        )
        self.seq_len, self.batch_size = seq_len, batch_size
        self.batches_per_epoch = batches_per_epoch
        self.eval_seq_len = eval_seq_len or seq_len
        self.eval_batch_size = eval_batch_size or batch_size
        self.new_chars = new_chars
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.num_workers = num_workers
        self.base_vocab: Vocabulary | None = None
        self.vocab: Vocabulary | None = None
        self.tunes: dict[str, list[Tune]] = {}
        self.summary: dict = {}
        self.arrays: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    # -- init_from / evaluation of a trained model ------------------------------------------
    def adopt_checkpoint(self, ckpt: dict, new_chars: str | None = None) -> None:
        """Use a trained model's vocabulary (incremental training, evaluation).

        Characters and labels the old vocabulary lacks are, with ``new_chars="add"`` (the default,
        for ``init_from``), appended to it (the model grows matching rows, see
        ``MusicLSTM.load_init_weights``); with ``"skip"`` (for evaluating a model as it is) tunes that
        use them are skipped and counted. Either way the summary and the log say which they were.
        """
        hp = ckpt.get("hyper_parameters") or {}
        if "vocab" not in hp:
            raise UserError("checkpoint has no vocabulary (hyper_parameters.vocab): not a music model")
        self.base_vocab = Vocabulary(hp["vocab"])
        if new_chars is not None:
            if new_chars not in ("add", "skip"):
                raise ValueError(f"new_chars must be add or skip, got {new_chars!r}")
            self.new_chars = new_chars

    def model_kwargs(self) -> dict:
        return {"vocab": list(self.vocab.tokens), "labels": list(self.vocab.labels)}

    # -- building and caching ----------------------------------------------------------------
    def cache_key(self) -> str:
        settings = {
            "format": CACHE_FORMAT,
            "cfg": self.cfg,
            "inputs": source_description(self.cfg),
            "base_vocab": self.base_vocab.tokens if self.base_vocab else None,
            "new_chars": self.new_chars,
        }
        blob = json.dumps(settings, sort_keys=True, default=str).encode()
        return f"{self.cfg['source']}-{hashlib.sha1(blob).hexdigest()[:16]}"

    def _cache_paths(self) -> tuple[Path, Path] | None:
        if self.cache_dir is None:
            return None
        base = self.cache_dir / "music" / self.cache_key()
        return base.with_suffix(".npz"), base.with_suffix(".json")

    def _build(self) -> dict:
        tunes, summary = read_corpus(self.cfg)
        # Split first, so a split holds the same tunes whatever vocabulary they are encoded with.
        splits = split_by_tune(tunes, self.cfg["split_seed"], self.cfg["val_fraction"], self.cfg["test_fraction"])
        labels = sorted({t.label for t in tunes})
        if self.base_vocab is None:
            vocab = Vocabulary.build((t.text for t in tunes), labels)
        elif self.new_chars == "add":
            vocab, new_labels, new_chars = self.base_vocab.extended((t.text for t in tunes), labels)
            summary["added_labels"], summary["added_characters"] = new_labels, new_chars
        else:
            vocab = self.base_vocab
            known = set(vocab.labels)
            unknown_chars, dropped = set(), Counter()

            def usable(t: Tune) -> bool:
                missing = vocab.missing(t.text)
                if t.label not in known:
                    dropped["label not in the model"] += 1
                    return False
                if missing:
                    dropped["characters not in the model's vocabulary"] += 1
                    unknown_chars.update(missing)
                    return False
                return True

            splits = {name: [t for t in split if usable(t)] for name, split in splits.items()}
            summary["tunes_kept"] = sum(len(split) for split in splits.values())
            summary["tunes_skipped"] = dict(sorted((Counter(summary["tunes_skipped"]) + dropped).items()))
            summary["unknown_characters"] = sorted(unknown_chars)
        if not any(splits.values()):
            raise UserError(f"no usable tunes in {self.cfg.get('path') or self.cfg['source']} "
                            f"(skipped: {summary['tunes_skipped']})")
        summary["vocab_size"] = len(vocab)
        summary["labels"] = vocab.labels
        summary["tunes_per_split"] = {k: len(v) for k, v in splits.items()}
        arrays = {}
        for name, split in splits.items():
            arrays[f"{name}_tokens"], arrays[f"{name}_labels"] = encode_split(split, vocab)
        meta = {
            "vocab": vocab.tokens,
            "summary": summary,
            "tunes": {k: [[t.text, t.label, t.source] for t in v] for k, v in splits.items()},
        }
        return {"arrays": arrays, "meta": meta}

    def prepare_data(self) -> None:
        if self.vocab is not None:
            return  # already set up (the runner calls this before Lightning does)
        paths = self._cache_paths()
        if paths and all(p.exists() for p in paths):
            return
        built = self._build()
        if paths:
            npz, meta = paths
            npz.parent.mkdir(parents=True, exist_ok=True)
            tmp = npz.with_suffix(".tmp.npz")
            np.savez(tmp, **built["arrays"])
            meta.write_text(json.dumps(built["meta"]))
            tmp.replace(npz)  # the .npz appears last: its presence means the cache is complete
        self._built = built

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        built = getattr(self, "_built", None)
        paths = self._cache_paths()
        if built is None and paths and all(p.exists() for p in paths):
            with np.load(paths[0]) as npz:
                arrays = {k: npz[k] for k in npz.files}
            built = {"arrays": arrays, "meta": json.loads(paths[1].read_text())}
            log.info("music data: loaded tokenised corpus from cache %s", paths[0])
        elif built is None:
            built = self._build()
        meta = built["meta"]
        self.vocab = Vocabulary(meta["vocab"])
        self.summary = meta["summary"]
        self.tunes = {k: [Tune(*t) for t in v] for k, v in meta["tunes"].items()}
        for name in ("train", "val", "test"):
            tokens = torch.from_numpy(built["arrays"][f"{name}_tokens"].astype(np.int64))
            labels = torch.from_numpy(built["arrays"][f"{name}_labels"].astype(np.int64))
            # Next-token targets; a label token is never a target (nothing predicts which tune comes next).
            targets = torch.full_like(tokens, self.vocab.pad_id)
            if len(tokens) > 1:
                targets[:-1] = tokens[1:]
            targets[torch.isin(targets, torch.tensor(self.vocab.label_ids, dtype=torch.int64))] = self.vocab.pad_id
            self.arrays[name] = (tokens, targets, labels)
        self._built = None
        self.log_summary()

    def log_summary(self) -> None:
        s = self.summary
        log.info(
            "music data: %s files, %s tunes read, %s kept, skipped %s; %s characters; vocabulary %s tokens; "
            "tunes per label %s; per split %s",
            s["files"], s["tunes_read"], s["tunes_kept"], s["tunes_skipped"] or "none", s["characters"],
            s["vocab_size"], s["tunes_per_label"], s["tunes_per_split"],
        )
        if s.get("added_characters") or s.get("added_labels"):
            log.info("music data: added to the checkpoint's vocabulary: characters %s, labels %s",
                     "".join(s.get("added_characters", [])) or "none", s.get("added_labels") or "none")
        if s.get("unknown_characters"):
            log.warning("music data: tunes skipped for characters the model lacks: %r", "".join(s["unknown_characters"]))

    # -- loaders ------------------------------------------------------------------------------
    def train_dataloader(self):
        tokens, targets, labels = self.arrays["train"]
        if len(tokens) < 2:
            raise UserError("the training split is empty: use more tunes or smaller data.val_fraction/test_fraction")
        batches = self.batches_per_epoch or max(1, len(tokens) // (self.batch_size * self.seq_len))
        ds = RandomWindows(tokens, targets, labels, self.seq_len, self.batch_size, batches)
        # Each item already is a batch; batch_size=None passes it through.
        return DataLoader(ds, batch_size=None, num_workers=self.num_workers)

    def _eval_loader(self, split: str):
        ds = ConsecutiveWindows(*self.arrays[split], self.eval_seq_len)
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.num_workers)

    def val_dataloader(self):
        return self._eval_loader("val")

    def test_dataloader(self):
        return self._eval_loader("test")


class Music21Data(MusicDataModule):
    """``data=music21``: the ABC tunes inside music21's corpus, labelled by ``labels`` globs."""

    def __init__(self, **settings):
        super().__init__(source="music21", **settings)


class HoyoMusicData(MusicDataModule):
    """``data=hoyomusic``: the HoyoMusic records from ``path`` (jsonl, json, parquet), else the hub."""

    def __init__(self, **settings):
        super().__init__(source="hoyomusic", **settings)


class AbcDirData(MusicDataModule):
    """``data=abc_dir``: every .abc file under ``path``, labelled by its first sub-folder."""

    def __init__(self, **settings):
        super().__init__(source="abc_dir", **settings)
