"""Bounds on MNIST-10k: ELBO against IWAE training (K = 5, 50; standard and DReG).

The 1-stochastic-layer architecture of Burda et al. (2016): 784-200-200-50
encoder and 50-200-200-784 decoder with tanh hidden units, a diagonal-Gaussian
encoder and a Bernoulli likelihood (``pvae.VAE(784, 50, hidden_dims=(200, 200),
activation="tanh")``), trained on the MNIST-10k split (first 8000 images of the
official test file, static binarisation pixel > 127; the last 2000 are the test
set) with Adam (learning rate 1e-3, batch 20 as in Burda et al.) for the same
number of epochs under every objective:

    ELBO (K=1) | IWAE K=5 standard / DReG | IWAE K=50 standard / DReG

For each trained model the table gives, on the first ``--num-test`` test images,
the ELBO and the negative log-likelihood NLL = -log p^(x) = -IWAE_5000 (both from
the same 5000 particles, :func:`pvae.infer.log_evidence`), their difference (the
variational gap, KL(q(z|x) || p(z|x)) from below), the active units on all 2000
test images (Burda et al.: Cov_x(E_q[z_d]) > 0.01) and the median training
seconds per epoch.

Then it times ``pvae.infer.iwae_bound(K=5000)`` on the 2000 test images against a
hand-written vectorised PyTorch estimate of the same quantity (same networks,
same chunks of particles, streaming logsumexp; the encoder runs once), and
``iwae_bound`` under ``pyro.validation_enabled(False)`` (Pyro validates by
default; ``iwae_bound`` checks the first chunk only), ``iwae_bound(...,
compile=True)`` (one chunk captured as a graph and replayed) and
``compile="inductor"`` (that graph compiled by ``torch.compile``; its compile
time is inside the timing). Each runs
in a fresh process forked from a clean server process, so that the peak memory
of each is measured on its own: peak RSS growth = ``resource.getrusage`` max RSS
at the end minus the RSS before the estimate (torch has no CPU allocator
statistics, and tracemalloc does not see torch's allocations). Times are wall
and CPU (user + system) seconds of that process; CPU time is the fairer figure
on a machine shared with other jobs. Both estimates run with glibc's heap
trimming off (``STEADY_ALLOCATOR``; ``--default-allocator`` to time without):
with the defaults, returning each chunk's buffers to the OS and faulting them
back in costs seconds of system time that vary from run to run for either
method.

The full run (defaults: 10 epochs, 500 evidence images, one thread) takes about
15-25 minutes on 2 CPU cores shared with other jobs. Quick check (about a minute)::

    python benchmarks/bounds_mnist.py --epochs 1 --num-test 100 --evidence-particles 200

Timing of the estimate alone (trains the timed model only; about 10 minutes)::

    python benchmarks/bounds_mnist.py --timing-only

Full run::

    python benchmarks/bounds_mnist.py [--epochs 10] [--num-test 500] [--data-dir ../shared/data/mnist]

References

1. Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders.
   ICLR 2016 (Table 1; section 5.2 for active units).
2. G. Tucker, D. Lawson, S. Gu, C. J. Maddison. Doubly Reparameterized Gradient
   Estimators for Monte Carlo Objectives. ICLR 2019.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
import torch.nn.functional as F

import pvae
from pvae.data import mnist_10k_split
from pvae.infer import iwae_bound, log_evidence, make_objective

try:  # posterior-collapse diagnostics (another issue); inline fallback below
    from pvae.infer.diagnostics import active_units
except ImportError:  # pragma: no cover
    active_units = None

LATENT, HIDDEN, BATCH, LR = 50, (200, 200), 20, 1e-3
# Burda et al. (2016), Table 1, one stochastic layer, full MNIST (60k training
# images, 3280 passes): test NLL in nats, estimated with k = 5000.
BURDA_NLL = {"VAE k=1": 86.76, "IWAE k=5": 85.54, "IWAE k=50": 84.78}
# (label, objective name, options) of the five training runs
RUNS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("ELBO (K=1)", "elbo", {}),
    ("IWAE K=5 standard", "iwae", {"num_particles": 5, "estimator": "standard"}),
    ("IWAE K=5 DReG", "iwae", {"num_particles": 5, "estimator": "dreg"}),
    ("IWAE K=50 standard", "iwae", {"num_particles": 50, "estimator": "standard"}),
    ("IWAE K=50 DReG", "iwae", {"num_particles": 50, "estimator": "dreg"}),
)
TIMED_METHODS = {
    "hand": "(a) hand-written PyTorch",
    "pvae": "(b) pvae.infer.iwae_bound",
    "pvae-unvalidated": "(c) (b) with Pyro validation off",
    "pvae-compiled": "(d) (b) with compile=True",
    "pvae-inductor": "(e) (b) with compile='inductor'",
}
COMPILE = {"pvae-compiled": True, "pvae-inductor": "inductor"}


def make_vae() -> pvae.VAE:
    return pvae.VAE(784, LATENT, hidden_dims=HIDDEN, activation="tanh")


@dataclass(frozen=True)
class Row:
    label: str
    seconds_per_epoch: float
    cpu_seconds_per_epoch: float
    elbo: float
    nll: float
    nll_stderr: float
    active_units: int


def count_active_units(vae: pvae.VAE, x: torch.Tensor) -> int:
    """Burda et al.'s active units: Cov_x(E_q[z_d]) > 0.01."""
    if active_units is not None:
        return active_units(vae, x)
    with torch.no_grad():
        return int((vae.encode(x)[0].var(0) > 0.01).sum())


def train_and_evaluate(label: str, objective: str, options: dict[str, Any], train: torch.Tensor,
                       test: torch.Tensor, args: argparse.Namespace) -> tuple[Row, pvae.VAE]:
    torch.manual_seed(args.seed)  # the same initial networks for every objective
    vae = make_vae()
    cpu = cpu_seconds()
    result = pvae.fit(vae, train, num_epochs=args.epochs, batch_size=BATCH, learning_rate=LR,
                      objective=make_objective(objective, **options), seed=args.seed, progress=False)
    cpu = cpu_seconds() - cpu
    evidence = log_evidence(vae.model, vae.guide, test[: args.num_test],
                            num_particles=args.evidence_particles).summary()
    row = Row(
        label=label,
        seconds_per_epoch=statistics.median(h["seconds"] for h in result.history),
        cpu_seconds_per_epoch=cpu / args.epochs,
        elbo=evidence["elbo"]["mean"],
        nll=-evidence["log_evidence"]["mean"],
        nll_stderr=evidence["log_evidence"]["stderr"],
        active_units=count_active_units(vae, test),
    )
    return row, vae


# -- log p(x) by hand, and the timing against iwae_bound ------------------------------
@torch.no_grad()
def hand_iwae(vae: pvae.VAE, x: torch.Tensor, num_particles: int, chunk_size: int) -> torch.Tensor:
    """IWAE_K per datum, written out in PyTorch with the VAE's networks.

    log w = log p(x|z) + log N(z; 0, I) - log q(z|x), z ~ q(z|x) in chunks of
    ``chunk_size`` particles, reduced by a running-maximum logsumexp in float64.
    """
    loc, scale = vae.encode(x)
    q = torch.distributions.Normal(loc, scale)
    prior = torch.distributions.Normal(0.0, 1.0)
    running_max = torch.full((x.shape[0],), -math.inf, dtype=torch.float64)
    running_sum = torch.zeros(x.shape[0], dtype=torch.float64)
    for start in range(0, num_particles, chunk_size):
        z = q.sample((min(chunk_size, num_particles - start),))  # (k, batch, latent)
        logits = vae.decoder(z)
        log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_w = (log_lik + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)).double()  # (k, batch)
        new_max = torch.maximum(running_max, log_w.max(0).values)
        running_sum = running_sum * (running_max - new_max).exp() + (log_w - new_max).exp().sum(0)
        running_max = new_max
    return running_max + running_sum.log() - math.log(num_particles)


def cpu_seconds() -> float:
    """User + system CPU time of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _timed_estimate(method: str, state: dict[str, torch.Tensor], x: torch.Tensor, num_particles: int,
                    chunk_size: int, threads: int, seed: int) -> dict[str, float]:
    """Runs in a child process: one estimate, its times and its peak memory."""
    torch.set_num_threads(threads)
    pyro.set_rng_seed(seed)
    vae = make_vae()
    vae.load_state_dict(state)
    vae.eval()
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rss_before, cpu_before, tick = _rss_mb(), cpu_seconds(), time.perf_counter()
    if method == "hand":
        value = hand_iwae(vae, x, num_particles, chunk_size)
    else:
        with pyro.validation_enabled(method != "pvae-unvalidated"):
            value = iwae_bound(vae.model, vae.guide, x, num_particles=num_particles, chunk_size=chunk_size,
                               compile=COMPILE.get(method, False)).value
    wall, cpu = time.perf_counter() - tick, cpu_seconds() - cpu_before
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_mb = usage.ru_maxrss / 1024 - rss_before
    return {"value": float(value.mean()), "wall": wall, "cpu": cpu, "peak_mb": peak_mb,
            "faults": (usage.ru_minflt - faults_before) / 1000}


# glibc's defaults return freed chunk buffers (25 MB for 2000 images x 4 particles) to the
# OS and fault them back in on the next chunk; how often depends on allocation order, not
# on the code: 10-16 million minor faults (8 s of system time) for the same method from
# run to run. Timed with trimming off and buffers up to 32 MB kept in the heap.
STEADY_ALLOCATOR = {"MALLOC_TRIM_THRESHOLD_": str(2**30), "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)}


def time_evidence(vae: pvae.VAE, x: torch.Tensor, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """``iwae_bound`` against :func:`hand_iwae`, each in a fresh process."""
    # a forkserver is a clean single-threaded process: children forked from it
    # neither inherit this process's memory high-water mark nor its thread pools
    if not args.default_allocator:
        # the server (started below) and its children read these at start-up: large
        # chunk buffers stay in glibc's heap instead of going back to the OS after each chunk
        os.environ.update(STEADY_ALLOCATOR)
    ctx = multiprocessing.get_context("forkserver")
    state = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    call = (state, x, args.evidence_particles, args.chunk_size, args.threads, args.seed)
    results: dict[str, list[dict[str, float]]] = {method: [] for method in TIMED_METHODS}
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        for _ in range(args.timing_repeats):
            for method in results:
                results[method].append(pool.apply(_timed_estimate, (method,) + call))
    return {m: min(r, key=lambda d: d["cpu"]) for m, r in results.items()}


# -- report ---------------------------------------------------------------------------
def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    k = args.evidence_particles
    print(f"\nMNIST-10k (train 8000, test first {args.num_test} of 2000; static binarisation), "
          f"784-200-200-50 tanh, {args.epochs} epochs, batch {BATCH}, Adam lr {LR:g}")
    head = (f"{'objective':20} | {'test ELBO':>9} {f'NLL (K={k})':>17} {'gap':>6} | "
            f"{'AU':>3} | {'s/epoch':>7} {'CPU s':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        nll = f"{r.nll:8.2f} +- {r.nll_stderr:4.2f}"
        print(f"{r.label:20} | {r.elbo:9.2f} {nll:>17} {-r.nll - r.elbo:6.2f} | "
              f"{r.active_units:>3} | {r.seconds_per_epoch:7.2f} {r.cpu_seconds_per_epoch:6.2f}")
    print("NLL = -log p^(x) = -IWAE_K (lower is better; +- its Monte Carlo standard error); "
          "gap = log p^(x) - ELBO; AU = active units of 50 on the 2000 test images;\n"
          "s/epoch = median wall seconds of an epoch (pvae.fit's history), CPU s = CPU seconds of the whole "
          "fit / epochs (robust to other jobs on the machine).")
    print("Burda et al. 2016 (Table 1), same architecture on full MNIST (60k images, 3280 passes), "
          "test NLL: " + " -> ".join(f"{v} ({k})" for k, v in BURDA_NLL.items()) + " nats.")
    print("The ordering should appear here; absolute values differ with 8000 training images, "
          f"static binarisation and {args.epochs} epochs.")


def print_timing(timing: dict[str, dict[str, float]], n: int, args: argparse.Namespace) -> None:
    hand = timing["hand"]
    print(f"\nlog p^(x) with K={args.evidence_particles} on {n} test images (model: {args.timing_model}), "
          f"chunks of {args.chunk_size} particles, {args.threads} thread(s), best of {args.timing_repeats}:")
    width = max(map(len, TIMED_METHODS.values()))
    head = (f"{'method':{width}} | {'log p^(x)':>9} | {'wall s':>7} {'CPU s':>7} | {'peak MB':>8} {'faults k':>8} | "
            f"{'ratio wall, CPU':>15}")
    print(head)
    print("-" * len(head))
    for method, name in TIMED_METHODS.items():
        r = timing[method]
        ratio = "" if method == "hand" else f" | {r['wall'] / hand['wall']:4.2f}x {r['cpu'] / hand['cpu']:4.2f}x"
        print(f"{name:{width}} | {r['value']:9.3f} | {r['wall']:7.1f} {r['cpu']:7.1f} | {r['peak_mb']:8.0f} "
              f"{r['faults']:8.0f}{ratio}")
    print("ratios to (a), wall and CPU; targets <= 1.1x (issue 5), <= 0.85x (issue 13). Pyro validation (on by default) checks the data's "
          "support and every distribution's arguments on the first chunk.")
    print("peak MB: resource.getrusage max RSS at the end minus RSS before the estimate, each method in "
          "its own process forked from a forkserver; faults k: thousands of minor page faults during the\n"
          "estimate. " + ("glibc's heap trimming off (MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_) for both methods."
                          if not args.default_allocator else
                          "glibc's default allocator: returning freed chunk buffers to the OS and faulting them back "
                          "in costs system time that varies from process to process for either method."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of every objective")
    parser.add_argument("--num-test", type=int, default=500, help="test images for the ELBO and log p^(x)")
    parser.add_argument("--evidence-particles", type=int, default=5000, help="K of log p^(x)")
    parser.add_argument("--timing-test", type=int, default=2000, help="test images of the timing comparison")
    parser.add_argument("--timing-model", default="IWAE K=50 DReG", choices=[r[0] for r in RUNS])
    parser.add_argument("--timing-repeats", type=int, default=2, help="runs of each method; the best CPU time is kept")
    parser.add_argument("--timing-only", action="store_true",
                        help="train only --timing-model, skip the table, time the estimates")
    parser.add_argument("--chunk-size", type=int, default=4,
                        help="particles per pass in the timing (4 is what iwae_bound picks for 2000 images)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--default-allocator", action="store_true",
                        help="time with glibc's default heap trimming (noisier: see STEADY_ALLOCATOR)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = mnist_10k_split(args.data_dir, binarize="static")
    args.num_test = min(args.num_test, len(test))
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, threads {args.threads}", flush=True)

    rows, models, start = [], {}, time.perf_counter()
    for label, objective, options in RUNS:
        if args.timing_only and label != args.timing_model:
            continue
        row, models[label] = train_and_evaluate(label, objective, options, train.x, test.x, args)
        rows.append(row)
        print(f"  {label}: NLL {row.nll:.2f}, ELBO {row.elbo:.2f} [{time.perf_counter() - start:.0f} s]", flush=True)
    if not args.timing_only:
        print_table(rows, args)
    if not args.skip_timing:
        x = test.x[: args.timing_test]
        print_timing(time_evidence(models[args.timing_model], x, args), len(x), args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
