import time

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from framework import TaskData, TaskModel, UserError


class TinyData(TaskData, pl.LightningDataModule):
    def __init__(self, samples: int = 256, features: int = 4, batch_size: int = 16, path: str | None = None):
        super().__init__()
        self.samples, self.features, self.batch_size, self.path = samples, features, batch_size, path

    def prepare_data(self):
        if self.path is not None:
            from pathlib import Path

            if not Path(self.path).exists():
                raise UserError(f"data path does not exist: {self.path}")

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.samples, self.features, generator=g)
        y = x @ torch.arange(1.0, self.features + 1) + 0.01 * torch.randn(self.samples, generator=g)
        n = self.samples * 3 // 4
        self.train_set, self.val_set = TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:])

    def model_kwargs(self):
        return {"features": self.features}

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)


class TinyRegressor(TaskModel, pl.LightningModule):
    def __init__(self, features: int = 4, lr: float = 0.05, step_sleep: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.linear = torch.nn.Linear(features, 1)

    def forward(self, x):
        return self.linear(x).squeeze(-1)

    def _loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def training_step(self, batch, batch_idx):
        if self.hparams.step_sleep:
            time.sleep(self.hparams.step_sleep)  # lets a test kill the process mid-epoch
        loss = self._loss(batch)
        self.log("train/loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch), prog_bar=True)

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self._loss(batch))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss"}}
