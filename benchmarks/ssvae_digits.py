"""Semi-supervised digits: does the SSVAE's classifier learn from unlabelled data?

Protocol (issue 6, item 2; Kingma et al. 2014, model M2). scikit-learn's 8x8
digits, binarised at 0.5 (1797 images). Per seed: a stratified held-out test
split of 30% (540 images); of the remaining 1257, a stratified ``fraction``
keeps its labels (10%: 126 labels, ~13 per class; 2%: 26 labels, 2-3 per
class), the rest is unlabelled (label -1).

* **supervised**: the classifier architecture alone (``mlp(64, (256,), 10)``,
  the SSVAE's ``classifier``), trained on the labelled images only: full-batch
  Adam (lr 1e-3, weight decay 1e-3, the better of 0 and 1e-3 in a pilot),
  1000 steps.
* **SSVAE**: ``pvae.models.SemiSupervisedVAE`` (Bernoulli likelihood, latent
  10, encoder / decoder / classifier hidden (256,)) trained on all 1257
  training images, labelled and unlabelled in mixed batches of 128, with
  ``pvae.infer.EnumElboObjective`` (the label summed out exactly for the
  unlabelled images, plus the classification loss), Adam lr 1e-3, 150
  epochs. Two weights of the classification loss per labelled image:
  Kingma et al.'s :math:`\\alpha = 0.1 N / N_l` ("kingma") and 50 times that
  ("x50"; :math:`\\alpha = 50` at 10% and 250 at 2%).

Reported: held-out test accuracy per seed and its mean and standard
deviation over seeds. Fixed seeds: the splits and the initialisations are
reproducible.

Usage::

    python benchmarks/ssvae_digits.py                     # 3 seeds, 150 epochs (~6 min on 1 core)
    python benchmarks/ssvae_digits.py --seeds 0 --epochs 30   # quick look
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

import pvae
from pvae.data import load_digits
from pvae.infer import EnumElboObjective
from pvae.models import SemiSupervisedVAE
from pvae.models.nets import mlp

HIDDEN = (256,)
LATENT_DIM = 10
TEST_FRACTION = 0.3
ALPHA_SCALES = {"kingma": 1.0, "x50": 50.0}


def split(seed: int, fraction: float) -> dict[str, torch.Tensor]:
    """Stratified test split, then a stratified labelled subset of the training split."""
    data = load_digits(binarize=True)
    index = np.arange(len(data.x))
    y = data.y.numpy()
    train, test = train_test_split(index, test_size=TEST_FRACTION, stratify=y, random_state=seed)
    labelled, _ = train_test_split(train, train_size=fraction, stratify=y[train], random_state=seed)
    is_labelled = torch.from_numpy(np.isin(train, labelled))
    y_train = data.y[train]
    return {
        "x": data.x[train],
        "y": torch.where(is_labelled, y_train, -1),
        "x_test": data.x[test],
        "y_test": data.y[test],
    }


def accuracy(predicted: torch.Tensor, y: torch.Tensor) -> float:
    return float((predicted == y).double().mean())


def supervised(data: dict[str, torch.Tensor], seed: int, steps: int = 1000) -> float:
    torch.manual_seed(seed)
    known = data["y"] >= 0
    x, y = data["x"][known], data["y"][known]
    clf = mlp(x.shape[1], HIDDEN, 10)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(clf(x), y).backward()
        opt.step()
    with torch.no_grad():
        return accuracy(clf(data["x_test"]).argmax(-1), data["y_test"])


def semi_supervised(data: dict[str, torch.Tensor], seed: int, alpha: float, epochs: int) -> float:
    torch.manual_seed(seed)
    ssvae = SemiSupervisedVAE(64, num_classes=10, latent_dim=LATENT_DIM, hidden_dims=HIDDEN, alpha=alpha)
    pvae.fit(ssvae, (data["x"], data["y"]), objective=EnumElboObjective(), num_epochs=epochs, batch_size=128,
             learning_rate=1e-3, seed=seed, progress=False, diagnostics_every=None)
    return accuracy(ssvae.predict(data["x_test"]), data["y_test"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.02])
    parser.add_argument("--epochs", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)

    methods = ["supervised"] + [f"ssvae_{name}" for name in ALPHA_SCALES]
    results: dict[float, dict[str, list[float]]] = {}
    print(f"{'labels':>7} {'seed':>4} {'n_lab':>5} " + " ".join(f"{m:>14}" for m in methods) + f" {'fit_s':>6}")
    for fraction in args.fractions:
        results[fraction] = {m: [] for m in methods}
        for seed in args.seeds:
            data = split(seed, fraction)
            num_labelled = int((data["y"] >= 0).sum())
            kingma = SemiSupervisedVAE.kingma_alpha(len(data["x"]), num_labelled)
            start = time.perf_counter()
            row = {"supervised": supervised(data, seed)}
            for name, scale in ALPHA_SCALES.items():
                row[f"ssvae_{name}"] = semi_supervised(data, seed, scale * kingma, args.epochs)
            for m in methods:
                results[fraction][m].append(row[m])
            print(f"{fraction:>7.0%} {seed:>4} {num_labelled:>5} " + " ".join(f"{row[m]:>14.3f}" for m in methods)
                  + f" {time.perf_counter() - start:>6.0f}", flush=True)

    print("\nheld-out accuracy, mean +- sd over seeds", args.seeds, f"({args.epochs} SSVAE epochs)")
    print(f"{'labels':>7} " + " ".join(f"{m:>16}" for m in methods))
    for fraction, by_method in results.items():
        cells = []
        for m in methods:
            values = by_method[m]
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.mean(values):.3f} +- {sd:.3f}")
        print(f"{fraction:>7.0%} " + " ".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
