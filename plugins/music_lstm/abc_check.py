"""Is a generated tune valid ABC? Header fixing, a light repair, and a music21 check.

Three steps, in the order generate and evaluate run them:

1. :func:`fix_header` gives every tune a proper header: ``X:`` (its number), ``T:`` (label and
   number), then the fields the model wrote (``M:``, ``L:``, ``Q:``, ...), with ``M:``/``L:``/``K:``
   added from defaults when missing or unreadable, ``K:`` last.
2. :func:`repair` (configurable, each fix by name) makes small, local fixes that music21 would
   otherwise choke on or misread: drop a trailing partial bar of a tune cut off at the length
   limit, close an unclosed chord ``[...`` or grace group ``{...``, drop an unclosed ``"`` string,
   close an unclosed repeat ``|: ...`` at the end of the tune.
3. :func:`check` parses the tune with music21 (``converter.parse(text, format="abc")``; a tune
   where music21 had to guess a pitch for something that is no note does not count as parsing) and
   compares every bar's length, as written, with its metre. The first bar (a pickup) and the last are ignored;
   so are two short bars that together make a full one (a section that ends on a part bar and a
   pickup into the next, as folk tunes write ``... d6 || A2 | ...``), and a bar that holds exactly
   whole bars (a barline left out at a line break, as the Essen collection writes its tunes).
   music21's own re-barring is switched off for the check: it would silently split an overfull bar.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from dataclasses import asdict, dataclass, field
from fractions import Fraction

from plugins.music_lstm.abc import field_line

_METRE = re.compile(r"^\s*(C\|?|none|\d+(\+\d+)*/\d+)\s*$")
_UNIT = re.compile(r"^\s*1/(1|2|4|8|16|32|64)\s*$")
_KEY = re.compile(r"^\s*([A-G][#b]?\s*(m|min|maj|major|minor|mix|dor|phr|lyd|loc|aeo|ion|[a-zA-Z]*)?|none|HP|Hp)?(\s.*)?$")
# One note inside a chord or grace group: accidentals, letter, octave marks, length, tie.
_GROUP_NOTE = re.compile(r"/?[=^_]*[A-Ga-gz][,']*[0-9/]*-?")
_BARLINE = re.compile(r":*\|[\]|:]*|\[\||::")

DEFAULT_HEADER = {"M": "4/4", "L": "1/8", "K": "C"}
MIN_BARS = 4  # a tune needs this many bars for its bars to count as consistent (2 besides pickup and end)
REPAIRS = ("trailing_bar", "chord", "grace", "string", "repeat")


def split_header(text: str) -> tuple[list[tuple[str, str]], str]:
    """Leading ``X:value`` lines as (name, value) pairs, and the rest of the tune."""
    lines = text.strip("\n").split("\n")
    header = []
    for i, line in enumerate(lines):
        m = field_line(line.strip())
        if not m:
            return header, "\n".join(lines[i:])
        header.append((m.group(1), m.group(2).strip()))
    return header, ""


def fix_header(text: str, index: int, title: str, defaults: dict | None = None) -> tuple[str, list[str]]:
    """The tune with header ``X:index``, ``T:title``, its own fields, defaults for missing ones, K: last.

    Returns (text, names of the fields that were added or replaced because missing or unreadable).
    """
    defaults = {**DEFAULT_HEADER, **(defaults or {})}
    header, body = split_header(text)
    fields: dict[str, str] = {}
    for name, value in header:
        if name in ("X", "T"):
            continue
        fields.setdefault(name, value)  # the first value of a repeated field wins
    fixed = []
    checks = {"M": _METRE, "L": _UNIT, "K": _KEY}
    for name in ("M", "L", "K"):
        value = fields.get(name)
        if value is None or not value.strip() or not checks[name].match(value):
            fields[name] = defaults[name]
            fixed.append(name)
    key = fields.pop("K")
    lines = [f"X:{index}", f"T:{title}", *(f"{k}:{v}" for k, v in fields.items()), f"K:{key}"]
    if body.strip():
        lines.append(body.strip("\n"))
    return "\n".join(lines) + "\n", fixed


# ---------------------------------------------------------------------------------------------
# Light repair


def _close_groups(line: str, opener: str, closer: str) -> tuple[str, bool]:
    """Close a chord ``[`` or grace group ``{`` left open on this line, right after its notes.

    A group counts as unclosed when no closer follows before the next opener or barline; a
    stray opener with no notes after it is dropped. Inline fields ``[K:..]``, endings ``[1`` and
    ``[|`` are left alone.
    """
    out, i, changed = [], 0, False
    while i < len(line):
        ch = line[i]
        if ch != opener or (opener == "[" and re.match(r"\[([A-Za-z]:|\d|\|)", line[i:])):
            out.append(ch)
            i += 1
            continue
        stop = re.compile(r"[|" + re.escape(opener) + "]").search(line, i + 1)
        close = line.find(closer, i + 1)
        if close != -1 and (stop is None or close < stop.start()):
            out.append(line[i : close + 1])
            i = close + 1
            continue
        k = i + 1
        while (m := _GROUP_NOTE.match(line, k)) and m.end() > k:
            k = m.end()
        out.append(line[i:k] + closer if k > i + 1 else "")
        changed = True
        i = k
    return "".join(out), changed


def repair(text: str, truncated: bool, fixes=REPAIRS) -> tuple[str, list[str]]:
    """Apply the named light fixes to a tune (header included); returns (text, fixes applied)."""
    unknown = set(fixes) - set(REPAIRS)
    if unknown:
        raise ValueError(f"unknown repair {sorted(unknown)}; known: {', '.join(REPAIRS)}")
    header, body = split_header(text)
    applied: list[str] = []
    lines = body.split("\n") if body else []

    if "trailing_bar" in fixes and truncated and lines:
        # The tune hit the length limit mid-bar: cut after its last barline.
        joined = "\n".join(lines)
        bars = list(_BARLINE.finditer(joined))
        if bars and joined[bars[-1].end() :].strip():
            joined = joined[: bars[-1].end()]
            lines = joined.split("\n")
            applied.append("trailing_bar")

    def per_line(name, fn):
        nonlocal lines
        changed_any = False
        new = []
        for line in lines:
            if field_line(line.strip()):
                new.append(line)
                continue
            line, changed = fn(line)
            changed_any |= changed
            new.append(line)
        lines = new
        if changed_any:
            applied.append(name)

    if "string" in fixes:

        def close_string(line):
            # An odd quote opens a string that never ends: drop it and the word it starts.
            if line.count('"') % 2:
                i = line.rfind('"')
                m = re.compile(r"[^\s|]*").match(line, i + 1)
                return line[:i] + line[m.end() :], True
            return line, False

        per_line("string", close_string)
    if "chord" in fixes:
        per_line("chord", lambda line: _close_groups(line, "[", "]"))
    if "grace" in fixes:
        per_line("grace", lambda line: _close_groups(line, "{", "}"))

    if "repeat" in fixes and lines:
        joined = "\n".join(lines)
        depth = 0
        for m in re.finditer(r":*\|[:\]|]*|::", _strip_strings(joined)):
            sign = m.group(0)
            if sign == "::" or (sign.startswith(":") and sign.endswith(":")):
                depth = 1  # end one repeat, start the next
            elif sign.startswith(":"):
                depth = 0
            elif sign.endswith(":"):
                depth = 1
        if depth:
            stripped = joined.rstrip()
            tail = re.search(r"(\|\]|\|\||\|)$", stripped)
            joined = (stripped[: tail.start()] if tail else stripped) + ":|"
            lines = joined.split("\n")
            applied.append("repeat")

    head = "\n".join(f"{k}:{v}" for k, v in header)
    out = head + ("\n" + "\n".join(lines) if lines else "")
    return out.rstrip("\n") + "\n", applied


def _strip_strings(text: str) -> str:
    return re.sub(r'"[^"\n]*"', lambda m: " " * len(m.group(0)), text)


# ---------------------------------------------------------------------------------------------
# The music21 check


@dataclass
class Check:
    parses: bool
    bars_consistent: bool
    notes: int = 0
    measures: int = 0
    bad_bars: list[int] = field(default_factory=list)  # measure numbers whose length is off
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def parse(text: str, rebar: bool = True, messages: list[str] | None = None):
    """music21's ABC parser, quiet; raises whatever it raises.

    music21 reports what it could not read (``Could not get pitch information from note: R4,
    assuming C``) on stderr and carries on; those lines are collected into ``messages``.
    It also "re-bars" an overfull bar: it cuts it at the metre's length and gives the overflow a
    bar of its own with a made-up time signature, which hides the error. The bar check parses
    with ``rebar=False`` to see the bars as written.
    """
    import music21
    from music21.abcFormat import translate

    err = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(err), contextlib.ExitStack() as stack:
            warnings.simplefilter("ignore")
            if not rebar:
                original = translate.reBar
                translate.reBar = lambda part, inPlace=False: None if inPlace else part
                stack.callback(setattr, translate, "reBar", original)
            return music21.converter.parse(text, format="abc", forceSource=True)
    finally:
        if messages is not None:
            messages.extend(line.strip() for line in err.getvalue().splitlines() if line.strip())


def bar_lengths(score) -> list[tuple[int, Fraction, Fraction]]:
    """(measure number, actual length, metre length) in quarter notes for the first part."""
    parts = list(score.parts) if hasattr(score, "parts") else []
    part = parts[0] if parts else score
    out = []
    for m in part.getElementsByClass("Measure"):
        expected = m.barDuration.quarterLength if m.timeSignature or m.getContextByClass("TimeSignature") else None
        if expected is None:
            continue
        out.append((m.number, Fraction(m.duration.quarterLength).limit_denominator(960), Fraction(expected).limit_denominator(960)))
    return out


def consistent_bars(bars: list[tuple[int, Fraction, Fraction]]) -> list[int]:
    """Numbers of the bars whose length disagrees with the metre (pickup and final bar ignored).

    Two adjacent short bars that add up to a full one count as one bar split by a section line;
    a bar of exactly k whole bars counts as k bars whose barlines were left out.
    """
    bad = []
    i = 1
    last = len(bars) - 1
    while i < last:
        number, length, expected = bars[i]
        if length > 0 and length % expected == 0:
            # a full bar, or whole bars with a barline left out (the Essen collection ends
            # lines without one: the line break is its barline)
            i += 1
            continue
        if length < expected and i + 1 <= last:
            _, nxt_len, nxt_exp = bars[i + 1]
            if nxt_exp == expected and length + nxt_len == expected:
                i += 2
                continue
        bad.append(number)
        i += 1
    return bad


def check(text: str) -> Check:
    """Parse with music21 and check bar lengths; never raises."""
    messages: list[str] = []
    try:
        score = parse(text, rebar=False, messages=messages)
    except Exception as e:  # music21 raises many types on malformed input
        return Check(parses=False, bars_consistent=False, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200])
    try:
        notes = len(score.recurse().notes)
        bars = bar_lengths(score)
    except Exception as e:
        return Check(parses=False, bars_consistent=False, error=f"{type(e).__name__}: {e}"[:200])
    unread = [m for m in messages if "Could not get pitch" in m]
    if unread:
        # music21 guessed a C for something that is not a note: the tune does not really parse
        return Check(parses=False, bars_consistent=False, notes=notes, error=unread[0].split("WARNING:")[-1].strip()[:200])
    if notes == 0:
        return Check(parses=False, bars_consistent=False, error="no notes")
    if not bars:
        # music21 makes measures only from at least two regular barlines.
        return Check(parses=True, bars_consistent=False, notes=notes, error="no bars")
    if len(bars) < MIN_BARS:
        # pickup and final bar are not checked: too short a tune has nothing left to check
        return Check(parses=True, bars_consistent=False, notes=notes, measures=len(bars), error="too few bars")
    bad = consistent_bars(bars)
    return Check(parses=True, bars_consistent=not bad, notes=notes, measures=len(bars), bad_bars=bad)
