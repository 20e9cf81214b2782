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


def encoder_decoder(d: int, hidden: tuple[int, ...] = (HIDDEN,), latent: int = LATENT) -> tuple[nn.Module, nn.Module]:
    """The hand-written networks: d-hidden-2*latent and latent-reversed(hidden)-d, ReLU
    between layers (``pvae.VAE(d, latent, hidden_dims=hidden)`` builds the same)."""

    def mlp(widths: list[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
        return nn.Sequential(*layers)

    return mlp([d, *hidden, 2 * latent]), mlp([latent, *reversed(hidden), d])


def hand_log_weights(enc: nn.Module, dec: nn.Module, x: torch.Tensor, particles: tuple[int, ...] = ()) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x) written out in PyTorch: ``particles + (B,)``."""
    loc, raw = enc(x).chunk(2, -1)
    scale = F.softplus(raw) + 1e-4
    z = loc + scale * torch.randn(particles + loc.shape, dtype=loc.dtype, device=loc.device)
    log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    log_prior = torch.distributions.Normal(loc.new_zeros(()), loc.new_ones(())).log_prob(z).sum(-1)
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


def minibatch_epoch(step: Callable[[torch.Tensor], object], x: torch.Tensor, batch_size: int = BATCH) -> None:
    order = torch.randperm(x.shape[0], device=x.device)
    for start in range(0, x.shape[0], batch_size):
        step(x.index_select(0, order[start : start + batch_size]))


def torch_step(loss_fn: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer):
    def step(batch: torch.Tensor) -> None:
        loss = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


class Clock:
    """Per-method wall and CPU seconds of each timed epoch."""

    def __init__(self, sync: Callable[[], object] | None = None) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        self.sync = sync  # e.g. torch.cuda.synchronize: wait for queued kernels before reading the clock

    def time(self, key: str, fn: Callable[[], object]) -> None:
        if self.sync is not None:
            self.sync()
        tick, tock = time.perf_counter(), time.process_time()
        fn()
        if self.sync is not None:
            self.sync()
        self.add(key, time.perf_counter() - tick, time.process_time() - tock)

    def add(self, key: str, wall: float, cpu: float) -> None:
        self.wall.setdefault(key, []).append(wall)
        self.cpu.setdefault(key, []).append(cpu)

    def fit_epoch(self, key: str, program, x: torch.Tensor, batch_size: int = BATCH, **fit_kwargs) -> None:
        """Time one pass of ``pvae.fit``'s epoch loop (steps and per-epoch bookkeeping):
        a 2-epoch fit, timed between the end-of-epoch callbacks, so no set-up is counted.
        The optional collapse diagnostics (a report, not training) are off."""
        marks: list[tuple[float, float]] = []
        pvae.fit(program, x, num_epochs=2, batch_size=batch_size, learning_rate=LR, progress=False,
                 diagnostics_every=None,
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


class FitLoop:
    """``pvae.fit``'s step and epoch loop, with a step that lives across epochs.

    ``Clock.fit_epoch`` calls ``pvae.fit`` once per timed epoch, and each call builds
    its own step: with ``compile=`` every call would capture (and compile) again.
    This drives the step ``pvae.fit(compile=...)`` builds, a
    :class:`pvae.infer.capture.CapturedStep` (``compile=False``: the eager
    :class:`~pvae.infer.capture.TrainStep`), on the program's parameters with the same
    objective and fused Adam, through fit's engine (``pvae.infer.engine.run``: the
    shuffled minibatches, the per-epoch reduction, the state snapshot, the divergence
    guard; validation and diagnostics off, as in ``fit_epoch``), so the graph is
    captured once, in the warm-up round, and reused across the timed epochs, as in
    one long ``fit``. Checks against an eager step every 100 steps run as in fit.
    """

    def __init__(self, program, objective="elbo", compile: bool | str = False, *, num_particles: int = 1,
                 batch_size: int = BATCH, learning_rate: float = LR) -> None:
        from pvae.infer import make_objective
        from pvae.infer.capture import CapturedStep, TrainStep, capture_mode
        from pvae.infer.engine import adam

        self.program, self.batch_size = program, batch_size
        self.objective = make_objective(objective, num_particles=num_particles)  # an Objective passes through
        # fit's parameters for a module without pyro.param sites, in the same order
        self.params = [p for p in program.parameters() if p.requires_grad]
        self.optimizer = adam(self.params, learning_rate)  # fit's optimiser
        mode = capture_mode(compile)
        if mode is None:
            self.step = TrainStep(program, self.objective, self.params)
        else:
            self.step = CapturedStep(program, self.objective, self.params, mode=mode)

    @property
    def capture_seconds(self) -> float:
        """Seconds spent capturing (and compiling) so far; 0 for the eager step."""
        return getattr(self.step, "capture_seconds", 0.0)

    def epoch(self, x: torch.Tensor) -> None:
        """One epoch of fit's engine over ``x`` (shuffled minibatches; the last partial
        one runs eagerly), with fit's divergence guard; its state snapshot at the
        start is one more than fit takes per epoch (a copy of the parameters)."""
        from pvae.infer.callbacks import DivergenceGuard
        from pvae.infer.engine import TrainState, minibatches, run

        state = TrainState(self.program, self.objective, self.params, self.optimizer, self.step, num_epochs=1)
        guard = DivergenceGuard(1e3, lambda message, _: RuntimeError(message), LR)
        with pyro.validation_enabled(False):
            run(state, lambda: minibatches((x,), self.batch_size, shuffle=True), [guard])


def fresh_inductor_cache() -> str:
    """Point inductor's on-disk cache at a new temporary folder (removed at exit), so
    that compile seconds are those of a first run; returns the folder."""
    import atexit
    import os
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="pvae-bench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def compile_report(clock: Clock, key: str, baseline: str, loop: FitLoop, steps_per_epoch: int, skip: int = 1) -> dict:
    """Capture (+ compile) seconds of ``loop`` (timed as ``key``) and its break-even
    against the eager ``baseline``: capture seconds / seconds saved per epoch, the
    saving being the median over rounds of the paired difference baseline - key
    (by each clock; the capture itself is wall-clock time). None: never faster, or
    the step fell back to eager (``"fell_back"``; ``"description"`` says why)."""
    fell_back = bool(getattr(loop.step, "fallback", None))
    out = {"key": key, "baseline": baseline, "capture": loop.capture_seconds, "steps": steps_per_epoch,
           "description": loop.step.description, "captures": getattr(loop.step, "captures", 0), "fell_back": fell_back}
    for clock_name, times in (("wall", clock.wall), ("cpu", clock.cpu)):
        saved = statistics.median(b - t for b, t in zip(times[baseline][skip:], times[key][skip:]))
        out[f"saved_{clock_name}"] = saved
        out[f"epochs_{clock_name}"] = loop.capture_seconds / saved if saved > 0 and not fell_back else None
    return out


def print_compile_reports(reports: list[tuple[str, dict]], columns: dict[str, str]) -> None:
    """Per data set and compile mode: capture (+ compile) seconds and the break-even epochs
    (and steps) at which the captured step has paid for its capture ("never": it is not
    faster; "eager": it fell back to eager steps, so the capture was paid for nothing)."""

    def fmt(v: float | None, width: int, spec: str, fell_back: bool) -> str:
        return f"{'eager' if fell_back else 'never':>{width}}" if v is None else f"{v:{width}{spec}}"

    head = (f"{'data':10} {'method':14} {'vs':12} | {'capture s':>9} | {'saved s/epoch':>15} | "
            f"{'break-even epochs':>17} | {'steps':>6} | what ran")
    print("\ncapture (+ compile) seconds (wall) and break-even = capture s / (eager s - captured s per epoch)")
    print(f"{'':10} {'':14} {'':12} | {'':>9} | {'wall':>7} {'cpu':>7} | {'wall':>8} {'cpu':>8} | {'wall':>6} |")
    print(head)
    print("-" * len(head))
    for name, r in reports:
        steps = None if r["epochs_wall"] is None else r["epochs_wall"] * r["steps"]
        what = r["description"] + (f", {r['captures']} captures" if r["captures"] > 1 else "")
        print(f"{name:10} {columns[r['key']].strip():14} {columns[r['baseline']].strip():12} | {r['capture']:9.2f} | "
              f"{r['saved_wall']:7.4f} {r['saved_cpu']:7.4f} | {fmt(r['epochs_wall'], 8, '.1f', r['fell_back'])} "
              f"{fmt(r['epochs_cpu'], 8, '.1f', r['fell_back'])} | {fmt(steps, 6, '.0f', r['fell_back'])} | {what}")


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
    width = {k: max(11, len(columns[k])) for k in keys}
    head = f"{'data':10} {'n':>5} | " + " ".join(f"{columns[k]:>{width[k]}}" for k in keys) + " | " + " ".join(
        f"{k + '/a':>5}" for k in keys[1:])
    for clock, title in (("wall", "wall-clock"), ("cpu", "CPU (process time: robust to other load)")):
        print(f"\nmedian {title} seconds per epoch")
        print(head)
        print("-" * len(head))
        for name, n, med in rows:
            r, ratio = med[clock]["seconds"], med[clock]["ratio"]
            print(f"{name:10} {n:>5} | " + " ".join(f"{r[k]:{width[k]}.4f}" for k in keys) + " | "
                  + " ".join(f"{ratio[k]:5.2f}" for k in keys[1:]))


def add_compile_flags(parser) -> None:
    """The scripts' --inductor / --warm-inductor-cache flags."""
    import argparse

    parser.add_argument("--inductor", action=argparse.BooleanOptionalAction, default=True,
                        help="include fit(compile='inductor') (its first compile takes tens of seconds)")
    parser.add_argument("--warm-inductor-cache", action="store_true",
                        help="use inductor's usual on-disk cache instead of a fresh one (measures a rerun)")


def run_datasets(args, bench) -> tuple[list, list, str]:
    """``bench(x, epochs, inductor) -> (medians, compile reports)`` on every data set,
    with the scripts' threads, seed and inductor cache; returns the table rows, the
    compile reports and a note on the cache for the header line."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cache = None if args.warm_inductor_cache or not args.inductor else fresh_inductor_cache()
    rows, reports = [], []
    for name, x, mult in datasets(args.data_dir):
        medians, compiled = bench(x, args.epochs * mult, args.inductor)
        rows.append((name, x.shape[0], medians))
        reports += [(name, r) for r in compiled]
    return rows, reports, "" if not args.inductor else f"; inductor cache: {cache or 'the usual one (warm)'}"
