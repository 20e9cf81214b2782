"""Shared harness of the training-speed benchmarks (train_speed.py, iwae_speed.py).

One architecture everywhere: a VAE d-400-50 / 50-400-d with ReLU hidden
layers, a diagonal-Gaussian encoder (softplus scale + 1e-4), a Bernoulli
likelihood, batch 100, Adam with learning rate 1e-3. Methods run one epoch
each in turn (interleaved, in one process) so that machine noise hits them
alike; medians are taken by the wall clock and by the process's CPU time
(which other processes on a busy machine disturb far less), and each ratio is
the median over rounds of the ratio within a round (paired).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

import pvae
from pvae.data import load_digits, mnist_10k_split

HIDDEN, LATENT, BATCH, LR = 400, 50, 100, 1e-3
DEFAULT_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def encoder_decoder(d: int) -> tuple[nn.Module, nn.Module]:
    enc = nn.Sequential(nn.Linear(d, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * LATENT))
    dec = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, d))
    return enc, dec


def hand_log_weights(enc: nn.Module, dec: nn.Module, x: torch.Tensor, particles: tuple[int, ...] = ()) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x) written out in PyTorch: ``particles + (B,)``."""
    loc, raw = enc(x).chunk(2, -1)
    scale = F.softplus(raw) + 1e-4
    z = loc + scale * torch.randn(particles + loc.shape)
    log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    logits = dec(z)
    log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    return log_lik + log_prior - log_q


def pyro_program(d: int, name: str):
    """The classic Pyro-tutorial VAE: functions with ``pyro.module``."""
    enc, dec = encoder_decoder(d)

    def model(x):
        pyro.module(f"{name}_decoder", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(LATENT), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module(f"{name}_encoder", enc)
        loc, raw = enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))

    return model, guide


def minibatch_epoch(step: Callable[[torch.Tensor], object], x: torch.Tensor) -> None:
    order = torch.randperm(x.shape[0])
    for start in range(0, x.shape[0], BATCH):
        step(x.index_select(0, order[start : start + BATCH]))


def torch_step(loss_fn: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer):
    def step(batch: torch.Tensor) -> None:
        loss = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


class Clock:
    """Per-method wall and CPU seconds of each timed epoch."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def time(self, key: str, fn: Callable[[], object]) -> None:
        tick, tock = time.perf_counter(), time.process_time()
        fn()
        self.add(key, time.perf_counter() - tick, time.process_time() - tock)

    def add(self, key: str, wall: float, cpu: float) -> None:
        self.wall.setdefault(key, []).append(wall)
        self.cpu.setdefault(key, []).append(cpu)

    def fit_epoch(self, key: str, program, x: torch.Tensor, **fit_kwargs) -> None:
        """Time one pass of ``pvae.fit``'s epoch loop (steps and per-epoch bookkeeping):
        a 2-epoch fit, timed between the end-of-epoch callbacks, so no set-up is counted.
        The optional collapse diagnostics (a report, not training) are off."""
        marks: list[tuple[float, float]] = []
        pvae.fit(program, x, num_epochs=2, batch_size=BATCH, learning_rate=LR, progress=False, diagnostics_every=None,
                 callback=lambda row: marks.append((time.perf_counter(), time.process_time())), **fit_kwargs)
        self.add(key, marks[1][0] - marks[0][0], marks[1][1] - marks[0][1])

    def medians(self, skip: int = 1, baseline: str = "a") -> dict[str, dict[str, dict[str, float]]]:
        """Per clock: the median seconds per epoch of each method (``"seconds"``) and the
        median over rounds of its ratio to ``baseline`` in the same round (``"ratio"``:
        paired, so slow drifts of the machine cancel). Round 0 (``skip``) warms up."""
        out = {}
        for clock, times in (("wall", self.wall), ("cpu", self.cpu)):
            base = times[baseline][skip:]
            out[clock] = {
                "seconds": {k: statistics.median(v[skip:]) for k, v in times.items()},
                "ratio": {k: statistics.median(t / b for t, b in zip(v[skip:], base)) for k, v in times.items()},
            }
        return out


def datasets(data_dir: str) -> list[tuple[str, torch.Tensor, int]]:
    """(name, x, epoch multiplier): MNIST-10k's 8000 training images, and digits."""
    out = []
    if Path(data_dir).exists():
        train, _ = mnist_10k_split(data_dir, binarize="static")
        out.append(("mnist-8k", train.x, 1))
    else:
        print(f"(no MNIST at {data_dir}: skipping it)")
    out.append(("digits", load_digits(binarize=True).x, 3))
    return out


def print_tables(rows: list[tuple[str, int, dict]], columns: dict[str, str]) -> None:
    """Median seconds per epoch per method and the median paired ratio of each to method ``a``."""
    keys = list(columns)
    head = f"{'data':10} {'n':>5} | " + " ".join(f"{columns[k]:>11}" for k in keys) + " | " + " ".join(
        f"{k + '/a':>5}" for k in keys[1:])
    for clock, title in (("wall", "wall-clock"), ("cpu", "CPU (process time: robust to other load)")):
        print(f"\nmedian {title} seconds per epoch")
        print(head)
        print("-" * len(head))
        for name, n, med in rows:
            r, ratio = med[clock]["seconds"], med[clock]["ratio"]
            print(f"{name:10} {n:>5} | " + " ".join(f"{r[k]:11.4f}" for k in keys) + " | "
                  + " ".join(f"{ratio[k]:5.2f}" for k in keys[1:]))
