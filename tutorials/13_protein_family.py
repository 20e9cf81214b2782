# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A protein family: mutation effects from the evidence, new sequences through a filter
#
# Seed 001 trains a VAE on thousands of known protein sequences, samples new
# ones from its latent space and keeps those that pass a feasibility filter;
# seed 003 decodes each position of a sequence to a categorical distribution
# over its alphabet. DeepSequence (Riesselman et al. 2018) and EVE (Frazer et
# al. 2021) use exactly this model to score human variants *without labels*:
# a VAE fitted to the family's alignment says how much less likely a variant
# makes the sequence,
#
# $$
# s(x^\text{mut}) = \log p(x^\text{mut}) - \log p(x^\text{wt})
#   \approx \mathrm{ELBO}(x^\text{mut}) - \mathrm{ELBO}(x^\text{wt}),
# $$
#
# and evolution has already run the experiment: variants the family never
# tolerated score low. We fit `pvae.models.SequenceVAE` to the p53 family of
# EVE's repository, score the ClinVar-labelled variants of human p53 against
# the site-independent model every paper reports beside its own, draw a
# latent map of the family, and generate new sequences through a
# `pvae.analysis.SequenceFilter`.

# %%
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import csv  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

import pvae  # noqa: E402
from pvae.analysis import HYDROPHOBIC, CompositionRule, IdentityRule, MotifRule, SequenceFilter, mutation_effects  # noqa: E402
from pvae.data import AMINO_ACIDS, decode_sequences, load_msa, msa_split, nearest_identity  # noqa: E402
from pvae.models import SequenceVAE, SiteIndependentModel  # noqa: E402

SMOKE = os.environ.get("PVAE_SMOKE") == "1"
FIGURES = Path(os.environ.get("PVAE_FIGURES", Path(__file__).resolve().parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
DATA = Path(os.environ.get("PVAE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "proteins"
torch.set_num_threads(2)
pyro.set_rng_seed(0)


def save(fig, name: str) -> None:
    path = FIGURES / f"13_{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print("saved", path)


if not (DATA / "P53_HUMAN_b0.1.a2m").is_file():
    sys.exit(f"this tutorial reads EVE's p53 alignment from {DATA} (set PVAE_DATA to the shared data folder).")

# %% [markdown]
# ## The alignment and its weights
#
# `load_msa` keeps the *focus columns* (upper case and `-` in the first
# record, human p53; lower case and `.` are insertions), codes them over 20
# amino acids and the gap, and drops the 38 records with an `X` in a focus
# column, as EVE does. Clusters of near-identical sequences (many primates,
# many fish) would dominate a plain likelihood, so each record is weighted by
# one over the number of records within 80% identity of it (itself
# included): the effective number of sequences $N_\text{eff} = \sum_i w_i$
# is far below the number of records.

# %%
msa = load_msa(DATA / "P53_HUMAN_b0.1.a2m")
print(f"{len(msa)} records x {msa.length} focus columns (residues {int(msa.positions[0])}-"
      f"{int(msa.positions[-1])} of human p53), N_eff = {msa.effective_size:.0f}")
gap_fraction = (msa.codes == 20).float().mean(0)
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
axes[0].hist(msa.weights.numpy(), bins=40)
axes[0].set(xlabel="sequence weight", ylabel="records", yscale="log", title="weights at 80% identity")
axes[1].plot(msa.positions.numpy(), gap_fraction.numpy())
axes[1].set(xlabel="residue of human p53", ylabel="gap fraction", title="coverage of the focus columns")
save(fig, "alignment")

# %% [markdown]
# ## Two models of the family
#
# The VAE's decoder gives every position a categorical distribution over the
# 21 letters given a latent $z$, so positions are dependent through $z$; the
# site-independent model is a profile, $p(x) = \prod_l p_l(x_l)$ with
# weighted column frequencies. We hold out whole clusters (no training
# record within 80% identity of a held-out one: `msa_split(kind="distant")`)
# and fit both on the rest, with the weights recomputed within the training
# records. The VAE maximises the weighted ELBO $\sum_i w_i
# \mathrm{ELBO}(x_i)$ (weights are a per-datum scale of the data plate;
# per-datum bounds stay unweighted), with weight decay: a Gaussian prior's
# MAP estimate of the network weights, which keeps the decoder close to a
# smooth profile where the family gives little evidence (fitted to the whole
# alignment, a VAE's ClinVar AUC rises from about 0.94 to 0.98 with it:
# `benchmarks/protein_p53.py`).

# %%
train_idx, test_idx = msa_split(msa, 0.1, kind="distant", seed=0)
if SMOKE:
    train_idx, test_idx = train_idx[::8], test_idx[::8]
train, test = msa.subset(train_idx, reweight=True), msa.subset(test_idx)
epochs = 2 if SMOKE else 60
vae = SequenceVAE(msa.length, latent_dim=16, hidden_dims=(512, 256))
result = pvae.fit(vae, (train.codes, train.weights), num_epochs=epochs, batch_size=128, weight_decay=1e-3,
                  seed=0, progress=False)
vae.eval()
profile = SiteIndependentModel.from_alignment(train.codes, train.weights, pseudocount=1.0)
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot([row["loss"] for row in result.history])
ax.set(xlabel="epoch", ylabel="weighted loss", title="SequenceVAE training")
save(fig, "training")

# %% [markdown]
# Held out, the VAE's log-likelihood (by the importance-weighted bound) and
# the profile's exact one, per sequence. The held-out records are *distant*
# relatives, so this tests what the VAE learned about dependencies between
# positions rather than its memory of close relatives.

# %%
particles = 20 if SMOKE else 1000
vae_ll = pvae.infer.iwae_bound(vae, test.codes, num_particles=particles)
si_evidence = pvae.infer.log_evidence(profile, test.codes, num_particles=2)
si_ll = si_evidence.log_evidence.value
# the profile's log-likelihood is exact: no latent, so every importance weight is the same and the bound has no gap
assert si_evidence.variational_gap.abs().max() < 1e-3, si_evidence.variational_gap
diff = vae_ll.value - si_ll
print(f"held-out ({len(test)} records): VAE {float(vae_ll.value.mean()):.1f} nats per sequence, "
      f"site-independent {float(si_ll.mean()):.1f}; difference {float(diff.mean()):.1f} "
      f"+- {float(diff.std() / len(diff) ** 0.5):.1f}")

# %% [markdown]
# ## Variant scores against ClinVar
#
# `mutation_effects` parses `P72R`-style variants against the focus
# sequence's numbering, builds every variant's sequence, and evaluates the
# wild type and the variants in one vectorised pass (a variant equal to the
# wild type scores exactly 0). Variants at residues outside the focus
# columns are reported as unscored, with the reason.

# %%
with open(DATA / "P53_HUMAN_clinvar_labels.csv", newline="") as f:
    labels = list(csv.DictReader(f))
mutations = [r["mutations"] for r in labels]
pathogenic = np.array([float(r["ClinVar_labels"]) for r in labels])
vae_eff = mutation_effects(vae, msa, mutations, num_particles=20 if SMOKE else 500)
si_eff = mutation_effects(profile, msa, mutations, num_particles=2)
ok = vae_eff.scored.numpy()
unscored = [(m, r) for m, r in zip(vae_eff.mutations, vae_eff.reasons) if r]
print(f"{ok.sum()} of {len(mutations)} variants scored; unscored, e.g.: {unscored[:1]}")
auc = {name: roc_auc_score(pathogenic[ok], -eff.score.numpy()[ok]) for name, eff in
       (("VAE", vae_eff), ("site-independent", si_eff))}
print({k: round(v, 3) for k, v in auc.items()})
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
colors = np.where(pathogenic[ok] == 1, "tab:red", "tab:blue")
axes[0].scatter(si_eff.score.numpy()[ok], vae_eff.score.numpy()[ok], c=colors, s=12)
axes[0].set(xlabel="site-independent score (nats)", ylabel="VAE ELBO score (nats)",
            title="variants (red: pathogenic, blue: benign)")
for name, eff in (("VAE", vae_eff), ("site-independent", si_eff)):
    fpr, tpr, _ = roc_curve(pathogenic[ok], -eff.score.numpy()[ok])
    axes[1].plot(fpr, tpr, label=f"{name} (AUC {auc[name]:.3f})")
axes[1].plot([0, 1], [0, 1], "k:", lw=0.8)
axes[1].set(xlabel="false positive rate", ylabel="true positive rate", title="ClinVar ROC")
axes[1].legend()
save(fig, "variant_scores")

# %% [markdown]
# ## A latent map of the family
#
# The UniRef headers carry no taxonomy, so we colour each record's encoder
# mean (the first two of 16 latent coordinates, by their variance) by its
# identity to human p53.

# %%
with torch.no_grad():
    loc, _ = vae.encode(msa.codes)
top = loc.var(0).argsort(descending=True)[:2]
to_human = nearest_identity(msa.codes, msa.codes[:1])[0]
fig, ax = plt.subplots(figsize=(5, 4))
points = ax.scatter(loc[:, top[0]], loc[:, top[1]], c=to_human, s=4, cmap="viridis")
ax.scatter(loc[0, top[0]], loc[0, top[1]], marker="*", s=150, c="red", label="human p53")
fig.colorbar(points, label="identity to human p53")
ax.set(xlabel=f"z[{int(top[0])}]", ylabel=f"z[{int(top[1])}]", title="encoder means")
ax.legend()
save(fig, "latent_map")

# %% [markdown]
# ## New sequences through a filter
#
# Draw from the prior, decode, and screen: each amino acid's fraction (and
# the hydrophobic fraction) within the family's 1st-99th percentile, no run
# of eight identical residues or four cysteines, and an identity to the
# nearest natural record between 0.3 (still a family member) and 0.99 (not a
# copy). The filter says which rule rejected each sequence.

# %%
samples = vae.sample(100 if SMOKE else 1000)
screen = SequenceFilter([
    CompositionRule.from_alignment(train, groups={**{a: a for a in AMINO_ACIDS}, "hydrophobic": HYDROPHOBIC}),
    MotifRule([r"(.)\1{7,}", r"CCCC"]),
    IdentityRule(train.codes, low=0.3, high=0.99),
])
screened = screen(samples)
print(f"accepted {screened.fraction_accepted:.0%}; rejected by rule {screened.counts()}")
if len(screened.rejected_index):
    print("first rejection:", screened.reasons[0])
ident = nearest_identity(samples, train.codes)[0]
natural = nearest_identity(test.codes, train.codes)[0]
fig, ax = plt.subplots(figsize=(5, 3))
ax.hist(ident.numpy(), bins=30, alpha=0.6, label="generated", density=True)
ax.hist(natural.numpy(), bins=30, alpha=0.6, label="held-out natural", density=True)
ax.set(xlabel="identity to the nearest training record", ylabel="density", title="novelty")
ax.legend()
save(fig, "generated")
if len(screened.accepted):
    print("an accepted sequence:", decode_sequences(screened.accepted[:1])[0])
