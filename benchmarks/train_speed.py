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
(e) ``pvae.fit(compile="graph")`` (= ``compile=True``): the training step captured
    once with make_fx and replayed
(f) ``pvae.fit(compile="inductor")``: that graph compiled by ``torch.compile``
    (``--no-inductor`` leaves it out: its first compile takes tens of seconds)
(g) fit's eager step in the loop that drives (e) and (f): a control, ~ (c)

(e)-(g) are fit's own step (:class:`pvae.infer.capture.CapturedStep`, or
``TrainStep`` for (g)) driven by a copy of fit's epoch loop
(``_speed.FitLoop``: same objective, parameters, fused Adam, minibatches and
per-step and per-epoch bookkeeping; it reproduces ``pvae.fit`` to the bit under
the same seed), so that the step is captured once, in the warm-up round, and
reused across the timed epochs as in one long fit; a ``pvae.fit`` call per epoch,
as (c) is timed, would capture anew every time. A second table gives each
captured mode's capture (+ compile) seconds and its break-even against (c)
and against (g) (the same loop, eager: the step's saving alone): capture
seconds / seconds saved per epoch ("never" when it saves nothing), and in steps.

Inductor keeps compiled kernels in an on-disk cache; by default this script
points it at a fresh temporary folder, so the compile seconds are those of a
first run (``--warm-inductor-cache`` uses the usual cache and measures a rerun).

Usage::

    python benchmarks/train_speed.py [--data-dir ../shared/data/mnist] [--epochs 7] [--no-inductor]
"""

from __future__ import annotations

import argparse
import math

import pyro
import torch

import pvae
from _speed import DEFAULT_MNIST, LATENT, HIDDEN, BATCH, LR, Clock, FitLoop, compile_report
from _speed import encoder_decoder, hand_log_weights, minibatch_epoch, print_compile_reports
from _speed import add_compile_flags, print_tables, pyro_program, run_datasets, torch_step

COLUMNS = {"a": "(a) hand", "b": "(b) SVI", "c": "(c) fit", "d": "(d) fused", "e": "(e) graph",
           "f": "(f) inductor", "g": "(g) loop"}


def bench(x: torch.Tensor, epochs: int, inductor: bool) -> tuple[dict, list[dict]]:
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
    loops = {key: FitLoop(pvae.VAE(d, LATENT, hidden_dims=(HIDDEN,), likelihood="bernoulli"), "elbo", mode)
             for key, mode in (("e", "graph"), ("f", "inductor"), ("g", False)) if inductor or key != "f"}
    for _ in range(epochs + 1):  # round 0 warms up (and captures) and is dropped
        clock.time("a", lambda: minibatch_epoch(steps["a"], x))
        clock.time("b", lambda: minibatch_epoch(svi.step, x))
        clock.fit_epoch("c", vae, x)
        for key, loop in loops.items():
            clock.time(key, lambda: loop.epoch(x))
        clock.time("d", lambda: minibatch_epoch(steps["d"], x))
    n_steps = math.ceil(x.shape[0] / BATCH)
    reports = [compile_report(clock, key, base, loops[key], n_steps)
               for key in ("e", "f") if key in loops for base in ("c", "g")]
    return clock.medians(), reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--epochs", type=int, default=7, help="timed epochs per method (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    add_compile_flags(parser)
    args = parser.parse_args()
    rows, reports, cache_note = run_datasets(args, bench)
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, threads {args.threads}; ELBO, K=1" + cache_note)
    columns = {k: v for k, v in COLUMNS.items() if args.inductor or k != "f"}
    print_tables(rows, columns)
    print_compile_reports(reports, columns)


if __name__ == "__main__":
    main()
