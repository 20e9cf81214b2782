"""Training speed of ``pvae.fit`` on a GPU, eager and captured, against a hand-written loop.

The table of ``train_speed.py`` on ``--device cuda`` (default) for a wider model,
where per-step Python and kernel-launch overhead weigh differently: a VAE
784-1024-1024-64 / 64-1024-1024-784 (``--hidden``, ``--latent``) with ReLU hidden
layers, a diagonal-Gaussian encoder (softplus scale + 1e-4), a Bernoulli
likelihood, a single-sample Monte Carlo ELBO, Adam 1e-3, batch 100
(``--batch-size``), on MNIST-10k's 8000 training images
(``pvae.data.mnist_10k_split``, static binarisation), data resident on the
device, methods interleaved epoch by epoch in one process, each epoch timed up to
``torch.cuda.synchronize()``.

(a) hand-written PyTorch loop, ``torch.optim.Adam`` (default foreach)
(c) ``pvae.fit(..., device=...)`` on ``pvae.VAE``, eager (one pass of fit's epoch
    loop, timed between the end-of-epoch callbacks of a 2-epoch fit)
(d) the hand-written loop with ``torch.optim.Adam(fused=True)``
(e) ``pvae.fit(compile=True)`` (``"graph"``): the step captured once with make_fx
    and replayed
(f) ``pvae.fit(compile="inductor")`` (``--no-inductor`` leaves it out)
(g) fit's eager step in the loop that drives (e) and (f): a control, ~ (c)

(e)-(g) are fit's own step driven by a copy of fit's epoch loop
(``_speed.FitLoop``), so that the step is captured once, in the warm-up round,
and reused across the timed epochs; the second table gives each captured
mode's capture (+ compile) seconds and break-even epochs against (c) and (g),
and says what actually ran (a step that could not be captured, or whose graph
disagreed with the eager step, runs eagerly: "eager (<reason>)").
The library is device-agnostic: fit gets ``device=``; this script moves the
hand-written networks and the data itself.

``--parity`` first trains the same VAE from one seed eagerly, with
``compile=True`` and with ``compile="inductor"`` on the device (ELBO, IWAE K=5,
DReG; 4 epochs of 1000 rows) and prints the largest parameter difference from
the eager run and the last epoch's ELBO of each, then ``iwae_bound`` (K=500)
eager against ``compile=True``: the graph must equal eager to the bit on CUDA
too, inductor to float tolerance (its kernels round differently).

Not part of CI. Without CUDA (and ``--device cuda``) it prints why and exits at
once with status 2, having imported nothing but torch; ``--device cpu`` runs the
same code on the CPU (a smoke test; use ``--max-rows`` to keep it short).

Usage::

    python benchmarks/gpu_speed.py [--data-dir ../shared/data/mnist] [--epochs 5] [--no-inductor]
    python benchmarks/gpu_speed.py --parity --epochs 3                       # parity, then speed
    python benchmarks/gpu_speed.py --device cpu --max-rows 1000 --epochs 1   # smoke test
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

NO_CUDA_EXIT = 2
DEFAULT_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
COLUMNS = {"a": "(a) hand", "c": "(c) fit", "d": "(d) fused", "e": "(e) graph", "f": "(f) inductor",
           "g": "(g) loop"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per method (after one warm-up)")
    parser.add_argument("--hidden", default="1024,1024", help="hidden widths, comma-separated (default 1024,1024)")
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--max-rows", type=int, default=None, help="use only the first rows of the data (smoke runs)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the host side of the loop)")
    parser.add_argument("--inductor", action=argparse.BooleanOptionalAction, default=True,
                        help="include fit(compile='inductor') (its first compile takes tens of seconds)")
    parser.add_argument("--parity", action="store_true",
                        help="first check that captured and compiled training equal eager training on the device")
    parser.add_argument("--warm-inductor-cache", action="store_true",
                        help="use inductor's usual on-disk cache instead of a fresh one (measures a rerun)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_speed.py: CUDA is not available here (torch {torch.__version__}, built with CUDA "
              f"{torch.version.cuda or 'none'}), so there is nothing to measure; exiting with status "
              f"{NO_CUDA_EXIT}. Run it on a machine with an NVIDIA GPU and a CUDA build of torch, or "
              "pass --device cpu for a smoke run of the same code.", file=sys.stderr)
        sys.exit(NO_CUDA_EXIT)

    # the heavy imports only now: pyro, pvae and the shared harness
    import pyro

    import pvae
    from _speed import Clock, FitLoop, compile_report, encoder_decoder, fresh_inductor_cache, hand_log_weights
    from _speed import minibatch_epoch, print_compile_reports, print_tables, torch_step
    from pvae.data import mnist_10k_split

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    cache = None if args.warm_inductor_cache or not args.inductor else fresh_inductor_cache()
    if not Path(args.data_dir).exists():
        sys.exit(f"gpu_speed.py: no MNIST at {args.data_dir}; pass --data-dir (the folder of the t10k-* IDX files).")
    x = mnist_10k_split(args.data_dir, binarize="static")[0].x
    if args.max_rows is not None:
        x = x[: args.max_rows]
    x = x.to(device)
    if args.parity:
        parity(x[:1000], device, args.inductor)
    d, n, batch = x.shape[1], x.shape[0], args.batch_size

    clock = Clock(sync=torch.cuda.synchronize if device.type == "cuda" else None)
    steps = {}
    for key, fused in (("a", False), ("d", True)):
        enc, dec = (net.to(device) for net in encoder_decoder(d, hidden, args.latent))
        opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3, fused=fused)
        steps[key] = torch_step(lambda b, enc=enc, dec=dec: -hand_log_weights(enc, dec, b).mean(), opt)

    def vae():
        return pvae.VAE(d, args.latent, hidden_dims=hidden, likelihood="bernoulli")

    fit_vae = vae()
    loops = {}
    for key, mode in (("e", True), ("f", "inductor"), ("g", False)):
        if args.inductor or key != "f":
            loops[key] = FitLoop(vae().to(device), "elbo", mode, batch_size=batch)  # fit(device=) moves it so
    for _ in range(args.epochs + 1):  # round 0 warms up (and captures) and is dropped
        clock.time("a", lambda: minibatch_epoch(steps["a"], x, batch))
        clock.fit_epoch("c", fit_vae, x, batch_size=batch, device=device)
        for key, loop in loops.items():
            clock.time(key, lambda: loop.epoch(x))
        clock.time("d", lambda: minibatch_epoch(steps["d"], x, batch))
    n_steps = math.ceil(n / batch)
    reports = [("mnist", compile_report(clock, key, base, loops[key], n_steps))
               for key in ("e", "f") if key in loops for base in ("c", "g")]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, {name}; VAE {d}-{'-'.join(map(str, hidden))}-"
          f"{args.latent}, batch {batch}, ELBO K=1"
          + ("" if not args.inductor else f"; inductor cache: {cache or 'the usual one (warm)'}"))
    columns = {k: v for k, v in COLUMNS.items() if args.inductor or k != "f"}
    print_tables([("mnist", n, clock.medians())], columns)
    print_compile_reports(reports, columns)


def parity(x: torch.Tensor, device: torch.device, inductor: bool) -> None:
    """Train one VAE from one seed eagerly and captured; print how far the captured runs end from eager."""
    import pvae

    def train(objective: str, compile) -> tuple[list[torch.Tensor], float]:
        torch.manual_seed(0)
        vae = pvae.VAE(x.shape[1], 16, hidden_dims=(256,), likelihood="bernoulli")
        loss = "elbo" if objective == "elbo" else pvae.infer.make_objective(
            "iwae", num_particles=5, estimator="dreg" if objective == "dreg" else "standard")
        result = pvae.fit(vae, x, num_epochs=4, batch_size=100, seed=0, device=device, progress=False,
                          objective=loss, compile=compile)
        return [p.detach().clone() for p in vae.parameters()], result.history[-1]["elbo"]

    print(f"parity on {device}: VAE {x.shape[1]}-256-16, {x.shape[0]} rows, 4 epochs, seed 0; "
          "max |theta - theta_eager| over all parameters after training")
    for objective in ("elbo", "iwae", "dreg"):
        eager, eager_elbo = train(objective, False)
        for mode in (True, "inductor") if inductor else (True,):
            params, elbo = train(objective, mode)
            diff = max(float((a - b).abs().max()) for a, b in zip(params, eager))
            print(f"  {objective:5s} compile={mode!s:9s} max diff {diff:.3e}; last-epoch ELBO {elbo:.4f} "
                  f"(eager {eager_elbo:.4f})")
    vae = pvae.VAE(x.shape[1], 16, hidden_dims=(256,), likelihood="bernoulli").to(device)
    bounds = []
    for compile in (False, True):
        torch.manual_seed(1)
        bounds.append(pvae.infer.iwae_bound(vae, x[:200], num_particles=500, compile=compile).value)
    print(f"  iwae_bound K=500 on 200 rows: eager {float(bounds[0].mean()):.6f}, compile=True "
          f"{float(bounds[1].mean()):.6f}, max per-datum diff {float((bounds[0] - bounds[1]).abs().max()):.3e}")


if __name__ == "__main__":
    main()
