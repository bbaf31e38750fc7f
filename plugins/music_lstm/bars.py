"""Bar lengths of ABC text as it is written, for bar-aware decoding.

A character-level model writes a bar one character at a time and has no counter of how much of
the bar it has filled, so a small model often writes a bar a beat too long or too short. The
decoder (:func:`plugins.music_lstm.decoding.generate` with a :class:`BarGuard`) asks this module,
each time a tune writes a barline, whether the bar it closes has its metre's length, and if not
samples that bar again from the state where it began.

:func:`bar_length` reads one bar of ABC body text (notes, rests, chords, tuplets, broken rhythm,
grace notes, decorations, chord symbols, inline fields) and returns its length in whole notes.
It mirrors what :func:`plugins.music_lstm.abc_check.check` measures with music21, which stays the
judge: the guard's rules are those of the check (the first bar is a free pickup, two short bars
that add up to one full bar pass, a bar of exactly k full bars passes).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from fractions import Fraction

from plugins.music_lstm.abc import INLINE_FIELD, field_line
from plugins.music_lstm.abc_check import DEFAULT_HEADER, split_header

# One token of a bar's text. Order matters: strings, decorations, graces and inline fields are
# skipped whole before anything inside them is read as a note. Field lines and inline fields are
# recognised by abc.py's lexer (field_line, INLINE_FIELD), the one definition of both.
_TOKEN = re.compile(
    r"""
    (?P<skip>"[^"]*"|![^!\n]*!|\+[^+\n]*\+|\{[^}]*\}|[\s\-)~.HLMOPSTuvy`'\\]|\((?![2-9]))
  | (?P<field>""" + INLINE_FIELD.pattern + r""")
  | (?P<tuplet>\((?P<p>[2-9])(?::(?P<q>[2-9]?))?(?::(?P<r>[2-9]?))?)
  | (?P<chord>\[(?P<inner>[^\]\[|]*)\])(?P<clen>[0-9]*(?:/+[0-9]*)*)
  | (?P<note>[=^_]*[A-Ga-gzx][,']*)(?P<len>[0-9]*(?:/+[0-9]*)*)
  | (?P<broken>[<>]{1,3})
  | (?P<bars>[ZX])(?P<zlen>[0-9]*)
    """,
    re.VERBOSE,
)
# What a bar's text may start with: the rest of the barline that opened it (``|]``, ``||``,
# ``|:``), and an ending number (``|1``, ``:|2``, ``[1``, ``[2,3``).
_LEAD = re.compile(r"^[\]|:\s]*(?:\[?[0-9][0-9,\-]*)?")
_INNER_NOTE = re.compile(r"[=^_]*[A-Ga-g][,']*([0-9]*(?:/+[0-9]*)*)")


SHORT = "short"  # a bar shorter than its metre: fine at a section end, wrong anywhere else
SECTION_END = ("|", "]", ":")  # what may follow the '|' after a short bar: '||', '|]', '|:'


class Unreadable(ValueError):
    """Bar text with something that is neither music nor a known decoration (no judgement)."""


def note_length(spec: str) -> Fraction:
    """ABC length suffix as a multiple of the unit: '' 1, '2' 2, '/' 1/2, '//' 1/4, '3/2', '/4'."""
    if not spec:
        return Fraction(1)
    if "/" not in spec:
        return Fraction(int(spec))
    head, _, rest = spec.partition("/")
    num = int(head) if head else 1
    if rest == "" or set(rest) == {"/"}:
        return Fraction(num, 2 ** (1 + len(rest)))  # '/' halves, '//' quarters, ...
    if "/" in rest:
        raise Unreadable(spec)
    return Fraction(num, int(rest))


def metre_length(value: str | None) -> Fraction | None:
    """A bar's length in whole notes for an M: value ('6/8', 'C', 'C|', '2+3/8'); None: free metre."""
    value = (value or "").strip()
    if value == "C":
        return Fraction(1)
    if value == "C|":
        return Fraction(1)
    m = re.fullmatch(r"(\d+(?:\+\d+)*)/(\d+)", value)
    if not m:
        return None
    return Fraction(sum(int(x) for x in m.group(1).split("+")), int(m.group(2)))


def unit_length(value: str | None) -> Fraction | None:
    m = re.fullmatch(r"\s*(\d+)/(\d+)\s*", value or "")
    return Fraction(int(m.group(1)), int(m.group(2))) if m else None


def _tuplet_ratio(p: int, q: str | None, compound: bool) -> Fraction:
    if q:
        return Fraction(int(q), p)
    default = {2: 3, 3: 2, 4: 3, 6: 2, 8: 3}.get(p, 3 if compound else 2)
    return Fraction(default, p)


@dataclass
class Bar:
    length: Fraction  # in whole notes
    notes: int  # notes, rests and chords in the bar
    fields: dict  # fields set inside the bar (M, L, K, ...), which apply from here on
    whole_bars: int = 0  # a multi-bar rest Z/X: how many bars it stands for


def _set_field(fields: dict[str, str], name: str, value: str, unit: Fraction) -> Fraction:
    """Record a field set inside a bar; returns the unit note length from here on."""
    if name == "+":  # a continuation line adds to the field before it, which a bar never needs
        return unit
    fields[name] = value.strip()
    return unit_length(value) or unit if name == "L" else unit


def bar_length(text: str, unit: Fraction, compound: bool = False) -> Bar:
    """Read one bar's body text (without its closing barline) at unit note length ``unit``."""
    text = _LEAD.sub("", text, count=1)
    total = Fraction(0)
    notes = 0
    fields: dict[str, str] = {}
    tuplet: list = []  # [ratio, notes left]
    previous: Fraction | None = None  # the last note's length, for broken rhythm
    pending_broken: Fraction | None = None  # factor for the next note after '>' or '<'
    whole_bars = 0
    pos = 0
    while pos < len(text):
        if pos == 0 or text[pos - 1] == "\n":  # a field line (M:, L:, K: ...) inside the bar's text
            end = text.find("\n", pos)
            end = len(text) if end < 0 else end
            line = field_line(text[pos:end])
            if line is not None:
                pos = end
                unit = _set_field(fields, line.group(1), line.group(2), unit)
                continue
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos] in ":|[]":
                pos += 1  # stray barline characters (a ':' of ':|' before the bar's '|')
                continue
            raise Unreadable(text[pos])
        pos = m.end()
        if m.group("skip") is not None:
            continue
        if m.group("field") is not None:
            inline = INLINE_FIELD.fullmatch(m.group("field"))
            unit = _set_field(fields, inline.group(1), inline.group(2), unit)
            continue
        if m.group("tuplet") is not None:
            p = int(m.group("p"))
            r = int(m.group("r")) if m.group("r") else p
            tuplet = [_tuplet_ratio(p, m.group("q"), compound), r]
            continue
        if m.group("broken") is not None:
            if previous is None:
                raise Unreadable(m.group("broken"))
            k = len(m.group("broken"))
            long, short = 2 - Fraction(1, 2**k), Fraction(1, 2**k)
            first, second = (long, short) if m.group("broken")[0] == ">" else (short, long)
            total += previous * (first - 1)  # stretch or shrink the note already counted
            pending_broken = second
            continue
        if m.group("bars") is not None:
            whole_bars += int(m.group("zlen") or 1)
            continue
        if m.group("chord") is not None:
            inner = _INNER_NOTE.match(m.group("inner").strip())
            if inner is None:
                raise Unreadable(m.group("chord"))
            length = note_length(inner.group(1)) * note_length(m.group("clen"))
        else:
            length = note_length(m.group("len"))
        length *= unit
        if tuplet:
            length *= tuplet[0]
            tuplet[1] -= 1
            if tuplet[1] <= 0:
                tuplet = []
        if pending_broken is not None:
            length *= pending_broken
            pending_broken = None
        total += length
        previous = length
        notes += 1
    return Bar(total, notes, fields, whole_bars)


class TuneBars:
    """Follows one tune bar by bar and says whether each bar it closes is acceptable.

    Acceptable, as in the music21 check: the first bar (a pickup) is free; later bars hold exactly
    the metre's length, or a whole number of bars; a short bar passes when the next one completes
    it. A bar that changes the metre or unit length, or that cannot be read, is not judged.
    ``::`` counts as a barline, as it does for music21.
    """

    def __init__(self, header_text: str, defaults: dict | None = None):
        defaults = {**DEFAULT_HEADER, **(defaults or {})}
        fields = dict(split_header(header_text)[0])
        self.metre = metre_length(fields.get("M")) if "M" in fields else metre_length(defaults["M"])
        self.unit = unit_length(fields.get("L")) or unit_length(defaults["L"]) or Fraction(1, 8)
        self.compound = self._compound(fields.get("M", defaults["M"]))
        self.bars = 0
        self.debt: Fraction | None = None  # what the bar after a short one must hold
        self.count = 0  # written bars, as a score numbers them (see :meth:`_counts`)

    @staticmethod
    def _compound(metre: str | None) -> bool:
        m = re.fullmatch(r"\s*(\d+)/\d+\s*", metre or "")
        return bool(m) and int(m.group(1)) in (6, 9, 12)

    def judge(self, text: str) -> bool | str | None:
        """Would this bar (its body text) pass? True / False; :data:`SHORT` for a short bar, which
        passes only at a section end (``||``, ``|]``, ``|:``); None when it has no notes (a
        barline's second character, or only a field) or cannot be judged. Does not change the state.

        ``::`` inside the text is a barline too (end one repeat, start the next), so the text may
        hold more than one bar; all must pass."""
        probe = copy.copy(self)
        verdicts = []
        for part in _split_double_colon(text):
            verdicts.append(probe._judge_one(part))
            probe._accept_one(part)
        if False in verdicts:
            return False
        if SHORT in verdicts:
            return SHORT
        return True if True in verdicts else None

    def accept(self, text: str) -> None:
        """Record a bar the tune keeps (whatever judge said)."""
        for part in _split_double_colon(text):
            self._accept_one(part)

    def _judge_one(self, text: str) -> bool | None:
        try:
            bar = bar_length(text, self.unit, self.compound)
        except Unreadable as e:
            return False if str(e).isalpha() else None  # a stray letter is no note: music21 chokes on it
        except (ValueError, ZeroDivisionError):
            return None
        if _changes_length(bar) or (bar.notes == 0 and not bar.whole_bars):
            return None
        if self.bars == 0 or self.metre is None:
            return True
        length, full = bar.length + bar.whole_bars * self.metre, self.metre
        if self.debt is not None:
            return length == self.debt
        if length > 0 and length % full == 0:
            return True
        # A short bar passes only where a section ends and the next bar completes it; anywhere
        # else it is the model losing count. Before ':|' the section end is already written;
        # otherwise it is SHORT: the character after the '|' decides (see BarGuard).
        if length > full:
            return False
        return True if text.rstrip().endswith(":") else SHORT

    def _counts(self, bar: Bar, length: Fraction, first: bool) -> int:
        """How many written bars this one is, as a score numbers them: a pickup (a short first
        bar) is not counted; two short bars around a section line are one; a bar of k whole bars
        (a barline left out, a multi-bar rest) is k."""
        if self.metre is None or _changes_length(bar) or self.debt is not None:
            return 1
        if 0 < length < self.metre:
            return 0  # a pickup, or the first half of a split bar (the next one counts)
        if length > 0 and length % self.metre == 0:
            return int(length // self.metre)
        return 1

    def _accept_one(self, text: str) -> None:
        try:
            bar = bar_length(text, self.unit, self.compound)
        except (Unreadable, ValueError, ZeroDivisionError):
            self.bars += 1
            self.count += 1
            self.debt = None
            return
        if "M" in bar.fields:
            self.metre = metre_length(bar.fields["M"])
            self.compound = self._compound(bar.fields["M"])
        if bar.fields.get("L") and unit_length(bar.fields["L"]):
            self.unit = unit_length(bar.fields["L"])
        if bar.notes == 0 and not bar.whole_bars:
            return
        first = self.bars == 0
        self.bars += 1
        length = bar.length + bar.whole_bars * (self.metre or 0)
        self.count += self._counts(bar, length, first)
        if first or self.metre is None or _changes_length(bar) or self.debt is not None:
            self.debt = None
        elif 0 < length < self.metre:
            self.debt = self.metre - length
        else:
            self.debt = None


def count_bars(abc: str, defaults: dict | None = None) -> int:
    """Written bars of a tune (header and body), counted as :class:`TuneBars` counts them while a
    tune is written: repeats are not expanded, a pickup is not counted, a final bar without a
    closing barline is."""
    header, body = split_header(abc)
    bars = TuneBars("\n".join(f"{k}:{v}" for k, v in header if k not in ("X", "T")), defaults)
    for part in _strip_strings(body).split("|"):
        bars.accept(part)
    return bars.count


def _strip_strings(text: str) -> str:
    return re.sub(r'"[^"\n]*"', lambda m: " " * len(m.group(0)), text)


def _changes_length(bar: Bar) -> bool:
    """A bar that sets M: or L: is measured in two systems at once: it is not judged."""
    return "M" in bar.fields or "L" in bar.fields


def _split_double_colon(text: str) -> list[str]:
    """Bars separated by ``::``; each but the last ends at a section line (marked by ':')."""
    if "::" not in text:
        return [text]
    parts = text.split("::")
    return [part + ":" for part in parts[:-1]] + [parts[-1]]


# ---------------------------------------------------------------------------------------------
# The shape of a whole tune: generate.bars and generate.form

DEFAULT_SECTION_BARS = 8  # a form without a bar count: eight bars a section, as most dance tunes


@dataclass(frozen=True)
class Section:
    letter: str
    bars: int
    repeat_start: bool  # the section opens a repeat (|:)
    repeat_end: bool  # the section closes a repeat (:|)


@dataclass(frozen=True)
class Form:
    """The written sections of a tune, in order, each with its number of written bars.

    ``AABB``: two sections, each written once between repeat signs (``|: A :|: B :|``); ``ABAB``:
    ``|: A || B :|``; ``AB``: ``A || B |]``; a bar count alone is one section. Repeats are not
    expanded: the bar count is the score's, so ``AABB`` with 16 bars is two 8-bar sections.
    """

    sections: tuple[Section, ...]

    @property
    def bars(self) -> int:
        return sum(s.bars for s in self.sections)

    @property
    def ends(self) -> list[int]:
        """The written-bar count at which each section ends."""
        out, total = [], 0
        for s in self.sections:
            total += s.bars
            out.append(total)
        return out

    @classmethod
    def parse(cls, form: str | None = None, bars: int | None = None) -> "Form | None":
        """The shape asked for by ``generate.form`` and/or ``generate.bars`` (None: the model's choice).
        Raises ValueError with a message a user can act on."""
        form = (form or "").strip().upper()
        if bars is not None and int(bars) < 1:
            raise ValueError(f"bars must be >= 1, got {bars}")
        if not form:
            return None if bars is None else cls((Section("A", int(bars), False, False),))
        if not re.fullmatch(r"[A-Z]{1,16}", form):
            raise ValueError(f"form {form!r}: use up to 16 section letters, e.g. AABB, ABAB, AB")
        half = form[: len(form) // 2]
        if len(form) % 2 == 0 and len(half) > 1 and half * 2 == form and len(set(half)) == len(half):
            parts = [(half, True)]  # ABAB: the whole AB is repeated
        else:
            parts = [(m.group(0), len(m.group(0)) == 2) for m in re.finditer(r"(.)\1*", form)]
            if any(len(run) > 2 for run, _ in parts):
                raise ValueError(f"form {form!r}: a section is repeated at most twice in a row (AABB, not AAAB)")
            parts = [(run[0], repeated) for run, repeated in parts]
        letters = [letter for written, _ in parts for letter in written]
        if len(set(letters)) != len(letters):
            raise ValueError(f"form {form!r}: a section that comes back after another (ABA) is not supported; "
                             "use repeats: AABB, ABAB, AABBCC")
        if bars is None:
            per = DEFAULT_SECTION_BARS
        elif int(bars) % len(letters):
            raise ValueError(f"bars={bars} does not divide into the {len(letters)} written sections of form {form!r}")
        else:
            per = int(bars) // len(letters)
        sections = []
        for written, repeated in parts:
            for i, letter in enumerate(written):
                sections.append(Section(letter, per, repeated and i == 0, repeated and i == len(written) - 1))
        return cls(tuple(sections))


# ---------------------------------------------------------------------------------------------
# Bar-aware decoding


class BarGuard:
    """The decoder's referee: each time a tune writes ``|``, is the bar it closes acceptable?

    :func:`plugins.music_lstm.decoding.generate` calls :meth:`barline` with the tune's tokens so
    far. The answer is :data:`SAME_BAR` (keep it; no bar was closed: the second character of
    ``||``, a barline after only a field), :data:`NEW_BAR` (keep it; the decoder saves the LSTM
    state here, where the next bar begins), or the position of the barline that began the bar, to
    sample the bar again from there. A bar gets ``retries`` new draws; when none fits, the tune
    starts again from its first token (:data:`RESTART`, at most ``restarts`` times); after that,
    or once a tune has thrown away ``budget`` times its length limit, a bar is kept as written.
    ``judge=False`` keeps every bar as written (it still counts them, for ``form`` and ``min_bars``).

    With a ``form`` (:class:`Form`) the tune is written to that shape: the end token is not
    accepted (the decoder masks it, :attr:`end_banned`), nor a repeat sign of the model's own
    (``:`` in the body, :attr:`colon_id`); when a section's last bar is closed, the guard writes
    its barline (``:|``, ``||``, ``|:``, ``|]``) and, after the last one, the end token, as
    :attr:`forced` tokens the decoder puts in place of its samples. Without a form, a tune that
    ends with fewer than ``min_bars`` written bars is drawn again from its start, as long as its
    budget lasts (:meth:`tune_end`).

    ``listener(event, tune, text, bars)`` (optional) hears of every bar as the tune keeps it
    (``"bar"``, ``text`` the tune so far with its barline), every bar drawn again (``"redraw"``,
    ``text`` with the rejected bar) and every fresh start (``"restart"``); the studio streams them.
    """

    SAME_BAR, NEW_BAR, RESTART = -2, -1, 0  # RESTART: position 0, the tune's first token
    PENDING = -3  # a short bar: keep it for now, the next character decides (see :meth:`resolve`)

    def __init__(
        self,
        tokens: list[str],
        retries: int = 4,
        restarts: int = 2,
        budget: float = 2.0,
        header_defaults: dict | None = None,
        judge: bool = True,
        form: Form | None = None,
        min_bars: int = 0,
        listener=None,
    ):
        if "|" not in tokens:
            raise ValueError("the vocabulary has no '|': bar-aware decoding needs barlines")
        if form is not None and not {":", "]"} <= set(tokens):
            raise ValueError("the vocabulary has no ':' or ']': the model cannot write repeat signs for a form")
        if int(retries) < 0 or int(restarts) < 0 or float(budget) < 0 or int(min_bars) < 0:
            raise ValueError("retries, restarts, budget and min_bars must be >= 0")
        self.tokens = tokens
        self.chars = [t if len(t) == 1 else "" for t in tokens]  # special and label tokens write nothing
        self.bar_id = tokens.index("|")
        self.colon_id = tokens.index(":") if ":" in tokens else None
        self.close_id = tokens.index("]") if "]" in tokens else None
        self.eos_id = tokens.index("</s>") if "</s>" in tokens else None
        self.retries = int(retries)
        self.restarts = int(restarts)
        self.budget = float(budget)
        self.header_defaults = header_defaults
        self.judging = bool(judge)
        self.form = form
        self.min_bars = 0 if form is not None else int(min_bars)
        self.listener = listener
        self.reset(0, 0)

    @property
    def end_banned(self) -> bool:
        """The decoder must not sample the end token: the form writes it."""
        return self.form is not None

    @property
    def watches_ends(self) -> bool:
        return self.min_bars > 0

    def reset(self, num_tunes: int, max_new: int) -> None:
        self.tunes: list[TuneBars | None] = [None] * num_tunes
        self.bar_start = [0] * num_tunes
        self.tries = [0] * num_tunes
        self.pending: dict[int, tuple[int, str, list[int]]] = {}  # tune -> (position of its '|', bar text, tokens)
        self.restarted = [0] * num_tunes
        self.spent = [0] * num_tunes  # characters thrown away by resampling, per tune
        self.section = [0] * num_tunes  # the form's section each tune is writing
        self.forced: dict[int, dict[int, int]] = {}  # tune -> {position: token the form writes there}
        self.allowance = int(self.budget * max_new)
        self.checked = self.resampled = self.kept_bad = self.restarts_made = self.redrawn_short = 0

    def text(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def in_body(self, tune: int) -> bool:
        """Has the tune written its first barline (so its header is done)?"""
        return self.tunes[tune] is not None

    def bars_written(self, tune: int) -> int:
        bars = self.tunes[tune]
        return 0 if bars is None else bars.count

    def _tell(self, event: str, tune: int, text: str) -> None:
        if self.listener is not None:
            self.listener(event, tune, text, self.bars_written(tune))

    def barline(self, tune: int, ids: list[int], forced: bool = False) -> int:
        """``ids``: the tune's tokens up to and including the ``|`` it just wrote."""
        p = len(ids) - 1
        bars = self.tunes[tune]
        if bars is None:  # the first barline: the text before it is the header and the first bar
            header, body = split_header(self.text(ids[:p]))
            bars = self.tunes[tune] = TuneBars("\n".join(f"{k}:{v}" for k, v in header), self.header_defaults)
            bars.accept(body)
            self.bar_start[tune] = p
            self._kept(tune, p, ids, first=True, prefix=forced)
            return self.NEW_BAR
        start = self.bar_start[tune]
        text = self.text(ids[start + 1 : p])
        verdict = None if forced or not self.judging else bars.judge(text)
        if verdict is None and not forced:
            try:
                bar = bar_length(text, bars.unit, bars.compound)
                if bar.notes == 0 and not bar.whole_bars and not bar.fields:
                    return self.SAME_BAR
            except (Unreadable, ValueError, ZeroDivisionError):
                pass
        if self.form is not None and verdict is not False and not forced:
            # a bar that would run past the end of its section is drawn again like a wrong one
            probe = copy.copy(bars)
            probe.accept(text)
            if probe.count > self.form.ends[min(self.section[tune], len(self.form.sections) - 1)]:
                verdict = False
        if verdict == SHORT:
            self.pending[tune] = (p, text, ids)
            return self.PENDING
        return self._decide(tune, p, text, verdict, ids, prefix=forced)

    def resolve(self, tune: int, token: int, p: int) -> int:
        """The character ``token`` written at ``p`` right after a pending short bar's ``|``: a
        section end (``||``, ``|]``, ``|:``) or the end of the tune keeps the bar (NEW_BAR, its
        barline at ``p - 1``); anything else sends the tune back like any rejected bar."""
        bar_p, text, ids = self.pending.pop(tune)
        char = self.chars[token]
        return self._decide(tune, bar_p, text, char in SECTION_END or char == "", ids, wasted_to=p)

    def tune_end(self, tune: int, ids: list[int]) -> int:
        """The tune wrote its end token (``ids`` up to before it): NEW_BAR keeps the ending;
        RESTART draws a tune shorter than ``min_bars`` written bars again, budget allowing."""
        bars = self.tunes[tune]
        count = 0
        if bars is not None:
            probe = copy.copy(bars)
            probe.accept(self.text(ids[self.bar_start[tune] + 1 :]))  # a last bar without a closing barline
            count = probe.count
        else:
            count = count_bars(self.text(ids), self.header_defaults)
        if count >= self.min_bars or self.spent[tune] + len(ids) > self.allowance:
            return self.NEW_BAR
        self.redrawn_short += 1
        self.spent[tune] += len(ids)
        self._start_over(tune)
        self._tell("restart", tune, "")
        return self.RESTART

    def _start_over(self, tune: int) -> None:
        self.tunes[tune], self.bar_start[tune], self.tries[tune] = None, 0, 0
        self.section[tune] = 0
        self.forced.pop(tune, None)
        self.pending.pop(tune, None)

    def _decide(self, tune: int, p: int, text: str, verdict, ids: list[int], wasted_to: int | None = None,
                prefix: bool = False) -> int:
        bars, start = self.tunes[tune], self.bar_start[tune]
        if verdict is not None:
            self.checked += 1
        if verdict is False:
            wasted = (wasted_to if wasted_to is not None else p) - start
            if self.tries[tune] < self.retries and self.spent[tune] + wasted <= self.allowance:
                self.tries[tune] += 1
                self.spent[tune] += wasted
                self.resampled += 1
                self._tell("redraw", tune, self.text(ids[:p]) + "|")
                return start
            # No draw of this bar fits: usually the tune's body does not follow its own header (a
            # reel under M:3/4). Start the tune again, header and all.
            end = wasted_to if wasted_to is not None else p
            if self.restarted[tune] < self.restarts and self.spent[tune] + end <= self.allowance:
                self.restarted[tune] += 1
                self.restarts_made += 1
                self.spent[tune] += end
                self._start_over(tune)
                self._tell("restart", tune, "")
                return self.RESTART
            self.kept_bad += 1
        bars.accept(text)
        self.bar_start[tune] = p
        self.tries[tune] = 0
        self._kept(tune, p, ids, prefix=prefix)
        return self.NEW_BAR

    def _kept(self, tune: int, p: int, ids: list[int], first: bool = False, prefix: bool = False) -> None:
        """A bar closed at ``p`` is kept: write the form's barline where a section ends, tell the listener.
        In the prompt (``prefix``) the section is counted, but its barline is the prompt's own."""
        barline = "|"
        if self.form is not None:
            barline = self._section_barline(tune, p, first)
            if prefix:
                self.forced.pop(tune, None)
                barline = "|"
        if not prefix and not (first and self.tunes[tune].bars == 0):  # a '|' that opens the body closes no bar
            self._tell("bar", tune, self.text(ids[:p]) + barline)

    def _section_barline(self, tune: int, p: int, first: bool) -> str:
        sections, count = self.form.sections, self.tunes[tune].count
        i = self.section[tune]
        if first and count == 0 and sections[0].repeat_start:
            self.forced[tune] = {p + 1: self.colon_id}  # |: after a pickup (or at the body's start)
            return "|:"
        if i >= len(sections) or count < self.form.ends[i]:
            return "|"
        section = sections[i]
        last = i == len(sections) - 1
        opens = not last and sections[i + 1].repeat_start
        marks = ":|" if section.repeat_end else ("|]" if last else ("|:" if opens else "||"))
        if section.repeat_end and opens:
            marks = ":|:"
        tokens = [self.colon_id if c == ":" else self.bar_id if c == "|" else self.close_id for c in marks]
        forced = {p + k: t for k, t in enumerate(tokens)}
        if last:
            forced[p + len(tokens)] = self.eos_id
        self.forced[tune] = forced
        self.section[tune] = i + 1
        return marks

    def describe(self) -> str:
        s = self.stats()
        text = (f"bar-aware decoding: {s['bars_checked']} bars checked, {s['bars_resampled']} drawn again, "
                f"{s['tunes_restarted']} tune restarts, {s['bars_kept_inconsistent']} kept off-metre; "
                f"{s['chars_discarded']} characters thrown away")
        if self.min_bars:
            text += f"; {s['tunes_redrawn_short']} tunes under {self.min_bars} bars drawn again"
        return text

    def stats(self) -> dict:
        return {
            "bars_checked": self.checked,
            "bars_resampled": self.resampled,
            "bars_kept_inconsistent": self.kept_bad,
            "tunes_restarted": self.restarts_made,
            "tunes_redrawn_short": self.redrawn_short,
            "chars_discarded": sum(self.spent),
        }
