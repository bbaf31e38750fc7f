"""Training throughput of the music model, side by side in one run (issue 4's benchmark).

    python benchmarks/bench_music_train.py                      # default model (3 x 256) on CPU
    python benchmarks/bench_music_train.py --model large --device cuda

Predicted characters per second for
  (a) MusicLSTM trained many-to-many through Lightning (every position predicts its next character),
  (b) the same network trained many-to-one as the original did (one target per 100-character window),
  (c) the same many-to-many step as (a) in a bare PyTorch loop (no Lightning),
and the FLOP/s (a) achieves against a large matrix multiply on the same device. Batches come from the
real data module (embedded corpus, cached tokens). Each variant runs `--rounds` times, interleaved, and
the fastest step of each counts, so a busy shared machine disturbs the ratios less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRESETS = {"default": dict(embedding_dim=128, hidden_size=256), "large": dict(embedding_dim=256, hidden_size=512),
           "tiny": dict(embedding_dim=16, hidden_size=32)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_flops(device: torch.device, n: int, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def train_flops_per_char(E: int, H: int, layers: int, V: int) -> float:
    """Multiply-adds of the LSTM gates and the head, x2 for FLOPs, x3 for forward + backward."""
    forward = sum(2 * 4 * H * ((E if i == 0 else H) + H) for i in range(layers)) + 2 * H * V
    return 3 * forward


def random_batches(datamodule, seq_len: int, batch_size: int, device):
    """An endless stream of training batches drawn the data module's way."""
    from plugins.music_lstm.data import RandomWindows

    tokens, targets, labels = datamodule.arrays["train"]
    while True:
        for batch in RandomWindows(tokens, targets, labels, seq_len, batch_size, 100):
            yield tuple(t.to(device) for t in batch)


def run_lightning(make_model, datamodule, seconds: float, warmup: int, accelerator: str) -> float:
    """(a): seconds per step of Trainer.fit over the data module's own loader, warm-up steps excluded."""
    import lightning as L

    class Timer(L.Callback):
        """Time from one batch's end to the next's: the whole loop, hooks and data loading included."""

        durations: list = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            sync(module.device)
            now = time.perf_counter()
            if batch_idx + 1 == warmup:
                self.start = self.last = now
            elif batch_idx + 1 > warmup:
                self.durations.append(now - self.last)
                self.last = now
                if now - self.start >= seconds:
                    trainer.should_stop = True

    timer = Timer()
    datamodule.batches_per_epoch = 100_000
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        gradient_clip_val=1.0, callbacks=[timer], log_every_n_steps=50,
    )
    trainer.fit(make_model(), datamodule=datamodule)
    return timer.durations


def run_bare(make_model, batches, seconds: float, warmup: int, device, many_to_one: bool = False) -> float:
    """(c) the same step without Lightning; (b) with ``many_to_one``: only the last position is a target."""
    model = make_model().to(device).train()
    model.log = lambda *a, **k: None  # the step's metrics are computed as in (a), just not logged
    opt = model.configure_optimizers()["optimizer"]
    durations = []
    for i, batch in enumerate(batches):
        if many_to_one:
            x, y, lab = batch
            logits, _ = model(x, lab)
            loss = torch.nn.functional.cross_entropy(logits[:, -1], y[:, -1])
        else:
            loss = model.training_step(batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync(device)
        now = time.perf_counter()
        if i + 1 == warmup:
            start = last = now
        elif i + 1 > warmup:
            durations.append(now - last)
            last = now
            if now - start >= seconds:
                break
    return durations


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(PRESETS), default="default")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128, help="window of the many-to-many runs (the default preset's)")
    p.add_argument("--window", type=int, default=100, help="the original's many-to-one window")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per variant and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each timed stretch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--matmul", type=int, default=2048, help="size n of the n x n reference matmul")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "music_bench_cache"))
    args = p.parse_args()

    import lightning as L

    from plugins.music_lstm.data import Music21Data
    from plugins.music_lstm.model import MusicLSTM

    torch.manual_seed(0)
    device = torch.device(args.device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    L.seed_everything(0, verbose=False)
    from omegaconf import OmegaConf

    data_cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[1] / "plugins/music_lstm/conf/data/music21.yaml"))
    data_cfg.update(cache_dir=args.cache, seq_len=args.seq_len, batch_size=args.batch_size)
    data_cfg.pop("_target_")
    datamodule = Music21Data(**data_cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    kw = datamodule.model_kwargs() | PRESETS[args.model]

    def make_model():
        return MusicLSTM(**kw)

    V, E, H = len(kw["vocab"]), kw["embedding_dim"], kw["hidden_size"]
    flops_char = train_flops_per_char(E, H, 3, V)
    many = random_batches(datamodule, args.seq_len, args.batch_size, device)
    one = random_batches(datamodule, args.window, args.batch_size, device)

    print(f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, lightning {L.__version__}")
    print(f"model {args.model}: embedding {E}, 3 x {H} LSTM, vocabulary {V}; batch {args.batch_size}, "
          f"window {args.seq_len} (many-to-many) / {args.window} (many-to-one); {args.seconds:g} s timed per variant and round, {args.rounds} rounds")
    print("load average before: %.2f %.2f %.2f" % os.getloadavg())
    steps = {"a": [], "b": [], "c": []}
    started = time.perf_counter()
    for _ in range(args.rounds):
        steps["a"] += run_lightning(make_model, datamodule, args.seconds, args.warmup, accelerator)
        steps["b"] += run_bare(make_model, one, args.seconds, args.warmup, device, many_to_one=True)
        steps["c"] += run_bare(make_model, many, args.seconds, args.warmup, device)
    mm = matmul_flops(device, args.matmul)
    # The fastest step of each variant is its cost with the least interference from other work on a
    # shared machine; the medians are printed too.
    best = {k: min(v) for k, v in steps.items()}
    median = {k: statistics.median(v) for k, v in steps.items()}

    chars = {"a": args.batch_size * args.seq_len / best["a"], "b": args.batch_size / best["b"],
             "c": args.batch_size * args.seq_len / best["c"]}
    names = {"a": "(a) many-to-many, Lightning", "b": "(b) many-to-one, as the original", "c": "(c) many-to-many, bare PyTorch"}
    for k in "abc":
        print(f"{names[k]:36s} {best[k] * 1000:8.1f} ms/step (median {median[k] * 1000:7.1f}, {len(steps[k])} steps) "
              f"{chars[k]:10,.0f} predicted chars/s")
    achieved = flops_char * chars["a"]
    print(f"(a)/(b) = {chars['a'] / chars['b']:.1f}x   (target >= 100x at equal model size)")
    print(f"(a)/(c) = {chars['a'] / chars['c']:.3f}    (target >= 0.95)")
    print(f"(a) achieves {achieved / 1e9:.1f} GFLOP/s = {achieved / mm:.0%} of a {args.matmul}x{args.matmul} matmul "
          f"({mm / 1e9:.1f} GFLOP/s)   (target >= 60%); {flops_char / 1e6:.2f} MFLOP per predicted character")
    print(f"measured in {time.perf_counter() - started:.0f} s; load average after: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
