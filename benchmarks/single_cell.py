"""Batch integration of single-cell counts: pvae's CountVAE beside scvi-tools' SCVI.

Methods, on one data set and over several seeds:

* ``pvae``: :class:`pvae.models.CountVAE` with the batch (ZINB, gene dispersion,
  latent 10, one hidden layer of 128: scVI's defaults), trained by ``pvae.fit``;
* ``scvi-tools``: ``scvi.model.SCVI`` with the same sizes, likelihood, epochs,
  batch size, learning rate and KL warm-up, run in its own virtual environment
  (``.bench-venv/scvi``, created on first use: scvi-tools is never a dependency
  of pvae);
* ``nb-vae``: the same program without the batch (``num_batches=1``, NB);
* ``pca``: 10 principal components of log1p counts per 10k (no correction).

Printed per method (mean +- sd over seeds): batch mixing entropy, batch ASW,
cell-type ASW, kNN cell-type accuracy (:mod:`pvae.analysis.integration`, on a
subset of 10k cells), held-out ELBO per cell (10% of the cells), training
seconds and the median seconds of an epoch (epoch timers in both trainers;
the median leaves out the first epoch's set-up). Both trainers get the same
number of torch threads; pvae's first-call costs are paid by a warm-up fit
before the timed runs, scvi-tools' worker imports everything before timing.

Data: simulated by :func:`pvae.data.simulate_counts` (settings printed), or an
``.h5ad`` file (``--h5ad``, with ``--layer``, ``--batch-key``, ``--labels-key``).

    .venv/bin/python benchmarks/single_cell.py                     # 20k cells x 2000 genes
    .venv/bin/python benchmarks/single_cell.py --cells 3000 --genes 500 --epochs 5 --seeds 0
    .venv/bin/python benchmarks/single_cell.py --h5ad atlas.h5ad --batch-key batch --labels-key cell_type
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA

import pvae
from pvae.analysis import encode_mean, integration_metrics
from pvae.data import from_anndata, simulate_counts
from pvae.infer import Callback
from pvae.models import CountVAE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer_venv import peer_python  # noqa: E402

SCVI_PACKAGES = ["scvi-tools==1.4.2"]
COLUMNS = ("batch_mixing", "batch_asw", "cell_type_asw", "knn_accuracy", "heldout_elbo", "train_s", "s_per_epoch")


def _data(args):
    if args.h5ad:
        data = from_anndata(args.h5ad, layer=args.layer, batch_key=args.batch_key, labels_key=args.labels_key)
        if data.labels is None:
            raise SystemExit("--labels-key is needed: the bio-conservation measures need cell types.")
        return data.counts, data.batch, data.labels, {"h5ad": args.h5ad}
    settings = {"num_cells": args.cells, "num_genes": args.genes, "num_batches": args.batches,
                "num_cell_types": args.types, "de_prob": args.de_prob, "de_loc": args.de_loc,
                "batch_scale": args.batch_scale, "library_loc": args.library_loc,
                "dispersion": args.dispersion, "zero_inflation": args.zero_inflation, "seed": 1234}
    sim = simulate_counts(**settings)
    return sim.counts, sim.batch, sim.cell_type, settings


class EpochTimer(Callback):
    """Wall seconds of each epoch (the median leaves out the first epoch's set-up)."""

    def on_fit_start(self, state) -> None:
        self.seconds: list[float] = []

    def on_epoch_start(self, state) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, state) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def _pvae(x, b, train, test, args, seed, with_batch, epochs=None):
    kwargs = dict(latent_dim=args.latent, hidden_dims=(args.hidden,))
    torch.manual_seed(seed)  # the initial weights too: torch seeds each new process at random
    if with_batch:
        model = CountVAE(x.shape[1], num_batches=int(b.max()) + 1, likelihood=args.likelihood, **kwargs)
        data, held = (x[train], b[train]), (x[test], b[test])
    else:
        model = CountVAE(x.shape[1], likelihood="nb", **kwargs)
        data, held = (x[train],), (x[test],)
    timer = EpochTimer()
    start = time.perf_counter()
    pvae.fit(model, data, num_epochs=epochs or args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
             kl_warmup=args.kl_warmup or None, seed=seed, progress=False, diagnostics_every=None,
             compile=args.compile, callbacks=[timer])
    seconds = time.perf_counter() - start
    with torch.no_grad():
        elbo = float(pvae.infer.elbo_terms(model, *held, num_particles=1).elbo.mean())
        latent = encode_mean(model, *((x, b) if with_batch else (x,)))
    return latent.numpy(), elbo, seconds, statistics.median(timer.seconds)


def _scvi(python, folder, seed):
    subprocess.run([str(python), str(Path(__file__).with_name("_scvi_worker.py")), str(folder), str(seed)],
                   check=True)
    out = np.load(folder / f"scvi_{seed}.npz")
    return out["latent"], float(out["elbo"]), float(out["seconds"]), float(out["epoch_seconds"])


def _row(b, t, latent, elbo=float("nan"), seconds=float("nan"), epoch_seconds=float("nan")):
    """One method's measures: integration metrics of ``latent``, then the training figures."""
    m = integration_metrics(latent, b.numpy(), t.numpy()).to_dict()
    return {**m, "heldout_elbo": elbo, "train_s": seconds, "s_per_epoch": epoch_seconds}


def _fmt(values):
    values = [v for v in values if v == v]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} +- {sd:.4f}" if abs(mean) < 10 else f"{mean:.1f} +- {sd:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--h5ad", help="an .h5ad file instead of the simulation")
    p.add_argument("--layer", default="counts", help="layer with raw counts (None: X)")
    p.add_argument("--batch-key", default="batch")
    p.add_argument("--labels-key", default=None)
    p.add_argument("--cells", type=int, default=20000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--types", type=int, default=8)
    p.add_argument("--de-prob", type=float, default=0.05)
    p.add_argument("--de-loc", type=float, default=0.5)
    p.add_argument("--batch-scale", type=float, default=0.5)
    p.add_argument("--library-loc", type=float, default=8.0)
    p.add_argument("--dispersion", type=float, default=5.0)
    p.add_argument("--zero-inflation", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl-warmup", type=int, default=0, help="epochs of linear KL warm-up for both (0: none)")
    p.add_argument("--latent", type=int, default=10)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--likelihood", default="zinb", choices=("zinb", "nb"))
    p.add_argument("--compile", default="False", choices=("False", "True", "auto"),
                   help="pvae.fit's compile option")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-scvi", action="store_true", help="skip scvi-tools (no peer environment)")
    p.add_argument("--out", default="reports/single_cell.json")
    args = p.parse_args()
    args.compile = {"False": False, "True": True}.get(args.compile, args.compile)
    if args.layer == "None":
        args.layer = None
    torch.set_num_threads(args.threads)

    x, b, t, settings = _data(args)
    n = x.shape[0]
    perm = np.random.default_rng(0).permutation(n)
    test, train = np.sort(perm[: n // 10]), np.sort(perm[n // 10:])
    print(f"data: {n} cells x {x.shape[1]} genes, {int(b.max()) + 1} batches, {int(t.max()) + 1} cell types; "
          f"{len(train)} train / {len(test)} held out; settings {settings}")
    print(f"training: {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, KL warm-up {args.kl_warmup}, "
          f"latent {args.latent}, hidden {args.hidden}, {args.likelihood}, {args.threads} threads", flush=True)

    rows: dict[str, list[dict]] = {"pvae": [], "scvi-tools": [], "nb-vae": [], "pca": []}
    lognorm = np.log1p(x.numpy() / np.maximum(x.numpy().sum(1, keepdims=True), 1) * 1e4)
    rows["pca"].append(_row(b, t, PCA(args.latent, random_state=0).fit_transform(lognorm)))
    for with_batch in (True, False):  # warm-up: Pyro's and torch's first-call costs out of the timings
        _pvae(x[:512], b[:512], np.arange(256), np.arange(256, 512), args, 0, with_batch, epochs=1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        python = None
        if not args.no_scvi:
            python = peer_python("scvi", SCVI_PACKAGES)
            np.savez(folder / "data.npz", counts=x.numpy(), batch=b.numpy(), train=train, test=test)
            (folder / "config.json").write_text(json.dumps({
                "threads": args.threads, "latent_dim": args.latent, "hidden": args.hidden,
                "likelihood": args.likelihood, "epochs": args.epochs, "batch_size": args.batch_size,
                "lr": args.lr, "kl_warmup": args.kl_warmup}))
        for seed in args.seeds:
            rows["pvae"].append(_row(b, t, *_pvae(x, b, train, test, args, seed, True)))
            if python is not None:
                rows["scvi-tools"].append(_row(b, t, *_scvi(python, folder, seed)))
            rows["nb-vae"].append(_row(b, t, *_pvae(x, b, train, test, args, seed, False)))
            print(f"seed {seed}: " + "; ".join(f"{k} {json.dumps({c: round(v, 3) for c, v in r[-1].items()})}"
                                              for k, r in rows.items() if r), flush=True)

    print("\n| method | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, rs in rows.items():
        if rs:
            print(f"| {name} | " + " | ".join(_fmt([r[c] for r in rs]) for c in COLUMNS) + " |")
    if rows["scvi-tools"]:
        ratios = [p["s_per_epoch"] / q["s_per_epoch"] for p, q in zip(rows["pvae"], rows["scvi-tools"])]
        print(f"\npvae / scvi-tools seconds per epoch, paired by seed: {[round(r, 3) for r in ratios]}, "
              f"median {statistics.median(ratios):.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": settings, "args": vars(args), "rows": rows}, indent=1, default=str))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
