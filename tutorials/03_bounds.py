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
# # Evidence, the ELBO and importance-weighted bounds
#
# A latent-variable model explains each observation $x$ by a hidden cause $z$
# (seed 002: a sound in a dark room, and the coin, key or fork that made it).
# How well the model explains $x$ is the **evidence** (marginal likelihood)
#
# $$
# p(x) = \int p(x \mid z)\, p(z)\, dz ,
# $$
#
# an integral over every possible cause, which is almost never tractable; and
# without it Bayes' rule cannot give the posterior $p(z \mid x) = p(x, z) / p(x)$.
# Variational inference replaces the posterior by a tractable stand-in
# $q(z \mid x)$ and measures how far apart they are with the Kullback-Leibler
# divergence. One line of algebra, writing $\log p(x) = \log p(x, z) - \log p(z \mid x)$
# and averaging over $z \sim q$, gives the identity everything here rests on:
#
# $$
# \log p(x)
# = \underbrace{\mathbb E_{q}\big[\log p(x, z) - \log q(z \mid x)\big]}_{\mathrm{ELBO}(q)}
# + \underbrace{\mathrm{KL}\big(q(z \mid x) \,\|\, p(z \mid x)\big)}_{\text{variational gap} \;\ge 0} .
# $$
#
# The KL is never negative, so the **evidence lower bound** (ELBO) lies below
# $\log p(x)$, and since $\log p(x)$ does not depend on $q$, raising the ELBO
# is the same as shrinking the gap: fitting $q$ to the posterior *without ever
# computing the posterior*. Rearranged, the ELBO is a tug of war between
# reconstruction and regularisation,
# $\mathrm{ELBO} = \mathbb E_q[\log p(x \mid z)] - \mathrm{KL}(q(z \mid x) \,\|\, p(z))$.
#
# **Importance-weighted bounds** (Burda et al. 2016) tighten the ELBO with
# more samples. With weights $w_k = p(x, z_k) / q(z_k \mid x)$, $z_k \sim q$,
# the average $\frac1K \sum_k w_k$ is an unbiased estimate of $p(x)$, and by
# Jensen's inequality its log is a lower bound:
#
# $$
# \mathrm{IWAE}_K(x) = \mathbb E\Big[\log \frac1K \sum_{k=1}^K w_k\Big], \qquad
# \mathrm{ELBO} = \mathrm{IWAE}_1 \le \mathrm{IWAE}_K \le \mathrm{IWAE}_{2K} \le \log p(x),
# $$
#
# with $\mathrm{IWAE}_K \to \log p(x)$ as $K \to \infty$: averaging $K$ weights
# makes the estimate less variable, so the concave log costs less. This
# tutorial checks all of this where the answers are known exactly (the coin,
# probabilistic PCA), shows why the ELBO's KL points the way it does (forward
# vs reverse KL on a bimodal posterior), and ends with a small version of the
# MNIST comparison of Burda et al. (`benchmarks/bounds_mnist.py` is the full one).

# %%
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from pyro.distributions import constraints  # noqa: E402
from pyro.nn import PyroModule, PyroParam, pyro_method  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributions import kl_divergence  # noqa: E402

import pvae  # noqa: E402
from pvae.data import load_digits, mnist_10k_split  # noqa: E402
from pvae.infer import elbo_terms, iwae_bound, log_evidence, make_objective  # noqa: E402
from pvae.models.oracles import BetaBernoulliCoin, LinearGaussian  # noqa: E402

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
SMOKE = os.environ.get("PVAE_SMOKE") == "1"
FIGURES = Path(os.environ.get("PVAE_FIGURES", HERE / "figures"))
DATA = Path(os.environ.get("PVAE_DATA", HERE.parents[1] / "shared" / "data"))
FIGURES.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
torch.manual_seed(0)


def save(fig, name: str) -> None:
    path = FIGURES / f"03_{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print("saved", path)


# %% [markdown]
# ## 1. The coin: exact evidence, closed-form ELBO, and IWAE as K grows
#
# Each of $N$ coins has an unknown bias $\theta_i \sim \mathrm{Beta}(\alpha, \beta)$
# and is flipped $n$ times, giving $h_i$ heads and $t_i$ tails. The Beta prior is
# conjugate, so everything is exact:
#
# $$
# p(x_i) = \frac{B(\alpha + h_i, \beta + t_i)}{B(\alpha, \beta)}, \qquad
# p(\theta_i \mid x_i) = \mathrm{Beta}(\alpha + h_i, \beta + t_i).
# $$
#
# With a Beta guide $q = \mathrm{Beta}(a, b)$ (seed 002: the natural stand-in for
# a bias) the ELBO is closed form too, using
# $\mathbb E_q \log\theta = \psi(a) - \psi(a + b)$ and
# $\mathbb E_q \log(1 - \theta) = \psi(b) - \psi(a + b)$ ($\psi$ the digamma function):
#
# $$
# \mathrm{ELBO}_i = (\alpha + h_i - a)[\psi(a) - \psi(a + b)]
#   + (\beta + t_i - b)[\psi(b) - \psi(a + b)] + \log B(a, b) - \log B(\alpha, \beta).
# $$
#
# Take the laziest guide, the prior itself ($a = \alpha$, $b = \beta$: it ignores
# the flips). Its gap $\log p(x) - \mathrm{ELBO}$ must equal
# $\mathrm{KL}(q \,\|\, p(\theta \mid x))$, which torch knows for two Betas.

# %%
num_coins, num_flips = 200, 10
coin = BetaBernoulliCoin(alpha=2.0, beta=2.0, n_coins=num_coins)  # guide = the prior
flips = coin.sample(num_coins, num_flips)
exact = coin.log_evidence(flips)
elbo_exact = coin.elbo_closed_form(flips).detach()
gap_exact = kl_divergence(dist.Beta(coin.q_alpha, coin.q_beta), coin.posterior(flips)).detach()
terms = elbo_terms(coin.model, coin.guide, flips, num_particles=1000)
print(f"log p(x)            {exact.mean():8.3f}  (exact, mean over {num_coins} coins)")
print(f"ELBO closed form    {elbo_exact.mean():8.3f}")
print(f"ELBO Monte Carlo    {terms.elbo.mean():8.3f} +- {terms.elbo_stderr.pow(2).sum().sqrt() / num_coins:.3f}")
print(f"log p(x) - ELBO     {(exact - elbo_exact).mean():8.4f}")
print(f"KL(q || posterior)  {gap_exact.mean():8.4f}  (the same: the identity above)")
# the identity is exact: equal up to float32 rounding of log-Beta terms of size ~10
assert torch.allclose(exact - elbo_exact, gap_exact, atol=1e-4), (exact - elbo_exact - gap_exact).abs().max()
# the Monte Carlo ELBO estimates the closed form: within 4 standard errors of the mean over coins
elbo_se = terms.elbo_stderr.pow(2).sum().sqrt() / num_coins
assert (terms.elbo.mean() - elbo_exact.mean()).abs() <= 4 * elbo_se, (terms.elbo.mean(), elbo_exact.mean(), elbo_se)

# %% [markdown]
# Now the importance-weighted bounds. `iwae_bound` returns a per-datum
# estimate with its Monte Carlo standard error; we average over the coins.
# Expect the curve to start at the ELBO (K = 1) and climb towards $\log p(x)$.

# %%
Ks = [2**i for i in range(0, 9 if SMOKE else 13)]


def bound_curve(model, guide, *args) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean IWAE_K over the data, and its standard error, for every K in Ks."""
    estimates = [iwae_bound(model, guide, *args, num_particles=k).mean() for k in Ks]
    return torch.stack([e.value for e in estimates]), torch.stack([e.stderr for e in estimates])


def plot_bounds(ax, curves: dict, log_p: float, elbo: float, title: str, elbo_label: str = "closed-form ELBO") -> None:
    for label, (value, stderr) in curves.items():
        ax.errorbar(Ks, value, yerr=stderr, marker="o", ms=3, capsize=2, label=label)
    ax.axhline(log_p, color="k", label="exact log p(x)")
    ax.axhline(elbo, color="grey", ls="--", label=elbo_label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (importance samples)")
    ax.set_ylabel("nats per datum")
    ax.set_title(title)
    ax.legend(fontsize=8)


coin_curve = bound_curve(coin.model, coin.guide, flips)
posterior_curve = bound_curve(coin.model, coin.exact_posterior_guide, flips)
print("IWAE_K, guide = prior:    ", [round(v, 3) for v in coin_curve[0].tolist()])
print("IWAE_K, guide = posterior:", [round(v, 3) for v in posterior_curve[0].tolist()])
# with the exact posterior as guide every weight is p(x): IWAE_K = log p(x) for every K, up to rounding
assert torch.allclose(posterior_curve[0], exact.mean().expand(len(Ks)), atol=1e-4), posterior_curve[0]
# IWAE_K <= log p(x) holds in expectation: each estimate (K >= 2; K = 1 has no stderr) within 4 standard errors
assert bool((coin_curve[0][1:] <= exact.mean() + 4 * coin_curve[1][1:]).all()), coin_curve

# %% [markdown]
# With the exact posterior as guide every weight equals $p(x)$, so every bound,
# for every $K$, *is* $\log p(x)$ (the gap is zero). The prior guide starts at
# its ELBO and climbs. Each point is itself a random estimate: at K = 1 it is
# one draw per coin, so it scatters around the closed-form ELBO by its Monte
# Carlo error (the bars show the error of the mean over coins; none for K = 1).

# %% [markdown]
# ## 2. Probabilistic PCA: a Gaussian guide that cannot be exact
#
# $z \sim \mathcal N(0, I_k)$, $x \mid z \sim \mathcal N(Wz + \mu, \sigma^2 I_d)$.
# The evidence is Gaussian, $p(x) = \mathcal N(\mu, WW^\top + \sigma^2 I)$, and so
# is the posterior, with precision $\Lambda = (W^\top W + \sigma^2 I)/\sigma^2$ --
# a *full* covariance. A VAE-like guide has a *diagonal* covariance, so it can
# never be exact: the best diagonal $q$ (the one maximising the ELBO) has the
# exact mean and variances $1/\Lambda_{jj}$, and a gap
# $\mathrm{KL}(q \,\|\, p(z \mid x)) = \tfrac12\big(\sum_j \log\Lambda_{jj} - \log\det\Lambda\big) > 0$.
# We compare it with a guide twice as wide.

# %%
torch.manual_seed(0)  # the same W in smoke and full runs
weight = torch.randn(6, 2)
weight[:, 1] = 0.9 * weight[:, 0] + math.sqrt(1 - 0.9**2) * weight[:, 1]  # correlated columns
ppca = LinearGaussian(input_dim=6, latent_dim=2, weight=weight, noise_scale=0.5)
x_ppca = ppca.sample(200)
ppca_exact = ppca.log_evidence(x_ppca).mean().item()
ppca_curves, ppca_elbos = {}, {}
for factor in (1.0, 2.0):
    ppca.init_guide_from_posterior(scale_factor=factor)
    ppca_elbos[factor] = ppca.elbo_closed_form(x_ppca).mean().item()
    ppca_curves[f"diagonal q, scale x{factor:g}"] = bound_curve(ppca.model, ppca.guide, x_ppca)
    print(f"scale x{factor:g}: ELBO {ppca_elbos[factor]:.3f}, gap {ppca_exact - ppca_elbos[factor]:.3f} nats")
print(f"log p(x) {ppca_exact:.3f}")
# the best diagonal guide's gap is 1/2 (sum_j log Lambda_jj - log det Lambda), the same for every datum
noise_var = torch.as_tensor(ppca.noise_scale).detach() ** 2
precision = (weight.T @ weight + noise_var * torch.eye(2)) / noise_var  # Lambda, from the formula above
diagonal_gap = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision))
assert abs(ppca_exact - ppca_elbos[1.0] - diagonal_gap.item()) < 1e-3, (ppca_exact - ppca_elbos[1.0], diagonal_gap)
# ... and it is the best diagonal guide, so the x2-wide one has a strictly larger gap (closed forms, no noise)
assert ppca_elbos[2.0] < ppca_elbos[1.0] < ppca_exact, ppca_elbos

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
plot_bounds(axes[0], {"q = prior": coin_curve, "q = exact posterior": posterior_curve},
            exact.mean().item(), elbo_exact.mean().item(), "coin (Beta-Bernoulli)")
plot_bounds(axes[1], ppca_curves, ppca_exact, ppca_elbos[1.0], "probabilistic PCA")
axes[1].axhline(ppca_elbos[2.0], color="grey", ls=":", label="closed-form ELBO, scale x2")
axes[1].legend(fontsize=8)
fig.suptitle("ELBO = IWAE_1 <= IWAE_K <= log p(x), tightening as K grows")
save(fig, "oracle_bounds")

# %% [markdown]
# The best diagonal guide is *too narrow*: its variances $1/\Lambda_{jj}$ are the
# posterior's *conditional* variances, smaller than its marginal variances
# $(\Lambda^{-1})_{jj}$ whenever the latents are correlated (Bishop 2006, 10.1.2).

# %%
ppca.init_guide_from_posterior()
print("best diagonal q std:      ", ppca.encoder_scale.detach().numpy().round(3))
print("posterior marginal std:   ", ppca.posterior(x_ppca[:1]).variance[0].sqrt().numpy().round(3))
# the best diagonal q has std 1 / sqrt(Lambda_jj), below the marginal std sqrt((Lambda^-1)_jj) (exact; rounding)
assert torch.allclose(ppca.encoder_scale.detach(), precision.diagonal().rsqrt(), rtol=1e-4)
assert bool((ppca.encoder_scale.detach() < ppca.posterior(x_ppca[:1]).variance[0].sqrt()).all())

# %% [markdown]
# That is no accident of PCA; it is the direction of the KL in the ELBO.
#
# ## 3. Forward vs reverse KL: mode-seeking and mass-covering
#
# The ELBO's gap is the **reverse** KL, $\mathrm{KL}(q \,\|\, p) = \mathbb E_q[\log q - \log p]$.
# It averages over $q$, which is why we can compute it, and it explodes where
# $q$ puts mass and $p$ has none: $q$ learns to stay inside $p$. Faced with a
# posterior that has several modes (several good explanations of the data),
# a single Gaussian $q$ picks **one mode** and fits it well (*mode-seeking*).
# The **forward** KL, $\mathrm{KL}(p \,\|\, q) = \mathbb E_p[\log p - \log q]$,
# averages over the intractable posterior (the practical reason VI does not use
# it) and explodes where $p$ has mass and $q$ none: $q$ must cover *every*
# mode, spreading over the valley between them (*mass-covering*). Over
# Gaussians, minimising it is moment matching: $-\mathbb E_p \log q$ is
# $\mathbb E_p[(z - m)^2]/(2s^2) + \log s$ up to a constant, minimised by
# $m = \mathbb E_p[z]$ and $s^2 = \mathrm{Var}_p[z]$.
#
# A model with a bimodal posterior: $z \sim \mathcal N(0, 1)$ and
# $x \mid z \sim \mathcal N(z^2, \sigma^2)$. Seeing $x = 4$ says $|z| \approx 2$
# but nothing about its sign. In one dimension the posterior and $\log p(x)$ are
# exact on a grid, so both KLs can be computed.


# %%
class SquaredObservation(PyroModule):
    """z ~ N(0, 1), x | z ~ N(z^2, sigma^2), with a Gaussian guide N(loc, scale)."""

    def __init__(self, loc: float = 0.5, scale: float = 1.0, sigma: float = 1.0) -> None:
        super().__init__()
        self.sigma = sigma
        self.q_loc = nn.Parameter(torch.tensor(loc))
        self.q_scale = PyroParam(torch.tensor(scale), constraint=constraints.positive)

    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z**2, self.sigma), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.q_loc, self.q_scale))


x_obs = torch.tensor([4.0])
grid = torch.linspace(-5, 5, 4001)
dz = (grid[1] - grid[0]).item()
log_joint = dist.Normal(0.0, 1.0).log_prob(grid) + dist.Normal(grid**2, 1.0).log_prob(x_obs)
log_px = (torch.logsumexp(log_joint, 0) + math.log(dz)).item()
posterior = (log_joint - log_px).exp()  # density on the grid


def kls(q: dist.Normal) -> tuple[float, float]:
    """(reverse KL(q || p), forward KL(p || q)) on the grid."""
    log_q, log_p = q.log_prob(grid), log_joint - log_px
    reverse = (log_q.exp() * (log_q - log_p)).sum() * dz
    forward = (posterior * (log_p - log_q)).sum() * dz
    return reverse.item(), forward.item()


def maximise_elbo(program: SquaredObservation, num_steps: int) -> SquaredObservation:
    """Minimise KL(q || p(z | x)) = log p(x) - ELBO by stochastic gradient ascent on the ELBO."""
    objective = make_objective("elbo", num_particles=32)  # reparameterised, 32 particles
    optimizer = torch.optim.Adam(program.parameters(), lr=0.05)
    for _ in range(num_steps):
        loss = objective(program.model, program.guide, (x_obs,), {}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return program


# reverse KL: maximise the ELBO, from two starting points
fits = {f"reverse KL, start {start:+g}": maximise_elbo(SquaredObservation(loc=start, scale=0.5),
                                                       300 if SMOKE else 1000)
        for start in (1.0, -1.0)}
# forward KL: match the posterior's moments
mean = (grid * posterior).sum() * dz
std = (((grid - mean) ** 2 * posterior).sum() * dz).sqrt()
fits["forward KL (moments)"] = SquaredObservation(loc=mean.item(), scale=std.item())

print(f"log p(x) = {log_px:.3f} (quadrature); log 2 = {math.log(2):.3f}")
print(f"{'fit':24} {'loc':>6} {'scale':>6} | {'KL(q||p)':>8} {'KL(p||q)':>8} | {'ELBO':>7}")
for label, program in fits.items():
    q = dist.Normal(program.q_loc.detach(), program.q_scale.detach())
    reverse, forward = kls(q)
    print(f"{label:24} {q.loc.item():6.2f} {q.scale.item():6.2f} | {reverse:8.3f} {forward:8.3f} | "
          f"{log_px - reverse:7.3f}")
    if label.startswith("reverse"):
        # each reverse fit sits on the mode on its starting side; q (sd ~0.3, mode ~1.8) has no mass on the
        # other side, so KL(q || p) = log 2 + KL(q || that half of p) >= log 2 (up to quadrature error)
        assert (q.loc.item() > 0) == ("+1" in label), (label, q.loc)
        assert reverse >= math.log(2) - 1e-3, (label, reverse)
reversed_kls = [kls(dist.Normal(p.q_loc.detach(), p.q_scale.detach())) for p in fits.values()]
# moment matching minimises the forward KL over Gaussians (exact, on the grid); the reverse fits have the better ELBO
assert all(reversed_kls[-1][1] <= f + 1e-3 for _, f in reversed_kls[:-1]), reversed_kls
assert all(r < reversed_kls[-1][0] for r, _ in reversed_kls[:-1]), reversed_kls

# %% [markdown]
# The reverse fits each land on one mode (which one depends on where they start)
# with $\mathrm{KL}(q \,\|\, p) \approx \log 2$: a $q$ that fits one of two equal,
# well-separated modes perfectly misses exactly half the posterior mass. The
# moment-matched $q$ covers both modes but puts most of its mass in the valley
# at $z = 0$ where the posterior is almost zero: a blurry average of the
# explanations, with a far worse ELBO. Reverse KL prefers *one good
# explanation* to *the average of all of them* (seed 002).
#
# The roles flip when the Gaussian is used as an importance-sampling proposal.
# IWAE with the mode-seeking $q$ almost never samples the other mode, so it
# stalls about $\log 2$ below $\log p(x)$ for any practical $K$; the
# mass-covering $q$, with its terrible ELBO, is a good proposal, and its IWAE
# bound climbs to $\log p(x)$. Importance weighting repairs a $q$ that is too
# wide, not one that is too narrow.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
axes[0].fill_between(grid, posterior, color="k", alpha=0.15, label="posterior p(z | x=4)")
curves = {}
for label, program in fits.items():
    q = dist.Normal(program.q_loc.detach(), program.q_scale.detach())
    axes[0].plot(grid, q.log_prob(grid).exp(), label=label)
    curves[label] = bound_curve(program.model, program.guide, x_obs.expand(64))
axes[0].set_xlabel("z")
axes[0].set_title("a Gaussian fitted to a bimodal posterior")
axes[0].legend(fontsize=8)
reverse_fit = fits["reverse KL, start +1"]
reverse_elbo = log_px - kls(dist.Normal(reverse_fit.q_loc.detach(), reverse_fit.q_scale.detach()))[0]
plot_bounds(axes[1], curves, log_px, reverse_elbo, "IWAE_K with each fit as the proposal",
            elbo_label="ELBO of the reverse fits (quadrature)")
axes[1].axhline(log_px - math.log(2), color="r", ls=":", label="log p(x) - log 2")
axes[1].legend(fontsize=8)
save(fig, "forward_reverse_kl")

# %% [markdown]
# (The IWAE curves are averages over 64 copies of $x = 4$, i.e. 64 independent
# estimates, to show the expected bound.)
#
# ## 4. Training on a tighter bound: a small MNIST table
#
# Burda et al. trained the same VAE on the ELBO and on IWAE with $K = 5$ and
# $K = 50$ and measured the test log-likelihood with $K = 5000$: 86.76, 85.54,
# 84.78 nats (negative log-likelihood, full MNIST). Training on a tighter bound
# gives a better *generative model*, but not a better ELBO: the encoder is no
# longer asked to match the posterior, only to be a good proposal. They
# also found IWAE uses more of its latent dimensions (**active units**,
# $\mathrm{Cov}_x(\mathbb E_q[z_d]) > 0.01$). The DReG estimator (Tucker et
# al. 2019) gives the same expected gradient with less variance for the encoder.
# Below, a small version (digits in smoke mode; a subset of MNIST-10k
# otherwise); `benchmarks/bounds_mnist.py` runs the full comparison.

# %%
mnist_dir = DATA / "mnist"
if SMOKE or not mnist_dir.exists():
    if not SMOKE:
        print(f"(no MNIST at {mnist_dir}: using scikit-learn's digits instead)")
    digits = load_digits(binarize=True)
    x_train, x_test, dims = digits.x[:1500], digits.x[1500:], dict(input_dim=64, latent_dim=8, hidden=(64, 64))
else:
    train_set, test_set = mnist_10k_split(mnist_dir, binarize="static")
    x_train, x_test, dims = train_set.x[:4000], test_set.x, dict(input_dim=784, latent_dim=50, hidden=(200, 200))
epochs, num_test, evidence_k = (3, 100, 200) if SMOKE else (10, 200, 5000)
runs = {"ELBO": make_objective("elbo"),
        "IWAE K=5": make_objective("iwae", num_particles=5),
        "IWAE K=5 DReG": make_objective("iwae", num_particles=5, estimator="dreg"),
        "IWAE K=50 DReG": make_objective("iwae", num_particles=50, estimator="dreg")}
table = {}
for label, objective in runs.items():
    torch.manual_seed(0)
    vae = pvae.VAE(dims["input_dim"], dims["latent_dim"], hidden_dims=dims["hidden"], activation="tanh")
    pvae.fit(vae, x_train, num_epochs=epochs, batch_size=20, objective=objective, seed=0, progress=False)
    ev = log_evidence(vae.model, vae.guide, x_test[:num_test], num_particles=evidence_k)
    with torch.no_grad():
        active = int((vae.encode(x_test)[0].var(0) > 0.01).sum())
    table[label] = (ev.elbo.mean().value.item(), ev.log_evidence.mean().value.item(), active)
    # log p^(x) and the ELBO come from the same K weights: log mean w >= mean log w (Jensen, exact per datum)
    assert bool((ev.variational_gap >= -1e-4).all()), ev.variational_gap.min()

print(f"{len(x_train)} training images, {epochs} epochs; test: first {num_test} images, log p^(x) with K={evidence_k}")
print(f"{'objective':16} {'test ELBO':>9} {'log p^(x)':>9} {'gap':>6} {'AU':>4}")
for label, (elbo, log_p, active) in table.items():
    print(f"{label:16} {elbo:9.2f} {log_p:9.2f} {log_p - elbo:6.2f} {active:>4}/{dims['latent_dim']}")

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(list(table), [-v[0] for v in table.values()], "o-", label="-ELBO")
ax.plot(list(table), [-v[1] for v in table.values()], "s-", label=f"NLL = -log p^(x), K={evidence_k}")
ax.set_ylabel("nats per image (lower is better)")
ax.legend()
ax.set_title("training on tighter bounds: the gap between the lines grows")
save(fig, "training_objectives")

# %% [markdown]
# Read the table with the identity of the introduction in mind: the gap
# $\log \hat p(x) - \mathrm{ELBO}$ is $\mathrm{KL}(q \,\|\, p(z \mid x))$. IWAE-trained
# models should show a better $\log p(x)$ and a *larger* gap: their encoders are
# trained as proposals for importance sampling, where being too narrow costs
# more than being too wide (section 3), not as ELBO-optimal approximations.
# (In smoke mode, a few epochs on 8x8 digits, the differences are within noise.)
#
# **References.** Y. Burda, R. Grosse, R. Salakhutdinov, *Importance Weighted
# Autoencoders*, ICLR 2016. G. Tucker, D. Lawson, S. Gu, C. J. Maddison, *Doubly
# Reparameterized Gradient Estimators for Monte Carlo Objectives*, ICLR 2019.
# C. Cremer, Q. Morris, D. Duvenaud, *Reinterpreting Importance-Weighted
# Autoencoders*, ICLR workshop 2017. C. M. Bishop, *Pattern Recognition and
# Machine Learning*, 2006, 10.1.2 (the mean-field Gaussian). M. E. Tipping,
# C. M. Bishop, *Probabilistic PCA*, JRSS B 1999.
