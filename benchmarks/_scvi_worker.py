"""Train scvi-tools' SCVI on the files single_cell.py writes; run by the peer environment's Python.

Reads ``<dir>/data.npz`` (counts, batch, train and test indices) and
``<dir>/config.json``; writes ``<dir>/scvi_<seed>.npz`` with the latent means
of all cells, the held-out ELBO per cell, the training seconds and the
median seconds of an epoch. Imports
nothing from pvae.
"""

import json
import sys
import time
from pathlib import Path

import anndata
import numpy as np
import scvi
import torch
from lightning.pytorch.callbacks import Callback


class EpochTimer(Callback):
    """Wall seconds of each training epoch."""

    def __init__(self):
        self.seconds = []

    def on_train_epoch_start(self, trainer, module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        self.seconds.append(time.perf_counter() - self.start)


def main(folder: str, seed: int) -> None:
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    data = np.load(folder / "data.npz")
    torch.set_num_threads(cfg["threads"])
    scvi.settings.seed = seed
    scvi.settings.dl_num_workers = 0
    adata = anndata.AnnData(X=data["counts"].astype(np.float32))
    adata.obs["batch"] = data["batch"].astype(str)
    train, test = adata[data["train"]].copy(), adata[data["test"]].copy()
    scvi.model.SCVI.setup_anndata(train, batch_key="batch")
    model = scvi.model.SCVI(train, n_latent=cfg["latent_dim"], n_hidden=cfg["hidden"], n_layers=1,
                            gene_likelihood=cfg["likelihood"], dispersion="gene")
    warmup = cfg["kl_warmup"]
    timer = EpochTimer()
    start = time.perf_counter()
    model.train(max_epochs=cfg["epochs"], batch_size=cfg["batch_size"], train_size=1.0, accelerator="cpu",
                devices=1, early_stopping=False, enable_progress_bar=False, enable_model_summary=False,
                logger=False, enable_checkpointing=False, callbacks=[timer],
                plan_kwargs={"lr": cfg["lr"], "n_epochs_kl_warmup": warmup or None})
    seconds = time.perf_counter() - start
    latent = model.get_latent_representation(adata)
    elbo = float(model.get_elbo(test))
    np.savez(folder / f"scvi_{seed}.npz", latent=latent, elbo=elbo, seconds=seconds,
             epoch_seconds=float(np.median(timer.seconds)))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
