"""The music model, all of it in this file: a character-level LSTM over ABC, conditioned on a label.

    tokens (B,T) -> embedding (+ label embedding) -> [LSTM -> norm -> dropout] x num_layers -> linear head

Trained many-to-many: every position of a window predicts the next token (targets equal to
``<pad>`` are ignored: the data module uses that for label tokens, which no character predicts).
Each LSTM layer is its own single-layer ``nn.LSTM`` so a normalisation can sit between layers;
``forward`` takes and returns the per-layer ``(h, c)`` state, which is what stateful decoding needs.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from framework.plugin import TaskModel
from plugins.music_lstm.vocab import Vocabulary

log = logging.getLogger(__name__)


class ChannelBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the feature (channel) dimension of a (..., H) tensor, as the original used."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view_as(x)


def make_norm(kind: str, size: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(size)
    if kind == "batch":
        return ChannelBatchNorm(size)
    if kind in ("none", None):
        return nn.Identity()
    raise ValueError(f"model.norm must be layer, batch or none, got {kind!r}")


class MusicLSTM(TaskModel, L.LightningModule):
    def __init__(
        self,
        vocab: list[str],
        labels: list[str],
        embedding_dim: int = 128,
        hidden_size: int = 256,
        num_layers: int = 3,
        dropout: float = 0.1,
        norm: str = "layer",
        label_embedding: bool = True,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        lr_factor: float = 0.5,
        lr_patience: int = 1,
    ):
        super().__init__()
        # Plain values only, so the checkpoint loads with weights_only=True and describes itself.
        self.save_hyperparameters()
        vocabulary = Vocabulary(vocab)
        if list(labels) != vocabulary.labels:
            raise ValueError(f"labels {labels} do not match the vocabulary's label tokens {vocabulary.labels}")
        self._vocabulary = vocabulary
        V, E, H = len(vocab), embedding_dim, hidden_size
        self.embedding = nn.Embedding(V, E)
        self.label_embedding = nn.Embedding(len(labels), E) if label_embedding and labels else None
        self.lstms = nn.ModuleList(nn.LSTM(E if i == 0 else H, H, batch_first=True) for i in range(num_layers))
        self.norms = nn.ModuleList(make_norm(norm, H) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(H, V)

    @property
    def vocabulary(self) -> Vocabulary:
        return self._vocabulary

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None, state=None):
        """tokens (B,T) and labels (B,T) or (B,) label indices -> (logits (B,T,V), new state).

        ``state`` is None (zeros) or a list with one ``(h, c)`` per layer, each (1, B, H).
        """
        x = self.embedding(tokens)
        if self.label_embedding is not None and labels is not None:
            lab = self.label_embedding(labels)
            x = x + (lab if lab.dim() == 3 else lab.unsqueeze(1))
        new_state = []
        for i, (lstm, norm) in enumerate(zip(self.lstms, self.norms)):
            x, hc = lstm(x, None if state is None else state[i])
            new_state.append(hc)
            x = self.dropout(norm(x))
        return self.head(x), new_state

    # -- training ---------------------------------------------------------------------------
    def _step(self, batch, stage: str):
        x, y, lab = batch
        logits, _ = self(x, lab)
        flat_logits = logits.reshape(-1, logits.shape[-1])
        flat_y = y.reshape(-1)
        pad = self._vocabulary.pad_id
        loss = F.cross_entropy(flat_logits, flat_y, ignore_index=pad)
        with torch.no_grad():
            mask = flat_y != pad
            n = mask.sum().clamp(min=1)
            top5 = flat_logits.topk(min(5, flat_logits.shape[-1]), dim=-1).indices
            hit = top5 == flat_y.unsqueeze(1)
            acc = (hit[:, 0] & mask).sum() / n
            acc5 = (hit.any(dim=1) & mask).sum() / n
        on_step = stage == "train"
        # batch_size = predicted characters, so epoch averages weight every character equally.
        kw = dict(on_step=on_step, on_epoch=True, batch_size=int(n))
        self.log(f"{stage}/loss", loss, prog_bar=True, **kw)
        self.log(f"{stage}/bpc", loss.detach() / math.log(2), prog_bar=stage != "train", **kw)
        self.log(f"{stage}/acc", acc, **kw)
        self.log(f"{stage}/top5", acc5, **kw)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=hp.lr_factor, patience=hp.lr_patience
        )
        # strict=False: a run without validation (limit_val_batches=0) keeps its learning rate.
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "strict": False}}

    # -- incremental training ---------------------------------------------------------------
    def load_init_weights(self, state_dict: dict) -> None:
        """Start from an older model's weights (``init_from``).

        The data module extends the old vocabulary by appending new characters and labels, so the
        old rows of the embedding, label embedding and head are a prefix of the new ones: they are
        copied and the new rows keep their fresh initialisation. Every other tensor must match.
        """
        own = self.state_dict()
        unexpected = sorted(set(state_dict) - set(own))
        missing = sorted(set(own) - set(state_dict))
        if unexpected or missing:
            raise ValueError(f"init_from checkpoint does not fit this model: missing {missing}, unexpected {unexpected}")
        grown = []
        with torch.no_grad():
            for name, old in state_dict.items():
                new = own[name]
                if old.shape == new.shape:
                    new.copy_(old)
                elif old.dim() >= 1 and old.shape[1:] == new.shape[1:] and old.shape[0] < new.shape[0]:
                    new[: old.shape[0]].copy_(old)  # embedding / head rows of the old vocabulary
                    grown.append(f"{name} {old.shape[0]}->{new.shape[0]}")
                else:
                    raise ValueError(
                        f"init_from: {name} has shape {tuple(old.shape)} in the checkpoint but "
                        f"{tuple(new.shape)} here; use the same model sizes as the checkpoint"
                    )
        if grown:
            log.info("init_from: grown for new tokens: %s", ", ".join(grown))
