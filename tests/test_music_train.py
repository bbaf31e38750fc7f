"""Music model and training: the module's contract, and `python -m framework task=music train` end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import last_json_line
from plugins.music_lstm.model import ChannelBatchNorm, MusicLSTM
from plugins.music_lstm.vocab import Vocabulary

VOCAB = Vocabulary.build(["M:6/8\nK:G\n|:GAB cBA|d2e fed:|"], ["irish", "german"])


def tiny(**kw) -> MusicLSTM:
    args = dict(vocab=VOCAB.tokens, labels=VOCAB.labels, embedding_dim=8, hidden_size=12, num_layers=3, dropout=0.0)
    return MusicLSTM(**(args | kw))


@pytest.mark.parametrize("norm, kind", [("layer", torch.nn.LayerNorm), ("batch", ChannelBatchNorm), ("none", torch.nn.Identity)])
def test_forward_shapes_state_and_norms(norm, kind):
    torch.manual_seed(0)
    model = tiny(norm=norm).eval()
    assert [type(n) for n in model.norms] == [kind] * 3
    assert all(isinstance(lstm, torch.nn.LSTM) and lstm.num_layers == 1 for lstm in model.lstms)
    tokens = torch.randint(0, len(VOCAB), (2, 7))
    logits, state = model(tokens, torch.tensor([0, 1]))
    assert logits.shape == (2, 7, len(VOCAB))
    assert len(state) == 3 and all(h.shape == c.shape == (1, 2, 12) for h, c in state)
    # carrying the state step by step gives the same logits as the whole window at once
    step_state, steps = None, []
    for t in range(7):
        out, step_state = model(tokens[:, t : t + 1], torch.tensor([0, 1]), step_state)
        steps.append(out)
    assert torch.allclose(torch.cat(steps, 1), logits, atol=1e-5)
    # per-position labels (B,T) equal the broadcast (B,) form
    same, _ = model(tokens, torch.tensor([[0] * 7, [1] * 7]))
    assert torch.allclose(same, logits, atol=1e-6)


def test_label_embedding_is_optional_and_changes_output():
    torch.manual_seed(0)
    model = tiny().eval()
    assert model.label_embedding.weight.shape == (2, 8)
    tokens = torch.randint(0, len(VOCAB), (1, 5))
    a, _ = model(tokens, torch.tensor([0]))
    b, _ = model(tokens, torch.tensor([1]))
    assert not torch.allclose(a, b)
    assert tiny(label_embedding=False).label_embedding is None


def test_training_step_metrics_ignore_pad_targets():
    torch.manual_seed(0)
    model = tiny()
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    x = torch.randint(3, len(VOCAB), (2, 6))
    y = x.roll(-1, 1)
    y[:, -1] = VOCAB.pad_id
    loss = model.training_step((x, y, torch.zeros_like(x)), 0)
    logits, _ = model(x, torch.zeros_like(x))
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, len(VOCAB)), y[:, :-1].reshape(-1))
    assert torch.allclose(loss, expected, atol=1e-6)
    assert logged["train/bpc"] == pytest.approx(float(loss) / math.log(2), rel=1e-5)
    assert 0 <= logged["train/acc"] <= logged["train/top5"] <= 1


def test_load_init_weights_grows_vocabulary_rows():
    torch.manual_seed(0)
    old = tiny()
    bigger, _, new_chars = VOCAB.extended(["xyz"], ["irish", "german", "chinese"])
    new = MusicLSTM(bigger.tokens, bigger.labels, 8, 12, 3, 0.0)
    new.load_init_weights(old.state_dict())
    n = len(VOCAB)
    assert torch.equal(new.embedding.weight[:n], old.embedding.weight)
    assert torch.equal(new.head.weight[:n], old.head.weight) and torch.equal(new.head.bias[:n], old.head.bias)
    assert torch.equal(new.label_embedding.weight[:2], old.label_embedding.weight)
    assert torch.equal(new.lstms[2].weight_hh_l0, old.lstms[2].weight_hh_l0)
    with pytest.raises(ValueError, match="same model sizes"):
        MusicLSTM(bigger.tokens, bigger.labels, 8, 16, 3, 0.0).load_init_weights(old.state_dict())


def _checkpoint(outputs: Path) -> Path:
    found = sorted(outputs.glob("music/train/*/checkpoints/best-*.ckpt"))
    assert found, "no best checkpoint written"
    return found[-1]


TINY_RUN = (
    "task=music", "train", "model=tiny", "data.max_samples=300", "data.seq_len=32", "data.batch_size=8",
    "data.batches_per_epoch=4", "trainer.max_epochs=2", "trainer.max_time=null", "trainer.enable_progress_bar=false",
)


@pytest.mark.slow
def test_train_end_to_end_and_checkpoint_contents(run_cli, outputs):
    proc = run_cli(*TINY_RUN, "model.norm=batch", timeout=300)
    metrics = last_json_line(proc.stdout)
    for stage in ("train", "val", "test"):
        for name in ("loss", "bpc", "acc", "top5"):
            assert f"{stage}/{name}" in metrics, f"{stage}/{name} missing from {sorted(metrics)}"
    assert metrics["val/bpc"] == pytest.approx(metrics["val/loss"] / math.log(2), rel=1e-4)
    assert metrics["global_step"] == 8

    ckpt = torch.load(_checkpoint(outputs), weights_only=True, map_location="cpu")
    hp = ckpt["hyper_parameters"]
    vocab = Vocabulary(hp["vocab"])
    assert hp["labels"] == vocab.labels and set(vocab.labels) <= {"american", "chinese", "english", "german", "irish", "scottish"}
    assert (hp["hidden_size"], hp["num_layers"], hp["norm"]) == (32, 2, "batch")
    assert "_target_" not in hp and all(isinstance(v, (int, float, str, bool, list)) for v in hp.values())
    model = MusicLSTM(**hp)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    assert vocab.decode(vocab.encode("M:6/8\nK:G\n")) == "M:6/8\nK:G\n"
    # the run logs its cleaning summary
    log = next(_checkpoint(outputs).parents[1].glob("*.log")).read_text()
    assert "music data:" in log and "tunes per label" in log


@pytest.mark.slow
def test_init_from_on_new_abc_data_grows_vocabulary(run_cli, outputs, tmp_path):
    run_cli(*TINY_RUN, timeout=300)
    first = _checkpoint(outputs)
    new_data = tmp_path / "more" / "klezmer"
    new_data.mkdir(parents=True)
    tune = "X:{n}\nT:freylekhs {n}\nM:2/4\nL:1/16\nK:Dphr\n|:D2^F2 A2G2|~F4 E4|D2^F2 A2c2|B4 A4:|\n\n"
    (new_data / "tunes.abc").write_text("".join(tune.format(n=n) for n in range(12)))
    proc = run_cli(
        "task=music", "train", "model=tiny", "data=abc_dir", f"data.path={new_data.parent}", f"init_from={first}",
        "model.lr=0.001", "data.seq_len=32", "data.batch_size=4", "data.batches_per_epoch=2", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", timeout=300,
    )
    assert "val/bpc" in last_json_line(proc.stdout)
    old = torch.load(first, weights_only=True)
    new = torch.load(_checkpoint(outputs), weights_only=True)
    old_vocab, new_vocab = old["hyper_parameters"]["vocab"], new["hyper_parameters"]["vocab"]
    assert new_vocab[: len(old_vocab)] == old_vocab and "<label:klezmer>" in new_vocab[len(old_vocab) :]
    assert new["hyper_parameters"]["lr"] == 0.001


def test_missing_data_path_is_one_line(run_cli, tmp_path):
    proc = run_cli("task=music", "train", "data=abc_dir", f"data.path={tmp_path}/nope", check=False, timeout=120)
    assert proc.returncode == 2
    assert f"data path does not exist: {tmp_path}/nope" in proc.stderr
    assert "Traceback" not in proc.stderr
