import torch

from framework import UserError, checkpoints, runs
from tiny_task.model import TinyRegressor


def predict(cfg):
    ckpt = checkpoints.load(runs.resolve_checkpoint(cfg))
    model = TinyRegressor(**ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    with torch.no_grad():
        y = model(torch.ones(1, model.hparams.features))
    return {"prediction": float(y), "epoch": ckpt["epoch"]}


def fail(cfg):
    raise UserError("data path does not exist: /nowhere")
