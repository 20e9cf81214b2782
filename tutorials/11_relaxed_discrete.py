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
# # Discrete latents by relaxation: Gumbel-softmax and temperature annealing
#
# A categorical latent has no pathwise gradient: $c = \arg\max_k(\ell_k + g_k)$
# (the Gumbel-max trick, $g_k$ standard Gumbel noise) is a step function of
# the logits $\ell$. The Gumbel-softmax / Concrete relaxation (Jang et al.
# 2017; Maddison et al. 2017) replaces the argmax by a softmax at a
# temperature $\tau$,
#
# $$
# \tilde c_k = \frac{\exp((\ell_k + g_k)/\tau)}{\sum_{k'} \exp((\ell_{k'} + g_{k'})/\tau)},
# $$
#
# a differentiable point on the simplex that becomes one-hot as
# $\tau \to 0$. Seed 002 ("原理与机制") names the trade-off this creates:
# **high temperature gives stable but biased gradients, low temperature
# unbiased but high-variance ones**, so anneal from high to low.
#
# `pvae.models.RelaxedCategoricalVAE` has `num_categorical` categorical latents
# with `num_categories` classes each, a uniform prior, and the closed-form KL
# of the underlying categoricals,
# $\mathrm{KL} = \sum_j \sum_k \pi_{jk} \log(K \pi_{jk})$. Its temperature
# follows $\tau(e) = \max(\tau_{\min}, \tau_0 e^{-r e})$, set by `pvae.fit`
# before every step through the program's `on_train_step` hook. After
# training (`eval()` mode) the program *is* the discrete model: one-hot codes
# and exact categorical log-masses, so the ELBO and IWAE bounds bound
# $\log p(x)$.
#
# This tutorial: (1) the schedule; (2) bias and variance of the gradient
# against $\tau$, measured against the exact gradient by enumeration; (3)
# training with soft and straight-through samples; (4) what each category
# generates.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import pvae  # noqa: E402
from pvae.analysis.figures import draw_image_grid  # noqa: E402
from pvae.data import load_digits  # noqa: E402
from pvae.models import GumbelSoftmaxCategorical, RelaxedCategoricalVAE  # noqa: E402

SMOKE = os.environ.get("PVAE_SMOKE") == "1"
FIGURES = Path(os.environ.get("PVAE_FIGURES", Path(__file__).resolve().parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
torch.manual_seed(0)


def save(fig, name: str) -> None:
    path = FIGURES / f"11_{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print("saved", path)


digits = load_digits(binarize=True)
x_train, x_test = digits.x[:1500], digits.x[1500:]
if SMOKE:
    x_train = x_train[:300]
epochs = 3 if SMOKE else 120

# %% [markdown]
# ## 1. The schedule
#
# Jang et al. anneal $\tau = \max(0.5, \exp(-r t))$ over training steps; here
# the clock is the fractional epoch that `pvae.fit` passes to
# `on_train_step`, so the schedule does not depend on the batch size.

# %%
grid = torch.linspace(0, 120, 241)
fig, ax = plt.subplots(figsize=(6, 3))
for rate in (0.01, 0.03, 0.1):
    model = RelaxedCategoricalVAE(64, temperature=2.0, min_temperature=0.5, anneal_rate=rate)
    taus = torch.tensor([model.temperature_at(float(e)) for e in grid])
    # the schedule is the formula of the introduction (float rounding)
    assert torch.allclose(taus, (2.0 * torch.exp(-rate * grid)).clamp(min=0.5), rtol=1e-5), rate
    ax.plot(grid, taus, label=f"r = {rate} per epoch")
ax.axhline(0.5, color="k", lw=0.8, ls=":")
ax.set_xlabel("epoch")
ax.set_ylabel("temperature tau")
ax.set_title("tau(e) = max(0.5, 2 exp(-r e))")
ax.legend()
save(fig, "schedule")

# %% [markdown]
# ## 2. Bias and variance against temperature
#
# A model with one categorical latent of 10 classes (a clustering VAE),
# trained briefly. For a batch of images we compare, at each temperature,
# the relaxed reparameterised gradient of the reconstruction term
# $\nabla_\ell \log p_\theta(x \mid \tilde c(\ell, g, \tau))$ (one draw of $g$
# each) with the **exact** gradient of the discrete model's
# $\nabla_\ell \sum_k \pi_k(\ell) \log p_\theta(x \mid e_k)$, which
# enumeration over the 10 classes gives. Bias: the distance of the mean of
# 2000 relaxed gradients from the exact one (less its Monte Carlo part,
# total variance / 2000); spread: the standard deviation of one relaxed
# gradient (square root of the total variance); both relative to the norm of
# the exact gradient.

# %%
probe = RelaxedCategoricalVAE(64, num_categorical=1, num_categories=10, hidden_dims=(128,),
                              temperature=1.0, min_temperature=1.0, anneal_rate=0.0)
pvae.fit(probe, x_train, num_epochs=epochs, batch_size=64, learning_rate=2e-3, seed=0, progress=False)
probe.train()
x_probe = x_test[:32]
logits = probe.encode(x_probe).detach()  # (32, 1, 10)

eye = torch.eye(10)
with torch.no_grad():
    log_lik = probe.decode(eye[:, None, None, :]).log_prob(x_probe)  # (10 classes, 32 images)
leaf = logits.clone().requires_grad_()
exact_objective = (torch.softmax(leaf, -1)[:, 0, :] * log_lik.T).sum()
(exact,) = torch.autograd.grad(exact_objective, leaf)

num_draws = 200 if SMOKE else 2000
temperatures = [0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0]
rows = {}
for straight_through in (False, True):
    bias, spread = [], []
    for tau in temperatures:
        leaf = logits.expand(num_draws, *logits.shape).clone().requires_grad_()  # one copy per draw
        codes = GumbelSoftmaxCategorical(tau, logits=leaf, straight_through=straight_through).rsample()
        if straight_through:  # the forward value is a one-hot code at every temperature (up to float rounding)
            one_hot = torch.nn.functional.one_hot(codes.argmax(-1), 10).to(codes.dtype)
            assert torch.allclose(codes.detach(), one_hot, atol=1e-6), tau
        objective = probe.decode(codes).log_prob(x_probe).sum()
        (grads,) = torch.autograd.grad(objective, leaf)  # (draws, 32, 1, 10): one gradient per draw
        norm, total_var = exact.norm(), grads.var(0).sum()
        # E|mean - exact|^2 = bias^2 + total variance / draws: remove the Monte Carlo part
        bias2 = (grads.mean(0) - exact).pow(2).sum() - total_var / num_draws
        bias.append(float(bias2.clamp(min=0).sqrt() / norm))
        spread.append(float(total_var.sqrt() / norm))
    rows["straight-through" if straight_through else "soft"] = (bias, spread)
    print("straight-through" if straight_through else "soft", "bias",
          [round(b, 3) for b in bias], "spread", [round(s, 2) for s in spread])

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for name, (bias, spread) in rows.items():
    axes[0].plot(temperatures, bias, "o-", label=name)
    axes[1].plot(temperatures, spread, "o-", label=name)
for ax, title in zip(axes, ("bias: |mean - exact| / |exact|", "spread: sd of one draw / |exact|")):
    ax.set_xscale("log")
    ax.set_xlabel("temperature tau")
    ax.set_title(title)
    ax.legend()
axes[1].set_yscale("log")
save(fig, "bias_variance")

# %% [markdown]
# At high temperature the relaxed samples are blends of classes the decoder
# never sees in the discrete model: the gradient is smooth (small spread)
# and wrong (large bias). As $\tau$ falls the bias shrinks and the spread
# grows. Straight-through feeds the decoder exact one-hot codes, so the
# *forward* value is unbiased at any temperature, but its gradient is the
# soft sample's and stays biased (Bengio et al. 2013).

# %% [markdown]
# ## 3. Training with annealing: soft against straight-through
#
# Four categorical latents of 10 classes each, annealed from $\tau_0 = 2$ to
# $\tau_{\min} = 0.5$. The history's training ELBO is the relaxed objective
# (the decoder sees relaxed codes); the validation ELBO is computed in eval
# mode, i.e. for the discrete model with one-hot codes. The gap between the
# two is the bias of the relaxation at work.

# %%
results = {}
for straight_through in (False, True):
    name = "straight-through" if straight_through else "soft"
    model = RelaxedCategoricalVAE(64, num_categorical=4, num_categories=10, hidden_dims=(128,),
                                  temperature=2.0, min_temperature=0.5, anneal_rate=0.03,
                                  straight_through=straight_through)
    temps = []
    fit = pvae.fit(model, x_train, num_epochs=epochs, batch_size=64, learning_rate=2e-3, validation_data=x_test,
                   seed=0, progress=False, callback=lambda row, m=model: temps.append(m.temperature))
    model.eval()
    bound = pvae.infer.iwae_bound(model.model, model.guide, x_test, num_particles=10 if SMOKE else 200)
    results[name] = (fit, temps, model)
    print(f"{name}: held-out ELBO (discrete) {fit.history[-1]['val_elbo']:.2f}, "
          f"IWAE_{bound.num_particles} {float(bound.value.mean()):.2f} nats; final tau {model.temperature:.2f}")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for name, (fit, temps, _) in results.items():
    line, = axes[0].plot([h["val_elbo"] for h in fit.history], label=f"{name}, held out (discrete)")
    axes[0].plot([h["elbo"] for h in fit.history], ls="--", color=line.get_color(), label=f"{name}, training (relaxed)")
    axes[1].plot(temps, label=name)
axes[0].set_xlabel("epoch")
axes[0].set_ylabel("ELBO per image (nats)")
axes[0].legend(fontsize=8)
axes[1].set_xlabel("epoch")
axes[1].set_ylabel("temperature at the end of the epoch")
axes[1].set_title("the schedule, as pvae.fit applied it")
save(fig, "annealing")

# %% [markdown]
# ## 4. What each category generates
#
# The clustering model of section 2 (one categorical latent): row $k$ shows
# the decoder's mean for category $k$, then draws $x \sim p(x \mid c = e_k)$.
# Each category has become a prototype digit; the label says which digit
# class the encoder sends to it most often.

# %%
probe.eval()
with torch.no_grad():
    px = probe.decode(eye[:, None, :])  # the 10 categories
    means = probe.likelihood.point(px.base_dist)
    draws = px.sample((7,)).transpose(0, 1)  # (10, 7, 64)
    assigned = probe.encode(digits.x).argmax(-1).squeeze(-1)
images = torch.cat([means[:, None], draws], 1).reshape(-1, 64)
fig, ax = plt.subplots(figsize=(8 * 0.6, 10 * 0.6))
draw_image_grid(ax, images, 10, 8)
labels = []
for k in range(10):
    members = digits.y[assigned == k]
    labels.append(f"{int(members.mode().values)} ({len(members)})" if len(members) else "unused")
ax.set_yticks([4 + 9 * k for k in range(10)], labels)
ax.set_xlabel("mean | samples")
ax.set_title("one categorical latent, 10 categories\n(most common digit of its members, count)", fontsize=9)
save(fig, "samples_per_category")
purity = sum(int((digits.y[assigned == k] == digits.y[assigned == k].mode().values).sum())
             for k in range(10) if (assigned == k).any()) / len(digits.y)
print(f"cluster purity against the digit classes: {purity:.2f} (chance ~0.1; labels never seen)")
