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
# # Several modalities, one latent: the product-of-experts VAE
#
# Seed 004 ("多组学整合") describes data that come in several *modalities*
# per individual: a cell's transcriptome and proteome, a neuron's spikes and
# the animal's behaviour, an image and its caption. A multimodal VAE gives
# each modality its own encoder and decoder around one shared latent $z$,
# assuming the modalities are conditionally independent given $z$:
#
# $$
# p(z, x^{(1)}, \dots, x^{(M)}) = p(z) \prod_m p_\theta(x^{(m)} \mid z).
# $$
#
# Under that assumption the exact posterior given any subset $S$ of
# modalities is a product, $p(z \mid x^{(S)}) \propto p(z) \prod_{m \in S}
# p(z \mid x^{(m)}) / p(z)$. The **product of experts** (Wu and Goodman 2018)
# copies this structure: each encoder is a Gaussian expert
# $\tilde q_m(z \mid x^{(m)}) = \mathcal N(\mu_m, \sigma_m^2)$ and
#
# $$
# q(z \mid x^{(S)}) \propto p(z) \prod_{m \in S} \tilde q_m(z \mid x^{(m)})
#   = \mathcal N\Big(\frac{\sum_{m \in S} \mu_m \sigma_m^{-2}}{1 + \sum_{m \in S} \sigma_m^{-2}},\;
#     \frac{1}{1 + \sum_{m \in S} \sigma_m^{-2}}\Big).
# $$
#
# Missing modalities simply drop out of the product, so the model handles any
# pattern of missing data per individual, and it can *generate one modality
# from another*. Agreeing experts multiply into a sharper posterior.
#
# Here the two modalities are an 8x8 digit image and its label (a one-hot
# vector). Half of the training images have no label: the PoE trains on
# whatever each datum has.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import pvae  # noqa: E402
from pvae.analysis.figures import draw_image_grid  # noqa: E402
from pvae.data import load_digits  # noqa: E402
from pvae.models import MultimodalVAE  # noqa: E402

SMOKE = os.environ.get("PVAE_SMOKE") == "1"
FIGURES = Path(os.environ.get("PVAE_FIGURES", Path(__file__).resolve().parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
torch.manual_seed(0)


def save(fig, name: str) -> None:
    path = FIGURES / f"07_{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print("saved", path)


# %% [markdown]
# ## Data: images, labels, and which of them each datum has
#
# `present` is a bool matrix (data x modalities): every image is present, half
# of the labels are not (their rows may hold anything). The model takes it as
# the last positional argument, so `pvae.fit(mvae, (images, labels, present))`
# works directly.
#
# **Training objective.** The ELBO of the modalities each datum has. With
# all modalities present, nothing would teach each expert to stand alone,
# which cross-modal generation needs; Wu and Goodman therefore add the
# unimodal ELBOs, $\mathrm{ELBO}(x^{(1,2)}) + \mathrm{ELBO}(x^{(1)}) +
# \mathrm{ELBO}(x^{(2)})$. In pvae that is data, not code:
# `mvae.unimodal_subsets(...)` repeats the batch with each modality alone.
#
# **KL warm-up.** The product weights each expert by its *precision*: an
# expert that grows wide early on (cheap, while the decoders still ignore
# $z$) contributes almost nothing to the posterior mean, so its own mean gets
# almost no gradient and the model stays collapsed at the prior. Without a
# warm-up this run ends with every posterior equal to the prior and chance
# accuracy; ramping the KL weight from 0 to 1 over the first 20 epochs
# (`kl_warmup=20`, as Wu and Goodman anneal their beta) avoids it.

# %%
digits = load_digits(binarize=True)
n_train = 400 if SMOKE else 1500
images, labels = digits.x[:n_train], F.one_hot(digits.y[:n_train], 10).float()
test_images, test_y = digits.x[1500:], digits.y[1500:]
present = torch.ones(n_train, 2, dtype=torch.bool)
present[:, 1] = torch.rand(n_train) < 0.5  # half of the labels are missing

mvae = MultimodalVAE(
    input_dims=(64, 10),
    likelihoods=("bernoulli", "bernoulli"),
    latent_dim=8,
    hidden_dims=(256, 128),
    modality_names=("image", "label"),
)
train = mvae.unimodal_subsets(images, labels, present=present)
print("training rows:", train[0].shape[0], "(joint, image alone, label alone)")
epochs = 2 if SMOKE else 80
result = pvae.fit(mvae, train, num_epochs=epochs, batch_size=128, learning_rate=2e-3, seed=0, progress=False,
                  kl_warmup=1 if SMOKE else 20)
print(f"final training ELBO {result.history[-1]['elbo']:.2f} nats per row")

# %% [markdown]
# ## Image -> label: the PoE as a classifier
#
# `generate(from_modality="image", x=..., to_modality="label")` decodes the
# label from $q(z \mid \text{image})$, the image expert times the prior.

# %%
probs = mvae.generate("image", test_images, to_modality="label")
predicted = probs.argmax(-1)
accuracy = float((predicted == test_y).float().mean())
print(f"held-out accuracy of image -> label: {accuracy:.1%} (labels seen for half of {n_train} images)")
confusion = torch.zeros(10, 10)
confusion.index_put_((test_y, predicted), torch.ones(len(test_y)), accumulate=True)
fig, ax = plt.subplots(figsize=(4.5, 4))
im = ax.imshow(confusion / confusion.sum(1, keepdim=True).clamp(min=1), cmap="Blues", vmin=0, vmax=1)
ax.set_xlabel("label generated from the image")
ax.set_ylabel("true label")
ax.set_xticks(range(10))
ax.set_yticks(range(10))
ax.set_title(f"cross-modal image -> label ({accuracy:.0%})")
fig.colorbar(im, ax=ax)
save(fig, "image_to_label")

# %% [markdown]
# ## Label -> image: class-conditional generation from the label expert
#
# The label expert's posterior $q(z \mid c)$ covers the images of class $c$;
# decoding draws from it gives different digits of that class.

# %%
num_draws = 8
with torch.no_grad():
    post = mvae.posterior(None, torch.eye(10))  # image missing, one label per row
    z = post.sample((num_draws,))  # (draws, 10 classes, latent)
    decoded = mvae.likelihoods[0].point(mvae.decode(z, "image").base_dist)  # (draws, 10, 64)
fig, ax = plt.subplots(figsize=(num_draws * 0.6, 10 * 0.6))
draw_image_grid(ax, decoded.transpose(0, 1).reshape(-1, 64), 10, num_draws)
ax.set_ylabel("label 0 ... 9")
ax.set_xlabel("draws from q(z | label)")
ax.set_title("cross-modal label -> image")
save(fig, "label_to_image")

# %% [markdown]
# ## Experts that agree sharpen the posterior
#
# The posterior precision is the sum of the experts' precisions (plus the
# prior's 1), so adding a modality can only narrow $q$. The average posterior
# standard deviation given the label alone, the image alone, and both:

# %%
test_labels = F.one_hot(test_y, 10).float()
with torch.no_grad():
    stds = {
        "label only": mvae.encode(None, test_labels)[1],
        "image only": mvae.encode(test_images, None)[1],
        "image + label": mvae.encode(test_images, test_labels)[1],
    }
    widths = {name: sd.mean(0) for name, sd in stds.items()}
# the joint precision is the sum of the experts' (each single-modality posterior includes the prior's 1):
# 1 / s_both^2 = 1 / s_label^2 + 1 / s_image^2 - 1, per datum and dimension (float rounding), so adding a
# modality can only narrow q
joint_precision = stds["label only"].pow(-2) + stds["image only"].pow(-2) - 1
assert torch.allclose(stds["image + label"].pow(-2), joint_precision, rtol=1e-4), "product of experts"
assert bool((stds["image + label"] <= torch.minimum(stds["label only"], stds["image only"]) * (1 + 1e-5)).all())
fig, ax = plt.subplots(figsize=(6, 3.5))
for i, (name, w) in enumerate(widths.items()):
    ax.bar(torch.arange(8) + (i - 1) * 0.27, w, width=0.27, label=name)
    print(f"{name:>14}: mean posterior std {float(w.mean()):.3f}")
ax.set_xlabel("latent dimension")
ax.set_ylabel("posterior std")
ax.legend()
ax.set_title("product of experts: more modalities, narrower posterior")
save(fig, "posterior_widths")

# %% [markdown]
# Latent dimensions where even the joint posterior stays near std 1 are
# unused (collapsed); the label expert informs only a few dimensions (a label
# carries at most $\log 10$ nats), the image expert many.
#
# **References.** M. Wu, N. Goodman, *Multimodal Generative Models for
# Scalable Weakly-Supervised Learning*, NeurIPS 2018. G. E. Hinton,
# *Training Products of Experts by Minimizing Contrastive Divergence*, Neural
# Computation 2002. Y. Shi et al., *Variational Mixture-of-Experts
# Autoencoders for Multi-Modal Deep Generative Models*, NeurIPS 2019.
