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
# # Neural data: AR(1) noise for fMRI, and beta against disentanglement
#
# Two questions from seeds 000, 003 and 004.
#
# **Is the noise independent in time?** In fMRI it is not: the noise of one
# scan carries into the next. A likelihood that treats time points as
# independent reads that slow drift as signal. pvae's `likelihood="ar1_normal"`
# models it: $x_t = \mu_t + e_t$, $e_t = \rho e_{t-1} + \sigma\sqrt{1-\rho^2}\,\eta_t$,
# with the exact log-density in $O(T)$ and $\rho$ learned.
#
# **Does beta buy disentanglement?** beta-VAE (Higgins et al. 2017) weighs
# the KL term by beta, the price of rate in a rate-distortion trade-off
# (seed 003). With known generative factors we can measure what that buys:
# the mutual information gap (MIG, Chen et al. 2018) and DCI (Eastwood and
# Williams 2018), `pvae.analysis.disentanglement`; and "wiggle one latent
# dimension" (seed 000) to see what it holds.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

import pvae  # noqa: E402
from pvae.analysis import disentanglement, encode_mean, plot_traversal, traverse  # noqa: E402
from pvae.data import fmri_blocks, sprites  # noqa: E402
from pvae.models import VAE  # noqa: E402

SMOKE = os.environ.get("PVAE_SMOKE") == "1"
FIGURES = Path(os.environ.get("PVAE_FIGURES", Path(__file__).resolve().parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(2)
pyro.set_rng_seed(0)


def save(fig, name: str) -> None:
    path = FIGURES / f"16_{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print("saved", path)


# %% [markdown]
# ## The noise, seen in the data
#
# `fmri_blocks` simulates runs of a block-design experiment: each subject's
# spatial map as an offset, each task's map times the block design convolved
# with the canonical haemodynamic response, and AR(1) noise with
# $\rho = 0.8$. The residual after the true signal has the geometric
# autocorrelation $\rho^k$ of an AR(1).

# %%
runs, epochs = (400, 3) if SMOKE else (2000, 150)
data = fmri_blocks(runs + 300, num_regions=8, length=60, rho=0.8, subject_scale=0.4, task_scale=0.6, seed=0)
noise = (data.x - data.signal).reshape(-1, 8, 60).numpy()
lags = np.arange(10)
acf = [1.0] + [float((noise[..., k:] * noise[..., :-k]).mean() / noise.var()) for k in lags[1:]]
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
axes[0].plot(data.x[0, :60], label="region 0, run 0")
axes[0].plot(data.signal[0, :60], label="its signal")
axes[0].set_xlabel("scan")
axes[0].legend(fontsize=8)
axes[1].bar(lags, acf, label="noise autocorrelation")
axes[1].plot(lags, 0.8**lags, "k.-", label=r"$\rho^k$, $\rho = 0.8$")
axes[1].set_xlabel("lag (scans)")
axes[1].legend(fontsize=8)
save(fig, "ar1_noise")

# %% [markdown]
# ## Independent against AR(1) noise, side by side
#
# The same VAE twice, with only the likelihood changed. The held-out IWAE
# bound (K = 256) compares the two as models of the data; the learned
# $\rho$ should come back near 0.8.

# %%
train, test = data.x[:runs], data.x[runs:]
fits = {}
for likelihood, kwargs in (("normal", {}), ("ar1_normal", {"length": 60})):
    vae = VAE(train.shape[1], latent_dim=4, hidden_dims=(128,), likelihood=likelihood, likelihood_kwargs=kwargs)
    pvae.fit(vae, train, num_epochs=epochs, batch_size=128, learning_rate=2e-3, seed=0, diagnostics_every=None)
    with torch.no_grad():
        bound = pvae.infer.iwae_bound(vae, test, num_particles=256).value.mean().item()
    fits[likelihood] = vae
    rho = f", learned rho {float(vae.likelihood.rho().detach()):.3f}" if likelihood == "ar1_normal" else ""
    print(f"{likelihood:>10}: held-out IWAE {bound:.1f} nats per run{rho}")

# %% [markdown]
# The latent means of the two models, coloured by the true subject: a model
# that does not spend its latent on the noise drift separates the subjects.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
for ax, (name, vae) in zip(axes, fits.items()):
    z = encode_mean(vae, test).numpy()
    ax.scatter(z[:, 0], z[:, 1], c=data.subject[runs:].numpy(), cmap="tab10", s=6)
    ax.set_title(f"{name}: latent means by subject", fontsize=9)
save(fig, "iid_vs_ar1_latents")

# %% [markdown]
# ## beta, MIG and the rate-distortion curve on sprites
#
# `sprites` draws binary 32x32 images of one shape with five independent
# factors (shape, scale, orientation, x, y), dSprites' recipe. For each beta
# we train a VAE and measure MIG and DCI on held-out images, and the rate
# (KL) and distortion (minus the expected log-likelihood): one point of the
# rate-distortion curve per beta. `benchmarks/disentanglement.py` does this
# over seeds and with a KL warm-up.

# %%
images = sprites(2000 if SMOKE else 12000, seed=1)
held = sprites(500 if SMOKE else 3000, seed=2)
betas = (1.0, 4.0) if SMOKE else (0.5, 1.0, 2.0, 4.0, 8.0)
curve = []
models = {}
for beta in betas:
    vae = VAE(32 * 32, latent_dim=10, hidden_dims=(512, 256), beta=beta)
    pvae.fit(vae, images.images, num_epochs=2 if SMOKE else 30, batch_size=128, seed=0, diagnostics_every=None)
    with torch.no_grad():
        terms = pvae.infer.elbo_terms(vae, held.images)
    res = disentanglement(vae, held.images, held.factors.numpy())
    curve.append((beta, terms.kl.mean().item(), -terms.reconstruction.mean().item(), res.mig))
    models[beta] = (vae, res)
    print(f"beta {beta}: rate {curve[-1][1]:.1f}, distortion {curve[-1][2]:.1f} nats, "
          f"MIG {res.mig:.3f}, DCI D {res.dci.disentanglement:.3f}")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
rates, distortions, migs = (np.array([c[i] for c in curve]) for i in (1, 2, 3))
axes[0].plot(rates, distortions, "o-")
for beta, r, d, _ in curve:
    axes[0].annotate(f"beta={beta:g}", (r, d), fontsize=8)
axes[0].set_xlabel("rate: KL (nats)")
axes[0].set_ylabel("distortion (nats)")
axes[1].plot(betas, migs, "o-")
axes[1].set_xscale("log")
axes[1].set_xlabel("beta")
axes[1].set_ylabel("MIG")
save(fig, "rate_distortion_mig")

# %% [markdown]
# ## Wiggling the dimension MIG assigns to each factor
#
# For the model with the highest MIG, `best_dimension[k]` is the latent
# dimension that knows most about factor k; traversing it from -2.5 to 2.5
# around one held-out image should change that factor alone.

# %%
best_beta = max(models, key=lambda b: models[b][1].mig)
vae, res = models[best_beta]
base = encode_mean(vae, held.images[:1])[0]
values = torch.linspace(-2.5, 2.5, 8)
rows = torch.stack([traverse(vae, int(d), values, base=base) for d in res.best_dimension])
labels = [f"{name}: z[{int(d)}]" for name, d in zip(held.factor_names, res.best_dimension)]
print("saved", plot_traversal(rows, (32, 32), FIGURES / "16_traversals.png", values=values.tolist(), row_labels=labels,
                              title=f"beta = {best_beta:g}: the dimension MIG assigns to each factor"))
