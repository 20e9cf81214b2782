"""AR(1) against independent Gaussian noise for a VAE on synthetic block- or event-design fMRI.

For each noise autocorrelation rho, simulated runs (:func:`pvae.data.fmri_blocks`:
subject maps as offsets, task maps times the HRF-convolved block design,
stationary AR(1) noise) train two VAEs that differ only in the likelihood:
``"normal"`` (independent time points, a learned scale per feature) and
``"ar1_normal"`` (one learned rho and sigma). Printed per rho and likelihood
(mean over seeds): the held-out IWAE bound per run (K = 256), recovery of the
true subject and task from the latent means (linear-regression R^2 of the
one-hot factors, logistic-regression accuracy, MIG; fitted on the training
runs' codes, scored on the held-out runs'), and the learned rho.

First, how much any estimator of the factors can gain from modelling the noise
at all (no training): for every pair of subjects (of tasks) of the simulated
maps, the discriminability of their mean difference delta (per region, over
the scans) with the AR(1) covariance Sigma modelled, d^2 = delta' Sigma^-1
delta (the best linear rule), and with the noise taken as independent, d^2 =
(delta' delta)^2 / delta' Sigma delta (the matched filter), and the Bayes
accuracy Phi(d / 2) of each rule, averaged over the pairs. A constant offset
(the subject maps) or a slow block design in stationary noise is estimated
nearly as well without the covariance as with it (Grenander 1954: least
squares is asymptotically efficient for such regressors), so the gain is
small until rho is large.

``--design event`` replaces the block design by an event-related one (brief
events at random scans, one sequence for every run): its time course has more
power at the higher frequencies where AR(1) noise is weak, so the ideal rule
gains more from modelling the noise at the same rho.

    .venv/bin/python benchmarks/fmri_ar1.py
    .venv/bin/python benchmarks/fmri_ar1.py --design event --rhos 0.6 --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/fmri_ar1.py --rhos 0.6 --seeds 0 --epochs 20    # quick
"""

from __future__ import annotations

import argparse

import math

import numpy as np
import torch
from scipy.stats import norm
from sklearn.linear_model import LinearRegression, LogisticRegression

import pvae
from pvae.analysis import encode_mean, mutual_information_gap
from pvae.data import fmri_blocks
from pvae.models import VAE


def run(rho: float, likelihood: str, seed: int, args) -> dict[str, float]:
    data = fmri_blocks(args.runs + args.held_out, num_subjects=args.subjects, num_tasks=args.tasks,
                       num_regions=args.regions, length=args.length, rho=rho, subject_scale=args.subject_scale,
                       task_scale=args.task_scale, design=args.design, block_length=args.block_length, seed=1000 + seed)
    train, test = slice(0, args.runs), slice(args.runs, None)
    factors = np.stack([data.subject.numpy(), data.task.numpy()], 1)
    onehot = np.concatenate([np.eye(args.subjects)[factors[:, 0]], np.eye(args.tasks)[factors[:, 1]]], 1)
    kwargs = {"length": args.length} if likelihood == "ar1_normal" else {}
    torch.manual_seed(seed)
    vae = VAE(data.x.shape[1], latent_dim=args.latent, hidden_dims=(args.hidden,), likelihood=likelihood,
              likelihood_kwargs=kwargs)
    pvae.fit(vae, data.x[train], num_epochs=args.epochs, batch_size=128, learning_rate=args.lr, seed=seed,
             progress=False, diagnostics_every=None)
    with torch.no_grad():
        bound = pvae.infer.iwae_bound(vae, data.x[test], num_particles=256).value.mean().item()
        z = encode_mean(vae, data.x).numpy()
    r2 = LinearRegression().fit(z[train], onehot[train]).score(z[test], onehot[test])
    accuracy = np.mean([LogisticRegression(max_iter=3000).fit(z[train], factors[train, k]).score(z[test], factors[test, k])
                        for k in range(2)])
    mig = mutual_information_gap(z[test], factors[test])[0]
    learned_rho = float(vae.likelihood.rho().detach()) if likelihood == "ar1_normal" else float("nan")
    return {"iwae": bound, "r2": r2, "accuracy": float(accuracy), "mig": mig, "rho": learned_rho}


def discriminability(rho: float, seed: int, args) -> dict[str, tuple[float, float, float]]:
    """Per factor: the mean over pairs of d^2 modelled / d^2 independent, and the mean pairwise
    Bayes accuracy of the rule that models the AR(1) noise and of the one that does not."""
    data = fmri_blocks(1, num_subjects=args.subjects, num_tasks=args.tasks, num_regions=args.regions,
                       length=args.length, rho=rho, design=args.design, block_length=args.block_length,
                       seed=1000 + seed)  # run()'s maps and design
    lag = np.arange(args.length)
    cov = data.noise_scale**2 * rho ** np.abs(lag[:, None] - lag[None, :])
    out = {}
    for factor, maps, scale, course in (
            ("subject", data.subject_maps, args.subject_scale, np.ones(args.length)),
            ("task", data.task_maps, args.task_scale, data.time_course.double().numpy())):
        maps = maps.double().numpy()
        ratios, modelled, independent = [], [], []
        for a in range(len(maps)):
            for b in range(a + 1, len(maps)):
                delta = scale * (maps[a] - maps[b])[:, None] * course[None, :]  # (regions, scans)
                d2 = float(np.sum(delta * np.linalg.solve(cov, delta.T).T))
                d2_iid = float(np.sum(delta * delta)) ** 2 / float(np.sum(delta * (delta @ cov)))
                ratios.append(d2 / d2_iid)
                modelled.append(norm.cdf(math.sqrt(d2) / 2))
                independent.append(norm.cdf(math.sqrt(d2_iid) / 2))
        out[factor] = (float(np.mean(ratios)), float(np.mean(modelled)), float(np.mean(independent)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rhos", type=float, nargs="+", default=[0.0, 0.3, 0.6, 0.9])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--held-out", type=int, default=500)
    p.add_argument("--subjects", type=int, default=4)
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--regions", type=int, default=8)
    p.add_argument("--length", type=int, default=60)
    p.add_argument("--subject-scale", type=float, default=0.4)
    p.add_argument("--task-scale", type=float, default=0.6)
    p.add_argument("--design", choices=["block", "event"], default="block",
                   help="the task's time course: blocks, or brief events at random scans (pvae.data.fmri_blocks)")
    p.add_argument("--block-length", type=int, default=6, help="scans off and on of the block design")
    p.add_argument("--latent", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    design = f"block design, {args.block_length} scans off / on" if args.design == "block" else "event design"
    print(f"fmri_blocks ({design}): {args.runs} train / {args.held_out} held-out runs, {args.subjects} subjects, {args.tasks} "
          f"tasks, {args.regions} regions x {args.length} scans, subject scale {args.subject_scale}, task scale "
          f"{args.task_scale}, noise sd 1; VAE latent {args.latent}, hidden {args.hidden}, {args.epochs} epochs, "
          f"lr {args.lr}; seeds {args.seeds}", flush=True)
    print("\nWhat modelling the noise can gain (no training; mean over seeds and over pairs of subjects / tasks):")
    print("| rho | factor | d^2 modelled / independent | pairwise Bayes accuracy, AR(1) modelled | independent |")
    print("|---|---|---|---|---|")
    for rho in args.rhos:
        rows = [discriminability(rho, seed, args) for seed in args.seeds]
        for factor in ("subject", "task"):
            ratio, modelled, independent = (float(np.mean([r[factor][i] for r in rows])) for i in range(3))
            print(f"| {rho} | {factor} | {ratio:.3f} | {modelled:.4f} | {independent:.4f} |")
    print("\n| rho | likelihood | held-out IWAE / run | R^2 (one-hot factors) | accuracy | MIG | learned rho |")
    print("|---|---|---|---|---|---|---|")
    paired = []
    for rho in args.rhos:
        by_likelihood = {}
        for likelihood in ("normal", "ar1_normal"):
            rows = by_likelihood[likelihood] = [run(rho, likelihood, seed, args) for seed in args.seeds]
            mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            sd = {k: float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else 0.0 for k in rows[0]}
            learned = "-" if likelihood == "normal" else f"{mean['rho']:.3f} +- {sd['rho']:.3f}"
            print(f"| {rho} | {likelihood} | {mean['iwae']:.1f} +- {sd['iwae']:.1f} | {mean['r2']:.3f} +- {sd['r2']:.3f} "
                  f"| {mean['accuracy']:.3f} +- {sd['accuracy']:.3f} | {mean['mig']:.3f} +- {sd['mig']:.3f} | {learned} |",
                  flush=True)
        paired.append((rho, by_likelihood))
    # both likelihoods see the same simulated data under a seed: their differences are paired
    print("\nar1_normal - normal, per seed (same data), mean +- standard error over seeds:")
    for rho, rows in paired:
        cells = []
        for key in ("iwae", "r2", "accuracy", "mig"):
            diff = np.array([a[key] - n[key] for a, n in zip(rows["ar1_normal"], rows["normal"])])
            se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            cells.append(f"{key} {' '.join(f'{d:+.3f}' for d in diff)} ({diff.mean():+.3f} +- {se:.3f})")
        print(f"  rho {rho}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
