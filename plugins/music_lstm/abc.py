"""ABC lexing and cleaning: field lines, splitting files into tunes at ``X:``, and keeping only what
the model needs. The header check and repair of generated tunes (:mod:`.abc_check`) read field
lines with :func:`field_line` from here.

A cleaned tune is plain ABC without ``X:`` and ``T:`` (generation writes those itself):
the kept header fields in their original order, ``K:`` last, then the body::

    M:6/8
    L:1/8
    K:G
    |:GAB cBA|...

A tune that cannot be used raises :class:`SkipTune` with a short reason
("missing K:", "empty body", ...); the corpus reader counts the reasons and carries on.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Header fields kept by default: metre, unit note length, tempo, key. K: always ends the header.
DEFAULT_KEEP_FIELDS = ("M", "L", "Q", "K")
# Fields kept when they appear inside the body (changes of metre/key, part labels).
DEFAULT_KEEP_BODY_FIELDS = ("M", "L", "Q", "K", "P")

# A field line: a letter, or ABC 2.1's "+" that continues the field line before it, then ':'.
_FIELD = re.compile(r"^([A-Za-z+]):(.*)$")
_QUOTED = re.compile(r'"[^"\n]*"')
# A chord symbol starts with a note name (or is "N.C."); anything else in quotes is an
# annotation: ^above _below <left >right @free text, or fingering/words.
_CHORD_SYMBOL = re.compile(r'^"(?:[A-Ga-g][#b\u266f\u266d]?[^"]*|N\.?C\.?|\([A-G][^"]*\))"$')
INLINE_FIELD = re.compile(r"\[([A-Za-z]):([^\]\n]*)\]")
_NOTE = re.compile(r"[A-Ga-gz]")


class SkipTune(ValueError):
    """A tune that cannot be used; ``reason`` is a short label the corpus summary counts."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Tune:
    text: str  # cleaned ABC (no X:/T:)
    label: str  # style/region, e.g. "irish"
    source: str  # where it came from, e.g. "oneills1850/0001-0050.abc#3"


def split_tunes(text: str) -> list[str]:
    """Split the text of an ABC file into raw tunes, each starting at its ``X:`` line.

    Text before the first ``X:`` (the file header, free text) is dropped.
    """
    starts = [m.start() for m in re.finditer(r"^X:", text, flags=re.MULTILINE)]
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]


def decode_bytes(data: bytes) -> str:
    """ABC files in the wild are UTF-8 or Latin-1 (the Essen collection); try both."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def label_slug(name: str) -> str:
    """Readable, token-safe label name: ``"Snezhnaya "`` -> ``"snezhnaya"``, ``"Old Time"`` -> ``"old_time"``."""
    slug = re.sub(r"[^0-9a-z]+", "_", to_ascii(str(name)).strip().lower()).strip("_")
    return slug or "unknown"


def to_ascii(text: str) -> str:
    """Transliterate accented letters (é -> e); other non-ASCII characters are kept."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def field_line(line: str) -> re.Match | None:
    """A field line (``M:6/8``, ``K:G``, ``+:`` continuing the one before) as a match of its name
    (group 1) and value (group 2), else None. ``A:|`` and ``B::`` are a note followed by a repeat
    sign, not fields."""
    m = _FIELD.match(line)
    if m and not m.group(2).startswith((":", "|")):
        return m
    return None


def _strip_comment(line: str) -> str:
    # '%' starts a comment unless escaped as '\%' (only meaningful inside text strings).
    return re.sub(r"(?<!\\)%.*$", "", line)


def _clean_body_line(line: str, strip_annotations: bool, strip_chord_symbols: bool, strip_decorations: bool) -> str:
    if strip_annotations or strip_chord_symbols:

        def quoted(m: re.Match) -> str:
            is_chord = bool(_CHORD_SYMBOL.match(m.group(0)))
            if (is_chord and strip_chord_symbols) or (not is_chord and strip_annotations):
                return ""
            return m.group(0)

        line = _QUOTED.sub(quoted, line)
    if strip_decorations:
        line = re.sub(r"![^!\n]*!|\+[^+\n]*\+", "", line)
    # Back-quotes are beaming-neutral spacing; tabs and runs of spaces mean one space.
    line = line.replace("`", "").replace("\t", " ")
    line = re.sub(r" {2,}", " ", line)
    return line.strip()


def clean_tune(
    raw: str,
    keep_fields=DEFAULT_KEEP_FIELDS,
    keep_body_fields=DEFAULT_KEEP_BODY_FIELDS,
    keep_comments: bool = False,
    keep_lyrics: bool = False,
    strip_annotations: bool = True,
    strip_chord_symbols: bool = False,
    strip_decorations: bool = False,
    ascii_only: bool = True,
    allow_multivoice: bool = False,
    min_notes: int = 8,
    max_chars: int | None = 3000,
) -> str:
    """Clean one raw tune (as from :func:`split_tunes`) or raise :class:`SkipTune`.

    - keeps the header fields in ``keep_fields`` (original order, ``K:`` last) and the body fields
      in ``keep_body_fields``; drops ``X:``, ``T:`` and every other field;
    - strips ``%`` comments and ``%%`` directives, and lyrics (``w:``/``W:``) unless asked to keep them;
    - drops quoted annotations (``"^text"``, ``"_mf"``, fingering) but keeps chord symbols (``"Am"``)
      by default; decorations (``!trill!``) are kept unless ``strip_decorations``;
    - normalises whitespace (one space, no blank lines: a blank line ends an ABC tune);
    - with ``ascii_only`` transliterates accents and skips a tune that still has non-ASCII characters.

    Skip reasons: "missing K:", "empty body", "multi-voice", "non-ASCII", "too long", "too few notes".
    """
    keep_fields = set(keep_fields) | {"K"}
    keep_body_fields = set(keep_body_fields)
    header: list[str] = []
    body: list[str] = []
    in_body = False
    for raw_line in raw.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = raw_line.rstrip()
        if line.lstrip().startswith("%"):
            if keep_comments and in_body and not line.lstrip().startswith("%%"):
                body.append(line.strip())
            continue
        if not line.strip():
            if in_body and body:
                break  # a blank line ends the tune (ABC 2.1, section 2.2)
            continue
        if not keep_comments:
            line = _strip_comment(line).rstrip()
            if not line:
                continue
        field = field_line(line.strip())
        if field:
            name, value = field.group(1), field.group(2).strip()
            if name in ("V",) and not allow_multivoice:
                raise SkipTune("multi-voice")
            if name in ("w", "W"):
                if keep_lyrics:
                    (body if in_body else header).append(f"{name}:{value}")
                continue
            if not in_body:
                if name in keep_fields:
                    header.append(f"{name}:{value}")
                if name == "K":
                    in_body = True
            elif name in keep_body_fields:
                body.append(f"{name}:{value}")
            continue
        if not in_body:
            # Music before any K: line: the tune has no key field.
            raise SkipTune("missing K:")
        if "[V:" in line and not allow_multivoice:
            raise SkipTune("multi-voice")
        line = INLINE_FIELD.sub(lambda m: m.group(0) if m.group(1) in keep_body_fields else "", line)
        line = _clean_body_line(line, strip_annotations, strip_chord_symbols, strip_decorations)
        if line:
            body.append(line)
    if not in_body:
        raise SkipTune("missing K:")
    # The header's K: goes last whatever the source order was.
    header = [h for h in header if not h.startswith("K:")] + [h for h in header if h.startswith("K:")][:1]
    text = "\n".join(header + body)
    if ascii_only:
        text = to_ascii(text)
        if not text.isascii():
            raise SkipTune("non-ASCII")
    notes = sum(len(_NOTE.findall(_QUOTED.sub("", b))) for b in body if not field_line(b))
    if notes == 0:
        raise SkipTune("empty body")
    if notes < min_notes:
        raise SkipTune("too few notes")
    if max_chars and len(text) > max_chars:
        raise SkipTune("too long")
    return text
