"""The p53 family: a sequence VAE against the site-independent model (issue 14).

Data: ``shared/data/proteins`` (EVE's p53 alignment, 3,668 records, 329
focus columns; 163 ClinVar-labelled single variants of human p53). Records
with a non-standard letter in a focus column are dropped (as EVE does),
leaving 3,630; weights at 80% identity.

Protocol, in one run, the same variants and splits for both models:

* two splits of the alignment, 10% held out each: (a) random records; (b)
  *distant*: whole clusters of the 80%-identity graph held out, so that no
  training record is within 80% identity of a held-out one
  (:func:`pvae.data.msa_split`). Both models are fitted on the training
  records with their weights recomputed within the training set.
* **VAE**: :class:`pvae.models.SequenceVAE` trained on the weighted ELBO
  (sizes and epochs below), held-out log-likelihood by
  :func:`pvae.infer.iwae_bound` with ``--iwae-particles`` draws (and its
  Monte Carlo standard error); **site-independent**:
  :class:`pvae.models.SiteIndependentModel` (weighted column frequencies,
  pseudocount 1 per letter), its exact log-likelihood.
* held-out means per sequence, plain and weighted by the family weights of
  the held-out records; the difference VAE - site-independent per held-out
  sequence, its mean, and the standard error of that mean (over sequences,
  which includes the VAE's Monte Carlo error).
* ClinVar ROC AUC of the score (pathogenic = lower score), the models of
  split (b) (human p53 is always in training): the VAE's ELBO score with
  ``--score-particles`` draws (:func:`pvae.analysis.mutation_effects`), the
  site-independent log-odds.
* generation: ``--samples`` sequences from the VAE's prior through a
  :class:`pvae.analysis.SequenceFilter` (composition within the family's 1st-99th
  percentile of each amino acid and of the hydrophobic fraction; no run of 8
  identical residues, no ``CCCC``; identity to the nearest natural record
  between 0.3 and 0.99), the fraction accepted, rejections per rule, and
  identity to the nearest natural record (min / median / max).

Usage::

    python benchmarks/protein_p53.py                      # the table (~10 min on 2 cores)
    python benchmarks/protein_p53.py --epochs 3 --iwae-particles 20 --score-particles 20 --samples 50   # smoke
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import pyro
import torch
from sklearn.metrics import roc_auc_score

import pvae
from pvae.analysis import HYDROPHOBIC, CompositionRule, IdentityRule, MotifRule, SequenceFilter, mutation_effects
from pvae.data import AMINO_ACIDS, load_msa, msa_split, nearest_identity
from pvae.models import SequenceVAE, SiteIndependentModel

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "proteins"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="folder with the alignment and the labels")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--hidden", type=int, nargs="+", default=[512, 256])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--iwae-particles", type=int, default=1000)
    p.add_argument("--score-particles", type=int, default=500)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--pseudocount", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def train_vae(train, args) -> tuple[SequenceVAE, float]:
    pyro.set_rng_seed(args.seed)
    vae = SequenceVAE(train.length, latent_dim=args.latent, hidden_dims=tuple(args.hidden))
    start = time.perf_counter()
    pvae.fit(vae, (train.codes, train.weights), num_epochs=args.epochs, batch_size=args.batch_size,
             learning_rate=args.lr, progress=False, seed=args.seed)
    return vae.eval(), time.perf_counter() - start


def held_out(vae, profile, test, family_weights, args) -> dict[str, float]:
    est = pvae.infer.iwae_bound(vae, test.codes, num_particles=args.iwae_particles)
    exact = pvae.infer.log_evidence(profile, test.codes, num_particles=2).log_evidence.value
    w = family_weights / family_weights.sum()
    diff = est.value - exact
    return {
        "n": len(test), "vae": float(est.value.mean()), "vae_mc_se": float(est.mean().stderr),
        "si": float(exact.mean()), "vae_w": float((w * est.value).sum()), "si_w": float((w * exact).sum()),
        "diff": float(diff.mean()), "diff_se": float(diff.std() / len(diff) ** 0.5),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(2)
    msa = load_msa(args.data / "P53_HUMAN_b0.1.a2m")
    with open(args.data / "P53_HUMAN_clinvar_labels.csv", newline="") as f:
        labels = list(csv.DictReader(f))
    mutations = [r["mutations"] for r in labels]
    y = np.array([float(r["ClinVar_labels"]) for r in labels])
    print(f"p53: {len(msa)} records x {msa.length} focus columns, N_eff {msa.effective_size:.1f}; "
          f"{len(mutations)} ClinVar variants; torch {torch.__version__}, pyro {pyro.__version__}, 2 threads")
    print(f"VAE: SequenceVAE latent {args.latent}, hidden {args.hidden}, {args.epochs} epochs, batch "
          f"{args.batch_size}, Adam lr {args.lr}, weighted ELBO; site-independent pseudocount {args.pseudocount}\n")

    rows, models = {}, {}
    for kind in ("random", "distant"):
        train_idx, test_idx = msa_split(msa, 0.1, kind=kind, seed=args.seed)
        train, test = msa.subset(train_idx, reweight=True), msa.subset(test_idx)
        vae, seconds = train_vae(train, args)
        profile = SiteIndependentModel.from_alignment(train.codes, train.weights, args.pseudocount)
        nearest = nearest_identity(test.codes, train.codes)[0]
        rows[kind] = {**held_out(vae, profile, test, msa.weights[test_idx], args), "train_s": seconds,
                      "max_id": float(nearest.max()), "median_id": float(nearest.median())}
        models[kind] = (vae, profile, train)

    print("held-out log-likelihood per sequence (nats; VAE by IWAE, site-independent exact)")
    print(f"{'split':8} {'n':>4} {'max id':>6} {'med id':>6} | {'VAE':>8} {'+-MC':>5} {'SI':>8} | "
          f"{'VAE w':>8} {'SI w':>8} | {'VAE-SI':>7} {'+-se':>5} {'z':>5} | {'train s':>7}")
    for kind, r in rows.items():
        print(f"{kind:8} {r['n']:4d} {r['max_id']:6.3f} {r['median_id']:6.3f} | {r['vae']:8.1f} {r['vae_mc_se']:5.2f} "
              f"{r['si']:8.1f} | {r['vae_w']:8.1f} {r['si_w']:8.1f} | {r['diff']:7.1f} {r['diff_se']:5.1f} "
              f"{r['diff'] / r['diff_se']:5.1f} | {r['train_s']:7.0f}")

    vae, profile, train = models["distant"]
    start = time.perf_counter()
    vae_eff = mutation_effects(vae, msa, mutations, num_particles=args.score_particles)
    score_s = time.perf_counter() - start
    si_eff = mutation_effects(profile, msa, mutations, num_particles=2)
    ok = vae_eff.scored.numpy()
    print(f"\nClinVar ROC AUC (pathogenic = lower score), {ok.sum()} of {len(mutations)} variants in focus columns, "
          f"models of split (b):")
    print(f"  VAE ELBO score ({args.score_particles} draws, {score_s:.0f} s): "
          f"{roc_auc_score(y[ok], -vae_eff.score.numpy()[ok]):.3f}   (median MC se {float(vae_eff.stderr[ok].median()):.2f} nats)")
    print(f"  site-independent log-odds:  {roc_auc_score(y[ok], -si_eff.score.numpy()[ok]):.3f}")
    print(f"  Spearman VAE vs site-independent: "
          f"{np.corrcoef(np.argsort(np.argsort(vae_eff.score.numpy()[ok])), np.argsort(np.argsort(si_eff.score.numpy()[ok])))[0, 1]:.3f}")

    pyro.set_rng_seed(args.seed)
    samples = vae.sample(args.samples)
    groups = {**{a: a for a in AMINO_ACIDS}, "hydrophobic": HYDROPHOBIC}
    screen = SequenceFilter([
        CompositionRule.from_alignment(train, groups=groups, quantiles=(0.01, 0.99)),
        MotifRule([r"(.)\1{7,}", r"CCCC"]),
        IdentityRule(train.codes, low=0.3, high=0.99),
    ])
    result = screen(samples)
    ident = nearest_identity(samples, train.codes)[0]
    print(f"\ngeneration: {args.samples} prior samples of the split-(b) VAE; filter: composition 1st-99th percentile "
          f"(20 amino acids + hydrophobic {HYDROPHOBIC}), motifs (.)\\1{{7,}} and CCCC, identity to nearest in [0.3, 0.99]")
    print(f"  accepted {result.fraction_accepted:.1%}; rejected by rule: {result.counts()}")
    print(f"  identity to the nearest natural record: min {float(ident.min()):.3f}, median {float(ident.median()):.3f}, "
          f"max {float(ident.max()):.3f}")


if __name__ == "__main__":
    main()
