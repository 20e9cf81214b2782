"""Training speed of ``pvae.fit`` against a hand-written PyTorch loop and Pyro SVI.

The same maths everywhere (see ``_speed.py``): a VAE 784-400-50 / 50-400-784
(64-400-50 on digits), Bernoulli likelihood, a single-sample Monte Carlo ELBO
(log q - log p for the KL), batch 100, Adam 1e-3, one CPU thread, methods
interleaved epoch by epoch in one process.

(a) hand-written PyTorch loop, ``torch.optim.Adam`` (default foreach)
(b) Pyro ``SVI`` + ``Trace_ELBO`` + ``pyro.optim.Adam``, Pyro's default validation
(c) ``pvae.fit`` on ``pvae.VAE`` (one pass of fit's epoch loop: steps and
    per-epoch bookkeeping, no set-up)
(d) the hand-written loop with ``torch.optim.Adam(fused=True)`` (a peer's bar)

Usage::

    python benchmarks/train_speed.py [--data-dir ../shared/data/mnist] [--epochs 7]
"""

from __future__ import annotations

import argparse

import pyro
import torch

import pvae
from _speed import DEFAULT_MNIST, LATENT, HIDDEN, LR, Clock, datasets, encoder_decoder, hand_log_weights
from _speed import minibatch_epoch, print_tables, pyro_program, torch_step


def bench(x: torch.Tensor, epochs: int) -> dict:
    d = x.shape[1]
    pyro.clear_param_store()
    clock = Clock()
    steps = {}
    for key, fused in (("a", False), ("d", True)):
        enc, dec = encoder_decoder(d)
        opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=LR, fused=fused)
        steps[key] = torch_step(lambda b, enc=enc, dec=dec: -hand_log_weights(enc, dec, b).mean(), opt)
    model, guide = pyro_program(d, "train_speed")
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": LR}), pyro.infer.Trace_ELBO())
    vae = pvae.VAE(d, LATENT, hidden_dims=(HIDDEN,), likelihood="bernoulli")
    for _ in range(epochs + 1):  # round 0 warms up and is dropped
        clock.time("a", lambda: minibatch_epoch(steps["a"], x))
        clock.time("b", lambda: minibatch_epoch(svi.step, x))
        clock.fit_epoch("c", vae, x)
        clock.time("d", lambda: minibatch_epoch(steps["d"], x))
    return clock.medians()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--epochs", type=int, default=7, help="timed epochs per method (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [(name, x.shape[0], bench(x, args.epochs * mult)) for name, x, mult in datasets(args.data_dir)]
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, threads {args.threads}; ELBO, K=1")
    print_tables(rows, {"a": "(a) hand", "b": "(b) SVI", "c": "(c) fit", "d": "(d) fused"})


if __name__ == "__main__":
    main()
