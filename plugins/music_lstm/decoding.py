"""Fast stateful sampling from a trained MusicLSTM: one step per character, every tune in one batch.

The original generator re-ran its network over the last 100 characters for every character it
wrote. Here the LSTM state is carried, so each character costs one step. Calling ``nn.LSTM`` for a
single step pays a fixed cost of a few milliseconds per layer on CPU, so :class:`StepModel` takes
the weights out of the model and does the step itself:

- layer 0's input projection of a character is a row of a table (``embedding @ W_ih + b``), and the
  label embedding's projection is a per-tune constant, so layer 0 needs only ``h @ W_hh``;
- layers 1.. do one matmul over ``[input, h] @ [W_ih; W_hh]`` into a preallocated buffer;
- a norm between layers is folded away: BatchNorm in eval mode is a per-channel affine, and the
  affine part of LayerNorm moves into the next layer's weights (or the head's);
- the gate rows are reordered to (i, f, o, g) so one sigmoid covers three gates;
- with ``quantize=True`` the matmuls run as dynamic int8 (``torch.ops.quantized.linear_dynamic``,
  the kernel behind ``torch.ao.quantization.quantize_dynamic``) on per-channel int8 weights.

Sampling is temperature, then top-k, then top-p (nucleus), then an exponential race (the
Gumbel-max trick: ``argmax(logits - log E)`` with ``E ~ Exp(1)`` is an exact sample of
``softmax(logits)``) driven by a seeded ``torch.Generator``, so a seed gives the same tunes.
``top_k=1`` keeps only the most likely token, which is greedy decoding.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Sampling:
    """How the next token is drawn from the logits."""

    temperature: float = 1.0  # <= 0 means greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off

    def __post_init__(self):
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Scaled logits with everything outside top-k / the top-p nucleus set to -inf (a new tensor)."""
    logits = logits / sampling.temperature if sampling.temperature != 1.0 else logits.clone()
    vocab = logits.shape[-1]
    if 0 < sampling.top_k < vocab:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits.masked_fill_(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already cover top_p (the first always stays).
        drop = (torch.cumsum(probs, dim=-1) - probs) >= sampling.top_p
        sorted_logits.masked_fill_(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def sample(
    logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V).

    ``noise`` (B, V) of Exp(1) draws may be given instead of a generator (generate draws it for
    every tune of the batch, so a tune's sample does not depend on which others are still running).
    """
    if sampling.temperature <= 0:
        return logits.argmax(dim=-1)
    scores = filter_logits(logits, sampling)
    if noise is None:
        noise = torch.empty_like(scores).exponential_(generator=generator)
    return (scores - noise.log()).argmax(dim=-1)


# ---------------------------------------------------------------------------------------------
# The model's weights laid out for one step at a time


def _norm_affine(norm: nn.Module, size: int):
    """(kind, scale, shift, eps) of a norm in eval mode: kind is "none", "affine" or "layer"."""
    if isinstance(norm, nn.Identity):
        return "none", None, None, 0.0
    if isinstance(norm, nn.LayerNorm):
        if tuple(norm.normalized_shape) != (size,):
            raise ValueError(f"LayerNorm over {norm.normalized_shape}, expected ({size},)")
        ones, zeros = torch.ones(size), torch.zeros(size)
        scale = norm.weight.detach().float() if norm.weight is not None else ones
        shift = norm.bias.detach().float() if norm.bias is not None else zeros
        return "layer", scale, shift, norm.eps
    batch_norms = [m for m in norm.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if len(batch_norms) == 1:
        bn = batch_norms[0]
        if bn.running_mean is None:
            raise ValueError("BatchNorm without running statistics cannot be used for decoding")
        inv = torch.rsqrt(bn.running_var.detach().float() + bn.eps)
        scale = inv * (bn.weight.detach().float() if bn.weight is not None else 1.0)
        shift = (bn.bias.detach().float() if bn.bias is not None else 0.0) - bn.running_mean.detach().float() * scale
        return "affine", scale, shift, 0.0
    raise ValueError(f"cannot decode through norm module {type(norm).__name__}")


def _gate_order(hidden: int) -> torch.Tensor:
    """Row permutation from PyTorch's (i, f, g, o) gate order to (i, f, o, g)."""
    h = hidden
    return torch.cat([torch.arange(0, 2 * h), torch.arange(3 * h, 4 * h), torch.arange(2 * h, 3 * h)])


class _Float:
    """y = x @ W^T + b into a preallocated buffer."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.wt = weight.t().contiguous()  # (in, out): addmm is much faster with this layout
        self.bias = bias.contiguous() if bias is not None else torch.zeros(weight.shape[0])

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.wt, out=out)


class _Int8:
    """y = x @ W^T + b with per-channel int8 weights and dynamically quantised activations."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized-tensor creation is marked deprecated in 2.1x
            scales = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-8).double()
            zeros = torch.zeros(weight.shape[0], dtype=torch.long)
            qweight = torch.quantize_per_channel(weight.contiguous(), scales, zeros, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qweight, bias.contiguous() if bias is not None else None)

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)


@dataclass
class State:
    """Per-layer recurrent state for a batch; ``xh[l]`` holds [input, h] of layer l >= 1."""

    h0: torch.Tensor
    c: list[torch.Tensor]
    xh: list[torch.Tensor]
    label_gates: torch.Tensor | None  # (B, 4H) constant part of layer 0's gates for each tune
    gates: torch.Tensor = field(repr=False, default=None)
    sig: torch.Tensor = field(repr=False, default=None)
    logits: torch.Tensor = field(repr=False, default=None)

    def select(self, rows: torch.Tensor) -> "State":
        pick = lambda t: None if t is None else t.index_select(0, rows)  # noqa: E731
        return State(
            h0=pick(self.h0),
            c=[pick(c) for c in self.c],
            xh=[pick(x) for x in self.xh],
            label_gates=pick(self.label_gates),
            gates=pick(self.gates),
            sig=pick(self.sig),
            logits=pick(self.logits),
        )


class StepModel:
    """A MusicLSTM (eval mode) as a single-step function: ``logits = step(tokens, state)``.

    Reads exactly the contract's submodules: ``embedding``, ``label_embedding`` (or None), ``lstms``
    (single-layer nn.LSTM each), ``norms`` (one per layer, after it), ``dropout`` (identity at
    inference) and ``head``.
    """

    def __init__(self, model: nn.Module, quantize: bool = False):
        self.quantize = quantize
        linear = _Int8 if quantize else _Float
        with torch.no_grad():
            lstms = list(model.lstms)
            norms = list(model.norms)
            if len(norms) != len(lstms):
                raise ValueError(f"{len(lstms)} LSTM layers but {len(norms)} norms")
            self.num_layers = len(lstms)
            self.hidden = hidden = lstms[0].hidden_size
            order = _gate_order(hidden)
            emb = model.embedding.weight.detach().float()
            self.vocab_size = emb.shape[0]

            weights = []
            for i, lstm in enumerate(lstms):
                if lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size:
                    raise ValueError("each entry of model.lstms must be a single-layer unidirectional nn.LSTM")
                w_ih = lstm.weight_ih_l0.detach().float()[order]
                w_hh = lstm.weight_hh_l0.detach().float()[order]
                bias = torch.zeros(4 * hidden)
                if lstm.bias:
                    bias = (lstm.bias_ih_l0.detach().float() + lstm.bias_hh_l0.detach().float())[order]
                weights.append([w_ih, w_hh, bias])

            # Fold each norm's affine part into whatever reads its output.
            self.layer_norm_eps: list[float | None] = []
            head_w = model.head.weight.detach().float().clone()
            head_b = model.head.bias.detach().float().clone() if model.head.bias is not None else torch.zeros(head_w.shape[0])
            for i, norm in enumerate(norms):
                kind, scale, shift, eps = _norm_affine(norm, hidden)
                self.layer_norm_eps.append(eps if kind == "layer" else None)
                if kind == "none":
                    continue
                if i + 1 < self.num_layers:
                    w_ih, _, bias = weights[i + 1]
                    weights[i + 1][2] = bias + w_ih @ shift
                    weights[i + 1][0] = w_ih * scale
                else:
                    head_b = head_b + head_w @ shift
                    head_w = head_w * scale

            w_ih0, w_hh0, b0 = weights[0]
            self.token_gates = (emb @ w_ih0.t() + b0).contiguous()  # (V, 4H): layer 0's input, by token
            self.label_table = None
            if getattr(model, "label_embedding", None) is not None:
                self.label_table = (model.label_embedding.weight.detach().float() @ w_ih0.t()).contiguous()
            self.hh0 = linear(w_hh0, None)
            self.layers = [linear(torch.cat([w_ih, w_hh], dim=1), bias) for w_ih, w_hh, bias in weights[1:]]
            self.head = linear(head_w, head_b)

    def init_state(self, label_rows: torch.Tensor | None) -> State:
        """Zero state for a batch; ``label_rows`` (B,) are indices into the model's labels."""
        if label_rows is None:
            raise ValueError("label_rows gives the batch size and each tune's label")
        b, h = len(label_rows), self.hidden
        label_gates = self.label_table.index_select(0, label_rows) if self.label_table is not None else None
        return State(
            h0=torch.zeros(b, h),
            c=[torch.zeros(b, h) for _ in range(self.num_layers)],
            xh=[torch.zeros(b, 2 * h) for _ in range(self.num_layers - 1)],
            label_gates=label_gates,
            gates=torch.empty(b, 4 * h),
            sig=torch.empty(b, 3 * h),
            logits=torch.empty(b, self.vocab_size),
        )

    def _cell(self, gates: torch.Tensor, c: torch.Tensor, sig: torch.Tensor, h_out: torch.Tensor) -> None:
        h = self.hidden
        torch.sigmoid(gates[:, : 3 * h], out=sig)
        g = torch.tanh(gates[:, 3 * h :])
        c.mul_(sig[:, h : 2 * h]).addcmul_(sig[:, :h], g)
        torch.mul(sig[:, 2 * h :], torch.tanh(c), out=h_out)

    def step(self, tokens: torch.Tensor, state: State) -> torch.Tensor:
        """Advance every tune by one token; returns the logits (B, V) for the next one (a buffer)."""
        h = self.hidden
        gates = torch.index_select(self.token_gates, 0, tokens, out=state.gates)
        if state.label_gates is not None:
            gates += state.label_gates
        if self.quantize:
            gates += self.hh0(state.h0, out=None)
        else:
            gates.addmm_(state.h0, self.hh0.wt)
        self._cell(gates, state.c[0], state.sig, state.h0)
        out = state.h0
        for i, layer in enumerate(self.layers, start=1):
            xh = state.xh[i - 1]
            eps = self.layer_norm_eps[i - 1]
            xh[:, :h].copy_(F.layer_norm(out, (h,), eps=eps) if eps is not None else out)
            gates = layer(xh, out=state.gates)
            self._cell(gates, state.c[i], state.sig, xh[:, h:])
            out = xh[:, h:]
        eps = self.layer_norm_eps[-1]
        if eps is not None:
            out = F.layer_norm(out, (h,), eps=eps)
        return self.head(out, out=state.logits)


# ---------------------------------------------------------------------------------------------
# Batched generation


@dataclass
class Generated:
    """Token ids each tune produced after its prefix (no </s>), and how each one ended."""

    tokens: list[list[int]]
    ended: list[bool]  # True: the tune wrote </s>; False: stopped at the length limit
    seconds: float
    steps: int  # model steps taken (prefix + generated), for the slowest tune

    @property
    def num_chars(self) -> int:
        return sum(len(t) for t in self.tokens)


class _Saved:
    """The recurrent state of every tune where its current bar began (for bar-aware decoding)."""

    def __init__(self, state: State):
        self.h0 = state.h0.clone()
        self.c = [c.clone() for c in state.c]
        self.xh = [x.clone() for x in state.xh]

    def save(self, state: State, rows: torch.Tensor, tunes: torch.Tensor) -> None:
        self.h0[tunes] = state.h0[rows]
        for mine, live in zip(self.c + self.xh, state.c + state.xh):
            mine[tunes] = live[rows]

    def restore(self, state: State, rows: torch.Tensor, tunes: torch.Tensor) -> None:
        state.h0[rows] = self.h0[tunes]
        for mine, live in zip(self.c + self.xh, state.c + state.xh):
            live[rows] = mine[tunes]

    def take(self, other: "_Saved", tunes: torch.Tensor) -> None:
        for mine, theirs in zip([self.h0, *self.c, *self.xh], [other.h0, *other.c, *other.xh]):
            mine[tunes] = theirs[tunes]


@torch.inference_mode()
def generate(
    step_model: StepModel,
    prefixes: list[list[int]],
    label_rows: list[int],
    max_new: int,
    eos_id: int,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    stop_at_eos: bool = True,
    compact: bool = True,
    guard=None,
) -> Generated:
    """Sample up to ``max_new`` tokens after each prefix, all tunes in one batch.

    ``prefixes[i]`` (e.g. ``[<label>, <s>, *prompt]``) is fed first; prefixes may differ in length.
    A tune stops at ``eos_id`` (when ``stop_at_eos``) or after ``max_new`` tokens. With ``compact``
    finished tunes leave the batch, so the rest run on a smaller matrix; the random draws are made
    for every tune at every step, so compacting does not change what a tune samples.

    ``guard`` (a :class:`plugins.music_lstm.bars.BarGuard`) makes decoding bar-aware: when a tune
    writes a barline that closes a bar of the wrong length, that tune goes back to the state where
    the bar began and samples it again, while the other tunes carry on.
    """
    if not prefixes or any(len(p) == 0 for p in prefixes):
        raise ValueError("every tune needs a non-empty prefix")
    if len(label_rows) != len(prefixes):
        raise ValueError("one label row per prefix")
    n = len(prefixes)
    longest = max(len(p) for p in prefixes)
    total = longest + max_new
    gen = torch.Generator().manual_seed(int(seed))
    start = time.perf_counter()

    # seq[i] = prefix then sampled tokens; forced[i, t] says position t is still prefix.
    # One spare column at the end: finished tunes still in the batch write there.
    seq = torch.full((n, total + 1), eos_id, dtype=torch.long)
    forced = torch.zeros((n, total + 1), dtype=torch.bool)
    for i, p in enumerate(prefixes):
        seq[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        forced[i, : len(p)] = True
    prefix_len = torch.tensor([len(p) for p in prefixes])
    limit = prefix_len + max_new  # first position a tune may not write
    end = limit.clone()  # where each tune's sequence stops (its </s> or the limit)
    ended = torch.zeros(n, dtype=torch.bool)

    rows = torch.arange(n)  # batch row -> tune index
    state = step_model.init_state(torch.tensor(label_rows, dtype=torch.long))
    tokens = seq[:, 0].clone()
    pos = torch.ones(n, dtype=torch.long)  # the position each tune writes next
    done = torch.zeros(n, dtype=torch.bool)
    any_done = False
    saved = None
    max_steps = total - 1
    if guard is not None:
        guard.reset(n, max_new)
        # where each tune's current bar began; where a pending short bar would begin the next; the start
        saved, tentative, initial = _Saved(state), _Saved(state), _Saved(state)
        max_steps += guard.allowance  # resampled characters come out of each tune's allowance
    steps = 0
    banned = None  # (n, V): tokens a tune may not sample now (its form writes them itself)
    if guard is not None and guard.end_banned:
        banned = torch.zeros(n, step_model.vocab_size, dtype=torch.bool)
        banned[:, eos_id] = True
    for _ in range(max_steps):
        logits = step_model.step(tokens, state)
        steps += 1
        if banned is not None:
            logits.masked_fill_(banned if len(rows) == n else banned.index_select(0, rows), float("-inf"))
        noise = None
        if sampling.temperature > 0:
            noise = torch.empty(n, step_model.vocab_size).exponential_(generator=gen)
            noise = noise if len(rows) == n else noise.index_select(0, rows)
        nxt = sample(logits, sampling, noise=noise)
        at = pos if len(rows) == n else pos[rows]
        keep = None
        if steps < longest or (guard is not None and int(at.min()) < longest):  # feeding some prefix
            keep = forced[rows, at]
            nxt = torch.where(keep, seq[rows, at], nxt)
        if guard is not None and guard.forced:
            nxt = _force(guard, rows, at, nxt, keep)
        seq[rows, at] = nxt
        if guard is not None:
            at = _referee(guard, seq, rows, at, nxt, keep, done if any_done else None, state, (saved, tentative, initial),
                          eos_id, banned)
            nxt = seq[rows, at]
        if len(rows) == n:
            pos = (at + 1).clamp_(max=total)
        else:
            pos[rows] = (at + 1).clamp_(max=total)
        over = at >= limit[rows] - 1  # the tune's last allowed position
        if stop_at_eos:
            hit = nxt == eos_id
            if keep is not None:
                hit &= ~keep
            if any_done:
                hit &= ~done
            if bool(hit.any()):
                ended[rows[hit]] = True
                end[rows[hit]] = at[hit]
                over = over | hit
        newly = over & ~done if any_done else over
        if bool(newly.any()):
            done = done | newly
            any_done = True
            if bool(done.all()):
                break
            # Drop finished tunes from the batch once a quarter of it is idle.
            if compact and int(done.sum()) * 4 >= len(rows):
                live = (~done).nonzero().squeeze(1)
                state = state.select(live)
                rows, nxt, done = rows[live], nxt[live], done[live]
                any_done = bool(done.any())
        tokens = nxt
    else:
        # Out of steps (bar-aware decoding used up every allowance): the unfinished tunes stop here.
        unfinished = rows[~done]
        end[unfinished] = pos[unfinished]
    seconds = time.perf_counter() - start

    out = []
    for i in range(n):
        stop = int(end[i]) if ended[i] else int(min(end[i], limit[i]))
        out.append(seq[i, int(prefix_len[i]) : stop].tolist())
    return Generated(tokens=out, ended=ended.tolist(), seconds=seconds, steps=steps)


def _force(guard, rows, at, nxt, keep) -> torch.Tensor:
    """The tokens a tune's form writes itself (its section barlines, its end) replace the samples."""
    nxt = nxt.clone()
    row_of = {tune: r for r, tune in enumerate(rows.tolist())}
    for tune, tokens in guard.forced.items():
        r = row_of.get(tune)
        if r is None or (keep is not None and bool(keep[r])):
            continue
        token = tokens.get(int(at[r]))
        if token is not None:
            nxt[r] = token
    return nxt


def _referee(guard, seq, rows, at, nxt, keep, done, state, snapshots, eos_id=None, banned=None) -> torch.Tensor:
    """Ask ``guard`` about every barline just written (and about the character after a pending
    short bar, and about a tune's end when it watches ends); save the state where a new bar begins,
    send a tune whose bar is rejected back to where that bar began (or to its start, for a restart).
    Returns each row's position."""
    saved, tentative, initial = snapshots
    barlines = nxt == guard.bar_id
    if done is not None:
        barlines &= ~done
    ends = None
    if guard.watches_ends:
        ends = nxt == eos_id
        if keep is not None:
            ends &= ~keep
        if done is not None:
            ends &= ~done
        if not bool(ends.any()):
            ends = None
    if not guard.pending and ends is None and not bool(barlines.any()):
        return at
    at = at.clone()
    new_bar, pend, promote, back, restart = [], [], [], [], []

    def act(r: int, verdict: int, on_keep: list) -> None:
        if verdict == guard.NEW_BAR:
            on_keep.append(r)
        elif verdict == guard.PENDING:
            pend.append(r)
        elif verdict == guard.RESTART:
            restart.append(r)
            at[r] = 0
        elif verdict > 0:
            back.append(r)
            at[r] = verdict

    if guard.pending:
        row_of = {tune: r for r, tune in enumerate(rows.tolist())}
        for tune in list(guard.pending):
            r = row_of.get(tune)
            if r is None or (done is not None and bool(done[r])):
                continue
            act(r, guard.resolve(tune, int(nxt[r]), int(at[r])), promote)
    for r in barlines.nonzero().squeeze(1).tolist():
        if r in back or r in restart:
            continue
        tune, p = int(rows[r]), int(at[r])
        forced = bool(keep[r]) if keep is not None else False
        act(r, guard.barline(tune, seq[tune, : p + 1].tolist(), forced=forced), new_bar)
    if ends is not None:
        for r in ends.nonzero().squeeze(1).tolist():
            if r not in back and r not in restart:
                act(r, guard.tune_end(int(rows[r]), seq[int(rows[r]), : int(at[r])].tolist()), [])
    for r in new_bar + promote:
        tune = int(rows[r])
        token = guard.forced.get(tune, {}).get(int(at[r]))
        if token is not None:  # the form's barline starts on the '|' just written (':' of ':|')
            seq[tune, int(at[r])] = token
    if banned is not None and guard.colon_id is not None and guard.form is not None:
        for r in new_bar + restart:  # no repeat sign of the model's own once the body has begun
            tune = int(rows[r])
            banned[tune, guard.colon_id] = guard.in_body(tune)
    if promote:
        saved.take(tentative, rows[torch.tensor(promote)])
    for chosen, snapshot, save in ((new_bar, saved, True), (pend, tentative, True), (back, saved, False), (restart, initial, False)):
        if chosen:
            r = torch.tensor(chosen)
            (snapshot.save if save else snapshot.restore)(state, r, rows[r])
    return at


@torch.inference_mode()
def window_generate(
    model: nn.Module,
    prefixes: list[list[int]],
    label_rows: list[int],
    max_new: int,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    window: int = 100,
) -> Generated:
    """The original's way, kept for the benchmark: re-run the network over the last ``window``
    tokens for every token it writes (no state carried). Prefixes must have equal length."""
    if len({len(p) for p in prefixes}) != 1:
        raise ValueError("window_generate needs prefixes of equal length")
    gen = torch.Generator().manual_seed(int(seed))
    seq = torch.tensor(prefixes, dtype=torch.long)
    labels = torch.tensor(label_rows, dtype=torch.long)
    start = time.perf_counter()
    for _ in range(max_new):
        logits, _ = model(seq[:, -window:], labels)
        nxt = sample(logits[:, -1], sampling, gen)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    seconds = time.perf_counter() - start
    p = len(prefixes[0])
    return Generated(tokens=seq[:, p:].tolist(), ended=[False] * len(prefixes), seconds=seconds, steps=max_new)


@torch.inference_mode()
def sequence_nll(step_model: StepModel, sequences: list[list[int]], label_rows: list[int], skip: int = 1) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of each sequence's tokens after its first ``skip``,
    predicted one step at a time by ``step_model`` (teacher forcing), and the number of tokens.

    Lets the benchmark measure what int8 costs in bits per character on exactly the decoding path.
    """
    n = len(sequences)
    lengths = torch.tensor([len(s) for s in sequences])
    total_len = int(lengths.max())
    seq = torch.zeros((n, total_len), dtype=torch.long)
    for i, s in enumerate(sequences):
        seq[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    state = step_model.init_state(torch.tensor(label_rows, dtype=torch.long))
    nll, count = 0.0, 0
    for t in range(total_len - 1):
        logits = step_model.step(seq[:, t], state)
        valid = (t + 1 < lengths) & (t + 1 >= skip)
        if bool(valid.any()):
            logp = torch.log_softmax(logits[valid], dim=-1)
            nll -= float(logp.gather(1, seq[valid, t + 1 : t + 2]).sum())
            count += int(valid.sum())
    return nll, count
