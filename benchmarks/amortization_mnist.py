"""Amortisation and approximation gaps against encoder size (Cremer et al. 2018, Table 2 style).

MNIST-10k split (the 10k MNIST test file: first 8000 images train, last 2000
test, static binarisation pixel/255 > 0.5). VAEs with 50 latents, a fixed
decoder architecture 50-200-200-784 (tanh) and Bernoulli likelihood; the
encoders differ only in their hidden width (784-h-h-100, tanh). Each is trained
with the ELBO for the same number of epochs; then on a subset of test images::

    log p(x)       IWAE bound with K = --evidence-particles (5000)
    ELBO[q*]       per-datum optimum in the encoder's family (Adam from the encoder)
    ELBO[q_phi]    the encoder's ELBO
    approximation gap = log p(x) - ELBO[q*],  amortisation gap = ELBO[q*] - ELBO[q_phi]

and the seconds the gap computation takes per 1000 data points.

Usage::

    python benchmarks/amortization_mnist.py --data-dir ../shared/data/mnist \\
        [--epochs 30] [--num-test 200] [--hidden 50 200 500]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import pvae
from pvae.data import mnist_10k_split
from pvae.infer import amortization_gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--hidden", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--steps", type=int, default=500, help="optimisation steps for q*")
    parser.add_argument("--evidence-particles", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = mnist_10k_split(args.data_dir, binarize="static")
    x_test = test.x[: args.num_test]
    rows = []
    for hidden in args.hidden:
        torch.manual_seed(args.seed)
        vae = pvae.VAE(784, 50, hidden_dims=(hidden, hidden), decoder_hidden_dims=(200, 200), activation="tanh")
        tick = time.perf_counter()
        result = pvae.fit(vae, train.x, num_epochs=args.epochs, batch_size=100, learning_rate=1e-3,
                          seed=args.seed, progress=False)
        train_s = time.perf_counter() - tick
        tick = time.perf_counter()
        report = amortization_gap(vae, x_test, num_steps=args.steps, num_particles=8,
                                  elbo_particles=1000, evidence_particles=args.evidence_particles)
        gap_s = time.perf_counter() - tick
        s = report.summary()
        rows.append((hidden, s, gap_s / len(x_test) * 1000, train_s, result.history[-1]["elbo"]))
        print(f"encoder hidden {hidden}: trained {args.epochs} epochs in {train_s:.0f} s, gap in {gap_s:.0f} s", flush=True)

    print(f"\nMNIST-10k, {args.num_test} test images, {args.epochs} epochs, K={args.evidence_particles}; "
          "nats per image (mean +- s.e.)")
    head = (f"{'enc h':>5} | {'log p(x)':>15} {'ELBO[q*]':>15} {'ELBO[q_phi]':>15} | "
            f"{'approx gap':>13} {'amort gap':>13} | {'s/1000 x':>8}")
    print(head)
    print("-" * len(head))
    for hidden, s, per_k, _, _ in rows:
        def f(key: str) -> str:
            m, se = s[key]
            return f"{m:8.2f} +-{se:5.2f}"
        print(f"{hidden:>5} | {f('log_evidence'):>15} {f('elbo_optimal'):>15} {f('elbo_amortized'):>15} | "
              f"{f('approximation_gap'):>13} {f('amortization_gap'):>13} | {per_k:8.1f}")


if __name__ == "__main__":
    main()
