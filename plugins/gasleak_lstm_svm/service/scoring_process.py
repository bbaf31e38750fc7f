"""A detection round's numbers (the windows' baselines and the detector's probabilities) worked out
in a process of its own, so they do not hold the service's GIL.

Sorting every window's ten-minute baseline span and running the model are most of the service's
Python-level CPU under load (py-spy --gil: three quarters of it in batch ingest); in the service's
process they hold the GIL that the event loop and the storage writer need, and ingest stalls behind
them. In this process they use a core of their own. What goes over the pipe per round is each
scored sensor's history (at most ``InputSpec.history`` samples) and how many windows it ends; what
comes back is one baseline row and one probability per window.

``ScoringPool`` deals a round's sensors over several such processes where there are cores for them.

The child is spawned (not forked: the service has threads) with its own copy of the detector,
ignores Ctrl-C (the service decides when to stop), and exits when the service closes the pipe,
or when the service dies and its end of the pipe goes with it.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import signal

import numpy as np

log = logging.getLogger(__name__)


def windows_of(segments: list[tuple[np.ndarray, int, int]], window: int) -> np.ndarray:
    """(sum of counts, window, 3) float32: the newest ``count`` windows of each ``(history, count,
    since_reset)``, one sensor after the other."""
    if not segments:
        return np.zeros((0, window, 3), np.float32)
    cuts = []
    for history, count, _ in segments:
        newest = np.arange(len(history) - count, len(history))
        cuts.append(history[newest[:, None] + np.arange(1 - window, 1)].astype(np.float32))
    return np.concatenate(cuts)


def score_segments(detector, segments: list[tuple[np.ndarray, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(baselines (n, 5), leak probabilities (n,)) of the windows ``segments`` end."""
    spec = detector.spec
    if not segments:
        return np.zeros((0, 5)), np.zeros(0)
    bases = spec.baselines_of_histories(segments)
    probs = np.asarray(detector.predict_proba(windows_of(segments, spec.window), bases))[:, 1]
    return bases, probs


class ScoringProcess:
    """``score(segments)`` = ``score_segments(detector, segments)``, in a child process."""

    def __init__(self, detector, torch_threads: int | None = 1, start_timeout_s: float = 120.0):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, detector, torch_threads), name="gasleak-scoring",
                                 daemon=True)
        self._proc.start()
        child.close()  # the child's end lives in the child only: when either side dies the other sees EOF
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise RuntimeError(f"the scoring process did not start within {start_timeout_s:g} s")
        self._conn.recv()  # ready

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def score(self, segments: list[tuple[np.ndarray, int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """Raises ``ScoringProcessDied`` if the child is gone, or what the detector raised in it."""
        self.send(segments)
        return self.receive()

    def send(self, segments: list[tuple[np.ndarray, int, int]]) -> None:
        try:
            self._conn.send(segments)
        except (EOFError, OSError) as exc:
            raise ScoringProcessDied(f"the scoring process (pid {self.pid}) died: {type(exc).__name__}") from exc

    def receive(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            ok, out = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise ScoringProcessDied(f"the scoring process (pid {self.pid}) died: {type(exc).__name__}") from exc
        if not ok:
            raise out
        return out

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._conn.close()


class ScoringProcessDied(RuntimeError):
    pass


class ScoringPool:
    """``score(segments)`` over ``n`` scoring processes at once: the round's sensors dealt, in order,
    into ``n`` runs of about equal window counts, one per process, and the answers joined in order.
    One process scores about 14,000 windows a second with the default LSTM+SVM (one thread); more
    sensors than that need more of them, on a machine with the cores."""

    def __init__(self, detector, n: int = 1, torch_threads: int | None = 1, start_timeout_s: float = 120.0):
        self.processes: list[ScoringProcess] = []
        try:
            for _ in range(max(1, int(n))):
                self.processes.append(ScoringProcess(detector, torch_threads, start_timeout_s))
        except Exception:
            self.close()
            raise

    @property
    def pid(self) -> int | None:
        return self.processes[0].pid

    @property
    def pids(self) -> list[int | None]:
        return [p.pid for p in self.processes]

    def score(self, segments: list[tuple[np.ndarray, int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """As ``ScoringProcess.score``; every process's answer is read before an error is raised, so
        none is left in a pipe for the next round."""
        parts = [part for part in split_segments(segments, len(self.processes)) if part]
        if len(parts) <= 1:
            return self.processes[0].score(parts[0] if parts else [])
        busy = self.processes[: len(parts)]
        for process, part in zip(busy, parts):
            process.send(part)
        answers, error = [], None
        for process in busy:
            try:
                answers.append(process.receive())
            except Exception as exc:  # noqa: BLE001 - raised below, after the others are read
                error = error or exc
        if error is not None:
            raise error
        return np.concatenate([a[0] for a in answers]), np.concatenate([a[1] for a in answers])

    def close(self) -> None:
        for process in self.processes:
            process.close()


def split_segments(segments: list, n: int) -> list[list]:
    """``segments`` (in order) cut into ``n`` consecutive runs of about equal window counts."""
    if n <= 1 or len(segments) <= 1:
        return [list(segments)]
    counts = np.cumsum([count for _, count, _ in segments])
    cuts = np.searchsorted(counts, counts[-1] * np.arange(1, n) / n, side="left") + 1
    bounds = [0, *np.minimum(cuts, len(segments)).tolist(), len(segments)]
    return [list(segments[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _serve(conn, detector, torch_threads: int | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if torch_threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(int(torch_threads))
        # the SVM's kernel is a BLAS product: left alone, OpenBLAS starts a thread per core and takes
        # the one HTTP needs (500 req/s, single runs: p99 71 ms, 23 with one thread)
        threadpool_limits(int(torch_threads))
    conn.send("ready")
    while True:
        try:
            segments = conn.recv()
        except (EOFError, OSError):  # the service is gone
            return
        if segments is None:
            return
        try:
            out = (True, score_segments(detector, segments))
        except Exception as exc:  # the service falls back, as it does for a detector in its own process
            out = (False, exc)
        try:
            try:
                conn.send(out)
            except (pickle.PicklingError, TypeError, AttributeError):  # an exception that does not pickle
                conn.send((False, RuntimeError(f"{type(out[1]).__name__}: {out[1]}")))
        except (OSError, ValueError):
            return
