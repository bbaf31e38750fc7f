"""Bar lengths of ABC text and bar-aware decoding (plugins/music_lstm/bars.py)."""

from fractions import Fraction as Fr

import pytest
import torch

from plugins.music_lstm import abc_check
from plugins.music_lstm.bars import SHORT, BarGuard, Form, Section, TuneBars, bar_length, count_bars, metre_length, note_length
from plugins.music_lstm.decoding import Sampling, State, generate
from plugins.music_lstm.vocab import Vocabulary


@pytest.mark.parametrize(
    "spec, expected",
    [("", 1), ("2", 2), ("/", Fr(1, 2)), ("//", Fr(1, 4)), ("/2", Fr(1, 2)), ("3/2", Fr(3, 2)), ("/4", Fr(1, 4)), ("3//", Fr(3, 4))],
)
def test_note_length_suffixes(spec, expected):
    assert note_length(spec) == expected


@pytest.mark.parametrize(
    "text, unit, expected",
    [
        ("ABcd", Fr(1, 8), Fr(1, 2)),
        ("A2 B/c/ d", Fr(1, 8), Fr(1, 2)),
        ("(3ABc d", Fr(1, 8), Fr(3, 8)),  # triplet: three eighths in the time of two
        ("A>B c<d", Fr(1, 8), Fr(1, 2)),  # broken rhythm keeps the pair's total
        ("A2>B", Fr(1, 8), Fr(1, 2) - Fr(1, 16)),  # ... of equal-length notes only: 3/8 + 1/16
        ("[CEG]2 [ce]", Fr(1, 8), Fr(3, 8)),
        ('{g}A "Am"B !trill!c .d', Fr(1, 8), Fr(1, 2)),  # grace notes, chord symbols, decorations
        ("^F,,2 _B' =c z", Fr(1, 8), Fr(5, 8)),
        ("]1 ABcd:", Fr(1, 8), Fr(1, 2)),  # rest of the opening barline, ending number, ':' of ':|'
        ("ABCD EFGA", Fr(1, 16), Fr(1, 2)),
        ("A2 [L:1/16] BB", Fr(1, 8), Fr(3, 8)),  # an inline field changes the unit from there on
        ("AB\nL:1/4\ncd", Fr(1, 8), Fr(3, 4)),  # ... and so does a field line inside the bar
        ("AB\n+:x\ncd", Fr(1, 8), Fr(1, 2)),  # a continuation line is a field line, not notes
    ],
)
def test_bar_length_reads_abc(text, unit, expected):
    assert bar_length(text, unit).length == expected


def test_bar_length_counts_multibar_rests_and_reads_metres():
    assert bar_length("Z4", Fr(1, 8)).whole_bars == 4
    assert metre_length("6/8") == Fr(3, 4) and metre_length("C") == 1 and metre_length("C|") == 1
    assert metre_length("2+3/8") == Fr(5, 8) and metre_length("none") is None


def test_bar_reader_agrees_with_music21_on_written_tunes():
    """The guard and the music21 check must measure the same thing on ordinary tunes."""
    tunes = [
        "M:6/8\nL:1/8\nK:D\nA|dfa afd|(3efg fe dcB|A2A A3:|\n",  # pickup, triplet; last bar short
        "M:4/4\nL:1/8\nK:G\nGABc d2 e2|d>c BA G4|ABcd e2 f2|g8|]\n",
        "M:3/4\nL:1/8\nK:C\nC2 E2 G2|c4 B2|A2 G4|c6|]\n",
        "M:3/4\nL:1/8\nK:C\nC2 E2 G2|c4 B2 A2|A2 G4|c6|]\n",  # bar 2 is a beat too long
    ]
    for text in tunes:
        check = abc_check.check(abc_check.fix_header(text, 1, "t")[0])
        header, body = abc_check.split_header(text)
        bars = TuneBars("\n".join(f"{k}:{v}" for k, v in header))
        verdicts = []
        for part in body.split("|")[:-2]:  # music21 leaves the last bar unchecked
            verdicts.append(bars.judge(part))
            bars.accept(part)
        assert check.parses
        assert check.bars_consistent == all(v is not False for v in verdicts), text


def test_judge_rules_follow_the_check():
    bars = TuneBars("M:2/4\nL:1/8")
    assert bars.judge("A") is True  # the first bar is a free pickup
    bars.accept("A")
    assert bars.judge("ABcd") is True
    assert bars.judge("ABcde") is False  # too long
    assert bars.judge("ABc") == SHORT  # short: fine only if a section ends here (the next character says)
    assert bars.judge("ABc:") is True  # short before ':|' (a section end) ...
    bars.accept("ABc:")
    assert bars.judge("ABcd") is False  # ... when the next bar completes it
    assert bars.judge("d") is True
    assert bars.judge("Q2") is False  # a stray letter is no note
    assert bars.judge("") is None  # the second character of '||' closes no bar


# ---------------------------------------------------------------------------------------------
# Decoding with a scripted model: it writes bars of "A"s and, after three notes, may close the bar
# early (a beat short under M:2/4, L:1/8) or write the fourth note; after six bars it ends.

VOCAB = Vocabulary.build(["M:2/4\nL:1/8\nK:C\nA|3]"], ["x"])
PROMPT = "M:2/4\nL:1/8\nK:C\n"


class ScriptedSteps:
    """A StepModel stand-in whose recurrent state is (notes in this bar, bars closed)."""

    def __init__(self, always_four: bool = False):
        self.vocab_size = len(VOCAB)
        self.note, self.bar, self.eos = VOCAB.index["A"], VOCAB.index["|"], VOCAB.eos_id
        self.always_four = always_four

    def init_state(self, label_rows):
        b = len(label_rows)
        return State(h0=torch.zeros(b, 2), c=[torch.zeros(b, 1)], xh=[], label_gates=None)

    def step(self, tokens, state):
        notes, bars = state.h0[:, 0], state.h0[:, 1]
        notes += (tokens == self.note).float()
        closed = tokens == self.bar
        notes[closed] = 0
        bars += closed.float()
        logits = torch.full((len(tokens), self.vocab_size), float("-inf"))
        logits[:, self.note] = 0.0
        full = notes >= 4
        maybe = (notes == 3) & (not self.always_four)
        logits[full, self.note] = float("-inf")
        logits[full | maybe, self.bar] = 0.0
        finished = (bars >= 6) & (notes == 0)
        logits[finished] = float("-inf")
        logits[finished, self.eos] = 0.0
        return logits


def _bodies(out):
    return [VOCAB.decode(ids) for ids in out.tokens]


def _run(guard=None, model=None, prompt=PROMPT, n=8, seed=3):
    prefix = VOCAB.prefix("x") + VOCAB.encode(prompt)
    return generate(model or ScriptedSteps(), [prefix] * n, [0] * n, 200, VOCAB.eos_id, Sampling(1.0), seed=seed, guard=guard)


def test_bar_aware_decoding_redraws_short_bars():
    plain = _run()
    plain_bars = [bar for body in _bodies(plain) for bar in body.split("|")[1:-1]]
    assert "AAA" in plain_bars  # the scripted model does lose count without the guard

    guard = BarGuard(VOCAB.tokens, retries=20, budget=4.0)
    guarded = _run(guard)
    assert all(guarded.ended)
    for body in _bodies(guarded):
        bars = body.split("|")
        assert len(bars) == 7 and bars[-1] == ""  # six bars, then the end token
        # every bar between the pickup and the last is full; the last may be short (the tune ends)
        assert all(bar == "AAAA" for bar in bars[1:-2]), body
        assert bars[-2] in ("AAA", "AAAA")
        check = abc_check.check(abc_check.fix_header(PROMPT + body, 1, "t")[0])
        assert check.parses and check.bars_consistent
    stats = guard.stats()
    assert stats["bars_resampled"] > 0 and stats["bars_kept_inconsistent"] == 0
    assert stats["chars_discarded"] >= 4 * stats["bars_resampled"]  # a redrawn bar threw away 'AAA|'


def test_bar_aware_decoding_is_reproducible_and_unaffected_by_compaction():
    a = _run(BarGuard(VOCAB.tokens, retries=20, budget=4.0), seed=5)
    b = _run(BarGuard(VOCAB.tokens, retries=20, budget=4.0), seed=5)
    assert a.tokens == b.tokens
    assert _run(BarGuard(VOCAB.tokens, retries=20, budget=4.0), seed=6).tokens != a.tokens
    # Finished tunes leave the batch (compaction); the others must draw exactly as before.
    prefix = VOCAB.prefix("x") + VOCAB.encode(PROMPT)
    kept = generate(ScriptedSteps(), [prefix] * 8, [0] * 8, 200, VOCAB.eos_id, Sampling(1.0), seed=5,
                    guard=BarGuard(VOCAB.tokens, retries=20, budget=4.0), compact=False)
    assert kept.tokens == a.tokens


def test_a_tune_that_cannot_fit_its_metre_restarts_then_stops_within_its_budget():
    # Under M:3/4 the scripted model's 4-note bars never fit: redraws, restarts, then kept as written.
    guard = BarGuard(VOCAB.tokens, retries=2, restarts=1, budget=1.0)
    out = _run(guard, model=ScriptedSteps(always_four=True), prompt="M:3/4\nL:1/8\nK:C\n", n=2)
    stats = guard.stats()
    assert stats["tunes_restarted"] == 2 and stats["bars_kept_inconsistent"] > 0
    assert all(stats_spent <= 200 for stats_spent in guard.spent)  # budget 1.0 x length 200
    for body in _bodies(out):
        assert body.split("|")[1:-1] == ["AAAA"] * 5  # the tune itself is complete and unchanged


def test_a_short_bar_waits_for_the_next_character():
    """'ABc|' is a beat short under M:2/4: kept before '||' or '|]' (a section end), redrawn before a note."""
    text = PROMPT + "A|AAAA|AAA|"
    ids = VOCAB.prefix("x") + VOCAB.encode(text)
    first_bar = len(VOCAB.prefix("x")) + len(PROMPT) + 1
    for following, kept in (("|", True), ("A", False)):
        guard = BarGuard(VOCAB.tokens)
        guard.reset(1, 100)
        marks = [i for i, t in enumerate(ids) if t == VOCAB.index["|"]]
        assert [guard.barline(0, ids[: m + 1]) for m in marks] == [guard.NEW_BAR, guard.NEW_BAR, guard.PENDING]
        verdict = guard.resolve(0, VOCAB.index[following], marks[-1] + 1)
        if kept:
            assert verdict == guard.NEW_BAR and guard.bar_start[0] == marks[-1]
        else:
            assert verdict == marks[1] and guard.stats()["bars_resampled"] == 1  # back to the bar's start
        assert marks[0] == first_bar


# ---------------------------------------------------------------------------------------------
# Written bars and the tune's shape (generate.bars / generate.form / generate.min_bars)


def test_count_bars_counts_as_a_score_numbers_bars():
    assert count_bars("M:2/4\nL:1/8\nK:C\nA|AAAA|AAAA|AAAA|AAA|]") == 3  # pickup and short final bar: not counted
    assert count_bars("M:2/4\nL:1/8\nK:C\n|:AAAA|AAAA:|:AAAA|AAAA:|") == 4  # repeats are not expanded
    assert count_bars("M:2/4\nL:1/8\nK:C\nAAAA|AAAA|A2 B2") == 3  # the last bar needs no barline
    assert count_bars("M:2/4\nL:1/8\nK:C\nAAAA|AA||AA|AAAA|]") == 3  # two halves around a section line: one bar
    assert count_bars('M:2/4\nL:1/8\nK:C\n"A|m"AAAA|Z2|') == 3  # a string is no barline; Z2 rests two bars
    assert count_bars("X:1\nT:t\nM:6/8\nK:G\nGAB cBA|dBG AFD|]") == 2


def test_form_parses_sections_and_refuses_what_it_cannot_write():
    aabb = Form.parse("AABB", 16)
    assert [(s.letter, s.bars, s.repeat_start, s.repeat_end) for s in aabb.sections] == [
        ("A", 8, True, True), ("B", 8, True, True)]
    assert aabb.ends == [8, 16] and aabb.bars == 16
    abab = Form.parse("abab", None)  # lower case is fine; 8 bars a section by default
    assert [(s.letter, s.bars, s.repeat_start, s.repeat_end) for s in abab.sections] == [
        ("A", 8, True, False), ("B", 8, False, True)]
    assert [s.bars for s in Form.parse("AB", 12).sections] == [6, 6]
    assert Form.parse(None, 12).sections == (Section("A", 12, False, False),)
    assert Form.parse("", None) is None
    for form, bars, message in (("AABB", 15, "does not divide"), ("ABA", None, "comes back"), ("AAAB", 24, "twice"),
                                ("A-B", None, "section letters"), ("AB", 0, ">= 1")):
        with pytest.raises(ValueError, match=message):
            Form.parse(form, bars)


class EndsEarly(ScriptedSteps):
    """Writes full 4-note bars; after every barline it may end the tune (logit ``end``)."""

    def __init__(self, end: float = -1.0):
        super().__init__(always_four=True)
        self.end = end

    def step(self, tokens, state):
        logits = super().step(tokens, state)
        notes = state.h0[:, 0]
        logits[notes == 0] = float("-inf")
        logits[notes == 0, self.note] = 0.0
        logits[notes == 0, self.eos] = self.end
        return logits


def _texts(out):
    return [PROMPT + body for body in _bodies(out)]


def test_form_writes_a_whole_tune_of_that_shape():
    """AABB with 16 bars: the end token waits for the form; two 8-bar sections between repeat signs."""
    guard = BarGuard(VOCAB.tokens, form=Form.parse("AABB", 16))
    out = _run(guard, model=EndsEarly(end=2.0), n=4)  # left alone this model ends after a bar or two
    section = "AAAA|" * 7 + "AAAA"
    for text, ended in zip(_texts(out), out.ended):
        assert ended
        assert text == PROMPT + section + ":|:" + section + ":|", text
        assert count_bars(text) == 16
        check = abc_check.check(abc_check.fix_header(text, 1, "t")[0])
        assert check.parses and check.bars_consistent and check.measures == 16

    # ABAB: one repeat around both sections; AB: a section line, then the final barline
    ab = _run(BarGuard(VOCAB.tokens, form=Form.parse("AB", 4)), model=EndsEarly(end=2.0), n=2)
    assert _bodies(ab) == ["AAAA|AAAA||AAAA|AAAA|]"] * 2
    abab = _run(BarGuard(VOCAB.tokens, form=Form.parse("ABAB", 4)), model=EndsEarly(end=2.0), n=2)
    assert _bodies(abab) == ["AAAA|AAAA||AAAA|AAAA:|"] * 2


class WithPickup(EndsEarly):
    """Opens every tune with a one-note pickup bar ('A|'), then as EndsEarly."""

    def step(self, tokens, state):
        logits = super().step(tokens, state)
        pickup = (state.h0[:, 1] == 0) & (state.h0[:, 0] == 1)
        logits[pickup] = float("-inf")
        logits[pickup, self.bar] = 0.0
        return logits


def test_form_opens_the_first_repeat_after_a_pickup():
    out = _run(BarGuard(VOCAB.tokens, form=Form.parse("AA", 2)), model=WithPickup(end=2.0), n=2)
    assert _bodies(out) == ["A|:AAAA|AAAA:|"] * 2
    # without a pickup the first bar is inside the repeat already: no '|:' (ABC repeats from the start)
    out = _run(BarGuard(VOCAB.tokens, form=Form.parse("AA", 2)), model=EndsEarly(end=2.0), n=2)
    assert _bodies(out) == ["AAAA|AAAA:|"] * 2


def test_a_tune_shorter_than_min_bars_is_drawn_again():
    plain = _run(model=EndsEarly(end=-1.0), n=16, seed=2)
    plain_bars = [count_bars(t) for t in _texts(plain)]
    assert min(plain_bars) < 8  # this model often stops early

    guard = BarGuard(VOCAB.tokens, min_bars=8, budget=20.0)
    out = _run(guard, model=EndsEarly(end=-1.0), n=16, seed=2)
    bars = [count_bars(t) for t in _texts(out)]
    assert all(out.ended) and min(bars) >= 8, bars
    assert guard.stats()["tunes_redrawn_short"] >= sum(b < 8 for b in plain_bars)


def test_listener_hears_every_kept_bar_in_order_and_every_redraw():
    events = []
    guard = BarGuard(VOCAB.tokens, retries=20, budget=4.0, listener=lambda *e: events.append(e))
    out = _run(guard, n=2)
    for tune, text in enumerate(_texts(out)):
        mine = [(kind, t, bars) for kind, i, t, bars in events if i == tune]
        kept = [(t, bars) for kind, t, bars in mine if kind == "bar"]
        # each kept bar extends the text kept before it; the last one is the whole tune
        assert all(b[0].startswith(a[0]) for a, b in zip(kept, kept[1:]))
        assert [bars for _, bars in kept] == sorted(bars for _, bars in kept)
        assert text.startswith(kept[-1][0])
        redraws = [i for i, (kind, _, _) in enumerate(mine) if kind == "redraw"]
        assert all(mine[i + 1][0] in ("bar", "redraw") for i in redraws if i + 1 < len(mine))
    assert any(kind == "redraw" for kind, *_ in events) and guard.stats()["bars_resampled"] > 0
