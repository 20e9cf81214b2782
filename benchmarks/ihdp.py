"""IHDP benchmark: pvae's CEVAE against ``pyro.contrib.cevae`` and a T-learner.

Protocol (../shared/data/README.md; Louizos et al. 2017): for replication r
the 747 rows are split by ``np.random.RandomState(r).permutation(747)`` into
75 test, 202 validation and 470 training rows (``pvae.data.ihdp_split``).
Every method is fit on the 470 training rows; pvae's CEVAE uses the 202
validation rows for early stopping only. Effects are predicted from the
covariates alone. Reported, per replication and over replications (mean +-
standard error, and median, since replications 9 and 10 have very large
effects and dominate every mean):

- sqrt(PEHE) = sqrt(mean((tau_hat - (mu1 - mu0))^2)) and the ATE error
  |mean(tau_hat) - mean(mu1 - mu0)|, in-sample (the 672 training + validation
  rows) and out-of-sample (the 75 test rows);
- for pvae, whether the 95% ``ate_interval`` on the test rows covers the
  test rows' true ATE (and, for comparison, the interval from the posterior
  draws alone);
- the coverage and mean width of 95% intervals of each test unit's true effect
  mu1 - mu0 from a deep ensemble (``--ensemble M``: M fits, ``fit(num_fits=M)``)
  combined by Rubin's rules (``effect_interval``'s default) and as the quantiles
  of its pooled draws (``method="mixture"``), and from one model's posterior;
- with ``--refute S``: the placebo and random-common-cause refutations
  (:func:`pvae.causal.refute`, S refits each on the training rows; ``--refuters``
  picks them): the new effect and whether its interval covers what it should
  (0; the original);
- seconds per replication (training and prediction, one CPU thread).

Methods:

- ``pvae``: :class:`pvae.causal.CEVAE` with ``preset="paper"`` (normal outcome, the paper's sizes:
  latent 20, 3 layers of 200, ELU; Adam 1e-3 decaying to 1e-4, weight decay
  1e-4, batch 100), ``--epochs`` passes (600), early stopping on the validation
  ELBO (``--outcome-weight`` reweights the outcome's log-likelihood; 1 is the
  paper's objective and the default);
- ``pvae-x``: ``preset="pvae"``, the default: the same, with the two departures from the paper
  (``outcome_inputs="zx"``: the outcome networks also read x;
  ``outcome_standardisation="arm"``) and early stopping on the validation
  outcome error, each arm's outcome network at its own arm's best check
  (``fit(early_stopping="outcome_per_arm")``), stopping after 10 checks (60
  epochs at 600) without a better validation score (the preset's ``patience``;
  ``--pvae-options '{"fit": {"patience": 0}}'`` trains all ``--epochs``);
- ``pyro``: ``pyro.contrib.cevae.CEVAE`` with its defaults and a normal
  outcome, ``--pyro-epochs`` passes (850 by default: the budget behind the
  reference number in issue 5);
- ``tlearner``: a T-learner with scikit-learn's ``GradientBoostingRegressor``
  (default settings), one regressor per arm.

Each (method, replication, seed) is one job; ``--jobs`` processes run them
side by side (one thread each). Usage::

    python benchmarks/ihdp.py                          # 10 replications, seeds 0 1
    python benchmarks/ihdp.py --replications 1-3 --seeds 0 --epochs 100 --pyro-epochs 100
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ihdp"
METHODS = ("pvae", "pvae-x", "pyro", "tlearner")
# pvae's CEVAE configurations, by preset: the paper's model, and the default (outcome networks
# that also read x, per-arm outcome standardisation, early stopping on the outcome, per arm)
PVAE_CONFIGS: dict[str, dict[str, Any]] = {
    "pvae": {"preset": "paper"},
    "pvae-x": {"preset": "pvae"},
}


def _split(data_dir: str, rep: int):
    from pvae.data import ihdp_split, load_ihdp

    data = load_ihdp(data_dir, rep)
    train, valid, test = ihdp_split(len(data), rep)
    return data, data.subset(train), data.subset(valid), data.subset(test), data.subset(np.concatenate([train, valid]))


def _scores(ite_in, ite_out, within, test) -> dict[str, float]:
    from pvae.causal import ate_error, sqrt_pehe

    return {
        "pehe_in": sqrt_pehe(ite_in, within.true_ite),
        "pehe_out": sqrt_pehe(ite_out, test.true_ite),
        "ate_in": ate_error(ite_in, within.true_ite),
        "ate_out": ate_error(ite_out, test.true_ite),
    }


def run_job(method: str, rep: int, seed: int, args: dict[str, Any]) -> dict[str, Any]:
    """Fit one method on one replication with one seed; return its scores."""
    import pyro
    import torch

    from pyro.contrib.cevae import CEVAE as PyroCEVAE
    from sklearn.ensemble import GradientBoostingRegressor

    from pvae.causal import CEVAE

    torch.set_num_threads(1)
    logging.getLogger("pyro.contrib.cevae").setLevel(logging.WARNING)
    _, train, valid, test, within = _split(args["data"], rep)
    tick = time.perf_counter()
    out: dict[str, Any] = {"method": method, "rep": rep, "seed": seed}
    if method in PVAE_CONFIGS:
        options = {**args["pvae_options"], **PVAE_CONFIGS[method]}
        fit_options = {**args["pvae_options"].get("fit", {}), **PVAE_CONFIGS[method].get("fit", {})}
        options.pop("fit", None)
        model = CEVAE(feature_dim=train.x.shape[1], outcome_dist="normal", **options)
        model.fit(train.x, train.t, train.y, num_epochs=args["epochs"], validation_data=(valid.x, valid.t, valid.y),
                  seed=seed, num_fits=args["ensemble"], **fit_options)
        ite_in, ite_out = model.ite(within.x), model.ite(test.x)
        est = model.ate_inference(test.x)
        truth = float(test.true_ite.mean())
        q = torch.quantile(est.draws, torch.tensor([0.025, 0.975]))
        out.update(ate_lower=float(est.lower), ate_upper=float(est.upper),
                   covered=bool(est.lower <= truth <= est.upper),
                   covered_posterior=bool(q[0] <= truth <= q[1]))
        # 95% intervals of each test unit's true effect mu1 - mu0: the ensemble's (Rubin's rules, and
        # the quantiles of the pooled draws) and one model's posterior
        for tag, method_ in (("ens", "ensemble"), ("mix", "mixture"), ("post", "posterior")):
            unit = model.effect_inference(test.x, method=method_)
            inside = (unit.lower <= test.true_ite) & (test.true_ite <= unit.upper)
            out[f"ite_cover_{tag}"] = float(inside.float().mean())
            out[f"ite_width_{tag}"] = float((unit.upper - unit.lower).mean())
        if args["refute"]:
            from pvae.causal import refute

            # the same configuration, its own validation split (the preset's); no seed of its own:
            # refute seeds the global generators before each refit, so each starts from other weights
            def refit(x, t, y):
                m = CEVAE(feature_dim=x.shape[1], outcome_dist="normal", **options)
                m.fit(x, t, y, num_epochs=args["epochs"], **fit_options)
                return m.ate(x)

            # placebo: expected 0 whatever the original, so the fitted model's own ATE is reported beside it;
            # random common cause: the refits' own configuration on the training rows (one more fit, like
            # with like), since the new estimates are compared with it
            for name in args["refuters"]:
                original = model.ate(train.x) if name == "placebo" else None
                res = refute(refit, train.x, train.t, train.y, name, num_simulations=args["refute"],
                             original=original, seed=seed)
                out[f"{name}_effect"], out[f"{name}_p"] = res.new_effect, res.p_value
                out[f"{name}_covers"] = bool(res.lower <= res.expected <= res.upper)
    elif method == "pyro":
        pyro.set_rng_seed(seed)
        # pvae keeps module parameters local; Pyro's CEVAE trains through the global param store
        with pyro.settings.context(module_local_params=False):
            pyro.clear_param_store()
            model = PyroCEVAE(feature_dim=train.x.shape[1], outcome_dist="normal")
            model.fit(train.x, train.t, train.y, num_epochs=args["pyro_epochs"], log_every=0)
            ite_in, ite_out = model.ite(within.x), model.ite(test.x)
            pyro.clear_param_store()
    elif method == "tlearner":
        x, t, y = train.x.numpy(), train.t.numpy().astype(bool), train.y.numpy()
        arms = [GradientBoostingRegressor(random_state=seed).fit(x[t == a], y[t == a]) for a in (False, True)]

        def predict(units):
            return torch.from_numpy(arms[1].predict(units.x.numpy()) - arms[0].predict(units.x.numpy()))

        ite_in, ite_out = predict(within), predict(test)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    out["seconds"] = time.perf_counter() - tick
    out.update(_scores(ite_in, ite_out, within, test))
    out["true_ate_out"] = float(test.true_ite.mean())
    out["ite_sd"] = float(within.true_ite.std())
    return out


# -- reporting -----------------------------------------------------------------------
def _mean_se(values: list[float]) -> str:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{m:6.3f} +- {se:5.3f} (med {statistics.median(values):5.3f})"


def report(results: list[dict[str, Any]], methods: list[str], reps: list[int], seeds: list[int]) -> str:
    by = {(r["method"], r["rep"], r["seed"]): r for r in results}
    keys = ("pehe_in", "pehe_out", "ate_in", "ate_out", "seconds")

    def rep_mean(method: str, rep: int, key: str) -> float:
        return statistics.fmean(by[method, rep, s][key] for s in seeds)

    lines = [
        f"IHDP: {len(reps)} replications, seeds {seeds}; fit on 470 training rows; in-sample = 672 training + "
        "validation rows, out-of-sample = 75 test rows; per replication the mean over seeds.",
        "",
        f"{'rep':>3} {'sd(ITE)':>7} {'method':<9} {'PEHE_in':>8} {'PEHE_out':>8} {'ATE_in':>7} {'ATE_out':>7} "
        f"{'cover':>6} {'sec':>6}",
    ]
    for rep in reps:
        for i, method in enumerate(methods):
            vals = [rep_mean(method, rep, k) for k in keys]
            cover = ""
            if method in PVAE_CONFIGS:
                cover = f"{sum(by[method, rep, s]['covered'] for s in seeds)}/{len(seeds)}"
            sd = f"{by[method, rep, seeds[0]]['ite_sd']:7.2f}" if i == 0 else " " * 7
            lines.append(f"{rep if i == 0 else '':>3} {sd} {method:<9} {vals[0]:8.3f} {vals[1]:8.3f} {vals[2]:7.3f} "
                         f"{vals[3]:7.3f} {cover:>6} {vals[4]:6.1f}")
    lines += ["", "mean +- s.e. over replications (median):"]
    for method in methods:
        lines.append(f"  {method:<9} " + "  ".join(
            f"{name} {_mean_se([rep_mean(method, r, k) for r in reps])}"
            for name, k in (("PEHE_in", "pehe_in"), ("PEHE_out", "pehe_out")))
        )
        lines.append(f"  {'':<9} " + "  ".join(
            f"{name} {_mean_se([rep_mean(method, r, k) for r in reps])}"
            for name, k in (("ATE_in  ", "ate_in"), ("ATE_out ", "ate_out")))
            + f"  sec/rep {statistics.fmean(rep_mean(method, r, 'seconds') for r in reps):.1f}"
        )
    if len(seeds) > 1:
        lines += ["", "per seed, mean over replications of PEHE_out:"]
        for method in methods:
            lines.append(f"  {method:<9} " + "  ".join(
                f"seed {s}: {statistics.fmean(by[method, r, s]['pehe_out'] for r in reps):.3f}" for s in seeds))
    n = len(reps) * len(seeds)
    for ours in (m for m in methods if m in PVAE_CONFIGS):
        cov = sum(by[ours, r, s]["covered"] for r in reps for s in seeds)
        cov_post = sum(by[ours, r, s]["covered_posterior"] for r in reps for s in seeds)
        lines += ["", f"{ours} 95% ATE interval (test rows) covers the true ATE: {cov}/{n} (replication x seed); "
                  f"posterior draws alone: {cov_post}/{n}"]
        runs = [by[ours, r, s] for r in reps for s in seeds]
        per_run = ", ".join(f"{x['ite_cover_ens']:.2f}" for x in runs)
        lines.append(f"{ours} 95% individual-effect intervals cover mu1 - mu0 of "
                     f"{statistics.fmean(x['ite_cover_ens'] for x in runs):.3f} of test units (mean width "
                     f"{statistics.fmean(x['ite_width_ens'] for x in runs):.2f}) with the ensemble (Rubin's rules), "
                     f"{statistics.fmean(x['ite_cover_mix'] for x in runs):.3f} (width "
                     f"{statistics.fmean(x['ite_width_mix'] for x in runs):.2f}) with the ensemble's pooled draws, "
                     f"{statistics.fmean(x['ite_cover_post'] for x in runs):.3f} (width "
                     f"{statistics.fmean(x['ite_width_post'] for x in runs):.2f}) with one model's posterior; "
                     f"per run: {per_run}")

        def p_range(name: str) -> str:  # the p-values' range and the runs whose interval missed
            p = [x[f"{name}_p"] for x in runs]
            missed = [f"rep {x['rep']} seed {x['seed']} (p {x[f'{name}_p']:.3f})" for x in runs if not x[f"{name}_covers"]]
            return f" (p {min(p):.3f}-{max(p):.3f})" + (f"; missed: {', '.join(missed)}" if missed else "")

        if "placebo_effect" in runs[0]:
            lines.append(f"{ours} placebo: new effect " + ", ".join(f"{x['placebo_effect']:.3f}" for x in runs)
                         + f"; interval covers 0 in {sum(x['placebo_covers'] for x in runs)}/{n}" + p_range("placebo"))
        if "random_common_cause_effect" in runs[0]:
            lines.append(f"{ours} random common cause: new effect " + ", ".join(
                f"{x['random_common_cause_effect']:.3f}" for x in runs)
                + f"; interval covers the original in {sum(x['random_common_cause_covers'] for x in runs)}/{n}"
                + p_range("random_common_cause"))
        for other in (m for m in methods if m not in PVAE_CONFIGS):
            wins = sum(rep_mean(ours, r, "pehe_out") < rep_mean(other, r, "pehe_out") for r in reps)
            lines.append(f"{ours} has a lower out-of-sample sqrt(PEHE) than {other} on {wins}/{len(reps)} replications")
    return "\n".join(lines)


def _parse_reps(text: str) -> list[int]:
    reps: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            reps += list(range(int(lo), int(hi) + 1))
        else:
            reps.append(int(part))
    return reps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder with ihdp_npci_<r>.csv")
    parser.add_argument("--replications", default="1-10", help="e.g. 1-10 or 1,9,10 (default 1-10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="model seeds (default 0 1)")
    parser.add_argument("--epochs", type=int, default=600, help="pvae CEVAE epochs (default 600)")
    parser.add_argument("--outcome-weight", type=float, default=1.0,
                        help="pvae CEVAE outcome_weight (default 1, the paper's objective)")
    parser.add_argument("--pyro-epochs", type=int, default=850, help="pyro.contrib.cevae epochs (default 850)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel processes")
    parser.add_argument("--pvae-options", default="{}",
                        help='JSON of CEVAE constructor options, with fit options under "fit" (for experiments)')
    parser.add_argument("--ensemble", type=int, default=1,
                        help="pvae CEVAE: fit a deep ensemble of this many models (fit(num_fits=...); default 1)")
    parser.add_argument("--refute", type=int, default=0,
                        help="pvae CEVAE: the --refuters' refutations with this many refits each "
                             "(each a full fit; default 0: none)")
    parser.add_argument("--refuters", default="placebo,random_common_cause",
                        help="with --refute: comma-separated refuters (default placebo,random_common_cause)")
    parser.add_argument("--json", help="also write every job's scores to this file")
    args = parser.parse_args(argv)
    reps, methods = _parse_reps(args.replications), args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if not Path(args.data).is_dir():
        parser.error(f"IHDP folder not found: {args.data}. Try --data ../shared/data/ihdp")
    shared = {"data": args.data, "epochs": args.epochs, "pyro_epochs": args.pyro_epochs, "ensemble": args.ensemble,
              "refute": args.refute, "refuters": args.refuters.split(","),
              "pvae_options": {"outcome_weight": args.outcome_weight, **json.loads(args.pvae_options)}}
    # the slowest jobs first, so that the pool ends together
    order = {"pyro": 0, "pvae-x": 1, "pvae": 2, "tlearner": 3}
    jobs = sorted(((m, r, s) for m in methods for r in reps for s in args.seeds), key=lambda j: (order[j[0]], j[1], j[2]))
    tick = time.perf_counter()
    results = []
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(run_job, m, r, s, shared): (m, r, s) for m, r, s in jobs}
        for future in futures:
            res = future.result()
            results.append(res)
            print(f"  done {res['method']:<8} rep {res['rep']:>2} seed {res['seed']}: PEHE_out {res['pehe_out']:.3f} "
                  f"ATE_out {res['ate_out']:.3f} ({res['seconds']:.1f} s)", file=sys.stderr, flush=True)
    print(report(results, methods, reps, args.seeds))
    print(f"\nwall time {time.perf_counter() - tick:.0f} s with {args.jobs} processes; command: "
          f"python benchmarks/ihdp.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
