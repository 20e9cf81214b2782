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
  with Adam's L2 weight decay ``--weight-decay`` (a Gaussian prior's MAP
  estimate, the part of DeepSequence's prior on decoder weights that point
  estimates keep; sizes and epochs below), held-out log-likelihood by
  :func:`pvae.infer.iwae_bound` with ``--iwae-particles`` draws (and its
  Monte Carlo standard error); **site-independent**:
  :class:`pvae.models.SiteIndependentModel` (weighted column frequencies,
  pseudocount 1 per letter), its exact log-likelihood.
* held-out means per sequence, plain and weighted by the family weights of
  the held-out records; the difference VAE - site-independent per held-out
  sequence, its mean, and the standard error of that mean (over sequences,
  which includes the VAE's Monte Carlo error).
* ClinVar ROC AUC of the score (pathogenic = lower score), as EVE scores
  variants: models fitted to the whole alignment (no labels are used), the
  VAE's ELBO score with ``--score-particles`` draws
  (:func:`pvae.analysis.mutation_effects`) for each of ``--ensemble`` seeds
  and for their mean score (DeepSequence's ensemble), the site-independent
  log-odds.
* generation: ``--samples`` sequences from the prior of the first full-alignment VAE through a
  :class:`pvae.analysis.SequenceFilter` (composition within the family's 1st-99th
  percentile of each amino acid and of the hydrophobic fraction; no run of 8
  identical residues, no ``CCCC``; identity to the nearest natural record
  between 0.3 and 0.99), the fraction accepted, rejections per rule, and
  identity to the nearest natural record (min / median / max).

Usage::

    python benchmarks/protein_p53.py                      # the table (~40 min on 2 cores)
    python benchmarks/protein_p53.py --epochs 3 --iwae-particles 20 --score-particles 20 --samples 50 --ensemble 1  # smoke
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
    p.add_argument("--weight-decay", type=float, default=1e-3, help="Adam's L2 penalty on every weight")
    p.add_argument("--ensemble", type=int, default=3, help="seeds of the full-alignment VAEs that score ClinVar")
    p.add_argument("--splits", nargs="+", default=["random", "distant"], choices=["random", "distant"])
    p.add_argument("--iwae-particles", type=int, default=1000)
    p.add_argument("--score-particles", type=int, default=500)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--pseudocount", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def train_vae(train, args, seed: int) -> tuple[SequenceVAE, float]:
    pyro.set_rng_seed(seed)
    vae = SequenceVAE(train.length, latent_dim=args.latent, hidden_dims=tuple(args.hidden))
    start = time.perf_counter()
    pvae.fit(vae, (train.codes, train.weights), num_epochs=args.epochs, batch_size=args.batch_size,
             learning_rate=args.lr, weight_decay=args.weight_decay, progress=False, seed=seed)
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
          f"{args.batch_size}, Adam lr {args.lr}, weight decay {args.weight_decay}, weighted ELBO; "
          f"site-independent pseudocount {args.pseudocount}\n")

    rows = {}
    for kind in args.splits:
        train_idx, test_idx = msa_split(msa, 0.1, kind=kind, seed=args.seed)
        train, test = msa.subset(train_idx, reweight=True), msa.subset(test_idx)
        vae, seconds = train_vae(train, args, args.seed)
        profile = SiteIndependentModel.from_alignment(train.codes, train.weights, args.pseudocount)
        nearest = nearest_identity(test.codes, train.codes)[0]
        rows[kind] = {**held_out(vae, profile, test, msa.weights[test_idx], args), "train_s": seconds,
                      "max_id": float(nearest.max()), "median_id": float(nearest.median())}

    print("held-out log-likelihood per sequence (nats; VAE by IWAE, site-independent exact)")
    print(f"{'split':8} {'n':>4} {'max id':>6} {'med id':>6} | {'VAE':>8} {'+-MC':>5} {'SI':>8} | "
          f"{'VAE w':>8} {'SI w':>8} | {'VAE-SI':>7} {'+-se':>5} {'z':>5} | {'train s':>7}")
    for kind, r in rows.items():
        print(f"{kind:8} {r['n']:4d} {r['max_id']:6.3f} {r['median_id']:6.3f} | {r['vae']:8.1f} {r['vae_mc_se']:5.2f} "
              f"{r['si']:8.1f} | {r['vae_w']:8.1f} {r['si_w']:8.1f} | {r['diff']:7.1f} {r['diff_se']:5.1f} "
              f"{r['diff'] / r['diff_se']:5.1f} | {r['train_s']:7.0f}")

    profile = SiteIndependentModel.from_alignment(msa.codes, msa.weights, args.pseudocount)
    si_eff = mutation_effects(profile, msa, mutations, num_particles=2)
    ok = si_eff.scored.numpy()
    auc = lambda score: roc_auc_score(y[ok], -score[ok])
    print(f"\nClinVar ROC AUC (pathogenic = lower score), {ok.sum()} of {len(mutations)} variants in focus columns, "
          f"models of the whole alignment:")
    print(f"  site-independent log-odds:  {auc(si_eff.score.numpy()):.3f}")
    scores, vaes = [], []
    for k in range(args.ensemble):
        vae, seconds = train_vae(msa, args, args.seed + k)
        start = time.perf_counter()
        eff = mutation_effects(vae, msa, mutations, num_particles=args.score_particles)
        scores.append(eff.score.numpy())
        vaes.append(vae)
        print(f"  VAE seed {args.seed + k}, ELBO score ({args.score_particles} draws; train {seconds:.0f} s, "
              f"score {time.perf_counter() - start:.0f} s): {auc(scores[-1]):.3f}   "
              f"(median MC se {float(eff.stderr[eff.scored].median()):.2f} nats)")
    mean_score = np.mean(scores, 0)
    rank = lambda v: np.argsort(np.argsort(v[ok]))
    print(f"  VAE ensemble of {args.ensemble} (mean score): {auc(mean_score):.3f}; Spearman with the "
          f"site-independent score {np.corrcoef(rank(mean_score), rank(si_eff.score.numpy()))[0, 1]:.3f}")

    vae = vaes[0]
    pyro.set_rng_seed(args.seed)
    samples = vae.sample(args.samples)
    groups = {**{a: a for a in AMINO_ACIDS}, "hydrophobic": HYDROPHOBIC}
    screen = SequenceFilter([
        CompositionRule.from_alignment(msa, groups=groups, quantiles=(0.01, 0.99)),
        MotifRule([r"(.)\1{7,}", r"CCCC"]),
        IdentityRule(msa.codes, low=0.3, high=0.99),
    ])
    result = screen(samples)
    ident = nearest_identity(samples, msa.codes)[0]
    print(f"\ngeneration: {args.samples} prior samples of the first full-alignment VAE; filter: composition "
          f"1st-99th percentile (20 amino acids + hydrophobic {HYDROPHOBIC}), motifs (.)\\1{{7,}} and CCCC, "
          f"identity to the nearest natural record in [0.3, 0.99]")
    print(f"  accepted {result.fraction_accepted:.1%}; rejected by rule: {result.counts()}")
    print(f"  identity to the nearest natural record: min {float(ident.min()):.3f}, median {float(ident.median()):.3f}, "
          f"max {float(ident.max()):.3f}")


if __name__ == "__main__":
    main()
