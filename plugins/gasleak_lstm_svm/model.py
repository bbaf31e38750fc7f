"""The LSTM feature extractor, trained as the encoder of an autoencoder (stage 1 of the detector).

inputs:  each window relative to the sensor's clean-air baseline (features.py: 6 channels)
encoder: standardise -> LSTM(6 -> 50, 2 layers, dropout 0.2) -> last hidden state
         -> Linear 50->32, ReLU -> Linear 32->16, ReLU -> Linear 16->8   (8 features per window)
decoder: 8 -> Linear -> repeated over the window -> LSTM(50) -> Linear -> 3 channels per step

The decoder rebuilds the standardised window *newest sample first*, and the reconstruction error
of the newest samples can weigh more (``recent_boost``, ``recent_tau``): the last few seconds are
what a detector needs to confirm a leak quickly, and a plain average lets the bottleneck ignore them. The last feature
layer has no ReLU: a ReLU there can leave features that are zero for every window.

With ``aux_weight > 0`` a small head on the 8 features (linear, or ``aux_hidden`` units) also predicts
each training window's leak label, and the loss is ``reconstruction + aux_weight * BCE``: the decoder
still rebuilds the window, but the bottleneck must keep what separates a leak from a hard negative.
The head only shapes training; the detector uses the 8 features (stage 2 is the SVM).

The input settings (``inputs``: window, baseline span and quantile) and the standardisation
statistics of the inputs (training data only) are hyper-parameters, so every checkpoint carries
them and loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from plugins.gasleak_lstm_svm.features import InputSpec


class LSTMAutoencoder(L.LightningModule):
    def __init__(
        self,
        channel_mean: list[float],
        channel_std: list[float],
        inputs: dict | None = None,
        input_size: int = 6,
        hidden_size: int = 50,
        num_layers: int = 2,
        dropout: float = 0.2,
        feature_sizes: list[int] = (32, 16, 8),
        decoder_hidden: int = 50,
        reverse_target: bool = True,
        recent_boost: float = 0.0,
        recent_tau: float = 5.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_factor: float = 0.5,
        lr_patience: int = 3,
        aux_weight: float = 0.0,
        aux_hidden: int = 0,
        aux_pos_weight: float = 1.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        window = InputSpec.from_dict(inputs).window
        self.register_buffer("mean", torch.tensor(channel_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(channel_std, dtype=torch.float32), persistent=False)
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        layers, width = [], hidden_size
        for i, size in enumerate(feature_sizes):
            layers.append(nn.Linear(width, size))
            if i < len(feature_sizes) - 1:
                layers.append(nn.ReLU())
            width = size
        self.head = nn.Sequential(*layers)
        self.n_features = width
        self.expand = nn.Linear(width, decoder_hidden)
        self.decoder = nn.LSTM(decoder_hidden, decoder_hidden, 1, batch_first=True)
        self.out = nn.Linear(decoder_hidden, input_size)
        self.reverse_target = reverse_target
        # optional supervised head on the 8 features (training only; the SVM remains stage 2)
        self.aux_head = None
        if aux_weight > 0:
            self.aux_head = (nn.Sequential(nn.Linear(width, aux_hidden), nn.ReLU(), nn.Linear(aux_hidden, 1))
                             if aux_hidden > 0 else nn.Linear(width, 1))
        # reconstruction weight per step: 1 + boost * exp(-age / tau), mean 1 (age 0 = newest sample)
        age = torch.arange(window - 1, -1, -1, dtype=torch.float32)
        w = 1.0 + recent_boost * torch.exp(-age / recent_tau)
        self.register_buffer("step_weight", (w / w.mean()).view(1, -1, 1), persistent=False)

    # -- the detector's side ----------------------------------------------------------------------
    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs (B, T, 6: ``features.InputSpec.transform``) -> standardised."""
        return (x - self.mean) / self.std

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(z)
        return self.head(h[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs (B, T, 6) -> features (B, 8)."""
        return self.encode(self.standardise(x))

    # -- the autoencoder --------------------------------------------------------------------------
    def reconstruct(self, z: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.encode(z) if feats is None else feats
        seed = self.expand(feats).unsqueeze(1).expand(-1, z.shape[1], -1)
        dec, _ = self.decoder(seed.contiguous())
        return self.out(dec)

    def _losses(self, batch) -> dict[str, torch.Tensor]:
        x, y = batch
        z = self.standardise(x.float())
        feats = self.encode(z)
        err = (self.reconstruct(z, feats) - (z.flip(1) if self.reverse_target else z)) ** 2
        weight = self.step_weight.flip(1) if self.reverse_target else self.step_weight
        out = {"recon": (err * weight).mean()}
        out["loss"] = out["recon"]
        if self.aux_head is not None:
            logit = self.aux_head(feats).squeeze(-1)
            pos_weight = torch.tensor(self.hparams.aux_pos_weight, device=logit.device)
            out["aux"] = nn.functional.binary_cross_entropy_with_logits(logit, y.float(), pos_weight=pos_weight)
            out["loss"] = out["recon"] + self.hparams.aux_weight * out["aux"]
        return out

    def _log(self, stage: str, losses: dict, **kw):
        self.log(f"{stage}/loss", losses["loss"], prog_bar=True, on_epoch=True, **kw)
        if "aux" in losses:  # the parts, when there is more than the reconstruction
            self.log(f"{stage}/recon", losses["recon"], on_epoch=True, **kw)
            self.log(f"{stage}/aux", losses["aux"], on_epoch=True, **kw)

    def training_step(self, batch, batch_idx):
        losses = self._losses(batch)
        self._log("train", losses, on_step=False)
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        self._log("val", self._losses(batch))

    def test_step(self, batch, batch_idx):
        self._log("test", self._losses(batch))

    def on_train_epoch_end(self):
        metrics = self.trainer.callback_metrics
        if "val/loss" in metrics and not self.trainer.sanity_checking:
            # the original printed the autoencoder's loss per epoch; keep that on plain stdout
            train = metrics.get("train/loss")
            print(f"autoencoder epoch {self.current_epoch}: train loss {float(train):.4f}, val loss {float(metrics['val/loss']):.4f}"
                  if train is not None else f"autoencoder epoch {self.current_epoch}: val loss {float(metrics['val/loss']):.4f}",
                  flush=True)

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=hp.lr_factor, patience=hp.lr_patience)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss"}}
