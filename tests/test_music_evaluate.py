"""Evaluate mode: bits per character, validity shares, the style classifier, end to end on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import last_json_line
from plugins.music_lstm.abc import Tune
from plugins.music_lstm.evaluate import StyleClassifier, bits_per_char, classifier_text
from test_music_generate import random_model, trained_tiny


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return trained_tiny(tmp_path_factory)  # shared with test_music_generate within a session


def test_bits_per_char_is_the_models_cross_entropy_over_text_and_end():
    model = random_model()
    vocab = model.vocabulary
    tunes = [Tune("M:6/8\nK:G\n|:GAB cBA:|", "irish", "a"), Tune("K:C\nCDEF|", "german", "b"), Tune("K:C\nCD#", "german", "c")]
    bpc, chars, skipped = bits_per_char(model, tunes, batch_size=2)
    assert skipped == 1  # '#' is not in the vocabulary
    assert chars == len(tunes[0].text) + 1 + len(tunes[1].text) + 1  # characters and </s> of each tune
    nll = 0.0
    with torch.no_grad():
        for t in tunes[:2]:
            x = torch.tensor([vocab.encode_tune(t.text, t.label)])
            logits, _ = model(x[:, :-1], torch.tensor([vocab.label_index(t.label)]))
            nll += float(torch.nn.functional.cross_entropy(logits[0, 1:], x[0, 2:], reduction="sum"))
    assert bpc == pytest.approx(nll / chars / math.log(2), rel=1e-5)


def test_style_classifier_learns_styles_and_ignores_the_title():
    jig = "M:6/8\nL:1/8\nK:G\n|:GAB cBA|dBG AFD|GAB cBA|dBG G3:|"
    song = "M:2/4\nL:1/16\nK:C\nC4E4 | G8 | E4D4 | C8\nD4F4 | A8 | G4F4 | E8"
    texts = [jig.replace("cBA", v) for v in ("cBA", "dBA", "cAF", "BAG")] + [song.replace("G8", v) for v in ("G8", "A8", "F8", "E8")]
    labels = ["irish"] * 4 + ["chinese"] * 4
    clf = StyleClassifier(ngram_range=(1, 3), max_features=5000, C=10.0).fit(texts, labels)
    # T: names the label in generated tunes: the classifier must not see it
    assert "chinese" not in classifier_text("X:1\nT:chinese 1\n" + jig)
    assert clf.predict(["X:1\nT:chinese 1\n" + jig.replace("cBA", "ABc"), "X:2\nT:irish 2\n" + song]) == ["irish", "chinese"]


@pytest.mark.slow
def test_evaluate_end_to_end_on_a_tiny_model(run_cli, tiny_checkpoint):
    shared_outputs, checkpoint = tiny_checkpoint
    proc = run_cli(
        "task=music", "evaluate", "evaluate.num_tunes=2", "generate.length=100", "evaluate.reference_tunes=8",
        "evaluate.classifier.max_features=5000", env={"FRAMEWORK_OUTPUTS": str(shared_outputs)}, timeout=400,
    )
    metrics = last_json_line(proc.stdout)
    assert metrics["checkpoint"] == str(checkpoint)
    # the tiny model barely trained: bits per character are high but finite
    assert 1.0 < metrics["test/bpc"] < 10.0 and metrics["test/chars"] > 0
    hparams = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    assert metrics["generated_tunes"] == 2 * len(hparams["labels"])
    for key in ("parse_share", "bars_consistent_share", "repaired_share", "classifier_real_accuracy", "reference_parse_share"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["style_chance"] == pytest.approx(1 / metrics["classifier_labels"])
    assert metrics["chars_per_second"] > 0
    # bars per tune, generated against real tunes of the same label
    assert metrics["real_bars_q1"] <= metrics["real_bars_median"] <= metrics["real_bars_q3"] and metrics["real_bars_median"] >= 1
    assert 0.0 <= metrics["bars_under_8_share"] <= 1.0 and 0.0 <= metrics["real_bars_under_8_share"] <= 1.0
    assert all(f"real_bars_median/{label}" in metrics for label in hparams["labels"])
    for label in hparams["labels"]:
        assert f"parse/{label}" in metrics
    # the table is printed
    out = proc.stdout + proc.stderr
    assert "recognised as label" in out and "bits per character" in out
    run_dir = Path(out.split("run dir: ")[1].split()[0])
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics


@pytest.mark.slow
def test_evaluate_on_a_folder_of_tunes(run_cli, tiny_checkpoint, tmp_path):
    """`data=abc_dir data.path=...`: any folder of tunes, labels from sub-folders."""
    _, checkpoint = tiny_checkpoint
    hparams = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    known = hparams["labels"][:2]
    for label in known:
        folder = tmp_path / "tunes" / label
        folder.mkdir(parents=True)
        body = "\n".join(
            f"X:{i}\nT:t{i}\nM:4/4\nL:1/8\nK:G\n|:GABc dedB|{'ABcd' if i % 2 else 'edcB'} e2d2|GABc dedB|A2G2 G4:|\n" for i in range(1, 41)
        )
        (folder / "tunes.abc").write_text(body)
    proc = run_cli(
        "task=music", "evaluate", f"ckpt_path={checkpoint}", "data=abc_dir", f"data.path={tmp_path / 'tunes'}",
        "data.test_fraction=0.25", "evaluate.num_tunes=1", "generate.length=60", "evaluate.reference_tunes=4",
        "evaluate.classifier.max_features=2000", timeout=400,
    )
    metrics = last_json_line(proc.stdout)
    assert metrics["test/tunes"] + metrics["test/skipped"] >= 10
    assert metrics["classifier_labels"] == 2
    assert metrics["reference_parse_share"] == 1.0 and metrics["reference_bars_consistent_share"] == 1.0
