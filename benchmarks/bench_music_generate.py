"""Generation speed, side by side in one run: stateful decoding vs the original's window re-run.

    python benchmarks/bench_music_generate.py [--ckpt PATH] [--chars 500] [--tunes 64] [--threads N]

The same weights generate ``--chars`` characters for 1 tune and for ``--tunes`` tunes at once:

- stateful (ours): one step per character, the LSTM state carried (plugins/music_lstm/decoding.py),
  float32 and dynamic int8;
- nn.LSTM stepping: the model's own forward called on one character at a time with its state
  (the obvious stateful implementation, for reference);
- window re-run (the original): the network re-run over the last 100 characters for every
  character, float32 and int8 (torch.ao.quantization.quantize_dynamic on the model).

Every tune is forced to the full length (no stopping at the end token), so all rows do the same
work. The re-run of many tunes is slow: it is timed over its steady state (a full 100-character
window) for ``--rerun-steps`` characters and scaled to ``--chars``; pass ``--full`` to time it all.
With a checkpoint (default: the latest music train run, if any) the int8 cost in bits per
character is measured on real held-out tunes, on exactly the decoding path, and the generate
mode's own setting is timed: ``--tunes`` tunes that stop at their end token, plain sampling vs
bar-aware decoding (plugins/music_lstm/bars.py), with the share of tunes music21 parses and
finds bar-consistent.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.music_lstm.decoding import Sampling, StepModel, generate, sample, sequence_nll  # noqa: E402
from plugins.music_lstm.model import MusicLSTM  # noqa: E402
from plugins.music_lstm.vocab import Vocabulary  # noqa: E402

WINDOW = 100


def load(ckpt: str | None) -> tuple[MusicLSTM, str]:
    if ckpt is None:
        from framework import runs

        latest = runs.latest_train("music")
        ckpt = latest and latest.get("checkpoint")
    if ckpt and Path(ckpt).is_file():
        c = torch.load(ckpt, map_location="cpu", weights_only=True)
        model = MusicLSTM(**c["hyper_parameters"])
        model.load_state_dict(c["state_dict"])
        return model.eval(), ckpt
    # No trained model: the default preset's shape with fresh weights (speed does not depend on them).
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = Vocabulary.build(["".join(chars)], ["american", "chinese", "english", "german", "irish", "scottish"])
    torch.manual_seed(0)
    return MusicLSTM(vocab.tokens, vocab.labels, embedding_dim=128, hidden_size=256, num_layers=3).eval(), "random weights (default preset shape)"


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def rerun(model, batch: int, steps: int, warm_window: bool, seed: int = 0) -> float:
    """Seconds for ``steps`` characters by re-running the last 100 characters each time."""
    vocab = model.vocabulary
    gen = torch.Generator().manual_seed(seed)
    start_len = WINDOW if warm_window else 2
    seq = torch.randint(3 + len(vocab.labels), len(vocab), (batch, start_len))
    labels = torch.zeros(batch, dtype=torch.long)
    t0 = time.perf_counter()
    for _ in range(steps):
        logits, _ = model(seq[:, -WINDOW:], labels)
        nxt = sample(logits[:, -1], Sampling(1.0), gen)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return time.perf_counter() - t0


@torch.inference_mode()
def lstm_stepping(model, batch: int, steps: int, seed: int = 0) -> float:
    """Seconds for ``steps`` characters calling the model's forward one character at a time."""
    gen = torch.Generator().manual_seed(seed)
    tok = torch.zeros(batch, 1, dtype=torch.long)
    labels = torch.zeros(batch, dtype=torch.long)
    state = None
    t0 = time.perf_counter()
    for _ in range(steps):
        logits, state = model(tok, labels, state)
        tok = sample(logits[:, -1], Sampling(1.0), gen)[:, None]
    return time.perf_counter() - t0


def stateful(step_model: StepModel, model, batch: int, chars: int) -> float:
    vocab = model.vocabulary
    label = vocab.labels[0]
    out = generate(step_model, [vocab.prefix(label)] * batch, [0] * batch, chars, vocab.eos_id, Sampling(1.0), seed=0, stop_at_eos=False)
    assert out.num_chars == batch * chars
    return out.seconds


def int8_model(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.LSTM, torch.nn.Linear}, dtype=torch.qint8)


def held_out_tunes(model, n: int):
    """Up to n real tunes of the test split (embedded corpus) the model's vocabulary covers."""
    from omegaconf import OmegaConf

    from plugins.music_lstm.data import read_corpus, split_by_tune

    conf = Path(__file__).resolve().parents[1] / "plugins/music_lstm/conf/data/music21.yaml"
    cfg = OmegaConf.to_container(OmegaConf.load(conf))
    cfg.pop("cache_dir", None)
    tunes, _ = read_corpus(cfg)
    test = split_by_tune(tunes, cfg["split_seed"], cfg["val_fraction"], cfg["test_fraction"])["test"]
    vocab = model.vocabulary
    return [t for t in test if t.label in vocab.labels and not vocab.missing(t.text)][:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=None)
    p.add_argument("--chars", type=int, default=500)
    p.add_argument("--tunes", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (generate's default is 1; 0: torch's default)")
    p.add_argument("--repeat", type=int, default=3, help="best of this many runs for the fast paths")
    p.add_argument("--rerun-steps", type=int, default=20, help="characters timed for the many-tune re-run")
    p.add_argument("--full", action="store_true", help="time every re-run over all --chars characters")
    p.add_argument("--bpc-tunes", type=int, default=200)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, source = load(args.ckpt)
    hp = model.hparams
    print(f"model: {hp.num_layers} x {hp.hidden_size} LSTM, embedding {hp.embedding_dim}, vocabulary {len(model.vocabulary)}, norm {hp.norm}; {source}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.chars} characters per tune\n")
    fp32, q8 = StepModel(model), StepModel(model, quantize=True)
    model_q8 = int8_model(model)
    n, chars = args.tunes, args.chars
    rows = []

    def add(name, batch, seconds, note=""):
        rows.append((name, batch, seconds, batch * chars / seconds, note))

    for batch in (1, n):
        stateful(fp32, model, batch, 10)  # warm-up
        add("stateful float32 (ours)", batch, timed(lambda: stateful(fp32, model, batch, chars), args.repeat))
        add("stateful int8 (ours)", batch, timed(lambda: stateful(q8, model, batch, chars), args.repeat))
        add("nn.LSTM forward per character", batch, lstm_stepping(model, batch, chars))
        for name, m in (("window re-run float32 (original)", model), ("window re-run int8", model_q8)):
            if batch == 1 or args.full:
                add(name, batch, rerun(m, batch, chars, warm_window=False))
            else:
                steps = min(args.rerun_steps, chars)
                add(name, batch, rerun(m, batch, steps, warm_window=True) * chars / steps, f"scaled from {steps} chars")

    print(f"{'method':34} {'tunes':>5} {'seconds':>9} {'chars/s':>10}")
    for name, batch, seconds, cps, note in rows:
        print(f"{name:34} {batch:>5} {seconds:>9.3f} {cps:>10.0f}  {note}")
    get = {(name, batch): seconds for name, batch, seconds, _, _ in rows}
    print()
    for batch in (1, n):
        base = get[("window re-run float32 (original)", batch)]
        ours = get[("stateful float32 (ours)", batch)]
        ours8 = get[("stateful int8 (ours)", batch)]
        naive = get[("nn.LSTM forward per character", batch)]
        print(f"{batch:>3} tune(s): stateful is {base / ours:6.1f}x faster than the window re-run "
              f"(int8: {base / ours8:.1f}x; nn.LSTM stepping: {base / naive:.1f}x); int8 vs float32 stateful: {ours / ours8:.2f}x")
    t64 = get[("stateful float32 (ours)", n)]
    print(f"\n{n} tunes x {chars} chars: {t64:.3f} s float32, {get[('stateful int8 (ours)', n)]:.3f} s int8 "
          f"(target <= 1.0 s for 64 x 500 at 3 x 256)")

    if "random" not in source and args.bpc_tunes > 0:
        tunes = held_out_tunes(model, args.bpc_tunes)
        vocab = model.vocabulary
        seqs = [vocab.encode_tune(t.text, t.label) for t in tunes]
        rows_ = [vocab.label_index(t.label) for t in tunes]
        # skip=2: the label token and <s> are given; scored are the characters and </s>
        nll32, count = sequence_nll(fp32, seqs, rows_, skip=2)
        nll8, _ = sequence_nll(q8, seqs, rows_, skip=2)
        ln2 = torch.log(torch.tensor(2.0)).item()
        b32, b8 = nll32 / count / ln2, nll8 / count / ln2
        print(f"bits per character on {len(tunes)} held-out tunes ({count} chars): float32 {b32:.4f}, int8 {b8:.4f} "
              f"(+{b8 - b32:.4f}, {100 * (b8 - b32) / b32:+.2f}%)")
        generate_mode(model, fp32, n, chars, args.repeat)


def generate_mode(model, step_model: StepModel, n: int, chars: int, repeat: int) -> None:
    """The generate mode's setting: tunes stop at their end token; plain vs bar-aware decoding."""
    from plugins.music_lstm.bars import BarGuard
    from plugins.music_lstm.generate import GenerationSettings, summarise, write_tunes

    labels = [model.vocabulary.labels[i % len(model.vocabulary.labels)] for i in range(n)]
    print(f"\ngenerate mode: {n} tunes (labels in turn), up to {chars} chars, top_p 0.95, median of {repeat} seeds")
    print(f"{'decoding':12} {'seconds':>8} {'chars':>7} {'chars/s':>8} {'parse':>6} {'bars ok':>8}  redrawn bars / restarts")
    for name in ("plain", "bar-aware"):
        times, found = [], []
        for seed in range(repeat):
            guard = BarGuard(model.vocabulary.tokens) if name == "bar-aware" else None
            settings = GenerationSettings(num_tunes=n, length=chars, sampling=Sampling(1.0, 0, 0.95))
            kept, _, out = write_tunes(model, labels, settings, seed, step_model=step_model, guard=guard)
            times.append(out.seconds)
            found.append((out.num_chars, summarise(kept), guard.stats() if guard else None))
        order = sorted(range(repeat), key=times.__getitem__)
        mid = order[len(order) // 2]
        num_chars, summary, stats = found[mid]
        extra = f"{stats['bars_resampled']} / {stats['tunes_restarted']}" if stats else "-"
        print(f"{name:12} {times[mid]:>8.3f} {num_chars:>7} {num_chars / times[mid]:>8.0f} "
              f"{100 * summary['parse_share']:>5.0f}% {100 * summary['bars_consistent_share']:>7.0f}%  {extra}")


if __name__ == "__main__":
    main()
