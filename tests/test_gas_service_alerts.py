"""The alert rules of the live service: consecutive confirmation, thresholds, offline, recovery."""

from __future__ import annotations

import numpy as np
import pytest

from plugins.gasleak_lstm_svm.service.alerts import AlertEngine, AlertRules, replay

RULES = AlertRules(consecutive=3, probability=0.7, warning_ppm=500, danger_ppm=1000, threshold_samples=2,
                   clear_samples=5, offline_after_s=15)


def feed(engine, probs=None, ppms=None, sensor="s1", t0=0.0):
    """Feed readings at 1 Hz; returns [(t, event, alert snapshot)]."""
    n = len(probs if probs is not None else ppms)
    probs = probs if probs is not None else [None] * n
    ppms = ppms if ppms is not None else [50.0] * n
    out = []
    for i, (p, g) in enumerate(zip(probs, ppms)):
        for event, alert in engine.observe(sensor, t0 + i, g, p):
            out.append((t0 + i, event, dict(alert)))
    return out


def opened(events):
    return [(t, a) for t, e, a in events if e == "opened"]


def test_model_alarm_needs_three_consecutive_windows_at_07():
    engine = AlertEngine(RULES)
    # two positives, a dip, two positives: never three in a row -> no alert
    assert opened(feed(engine, [0.9, 0.95, 0.6, 0.9, 0.99, 0.1])) == []
    assert engine.state("s1") == "normal"
    # 0.69 is below the rule however long it lasts
    assert opened(feed(engine, [0.69] * 20, t0=10)) == []
    events = feed(engine, [0.2, 0.7, 0.8, 0.9, 0.9], t0=100)
    (t, alert), = opened(events)
    assert t == 103  # the third consecutive window at p >= 0.7
    assert alert["level"] == "warning" and alert["causes"] == ["model"] and alert["kind"] == "leak"
    assert alert["peak_probability"] == pytest.approx(0.9)
    assert engine.state("s1") == "warning"


def k_in_a_row(probs, k: int = 3, p: float = 0.7) -> np.ndarray:
    """The rule written out, window by window: confirmed when windows i-k+1..i all have probability >= p."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.array([i >= k - 1 and bool((probs[i - k + 1 : i + 1] >= p).all()) for i in range(len(probs))], dtype=bool)


def replay_confirmed(probs, k: int = 3, p: float = 0.7) -> np.ndarray:
    """Per window, whether the engine holds a model alert open, replayed as evaluate does (clean air,
    ``clear_samples=1``: an alert closes at the first window below p)."""
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    out = np.zeros(n, dtype=bool)
    for alert in replay(AlertRules(consecutive=k, probability=p, clear_samples=1), np.arange(n, dtype=np.float64),
                        np.full(n, 50.0), probs):
        out[int(alert["start_ts"]) : n if alert["end_ts"] is None else int(alert["end_ts"])] = True
    return out


def test_model_alarm_needs_k_in_a_row():
    p = np.array([0.9, 0.9, 0.1, 0.8, 0.7, 0.95, 0.99, 0.2, 0.69, 0.9, 0.9])
    assert replay_confirmed(p, k=3, p=0.7).tolist() == [False, False, False, False, False, True, True, False, False, False, False]
    assert replay_confirmed(p, k=1, p=0.7).tolist() == (p >= 0.7).tolist()
    assert replay_confirmed([], k=3).tolist() == []
    assert replay_confirmed([0.9, 0.9]).tolist() == [False, False]


@pytest.mark.parametrize("seed", range(5))
def test_streaming_rule_matches_the_replay_and_the_rule(seed):
    """The engine, one reading at a time (the service), confirms exactly where k windows in a row are
    at p >= 0.7, and replaying the series (evaluate) holds its alerts open on the same windows."""
    rng = np.random.default_rng(seed)
    probs = np.clip(rng.normal(0.6, 0.25, 400), 0, 1)
    expected = np.flatnonzero(k_in_a_row(probs, k=3, p=0.7))
    assert np.flatnonzero(replay_confirmed(probs, k=3, p=0.7)).tolist() == expected.tolist()
    rules = AlertRules(consecutive=3, probability=0.7, clear_samples=1)
    engine = AlertEngine(rules)
    confirmed = []
    for i, p in enumerate(probs):
        engine.observe("s", float(i), 50.0, float(p))
        if engine.tracks["s"].positives >= 3:
            confirmed.append(i)
    assert confirmed == expected.tolist()
    # and the first alert opens at the first confirmed window
    first = opened(feed(AlertEngine(rules), list(map(float, probs)), sensor="s"))[0][0]
    assert first == expected[0]


def cusum(probs, p0: float, level: float) -> list[int]:
    """The evidence rule written out: S_i = min(level, max(0, S_(i-1) + logit(p_i) - logit(p0))), logits
    capped at +-10; the windows where S reaches ``level`` after being below it."""
    logit = lambda q: float(np.clip(np.log(max(q, 1e-12) / max(1 - q, 1e-12)), -10, 10))  # noqa: E731
    s, out = 0.0, []
    for i, q in enumerate(probs):
        before, s = s, min(level, max(0.0, s + logit(q) - logit(p0)))
        if s >= level > before:
            out.append(i)
    return out


def test_evidence_rule_confirms_strong_windows_fast_and_weak_ones_once_they_last():
    rules = AlertRules(rule="evidence", probability=0.9, evidence=10.0, clear_samples=3)
    # logit(0.9) = 2.197: a window at 0.99999 adds 10 - 2.197 = 7.8, two of them confirm
    (t, alert), = opened(feed(AlertEngine(rules), [0.1, 0.99999, 0.99999, 0.99999]))
    assert t == 2 and alert["causes"] == ["model"]
    assert "evidence 10" in alert["message"]
    # windows at 0.95 add logit(0.95) - logit(0.9) = 0.747 each: 14 of them (13 reach 9.71)
    events = feed(AlertEngine(rules), [0.95] * 20)
    assert [t for t, _ in opened(events)] == [13]
    # a dip takes evidence away instead of starting over: the consecutive rule at 0.9 would need
    # 3 in a row and never gets them; here the run of 0.99999, 0.5, 0.99999 confirms
    assert [t for t, _ in opened(feed(AlertEngine(rules), [0.99999, 0.5, 0.99999, 0.5]))] == [2]
    assert opened(feed(AlertEngine(RULES), [0.99999, 0.5, 0.99999, 0.5])) == []
    # a short bump spends what it gathered: evidence back at 0, state normal
    engine = AlertEngine(rules)
    feed(engine, [0.99] + [0.1] * 5)
    assert engine.tracks["s1"].evidence == 0 and engine.state("s1") == "normal"
    feed(engine, [0.99], t0=10)
    assert engine.state("s1") == "suspect"
    engine.reset_window("s1")  # a gap: the sum starts over
    assert engine.tracks["s1"].evidence == 0
    # a long leak does not bank evidence: the sum stays at the level, and the alert closes
    # clear_samples readings after the leak has gone
    events = feed(AlertEngine(rules), [0.99999] * 600 + [0.05] * 10)
    closed = [t for t, e, _ in events if e == "closed"]
    assert [t for t, _ in opened(events)] == [1] and closed == [602]


@pytest.mark.parametrize("seed", range(4))
def test_evidence_rule_streaming_matches_the_replay_and_the_sum(seed):
    rng = np.random.default_rng(seed)
    probs = np.clip(rng.normal(0.7, 0.3, 600), 0, 1)
    rules = AlertRules(rule="evidence", probability=0.8, evidence=8.0, clear_samples=1)
    # with clear_samples=1 an alert closes at the first window below p0, where the sum falls and
    # is reset: between alerts the engine's sum is the written-out one started afresh
    streamed = [t for t, _ in opened(feed(AlertEngine(rules), list(map(float, probs)), sensor="s"))]
    replayed = [int(a["start_ts"]) for a in replay(rules, np.arange(len(probs), dtype=float), np.full(len(probs), 50.0),
                                                   probs)]
    assert streamed == replayed and streamed
    expected, i = [], 0
    while i < len(probs):  # the rule written out, restarted after each alert closes
        hits = cusum(probs[i:], 0.8, 8.0)
        if not hits:
            break
        start = i + hits[0]
        expected.append(start)
        below = np.flatnonzero(probs[start + 1:] < 0.8)
        if not len(below):
            break
        i = start + 1 + int(below[0]) + 1
    assert streamed == expected


def test_the_evidence_rule_from_config_and_the_operating_point():
    op = {"rule": "evidence", "probability": 0.99, "evidence": 20.0, "consecutive": None}
    r = AlertRules.from_config({}, op)
    assert (r.rule, r.probability, r.evidence) == ("evidence", 0.99, 20.0)
    assert r.describe() == "evidence 20 (log-odds over p >= 0.99)"
    # alerts.probability=0.7 alone: the original consecutive rule (3 windows, the code default)
    r = AlertRules.from_config({"probability": 0.7}, op)
    assert (r.rule, r.consecutive, r.probability) == ("consecutive", 3, 0.7)
    r = AlertRules.from_config({"rule": "evidence", "evidence": 5}, op)
    assert (r.rule, r.probability, r.evidence) == ("evidence", 0.99, 5.0)
    # alerts.evidence alone: the evidence rule, whatever the bundle's
    consecutive_op = {"rule": "consecutive", "probability": 0.9, "consecutive": 10}
    r = AlertRules.from_config({"evidence": 15}, consecutive_op)
    assert (r.rule, r.probability, r.evidence) == ("evidence", 0.9, 15.0)
    assert AlertRules.from_config({}, consecutive_op).describe() == "10 windows in a row at p >= 0.9"
    with pytest.raises(ValueError, match="alerts.rule"):
        AlertRules(rule="cusum")
    with pytest.raises(ValueError, match="alerts.evidence"):
        AlertRules(rule="evidence", evidence=0)


def test_thresholds_fire_on_their_own_and_escalate_one_alert():
    engine = AlertEngine(RULES)
    # a one-sample glitch of 3000 ppm does not alarm
    assert opened(feed(engine, ppms=[50, 3000, 50, 50])) == []
    events = feed(engine, ppms=[520, 530, 800, 1100, 1300, 1250], t0=10)  # model silent (no probabilities)
    (t, alert), = opened(events)
    assert t == 11 and alert["level"] == "warning" and alert["causes"] == ["threshold"]
    escalations = [(t, a) for t, e, a in events if e == "escalated"]
    assert [(t, a["level"]) for t, a in escalations] == [(14, "danger")]
    final = events[-1][2]
    assert final["id"] is None or final["id"] == alert["id"]
    assert final["peak_ppm"] == 1300 and final["level"] == "danger"
    assert engine.state("s1") == "danger"


def test_danger_directly():
    engine = AlertEngine(RULES)
    (t, alert), = opened(feed(engine, ppms=[50, 1500, 1600]))
    assert t == 2 and alert["level"] == "danger"


def test_alert_closes_when_readings_return_to_normal():
    engine = AlertEngine(RULES)
    events = feed(engine, probs=[0.9] * 5 + [0.8] * 3 + [0.1] * 10, ppms=[700] * 8 + [60] * 10)
    closed = [(t, a) for t, e, a in events if e == "closed"]
    (t, alert), = closed
    # normal readings start at t=8 (ppm < 500 and p < 0.7); 5 of them close it at t=12
    assert t == 12 and alert["end_ts"] == 12 and alert["start_ts"] == 1
    assert engine.state("s1") == "normal"
    # high probability alone keeps it open (the model still sees a leak)
    engine = AlertEngine(RULES)
    events = feed(engine, probs=[0.9] * 20, ppms=[700] * 3 + [60] * 17)
    assert [e for _, e, _ in events if e == "closed"] == []


def test_offline_alert_opens_and_closes():
    engine = AlertEngine(RULES)
    feed(engine, ppms=[50] * 3)
    assert engine.check_offline({"s1": 2.0}, now=10.0) == []
    changes = engine.check_offline({"s1": 2.0}, now=17.5)
    (event, alert), = changes
    assert event == "opened" and alert["kind"] == "offline" and alert["level"] == "info"
    assert engine.state("s1") == "offline"
    assert engine.check_offline({"s1": 2.0}, now=30.0) == []  # once per outage
    events = feed(engine, ppms=[50], t0=31)
    assert [(e, a["kind"], a["end_ts"]) for _, e, a in events] == [("closed", "offline", 31)]
    assert engine.state("s1") == "normal"


def test_restart_continues_open_alerts():
    engine = AlertEngine(RULES)
    events = feed(engine, ppms=[800] * 4)
    alert = dict(opened(events)[0][1], id=7)
    restarted = AlertEngine(RULES, open_alerts=[alert])
    more = feed(restarted, ppms=[900, 1200, 1200, 60, 60, 60, 60, 60], t0=4)
    assert opened(more) == []  # the same incident, not a new alert
    kinds = [(e, a["id"], a["level"]) for _, e, a in more if e != "updated"]
    assert kinds == [("escalated", 7, "danger"), ("closed", 7, "danger")]


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="warning_ppm < danger_ppm"):
        AlertRules(warning_ppm=1000, danger_ppm=500)
    with pytest.raises(ValueError, match="probability"):
        AlertRules(probability=0)
