"""IWAE training speed of ``pvae.fit`` against a hand-written PyTorch step and Pyro.

The same maths everywhere: a VAE 784-400-50 / 50-400-784 (64-400-50 on digits)
with ReLU hidden layers, a diagonal-Gaussian encoder (softplus scale), a
Bernoulli likelihood, and the IWAE loss with K = 5 importance samples drawn in
one vectorised pass (Burda et al. 2016),

    loss = -(1/B) sum_b [logsumexp_k log w_kb - log K],
    log w_kb = log p(x_b | z_kb) + log p(z_kb) - log q(z_kb | x_b),

batch 100, Adam with learning rate 1e-3, one CPU thread. Methods run one epoch
each in turn (interleaved, in one process) so that machine noise hits them
alike; the tables give the median seconds per epoch, by the wall clock and by
the process's CPU time (which other processes on a busy machine disturb far
less), and the median over rounds of the ratio to the hand-written step (a)
in the same round.

(a) hand-written vectorised IWAE step in PyTorch, ``torch.optim.Adam`` (default foreach)
(b) Pyro ``SVI`` + ``RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True)``
(c) ``pvae.fit(objective="iwae", num_particles=5)`` on ``pvae.VAE`` (standard
    gradient; one whole pass of ``fit``'s epoch loop, timed between the
    end-of-epoch callbacks of a 2-epoch fit: no set-up)
(d) ``pvae.fit`` with ``IWAEObjective(num_particles=5, estimator="dreg")``
(e) the hand-written step (a) with ``torch.optim.Adam(fused=True)``, the
    optimiser ``pvae.fit`` uses

Usage::

    python benchmarks/iwae_speed.py [--data-dir ../shared/data/mnist] [--epochs 3]
"""

from __future__ import annotations

import argparse
import math

import pyro
import torch

import pvae
from _speed import DEFAULT_MNIST, HIDDEN, LATENT, LR, Clock, datasets, encoder_decoder, hand_log_weights
from _speed import minibatch_epoch, print_tables, pyro_program, torch_step
from pvae.infer import IWAEObjective

K = 5


def bench(x: torch.Tensor, epochs: int) -> dict:
    d = x.shape[1]
    pyro.clear_param_store()
    clock = Clock()
    steps = {}
    for key, fused in (("a", False), ("e", True)):
        enc, dec = encoder_decoder(d)
        opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=LR, fused=fused)
        loss = lambda b, enc=enc, dec=dec: -(torch.logsumexp(hand_log_weights(enc, dec, b, (K,)), 0) - math.log(K)).mean()
        steps[key] = torch_step(loss, opt)
    model, guide = pyro_program(d, "iwae_speed")
    renyi = pyro.infer.RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": LR}), renyi)
    vae_iwae = pvae.VAE(d, LATENT, hidden_dims=(HIDDEN,), likelihood="bernoulli")
    vae_dreg = pvae.VAE(d, LATENT, hidden_dims=(HIDDEN,), likelihood="bernoulli")
    dreg = IWAEObjective(num_particles=K, estimator="dreg")
    for _ in range(epochs + 1):  # round 0 warms up and is dropped
        clock.time("a", lambda: minibatch_epoch(steps["a"], x))
        clock.time("b", lambda: minibatch_epoch(svi.step, x))
        clock.fit_epoch("c", vae_iwae, x, objective="iwae", num_particles=K)
        clock.fit_epoch("d", vae_dreg, x, objective=dreg)
        clock.time("e", lambda: minibatch_epoch(steps["e"], x))
    return clock.medians()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per method (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [(name, x.shape[0], bench(x, args.epochs * mult)) for name, x, mult in datasets(args.data_dir)]
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, threads {args.threads}, K={K}")
    print_tables(rows, {"a": "(a) hand", "b": "(b) Renyi", "c": "(c) iwae", "d": "(d) dreg", "e": "(e) fused"})


if __name__ == "__main__":
    main()
