"""Training speed of ``pvae.fit`` against a hand-written PyTorch loop and Pyro SVI.

The same maths everywhere: a VAE 784-400-50 / 50-400-784 (64-400-50 on digits)
with ReLU hidden layers, a diagonal-Gaussian encoder (softplus scale), a
Bernoulli likelihood, a single-sample Monte Carlo ELBO (log q - log p for the
KL), batch 100, Adam with learning rate 1e-3, one CPU thread. Methods run one
epoch each in turn (interleaved, in one process) so that machine noise hits
them alike; the table gives the median seconds per epoch and the ratio to the
hand-written loop (a).

(a) hand-written PyTorch loop, ``torch.optim.Adam`` (default foreach)
(b) Pyro ``SVI`` + ``Trace_ELBO`` + ``pyro.optim.Adam``, Pyro's default validation
(c) ``pvae.fit`` on ``pvae.VAE`` (epoch time as ``fit`` reports it: the whole
    epoch loop, including per-epoch bookkeeping)
(d) the hand-written loop with ``torch.optim.Adam(fused=True)`` (a peer's bar)

Usage::

    python benchmarks/train_speed.py --data-dir ../shared/data/mnist [--epochs 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

import pvae
from pvae.data import load_digits, mnist_10k_split

HIDDEN, LATENT, BATCH, LR = 400, 50, 100, 1e-3


class HandVAE(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * LATENT))
        self.dec = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, d))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        loc, raw = self.enc(x).chunk(2, -1)
        scale = F.softplus(raw) + 1e-4
        z = loc + scale * torch.randn_like(loc)
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_lik = -F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").sum(-1)
        return -(log_lik + log_prior - log_q).mean()


def hand_epoch(model: HandVAE, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    order = torch.randperm(x.shape[0])
    for start in range(0, x.shape[0], BATCH):
        batch = x.index_select(0, order[start : start + BATCH])
        loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def pyro_program(d: int):
    """The classic Pyro-tutorial VAE: functions with ``pyro.module``."""
    enc = nn.Sequential(nn.Linear(d, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * LATENT))
    dec = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, d))

    def model(x):
        pyro.module("bench_decoder", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(LATENT), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("bench_encoder", enc)
        loc, raw = enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))

    return model, guide


def svi_epoch(svi: pyro.infer.SVI, x: torch.Tensor) -> None:
    order = torch.randperm(x.shape[0])
    for start in range(0, x.shape[0], BATCH):
        svi.step(x.index_select(0, order[start : start + BATCH]))


def bench(name: str, x: torch.Tensor, epochs: int) -> dict[str, float]:
    d = x.shape[1]
    pyro.clear_param_store()
    hand, hand_fused = HandVAE(d), HandVAE(d)
    opt = torch.optim.Adam(hand.parameters(), lr=LR)
    opt_fused = torch.optim.Adam(hand_fused.parameters(), lr=LR, fused=True)
    model, guide = pyro_program(d)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": LR}), pyro.infer.Trace_ELBO())
    vae = pvae.VAE(d, LATENT, hidden_dims=(HIDDEN,), likelihood="bernoulli")
    times: dict[str, list[float]] = {k: [] for k in "abcd"}

    def timed(key, fn):
        tick = time.perf_counter()
        fn()
        times[key].append(time.perf_counter() - tick)

    for epoch in range(epochs + 1):  # epoch 0 warms up and is dropped
        timed("a", lambda: hand_epoch(hand, opt, x))
        timed("b", lambda: svi_epoch(svi, x))
        result = pvae.fit(vae, x, num_epochs=1, batch_size=BATCH, learning_rate=LR, progress=False)
        times["c"].append(result.history[-1]["seconds"])
        timed("d", lambda: hand_epoch(hand_fused, opt_fused, x))
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    return {"data": name, "n": x.shape[0], **med}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--epochs", type=int, default=7, help="timed epochs per method (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    if Path(args.data_dir).exists():
        train, _ = mnist_10k_split(args.data_dir, binarize="static")
        rows.append(bench("mnist-8k", train.x, args.epochs))
    else:
        print(f"(no MNIST at {args.data_dir}: skipping it)")
    rows.append(bench("digits", load_digits(binarize=True).x, args.epochs * 3))
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, threads {args.threads}; median s/epoch")
    head = f"{'data':10} {'n':>5} | {'(a) hand':>9} {'(b) SVI':>9} {'(c) fit':>9} {'(d) fused':>9} | {'b/a':>5} {'c/a':>5} {'d/a':>5}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['data']:10} {r['n']:>5} | {r['a']:9.4f} {r['b']:9.4f} {r['c']:9.4f} {r['d']:9.4f} | "
            f"{r['b'] / r['a']:5.2f} {r['c'] / r['a']:5.2f} {r['d'] / r['a']:5.2f}"
        )


if __name__ == "__main__":
    main()
