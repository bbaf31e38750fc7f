"""A toy music model for the studio's tests: a small LSTM that has learnt a few simple tunes by
heart (a few seconds of training), so what it writes parses, renders and plays."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from plugins.music_lstm.model import MusicLSTM
from plugins.music_lstm.vocab import Vocabulary

TUNES = {
    "irish": [
        "M:6/8\nL:1/8\nK:G\n|:GAB cBA|dBG AFD|GAB cBA|dBG G3:|\n|:gfe dBG|AFD DFA|gfe dBG|AGF G3:|",
        "M:6/8\nL:1/8\nK:D\n|:DFA dAF|GBd gdB|AFA dAF|EFE E3:|\n|:fdf ede|cAc BAG|FAF EFE|D3 D3:|",
    ],
    "german": [
        "M:4/4\nL:1/4\nK:C\nC D E F|G2 G2|A A G2|F F E2|D D C2|E E D2|C D E F|G4|]",
        "M:3/4\nL:1/4\nK:F\nF G A|B2 A|G F E|F3|A B c|d2 c|B A G|F3|]",
    ],
}


def toy_model(steps: int = 150, seed: int = 0) -> MusicLSTM:
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster, and leaves the other core alone
    texts = [t for tunes in TUNES.values() for t in tunes]
    vocab = Vocabulary.build(texts, list(TUNES))
    model = MusicLSTM(vocab.tokens, vocab.labels, embedding_dim=24, hidden_size=64, num_layers=2, norm="layer", dropout=0.0)
    seqs = [(vocab.encode_tune(t, label), vocab.label_index(label)) for label, tunes in TUNES.items() for t in tunes]
    longest = max(len(s) for s, _ in seqs)
    x = torch.full((len(seqs), longest), vocab.pad_id, dtype=torch.long)
    for i, (s, _) in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s)
    labels = torch.tensor([row for _, row in seqs])
    target = x[:, 1:].clone()
    target[:, 0] = vocab.pad_id  # <s> after the label is given, not predicted
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        logits, _ = model(x[:, :-1], labels)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=vocab.pad_id)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return model.eval()


def save_toy_checkpoint(path: Path, **kwargs) -> Path:
    """A checkpoint as training writes one: hyper-parameters and weights, plain values only."""
    model = toy_model(**kwargs)
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, path)
    return path
