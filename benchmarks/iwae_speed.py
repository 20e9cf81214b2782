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
(f) (c) with ``compile="graph"``: the step captured once with make_fx and replayed
(g) (d) with ``compile="graph"``
(h) (c) with ``compile="inductor"``: that graph compiled by ``torch.compile``
(i) (d) with ``compile="inductor"`` (``--no-inductor`` leaves (h) and (i) out:
    each first compile takes tens of seconds)
(j) (c)'s eager step in the loop that drives (f)-(i): a control, ~ (c)
(k) (d)'s eager step in that loop, ~ (d)

(f)-(k) are fit's own step (:class:`pvae.infer.capture.CapturedStep`, or
``TrainStep`` for the controls) driven by a copy of fit's epoch loop
(``_speed.FitLoop``, which reproduces ``pvae.fit`` to the bit under the same
seed), so that the step is captured once, in the warm-up round, and reused
across the timed epochs as in one long fit (a ``pvae.fit`` call per epoch, as
(c) and (d) are timed, would capture anew every time). A second table gives each
captured mode's capture (+ compile) seconds and its break-even against fit
eager ((c) or (d)) and against the same loop eager ((j) or (k)): capture seconds
/ seconds saved per epoch ("never" when it saves nothing). Inductor's on-disk
cache is a fresh temporary folder unless ``--warm-inductor-cache``.

Usage::

    python benchmarks/iwae_speed.py [--data-dir ../shared/data/mnist] [--epochs 3] [--no-inductor]
"""

from __future__ import annotations

import argparse
import math

import pyro
import torch

import pvae
from _speed import BATCH, DEFAULT_MNIST, HIDDEN, LATENT, LR, Clock, FitLoop, compile_report
from _speed import encoder_decoder, hand_log_weights, minibatch_epoch, print_compile_reports
from _speed import add_compile_flags, print_tables, pyro_program, run_datasets, torch_step
from pvae.infer import IWAEObjective

K = 5
COLUMNS = {"a": "(a) hand", "b": "(b) Renyi", "c": "(c) iwae", "d": "(d) dreg", "e": "(e) fused",
           "f": "(f) iwae gr", "g": "(g) dreg gr", "h": "(h) iwae ind", "i": "(i) dreg ind",
           "j": "(j) iwae lp", "k": "(k) dreg lp"}
#: captured key -> (objective, compile mode, fit eager baseline, loop eager baseline)
CAPTURED = {"f": ("iwae", "graph", "c", "j"), "g": ("dreg", "graph", "d", "k"),
            "h": ("iwae", "inductor", "c", "j"), "i": ("dreg", "inductor", "d", "k")}


def bench(x: torch.Tensor, epochs: int, inductor: bool) -> tuple[dict, list[dict]]:
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
    objectives = {"iwae": IWAEObjective(num_particles=K), "dreg": dreg}
    loops = {}
    plan = [*((k, v[:2]) for k, v in CAPTURED.items()), ("j", ("iwae", False)), ("k", ("dreg", False))]
    for key, (objective, mode) in plan:
        if inductor or mode != "inductor":
            vae = pvae.VAE(d, LATENT, hidden_dims=(HIDDEN,), likelihood="bernoulli")
            loops[key] = FitLoop(vae, objectives[objective], mode)
    for _ in range(epochs + 1):  # round 0 warms up (and captures) and is dropped
        clock.time("a", lambda: minibatch_epoch(steps["a"], x))
        clock.time("b", lambda: minibatch_epoch(svi.step, x))
        clock.fit_epoch("c", vae_iwae, x, objective="iwae", num_particles=K)
        clock.fit_epoch("d", vae_dreg, x, objective=dreg)
        for key, loop in loops.items():
            clock.time(key, lambda: loop.epoch(x))
        clock.time("e", lambda: minibatch_epoch(steps["e"], x))
    n_steps = math.ceil(x.shape[0] / BATCH)
    reports = [compile_report(clock, key, base, loops[key], n_steps)
               for key, (_, _, fit_base, loop_base) in CAPTURED.items() if key in loops
               for base in (fit_base, loop_base)]
    return clock.medians(), reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per method (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    add_compile_flags(parser)
    args = parser.parse_args()
    rows, reports, cache_note = run_datasets(args, bench)
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, threads {args.threads}, K={K}" + cache_note)
    columns = {k: v for k, v in COLUMNS.items() if args.inductor or k not in ("h", "i")}
    print_tables(rows, columns)
    print_compile_reports(reports, columns)


if __name__ == "__main__":
    main()
