"""Anomaly detection on digits: a VAE trained on 0-8 meets the 9s.

Protocol (issue 7; seeds 001 and 004): scikit-learn's 8x8 digits, binarised at
0.5. The digits 0-8 are *normal*; per seed they are shuffled and split into
train / calibration / test (50 / 25 / 25 %). A ``pvae.VAE`` (64-128-64 /
latent 8 / Bernoulli) is fitted on the train split only; an
:class:`pvae.analysis.AnomalyDetector` is calibrated on the calibration split
(normal data the model never saw) and evaluated on the unseen test normals
plus every 9 (never seen by the model or the calibration).

Two scores, higher = more anomalous:

* ``nll``:  -E_q log p(x | z), K = 16 draws (the expected negative
  reconstruction log-likelihood);
* ``iwae``: -IWAE_K(x), K = 256 (an estimate of -log p(x)).

Reported per seed and score: AUROC of test normals vs 9s
(``sklearn.metrics.roc_auc_score``), the false-positive rate measured on the
unseen test normals at a 5% target (conformal threshold from the calibration
split; should be 5% +- 2%), and the true-positive rate on the 9s at that
threshold. The last rows pool the seeds: the mean, and the pooled FPR with its
binomial standard error.

Usage::

    python benchmarks/anomaly_digits.py                 # 5 seeds, 500 epochs (~2 min)
    python benchmarks/anomaly_digits.py --seeds 0 --epochs 20   # quick look
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from sklearn.metrics import roc_auc_score

import pvae
from pvae.analysis import AnomalyDetector
from pvae.data import load_digits

ANOMALY_DIGIT = 9
TARGET_FPR = 0.05
SPLIT = (0.5, 0.25)  # train, calibration; the rest is test
SCORES = {"nll": 16, "iwae": 256}  # score -> num_particles


def run(seed: int, epochs: int) -> dict[str, float]:
    data = load_digits(binarize=True)
    x, y = data.x, data.y
    normal = (y != ANOMALY_DIGIT).nonzero().squeeze(-1)
    nines = (y == ANOMALY_DIGIT).nonzero().squeeze(-1)
    order = normal[torch.randperm(len(normal), generator=torch.Generator().manual_seed(seed))]
    n_train, n_cal = int(SPLIT[0] * len(order)), int(SPLIT[1] * len(order))
    train, cal, test = order[:n_train], order[n_train : n_train + n_cal], order[n_train + n_cal :]

    torch.manual_seed(seed)
    vae = pvae.VAE(64, latent_dim=8, hidden_dims=(128, 64))
    start = time.perf_counter()
    pvae.fit(vae, x[train], num_epochs=epochs, batch_size=64, learning_rate=1e-3, seed=seed, progress=False)
    row: dict[str, float] = {"seed": seed, "n_train": len(train), "n_cal": len(cal), "n_test": len(test),
                             "n_nines": len(nines), "fit_s": time.perf_counter() - start}
    x_test = torch.cat([x[test], x[nines]])
    is_nine = torch.cat([torch.zeros(len(test)), torch.ones(len(nines))])
    for score, num_particles in SCORES.items():
        detector = AnomalyDetector(vae, score=score, num_particles=num_particles, batch_size=512)
        detector.calibrate(x[cal])
        scores = detector.score(x_test)
        flagged = scores > detector.threshold(TARGET_FPR)
        row[f"auroc_{score}"] = roc_auc_score(is_nine.numpy(), scores.numpy())
        row[f"fpr_{score}"] = flagged[: len(test)].double().mean().item()
        row[f"tpr_{score}"] = flagged[len(test) :].double().mean().item()
        row[f"fp_{score}"] = int(flagged[: len(test)].sum())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = [run(seed, args.epochs) for seed in args.seeds]
    first = rows[0]
    print(f"digits 0-8 normal, {ANOMALY_DIGIT}s anomalous; VAE 64-128-64/8 Bernoulli, {args.epochs} epochs; "
          f"split train/cal/test = {first['n_train']}/{first['n_cal']}/{first['n_test']} normals, "
          f"{first['n_nines']} nines in test")
    print(f"target FPR {TARGET_FPR:.0%}; expected conformal FPR floor(a(n+1))/(n+1) = "
          f"{math.floor(TARGET_FPR * (first['n_cal'] + 1)) / (first['n_cal'] + 1):.2%}; "
          f"binomial sd of one seed's test FPR ~ {math.sqrt(TARGET_FPR * (1 - TARGET_FPR) / first['n_test']):.1%}")
    header = f"{'seed':>6} | {'AUROC nll':>9} {'AUROC iwae':>10} | {'FPR nll':>8} {'FPR iwae':>8} | " \
             f"{'TPR nll':>8} {'TPR iwae':>8} | {'fit s':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['seed']:>6} | {r['auroc_nll']:>9.3f} {r['auroc_iwae']:>10.3f} | {r['fpr_nll']:>8.1%} "
              f"{r['fpr_iwae']:>8.1%} | {r['tpr_nll']:>8.1%} {r['tpr_iwae']:>8.1%} | {r['fit_s']:>6.1f}")
    print("-" * len(header))

    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in rows)

    print(f"{'mean':>6} | {mean('auroc_nll'):>9.3f} {mean('auroc_iwae'):>10.3f} | {mean('fpr_nll'):>8.1%} "
          f"{mean('fpr_iwae'):>8.1%} | {mean('tpr_nll'):>8.1%} {mean('tpr_iwae'):>8.1%} |")
    n_test = sum(r["n_test"] for r in rows)
    for score in SCORES:
        pooled = sum(r[f"fp_{score}"] for r in rows) / n_test
        se = math.sqrt(pooled * (1 - pooled) / n_test)
        print(f"pooled FPR ({score}): {pooled:.2%} +- {se:.2%} (binomial se over {n_test} unseen normals)")


if __name__ == "__main__":
    main()
