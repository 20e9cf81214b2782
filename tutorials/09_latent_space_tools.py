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
# # Reading a fitted VAE: collapse, latent arithmetic, geodesics, inverse problems
#
# A fitted VAE is more than a sampler. Its latent space is a map of the data
# (seed 001, "制图师"), its decoder a prior over what data can look like (seed
# 004). This tutorial uses `pvae.analysis` to ask five questions of VAEs
# fitted to scikit-learn's 8x8 digits:
#
# 1. **Posterior collapse**: how do $\beta$ and KL warm-up change the KL term
#    and the number of latent dimensions in use?
# 2. **Latent arithmetic and traversals**: the prototype $\mathbb E[x \mid z=0]$
#    (seed 000), one dimension at a time, and predicting a *combined*
#    perturbation as $z_A + z_B - z_0$ (seed 001).
# 3. **Geodesics**: the shortest path between two codes under the decoder's
#    pullback metric $G(z) = J(z)^\top J(z)$ is not the straight line
#    (Arvanitidis et al. 2018, "Latent space oddity"; seed 004).
# 4. **An inverse problem**: recover digits from a few random projections
#    $y = Mx + \varepsilon$ with the VAE as the prior (Bora et al. 2017),
#    against least squares and a linear-Gaussian (PPCA) prior in closed form.
# 5. **Anomaly detection**: scores calibrated on held-out normal data, so that
#    a chosen false-positive rate holds on unseen data (seeds 001, 004).

# %%
import os
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import pvae  # noqa: E402
from pvae.analysis import (  # noqa: E402
    curve_length,
    decoder_mean,
    encode_mean,
    geodesic_dijkstra,
    geodesic_optimize,
    interpolate,
    interpolate_latent,
    latent_arithmetic,
    linear_gaussian_posterior_mean,
    magnification_factor,
    plot_geodesics,
    plot_image,
    plot_image_rows,
    plot_interpolation,
    plot_traversal,
    prototype,
    solve_inverse,
    traverse,
)
from pvae.data import load_digits  # noqa: E402

SMOKE = os.environ.get("PVAE_SMOKE") == "1"
FIGURES = Path(os.environ.get("PVAE_FIGURES", Path(__file__).resolve().parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
torch.manual_seed(0)
EPOCHS = 3 if SMOKE else 80
IMAGE = (8, 8)


def save(fig, name: str) -> None:
    path = FIGURES / f"09_{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print("saved", path)


def figure(name: str) -> Path:
    return FIGURES / f"09_{name}.png"


digits = load_digits(binarize=True)
x_train, y_train = digits.x[:1500], digits.y[:1500]
x_test, y_test = digits.x[1500:], digits.y[1500:]

# %% [markdown]
# ## 1. Posterior collapse: $\beta$ and KL warm-up
#
# The ELBO trades reconstruction against the KL to the prior (seed 000). With
# $\beta > 1$ (`VAE(beta=...)`) the KL costs more and the model switches off
# latent dimensions; KL warm-up (`pvae.fit(..., kl_warmup=E)`) starts with
# $\beta = 0$ and raises it to 1 over $E$ epochs, letting the encoder put
# information in $z$ before the KL pushes back. The history of `fit` records
# the KL per epoch (at $\beta = 1$, whatever the training weight), and the
# *activity* $\mathrm{Var}_x(\mathbb E_q[z_d])$ (Burda et al. 2016) counts the
# dimensions in use (> 0.01). `pvae.infer.collapse_diagnostics` reports the
# same with KL per dimension and the mutual information $I(x; z)$.

# %%
settings = {
    "beta = 1": dict(beta=1.0, kl_warmup=None),
    "beta = 4": dict(beta=4.0, kl_warmup=None),
    "beta = 1, warm-up": dict(beta=1.0, kl_warmup=max(1, EPOCHS // 4)),
}
histories, activity = {}, {}
for name, opts in settings.items():
    torch.manual_seed(1)
    vae = pvae.VAE(64, latent_dim=8, hidden_dims=(128,), beta=opts["beta"])
    with warnings.catch_warnings(record=True) as caught:  # fit warns when the posterior collapses
        warnings.simplefilter("always")
        fit = pvae.fit(vae, x_train, num_epochs=EPOCHS, batch_size=64, learning_rate=2e-3,
                       kl_warmup=opts["kl_warmup"], validation_data=x_test, seed=1, progress=False)
    for w in caught:
        print(f"{name}: {w.category.__name__}: {w.message}")
    histories[name] = fit.history
    activity[name] = encode_mean(vae, x_train).var(0)
    if name == "beta = 1":
        vae8 = vae
    last = fit.history[-1]
    print(f"{name:18s} KL {last['kl']:6.2f}  reconstruction {last['reconstruction']:7.2f}  "
          f"val ELBO {last['val_elbo']:7.2f}  active units {int((activity[name] > 0.01).sum())}/8")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for name, hist in histories.items():
    axes[0].plot([h["epoch"] for h in hist], [h["kl"] for h in hist], marker="." if SMOKE else None, label=name)
axes[0].set_xlabel("epoch")
axes[0].set_ylabel("KL(q(z|x) || p(z)), nats per digit")
axes[0].set_title("KL per epoch (fit history)")
axes[0].legend(fontsize=8)
width = 0.8 / len(activity)
for i, (name, act) in enumerate(activity.items()):
    order = act.sort(descending=True).values
    axes[1].bar(torch.arange(8) + i * width, order, width=width, label=name)
axes[1].axhline(0.01, color="grey", ls="--", lw=1, label="active threshold 0.01")
axes[1].set_yscale("log")
axes[1].set_xlabel("latent dimension (sorted by activity)")
axes[1].set_ylabel("Var_x(E_q[z_d])")
axes[1].set_title("activity per dimension")
axes[1].legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 0.2))
save(fig, "collapse")

# %% [markdown]
# On digits (80 epochs) $\beta = 4$ collapses the posterior completely: the
# KL falls to about 0.02 nats, no dimension stays active and every digit gets
# the same code, so the decoder can only draw an average digit. With
# $\beta = 1$ all 8 dimensions end active (KL about 5.9 nats), but the KL
# curve shows the danger: in the first epochs it drops towards zero (about 0.3
# nats at epoch 2), the start of a collapse that this small decoder recovers
# from over the next 70 epochs. With warm-up the KL is high from the start
# (the encoder is free to use $z$ while the KL weight is small) and ends
# slightly higher (about 6.4) at the same validation ELBO. `fit` itself warns
# when the posterior has collapsed, as it does for $\beta = 4$. (In smoke
# mode the numbers are not meaningful.)

# %% [markdown]
# ## 2. Prototype, traversals, interpolation, latent arithmetic
#
# The prototype decodes the prior mean, $\mathbb E[x \mid z = 0]$ (seed 000):
# the model's "typical" digit, not the average image. A traversal sets one
# coordinate of $z$ to a range of values; interpolation decodes a path between
# two codes, linear or spherical (slerp, which stays in the prior's shell).

# %%
plot_image(prototype(vae8), IMAGE, figure("prototype"), title="prototype: E[x | z = 0]")
top = activity["beta = 1"].argsort(descending=True)[:4].tolist()
values = torch.linspace(-3, 3, 9)
rows = torch.stack([traverse(vae8, d, values) for d in top])
plot_traversal(rows, IMAGE, figure("traversals"), values=values, row_labels=[f"z[{d}]" for d in top])

z_test = encode_mean(vae8, x_test)
z_zero, z_one = z_test[y_test == 0][0], z_test[y_test == 1][0]
paths = torch.stack([interpolate(vae8, z_zero, z_one, 9, method=m) for m in ("linear", "slerp")])
plot_interpolation(paths, IMAGE, figure("interpolation"), row_labels=["linear", "slerp"], title="from a 0 to a 1")

# %% [markdown]
# **Latent arithmetic for combined perturbations (seed 001).** In the seed's
# example, drugs A and B each move a cell's expression; the hypothesis is that
# their effects add in latent space: $z_{AB} = z_0 + (z_A - z_0) + (z_B - z_0)
# = z_A + z_B - z_0$. The digits analogue: perturbation A shifts a digit one
# pixel right, B one pixel down. We train a VAE on originals, A-only and B-only
# images, never on the combination, then predict the diagonal shift of held-out
# digits from their A and B versions, and compare with data-space arithmetic
# $x_A + x_B - x_0$ (clipped to [0, 1]) and with doing nothing ($x_0$).
# For a linear decoder the two arithmetics coincide exactly (the tests check
# this); for pixel shifts, data arithmetic leaves two ghost copies.

# %%
def shift(x: torch.Tensor, right: int = 0, down: int = 0) -> torch.Tensor:
    img = x.reshape(-1, 8, 8)
    img = torch.roll(img, shifts=(down, right), dims=(1, 2))
    if right:
        img[:, :, :right] = 0
    if down:
        img[:, :down, :] = 0
    return img.reshape(-1, 64)


x_pert = torch.cat([x_train, shift(x_train, right=1), shift(x_train, down=1)])
torch.manual_seed(2)
vae_pert = pvae.VAE(64, latent_dim=8, hidden_dims=(256, 128))
pvae.fit(vae_pert, x_pert, num_epochs=EPOCHS, batch_size=64, learning_rate=2e-3, seed=2, progress=False)

x0, xa, xb, xab = x_test, shift(x_test, right=1), shift(x_test, down=1), shift(x_test, right=1, down=1)
z0, za, zb = (encode_mean(vae_pert, x) for x in (x0, xa, xb))
pred_latent = latent_arithmetic(vae_pert, za, zb, z0)
pred_data = (xa + xb - x0).clamp(0, 1)
recon_ab = vae_pert.reconstruct(xab)  # what the VAE can do seeing the real combination
for name, pred in (("latent arithmetic", pred_latent), ("data arithmetic", pred_data), ("no change (x_0)", x0),
                   ("VAE reconstruction of x_AB", recon_ab)):
    print(f"{name:27s} mean |error| per pixel {(pred - xab).abs().mean().item():.3f}")
show = slice(0, 8)
plot_image_rows([x0[show], xa[show], xb[show], xab[show], pred_latent[show], pred_data[show]], IMAGE,
                figure("latent_arithmetic"),
                row_labels=["x_0", "A: right", "B: down", "true AB", "z_A+z_B-z_0", "x_A+x_B-x_0"],
                title="predicting the combined shift from the single ones")

# %% [markdown]
# On held-out digits (80 epochs) latent arithmetic predicts the diagonal shift
# with a mean absolute error of about 0.18 per pixel, on par with data
# arithmetic (0.19) and far better than "no change" (0.33); the VAE's own
# reconstruction of the true combined image (about 0.16) is the floor for any
# prediction through its decoder. The errors are close but the pictures
# differ: data arithmetic leaves fragments of the wrong copies, latent
# arithmetic a blurred but correctly placed digit. (In smoke mode the numbers
# are not meaningful.)

# %% [markdown]
# ## 3. Geodesics in a 2-D latent space
#
# With a 2-D latent we can draw the geometry. The decoder stretches the latent
# plane unevenly: the *magnification factor* $\sqrt{\det G(z)}$ is large
# between the clusters of codes, where a small step in $z$ changes the digit a
# lot. The shortest path between two codes under $G$ (a geodesic) avoids those
# regions; the straight line cuts through them. We first scan all pairs of
# class centres with a batched `geodesic_optimize` (45 curves at once) and
# keep the pair where the geodesic saves most. `geodesic_dijkstra` searches a
# latent grid (edges weighted by the output-space distance
# $\|f(u) - f(v)\|$); `geodesic_optimize` then minimises the curve energy from
# Dijkstra's path. Lengths are in output space (probability images), measured
# the same way for every curve.

# %%
torch.manual_seed(3)
vae2 = pvae.VAE(64, latent_dim=2, hidden_dims=(256, 128))
pvae.fit(vae2, x_train, num_epochs=EPOCHS * 2, batch_size=64, learning_rate=2e-3, seed=3, progress=False)
z2 = encode_mean(vae2, x_train)
f = decoder_mean(vae2)

lo, hi = z2.min(0).values - 0.5, z2.max(0).values + 0.5
centres = torch.stack([z2[y_train == c].median(0).values for c in range(10)])  # one code per class
pairs = [(i, j) for i in range(10) for j in range(i + 1, 10)]
starts, ends = centres[[i for i, _ in pairs]], centres[[j for _, j in pairs]]
# all 45 pairs at once (a batch of curves), to find where the latent space is most curved
scan = geodesic_optimize(f, starts, ends, num_points=16, num_steps=20 if SMOKE else 100)
best = int(scan.ratio.argmin())
print(f"most curved pair of class centres: {pairs[best]} (geodesic / straight = {scan.ratio[best]:.2f})")
z_a, z_b = starts[best], ends[best]
dij = geodesic_dijkstra(f, z_a, z_b, grid=25 if SMOKE else 70, bounds=(lo, hi))
opt = geodesic_optimize(f, z_a, z_b, num_points=32, num_steps=50 if SMOKE else 300, init=dij.points)
print(f"straight line length {dij.straight_length:.3f}")
print(f"Dijkstra geodesic    {dij.length:.3f}  ({dij.ratio:.2f} of straight)")
print(f"optimised geodesic   {opt.length:.3f}  ({opt.ratio:.2f} of straight)")

gx, gy = torch.meshgrid(torch.linspace(float(lo[0]), float(hi[0]), 60), torch.linspace(float(lo[1]), float(hi[1]), 60),
                        indexing="xy")
mag = magnification_factor(f, torch.stack([gx, gy], -1)).detach()
straight = interpolate_latent(z_a, z_b, 32)
plot_geodesics({"straight line": straight, "geodesic (Dijkstra)": dij.points, "geodesic (optimised)": opt.points},
               figure("geodesics"), z_loc=z2, labels=y_train, background=mag.clamp_min(1e-8).log(),
               extent=(float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])),
               title="2-D latent map of digits: geodesic vs straight line")
idx = torch.linspace(0, 31, 10).round().long()
with torch.no_grad():
    plot_image_rows([f(straight[idx]), f(opt.points[idx])], IMAGE, figure("geodesic_decoded"),
                    row_labels=["straight", "geodesic"], title="decoded along the two curves")
chord_length = curve_length(f, opt.points, refine=8).item()
metric_length = curve_length(f, opt.points, method="metric", refine=8).item()
print("check: chord and metric lengths of the geodesic", f"{chord_length:.3f}", f"{metric_length:.3f}")
# two discretisations of the same length integral (8-fold refined): they agree up to discretisation error, 1%
assert abs(chord_length - metric_length) <= 0.01 * metric_length, (chord_length, metric_length)

# %% [markdown]
# On digits (160 epochs) the most curved pair is a 5 and a 6: the geodesic is
# roughly 15% shorter than the straight line (Dijkstra on a 70 x 70 grid a
# little less, the optimised curve a little more; chord and metric lengths
# agree). The straight line runs
# along a ridge of high magnification through 1-like images; the geodesic
# dips into the cluster of 8s, through images the model has seen. In higher
# dimensions use `geodesic_optimize` alone (Dijkstra's grid grows as
# `grid ** latent_dim`).

# %% [markdown]
# ## 4. Compressed sensing with a learned prior
#
# We observe $m \ll 64$ random projections of a held-out digit,
# $y = Mx + \varepsilon$, $\varepsilon \sim \mathcal N(0, \sigma_y^2 I)$, and
# recover $x$ three ways:
#
# * **least squares**: the minimum-norm solution $M^+ y$ (no prior);
# * **PPCA prior**: $x = Wz + \mu + \mathcal N(0, \sigma_x^2 I)$ fitted to the
#   training digits in closed form (Tipping and Bishop 1999), and
#   $\mathbb E[x \mid y]$ in closed form (`linear_gaussian_posterior_mean`);
# * **VAE prior**: MAP over $z$ (`solve_inverse`), the Bernoulli decoder's mean
#   pushed through $M$. A Bernoulli decoder has no Gaussian noise to integrate,
#   so $y \mid z \sim \mathcal N(M f(z), \sigma_y^2 I)$ (a larger $\sigma_y$ in
#   the solver would let it absorb the gap between the decoder's probabilities
#   and the binary digit; on digits that helps only for $m \le 4$). Nonlinear
#   decoders have local optima, so we start from $z = 0$ and from the encoder's
#   code of the least-squares image, and keep the start with the higher
#   $\log p(y, z)$. `method="svi"` fits a Gaussian $q(z)$ per measurement and
#   averages the decoder over it (shown for a few digits).

# %%
def ppca(x: torch.Tensor, k: int):
    mu = x.mean(0)
    evals, evecs = torch.linalg.eigh(torch.cov((x - mu).T))
    evals, evecs = evals.flip(0), evecs.flip(1)
    noise = evals[k:].mean()
    return evecs[:, :k] * (evals[:k] - noise).clamp_min(0).sqrt(), mu, noise.sqrt()


W, mu, sigma_x = ppca(x_train, 8)
n_cs = 8 if SMOKE else 100
x_cs = x_test[:n_cs]
sigma_y = 0.1
ms = [8, 16] if SMOKE else [4, 8, 16, 24, 32, 48]
errors = {"least squares": [], "PPCA prior": [], "VAE prior (MAP)": []}
g = torch.Generator().manual_seed(4)
for m in ms:
    M = torch.randn(m, 64, generator=g) / m**0.5
    y = x_cs @ M.T + sigma_y * torch.randn(n_cs, m, generator=g)
    x_ls = y @ torch.linalg.pinv(M).T
    x_pp = linear_gaussian_posterior_mean(W, mu, sigma_x, M, sigma_y, y).mean
    steps = 30 if SMOKE else 200
    runs = [solve_inverse(vae8, M, y, sigma_y, method="map", num_steps=steps),
            solve_inverse(vae8, M, y, sigma_y, method="map", num_steps=steps,
                          init=encode_mean(vae8, x_ls.clamp(0, 1)))]
    best = (runs[1].log_density > runs[0].log_density)[:, None]
    x_vae = torch.where(best, runs[1].x_mean, runs[0].x_mean)
    for name, est in (("least squares", x_ls), ("PPCA prior", x_pp), ("VAE prior (MAP)", x_vae)):
        errors[name].append((est - x_cs).pow(2).mean().item())
    print(f"m = {m:2d}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in errors.items()))
    if m == 16:
        shown = (x_ls, x_pp, x_vae)
        svi = solve_inverse(vae8, M, y[:8], sigma_y, method="svi", num_steps=100 if SMOKE else 1000,
                            init=torch.where(best[:8], runs[1].z_loc[:8], runs[0].z_loc[:8]))

fig, ax = plt.subplots(figsize=(6, 3.8))
for name, errs in errors.items():
    ax.plot(ms, errs, marker="o", label=name)
ax.set_xlabel("measurements m (of 64 pixels)")
ax.set_ylabel("mean squared error per pixel")
ax.set_title(f"recovering held-out digits from y = Mx + noise (sigma_y = {sigma_y})")
ax.legend(fontsize=8)
save(fig, "compressed_sensing")
plot_image_rows([x_cs[:8], shown[0][:8].clamp(0, 1), shown[1][:8].clamp(0, 1), shown[2][:8], svi.x_mean],
                IMAGE, figure("compressed_sensing_examples"),
                row_labels=["truth", "least squares", "PPCA prior", "VAE MAP", "VAE SVI"],
                title="16 random projections of each digit")

# %% [markdown]
# Least squares only recovers the component of $x$ in the row space of $M$,
# so it stays poor until $m$ nears 64. Both priors do far better. On digits
# (100 held-out digits, 80 epochs) the VAE prior beats the PPCA prior for
# $m$ = 16-32 (e.g. 0.065 against 0.076 squared error per pixel at 16) and
# loses at both ends: with $m \le 8$ the PPCA *posterior mean* hedges between
# digits, which squared error rewards, while the VAE's MAP commits to one
# digit-like image, sometimes the wrong one; with $m = 48$ the measurements
# pin $x$ down and the decoder's limited range (its "representation error",
# as Bora et al. 2017 observe on MNIST) becomes the VAE's floor, while PPCA's
# per-pixel noise term lets it follow the measurements. (In smoke mode the
# numbers are not meaningful.)

# %% [markdown]
# ## 5. Anomaly detection with calibrated scores
#
# Seeds 001 and 004: train on normal data only; a datum the model finds
# improbable is suspect. The score is the negative log-likelihood under the
# model (here the negative IWAE bound, a tighter estimate of $-\log p(x)$).
# A raw score means little on its own, so it is **calibrated** on held-out
# normal data: its empirical distribution there gives p-values and a threshold
# for a chosen false-positive rate, which must then hold on *unseen* normal
# data. Digits 0-8 are normal, 9 is the anomaly. (The full study over seeds is
# `benchmarks/anomaly_digits.py`.)

# %%
from sklearn.metrics import roc_auc_score  # noqa: E402

from pvae.analysis import AnomalyDetector  # noqa: E402

normal, nines = digits.x[digits.y != 9], digits.x[digits.y == 9]
perm = torch.randperm(len(normal), generator=torch.Generator().manual_seed(0))
fit_rows, cal_rows, test_rows = perm[:800], perm[800:1200], perm[1200:]
detector_vae = pvae.VAE(64, 8, hidden_dims=(128,))
pvae.fit(detector_vae, normal[fit_rows], num_epochs=EPOCHS, batch_size=64, learning_rate=2e-3, seed=0,
         kl_warmup=5, progress=False)
detector = AnomalyDetector(detector_vae, score="iwae", num_particles=8 if SMOKE else 64)
detector.calibrate(normal[cal_rows])
unseen = normal[test_rows]
flags_normal = detector.predict(unseen, fpr=0.05)
flags_nine = detector.predict(nines, fpr=0.05)
scores = torch.cat([detector.score(unseen), detector.score(nines)])
labels = torch.cat([torch.zeros(len(unseen)), torch.ones(len(nines))])
auroc = roc_auc_score(labels.numpy(), scores.numpy())
print(f"target false-positive rate 5%: measured {flags_normal.float().mean():.1%} on {len(unseen)} unseen "
      f"normal digits; {flags_nine.float().mean():.1%} of the nines flagged; AUROC {auroc:.3f}")
# calibration on exchangeable held-out normal data: the unseen false-positive rate is 5% up to the binomial
# errors of the test and calibration sets; allow 4 standard errors
fpr_se = (0.05 * 0.95 * (1 / len(unseen) + 1 / len(cal_rows))) ** 0.5
assert abs(flags_normal.float().mean().item() - 0.05) <= 4 * fpr_se, (flags_normal.float().mean(), fpr_se)

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
bins = torch.linspace(float(scores.min()), float(scores.max()), 40).numpy()
axes[0].hist(detector.score(unseen).numpy(), bins=bins, alpha=0.6, density=True, label="unseen normal (0-8)")
axes[0].hist(detector.score(nines).numpy(), bins=bins, alpha=0.6, density=True, label="anomalous (9)")
axes[0].axvline(detector.threshold(0.05), color="k", ls="--", label="threshold at 5% FPR")
axes[0].set_xlabel("score: negative IWAE bound (nats)")
axes[0].legend(fontsize=8)
p_normal = detector.p_value(unseen).sort().values
axes[1].plot(torch.linspace(0, 1, len(p_normal)).numpy(), p_normal.numpy(), label="unseen normal")
axes[1].plot([0, 1], [0, 1], "k--", lw=0.8, label="uniform (ideal)")
axes[1].set_xlabel("quantile")
axes[1].set_ylabel("calibrated p-value")
axes[1].legend(fontsize=8)
axes[1].set_title("p-values of normal data are uniform")
fig.tight_layout()
fig.savefig(figure("anomaly_calibration"), dpi=110)
plt.close(fig)
print("saved", figure("anomaly_calibration"))
