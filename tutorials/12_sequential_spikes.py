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
# # Latent dynamics from spike trains: a deep Markov model
#
# Neural activity is dynamic. Seed 004 ("序列 VAE") describes the standard
# move: the spike counts $x_t$ of a population are emitted by a
# low-dimensional latent state $z_t$ that follows Markov dynamics,
#
# $$
# p(x_{1:T}, z_{1:T}) = \prod_t p(z_t \mid z_{t-1})\, p(x_t \mid z_t),
# \qquad x_{t,i} \mid z_t \sim \mathrm{Poisson}\big(\lambda_i(z_t)\big),
# $$
#
# and a structured guide $q(z_t \mid z_{t-1}, x_{t:T})$ infers the trajectory
# of every trial. `pvae.models.SequentialVAE` is Krishnan et al.'s (2017)
# deep Markov model: a gated nonlinear transition, any pvae likelihood for
# the emissions (here `"poisson"`), and a combiner guide on a backward GRU.
#
# We simulate a population whose log-rates are driven by a **known** rotating
# 2-D latent (`pvae.data.spike_trains`), fit the model to ragged trials, and
# ask whether the inferred trajectories recover the true ones up to a linear
# map (the latent space of a VAE is only identified up to such a
# transformation).

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import pvae  # noqa: E402
from pvae.data import spike_trains  # noqa: E402
from pvae.models import SequentialVAE  # noqa: E402

SMOKE = os.environ.get("PVAE_SMOKE") == "1"
FIGURES = Path(os.environ.get("PVAE_FIGURES", Path(__file__).resolve().parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
torch.manual_seed(0)


def save(fig, name: str) -> None:
    path = FIGURES / f"12_{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print("saved", path)


# %% [markdown]
# ## The data: a rotating latent drives 30 neurons
#
# $z_t = 0.98\, R(2\pi / 25)\, z_{t-1} + \epsilon_t$ (a noisy rotation with a
# period of 25 bins, stationary covariance $I$); neuron $i$ fires
# $\mathrm{Poisson}(\exp(c_i^\top z_t + b_i))$ spikes per bin, 0.5 on
# average. Trials of the training set are cut to random lengths between 30
# and 60 bins and padded: ragged sequences, marked by their `lengths`.

# %%
num_train, num_test = (60, 40) if SMOKE else (300, 100)
steps, neurons = 60, 30
data = spike_trains(num_train + num_test, steps, neurons, latent_dim=2, seed=0)
x, z_true = data.counts[:num_train].clone(), data.latents[:num_train]
x_test, z_test = data.counts[num_train:], data.latents[num_train:]
lengths = torch.randint(30, steps + 1, (num_train,), generator=torch.Generator().manual_seed(1))
x[torch.arange(steps) >= lengths[:, None]] = float("nan")  # padding may hold anything
print(f"{num_train} training trials (lengths {int(lengths.min())}-{int(lengths.max())}), {num_test} test trials; "
      f"mean rate {float(data.counts.mean()):.2f} spikes per bin")

fig, axes = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
axes[0].imshow(x_test[0].T.numpy(), aspect="auto", cmap="Greys", interpolation="nearest")
axes[0].set_ylabel("neuron")
axes[0].set_title("spike counts of one trial")
axes[1].plot(z_test[0].numpy())
axes[1].set_xlabel("time bin")
axes[1].set_ylabel("true latent")
save(fig, "data")

# %% [markdown]
# ## Fitting the deep Markov model
#
# `pvae.fit(dmm, (x, lengths))`: padded steps are masked out of the model
# and the guide (their latents under `poutine.mask`, their observations
# masked), and the backward GRU starts at each trial's own last bin. A
# two-dimensional state, Poisson emissions.

# %%
dmm = SequentialVAE(neurons, latent_dim=2, transition_dim=32, rnn_dim=32, emitter_hidden_dims=(32,),
                    likelihood="poisson")
epochs = 4 if SMOKE else 40
fit = pvae.fit(dmm, (x, lengths), num_epochs=epochs, batch_size=32, learning_rate=1e-2, seed=0,
               progress=False, diagnostics_every=None)
print(f"final ELBO {fit.history[-1]['elbo']:.1f} nats per trial "
      f"(reconstruction {fit.history[-1]['reconstruction']:.1f}, KL {fit.history[-1]['kl']:.1f})")
# ELBO = reconstruction - KL, term by term (float rounding of ~1000-nat sums)
assert abs(fit.history[-1]["elbo"] - (fit.history[-1]["reconstruction"] - fit.history[-1]["kl"])) < 1e-3 * abs(
    fit.history[-1]["elbo"]), fit.history[-1]

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot([h["elbo"] for h in fit.history])
ax.set_xlabel("epoch")
ax.set_ylabel("ELBO per trial (nats)")
ax.set_title("training")
save(fig, "training")

# %% [markdown]
# ## Recovery of the latent trajectories
#
# `dmm.encode(x)` runs the guide along its mean path: the inferred
# trajectory $\mathbb E_q[z_t]$ of each trial. We fit the linear map (with
# intercept) from inferred to true latents on the *training* trials (their
# observed bins) and apply it to the held-out trials. $R^2$ is the fraction
# of the true latents' variance explained on held-out trials.

# %%
with torch.no_grad():
    inferred_train = dmm.encode(x, lengths)[0]
    inferred_test, scale_test = dmm.encode(x_test)
observed = torch.arange(steps) < lengths[:, None]


def design(z: torch.Tensor) -> torch.Tensor:
    return torch.cat([z, torch.ones(len(z), 1)], 1)


weights = torch.linalg.lstsq(design(inferred_train[observed]), z_true[observed]).solution
aligned = (design(inferred_test.reshape(-1, 2)) @ weights).reshape(num_test, steps, 2)
residual = (aligned - z_test).pow(2).sum()
r2 = float(1 - residual / (z_test - z_test.reshape(-1, 2).mean(0)).pow(2).sum())
print(f"held-out R^2 of the true latents from the inferred ones (linear map fitted on training trials): {r2:.3f}")

fig, axes = plt.subplots(3, 3, figsize=(11, 7))
for row, trial in enumerate(range(3)):
    for dim in range(2):
        ax = axes[row, dim]
        ax.plot(z_test[trial, :, dim].numpy(), "k", lw=1.5, label="true")
        ax.plot(aligned[trial, :, dim].numpy(), "C1", lw=1.2, label="inferred (aligned)")
        ax.set_ylabel(f"trial {trial}: z_{dim + 1}")
        if row == 2:
            ax.set_xlabel("time bin")
    ax = axes[row, 2]
    ax.plot(z_test[trial, :, 0].numpy(), z_test[trial, :, 1].numpy(), "k", lw=1.2)
    ax.plot(aligned[trial, :, 0].numpy(), aligned[trial, :, 1].numpy(), "C1", lw=1.0)
    ax.set_aspect("equal", adjustable="datalim")
    if row == 0:
        ax.set_title("phase plane")
axes[0, 0].legend(fontsize=8)
fig.suptitle(f"held-out trials: true and inferred latent trajectories (R^2 = {r2:.2f})")
fig.tight_layout()
save(fig, "recovery_trajectories")

fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
for dim, ax in enumerate(axes):
    ax.scatter(z_test[..., dim].flatten().numpy(), aligned[..., dim].flatten().numpy(), s=2, alpha=0.3)
    lim = float(z_test[..., dim].abs().max())
    ax.plot([-lim, lim], [-lim, lim], "k", lw=0.8)
    ax.set_xlabel(f"true z_{dim + 1}")
    ax.set_ylabel(f"inferred z_{dim + 1} (aligned)")
fig.suptitle(f"recovery on {num_test} held-out trials: R^2 = {r2:.3f}")
fig.tight_layout()
save(fig, "recovery_scatter")

# %% [markdown]
# ## The learned dynamics
#
# Trajectories drawn from the fitted prior $p(z_t \mid z_{t-1})$ alone, mapped
# by the same linear alignment: a model that has learned the dynamics, not
# only the encoder, rotates with the right period.

# %%
with torch.no_grad():
    states = dmm.sample_states(3, steps)
    rolled = (design(states.reshape(-1, 2)) @ weights).reshape(3, steps, 2)
fig, ax = plt.subplots(figsize=(4.5, 4.5))
for k in range(3):
    ax.plot(rolled[k, :, 0].numpy(), rolled[k, :, 1].numpy(), lw=1)
ax.set_aspect("equal", adjustable="datalim")
ax.set_xlabel("z_1 (aligned)")
ax.set_ylabel("z_2 (aligned)")
ax.set_title("samples of the learned prior dynamics")
save(fig, "prior_dynamics")
