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
# # Molecules: the language of SMILES, the MOSES metrics, and design in the latent space
#
# Seeds 000, 001 and 004 describe the closed loop of generative drug design:
# a VAE learns the "language" of molecules written as SMILES strings, a
# predictor of a property (an *oracle*) is fitted on the latent codes, the
# latent space is searched for codes the predictor scores highly, and the
# decoder writes the molecules; strings that are not molecules are thrown
# away. This is Gomez-Bombarelli et al. (2018). Here we run the loop on
# MOSES (Polykovskiy et al. 2020) with the program pvae already has for
# protein families, `SequenceVAE`, given an autoregressive GRU decoder:
#
# $$
# p(x \mid z) = \prod_{t=1}^{L} p(x_t \mid x_{<t}, z), \qquad z \sim \mathcal N(0, I),
# $$
#
# and we measure it the way the field does: validity by RDKit, uniqueness,
# novelty, the medicinal-chemistry and PAINS filters, internal diversity and
# property distributions (`pvae.chem.metrics`); then we optimise QED
# (drug-likeness) with `pvae.analysis.latent_optimize`.

# %%
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

import pvae  # noqa: E402
from pvae.analysis import fit_latent_predictor, latent_optimize  # noqa: E402
from pvae.chem import (  # noqa: E402
    MoleculeTokenizer,
    canonical_smiles,
    load_filters,
    load_smiles,
    metrics,
    property_values,
    qed,
    to_mol,
)
from pvae.models import SequenceVAE  # noqa: E402

SMOKE = os.environ.get("PVAE_SMOKE") == "1"
FIGURES = Path(os.environ.get("PVAE_FIGURES", Path(__file__).resolve().parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
DATA = Path(os.environ.get("PVAE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "moses"
torch.set_num_threads(2)
pyro.set_rng_seed(0)


def save(fig, name: str) -> None:
    path = FIGURES / f"14_{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print("saved", path)


if not (DATA / "train.csv.gz").is_file():
    sys.exit(f"this tutorial reads MOSES from {DATA} (set PVAE_DATA to the shared data folder).")

# %% [markdown]
# ## Tokens and codes
#
# SMILES is a string grammar: `Cl`, `Br`, `[nH]` and ring closures such as
# `%10` are single tokens. SELFIES (Krenn et al. 2020) rewrites every
# molecule so that *every* string of its tokens decodes to a valid molecule;
# the tokeniser handles both and pads every coding with the end token to one
# length, so the categorical sequence program needs no mask.

# %%
smiles = load_smiles(DATA / "train.csv.gz", limit=2000 if SMOKE else 50_000)
tokens = MoleculeTokenizer.fit(smiles, kind="selfies")
codes = tokens.encode(smiles)
print(f"{len(smiles)} molecules, {tokens.vocab_size} SELFIES tokens, codes of length {tokens.length}")
print(smiles[0], "->", " ".join(tokens.tokenize(smiles[:1])[0][:12]), "...")
assert canonical_smiles(tokens.decode(codes[:1])[0]) == canonical_smiles(smiles[0])

# %% [markdown]
# ## The model and its training
#
# An MLP encoder on the one-hot codes, a 64-dimensional latent, a GRU decoder
# that reads `z` and the previous token. `beta = 0.2` keeps the latent
# informative (the autoregressive decoder could otherwise model the strings
# alone and ignore `z`, the posterior collapse of text VAEs).

# %%
vae = SequenceVAE(tokens.length, alphabet_size=tokens.vocab_size, latent_dim=64, hidden_dims=(512, 256),
                  decoder="gru", decoder_hidden_dims=(256,), beta=0.2)
fitted = pvae.fit(vae, codes, num_epochs=1 if SMOKE else 12, batch_size=256, learning_rate=2e-3, kl_warmup=1,
                  seed=0, diagnostics_every=None)
print({k: round(v, 2) for k, v in fitted.history[-1].items() if isinstance(v, float)})

# %% [markdown]
# ## Sampling and the MOSES metrics
#
# Draw codes from the prior, decode them token by token, and measure. The
# filters are MOSES's: the MCF and PAINS SMARTS patterns, allowed atoms, no
# charges, no ring of eight atoms or more.

# %%
filters = load_filters(DATA / "mcf.csv", DATA / "wehi_pains.csv")
test = load_smiles(DATA / "test.csv.gz", limit=500 if SMOKE else 5000)
vae.eval()
torch.manual_seed(1)
generated = tokens.decode(vae.sample(300 if SMOKE else 3000))
report = metrics(generated, smiles, test=test, filters=filters, unique_at=(len(generated),))
for key, value in report.to_dict().items():
    print(f"{key:>20}: {value:.3f}" if isinstance(value, float) else f"{key:>20}: {value}")

# %% [markdown]
# ## Design: climbing QED in the latent space
#
# A predictor of QED is fitted on the encoder means of the training
# molecules; 200 codes (half from the prior, half the codes of the best
# training molecules) climb $f(z) - \tfrac{\lambda}{2}\lVert z\rVert^2$. Every
# code on the way is decoded, and a molecule counts only if RDKit parses it,
# it is not in the training set, and it passes the filters; the *real* QED
# scores the survivors.

# %%
train_set = set(smiles)
values = np.array([qed(s) for s in smiles])
predictor = fit_latent_predictor(vae, codes, values, num_epochs=5 if SMOKE else 30, seed=0)
print(f"predictor R^2 on held-out molecules: {predictor.r2:.3f}")
num_starts = 20 if SMOKE else 200
best = torch.as_tensor(np.argsort(-values)[: num_starts // 2])
with torch.no_grad():
    starts = torch.cat([torch.randn(num_starts // 2, 64), vae.encode(codes[best])[0]])


def decode(z):
    return [canonical_smiles(s) or s for s in tokens.decode(vae.decode(z).mode)]


def accept(s):
    return s not in train_set and filters.passes(s)  # passes() is False for an invalid string


design = latent_optimize(vae, predictor, starts=starts, steps=20 if SMOKE else 100, learning_rate=0.05,
                         prior_weight=0.1, record_every=10, decode=decode, oracle=qed, accept=accept)
print(design.summary(top_mean=10 if SMOKE else 50))
print("training set's best QED:", np.sort(values)[-3:][::-1].round(3))

# %%
top = design.top(12)
if top:
    from rdkit.Chem import Draw

    image = Draw.MolsToGridImage([to_mol(s) for s, _ in top], molsPerRow=4, subImgSize=(220, 180),
                                 legends=[f"QED {v:.3f}" for _, v in top])
    path = FIGURES / "14_designed_molecules.png"
    image.save(path)
    print("saved", path)

# %% [markdown]
# ## Properties before and after
#
# The distributions of QED and logP over the training molecules, the prior
# samples and the accepted designed molecules.

# %%
accepted = [design.candidates[i] for i in np.flatnonzero(design.accepted)]
sets = {"training": smiles[:2000], "prior samples": [s for s in generated if to_mol(s) is not None],
        "designed": accepted}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for name, group in sets.items():
    if not group:
        continue
    props = property_values(group, ("qed", "logp"))
    for ax, key in zip(axes, ("qed", "logp")):
        ax.hist(props[key][~np.isnan(props[key])], bins=30, density=True, alpha=0.5, label=name)
for ax, key in zip(axes, ("QED", "logP")):
    ax.set_xlabel(key)
axes[0].legend()
save(fig, "property_distributions")

# %% [markdown]
# The loop works on any program with an encoder and a decoder: swap `qed`
# for another oracle (penalized logP, a docking score, a trained activity
# model) and `accept` for your own filters. `benchmarks/molecules_moses.py`
# runs it at scale, SMILES against SELFIES, against the training set's best
# molecules and against random prior samples.
