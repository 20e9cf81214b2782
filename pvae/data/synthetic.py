"""Synthetic data with known ground truth.

:func:`lattice_field` samples a free (Gaussian) scalar field on a periodic
1-D lattice of ``size`` sites (seeds 000, 001, 004: the VAE and the
renormalisation group). With lattice spacing 1, the Euclidean action

.. math::

    S[\\phi] = \\frac12 \\sum_{i=0}^{N-1} \\big[(\\phi_{i+1} - \\phi_i)^2 + m^2 \\phi_i^2\\big]
        = \\frac12 \\phi^\\top K \\phi, \\qquad K = m^2 I - \\Delta, \\qquad \\phi_N \\equiv \\phi_0,

with :math:`\\Delta` the periodic lattice Laplacian, gives
:math:`p(\\phi) \\propto e^{-S[\\phi]} = \\mathcal N(0, K^{-1})`. :math:`K` is
circulant, so its eigenvectors are the Fourier modes
:math:`e^{2\\pi i k j / N}` and

.. math::

    \\mathrm{Var}[\\tilde\\phi_k] = \\frac{1}{m^2 + 4 \\sin^2(\\pi k / N)},

largest at :math:`k = 0` and falling with :math:`|k|`: the long-wavelength
modes carry the most variance. A linear VAE (PCA) with :math:`2j + 1`
latents keeps exactly the modes :math:`|k| \\le j` and integrates out the
short-wavelength fluctuations: a coarse-graining step, as in the
renormalisation group. The correlation length is :math:`\\xi \\approx 1/m`.

:func:`spike_trains` simulates binned spike counts with known rates,
:func:`simulate_counts` multi-batch single-cell RNA-seq counts (cell types,
batch effects, library sizes, negative binomial noise), :func:`sprites`
binary images with independent known factors (dSprites' recipe),
:func:`fmri_blocks` a block-design fMRI experiment with AR(1) noise,
:func:`chains` and :func:`crystals` 3-D structures with known bond geometry and
perturbed prototype cells, and
:func:`hidden_confounder_data` the CEVAE paper's hidden-confounder experiment
(a binary latent confounder seen only through noisy proxies; the true
potential outcomes are returned, so every effect estimate can be scored).

References

1. J. Zinn-Justin. Quantum Field Theory and Critical Phenomena. Oxford, 2002
   (the Gaussian lattice field and its propagator).
2. P. Mehta, D. J. Schwab. An exact mapping between the Variational
   Renormalization Group and Deep Learning. arXiv:1410.3831, 2014.
3. Seeds 001 and 004: a VAE trained on a lattice scalar field keeps the
   low-wavenumber modes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .loaders import CausalData

__all__ = [
    "CRYSTAL_SPECIES",
    "Chains",
    "Crystals",
    "FMRIBlocks",
    "FourierModes",
    "LatticeField",
    "SimulatedCounts",
    "SpikeTrains",
    "Sprites",
    "canonical_hrf",
    "chains",
    "crystals",
    "fmri_blocks",
    "fourier_modes",
    "hidden_confounder_data",
    "lattice_field",
    "lattice_precision",
    "lattice_spectrum",
    "simulate_counts",
    "spike_trains",
    "sprites",
]


@dataclass(frozen=True, eq=False)
class FourierModes:
    """The real orthonormal Fourier basis of a periodic lattice, by wavelength.

    :ivar torch.Tensor basis: ``(size, size)``, orthonormal columns: column 0
        the constant mode (k = 0), then :math:`\\sqrt{2/N}\\cos(2\\pi k j / N)`
        and :math:`\\sqrt{2/N}\\sin(2\\pi k j / N)` for k = 1, 2, ...; for even
        N the last column is the alternating mode k = N/2.
    :ivar torch.Tensor wavenumbers: ``(size,)`` int64, k of each column
        (positive for cosines and the k = 0, N/2 modes, negative for sines),
        ordered by :math:`|k|`, i.e. from the longest wavelength down.
    """

    basis: torch.Tensor
    wavenumbers: torch.Tensor

    def longest(self, num_modes: int) -> torch.Tensor:
        """The first ``num_modes`` columns of ``basis``: ``(size, num_modes)``."""
        return self.basis[:, :num_modes]


@dataclass(frozen=True, eq=False)
class LatticeField:
    """Samples of a free lattice field with their exact covariance.

    :ivar torch.Tensor x: ``(num_samples, size)`` field configurations.
    :ivar torch.Tensor covariance: ``(size, size)``, :math:`(m^2 I - \\Delta)^{-1}`.
    :ivar float mass: m.
    :ivar FourierModes modes: the Fourier basis, the covariance's eigenvectors.
    :ivar torch.Tensor mode_variances: ``(size,)`` the covariance's eigenvalue
        of each column of ``modes.basis`` (descending).
    """

    x: torch.Tensor
    covariance: torch.Tensor
    mass: float
    modes: FourierModes
    mode_variances: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)


def _resolve_seed(seed: int | None) -> int:
    """The seed of a generator's private RNG: ``seed``, or (None) one drawn from the
    global torch RNG, so that ``pyro.set_rng_seed`` fixes every generator here (a
    bare ``np.random.default_rng(None)`` would draw fresh OS entropy)."""
    return int(seed) if seed is not None else int(torch.randint(2**31, ()))


def _check_size(size: int, minimum: int = 2) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < minimum:
        raise ValueError(f"size must be an integer >= {minimum}, got {size!r}.")
    return size


def _check_mass(mass: float) -> float:
    if not (isinstance(mass, (int, float)) and math.isfinite(mass) and mass > 0):
        raise ValueError(
            f"mass must be a positive number, got {mass!r}. (At m = 0 the constant mode has "
            "infinite variance; try a small mass such as 0.1.)"
        )
    return float(mass)


def fourier_modes(size: int, dtype: torch.dtype | None = None) -> FourierModes:
    """The real orthonormal Fourier basis of a periodic 1-D lattice, longest wavelength first.

    :param int size: N, lattice sites (>= 2).
    :param dtype: default ``torch.get_default_dtype()``.
    :rtype: FourierModes
    """
    n = _check_size(size)
    dtype = dtype or torch.get_default_dtype()
    j = torch.arange(n, dtype=torch.float64)
    cols, ks = [torch.full((n,), 1 / math.sqrt(n), dtype=torch.float64)], [0]
    for k in range(1, (n - 1) // 2 + 1):
        angle = 2 * math.pi * k * j / n
        cols += [math.sqrt(2 / n) * angle.cos(), math.sqrt(2 / n) * angle.sin()]
        ks += [k, -k]
    if n % 2 == 0:
        cols.append((-1.0) ** j / math.sqrt(n))
        ks.append(n // 2)
    return FourierModes(torch.stack(cols, 1).to(dtype), torch.tensor(ks, dtype=torch.int64))


def lattice_spectrum(size: int, mass: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Variance of each Fourier mode, in the order of :func:`fourier_modes`: ``(size,)``.

    .. math:: \\mathrm{Var}_k = \\big(m^2 + 4 \\sin^2(\\pi k / N)\\big)^{-1}.
    """
    n, m = _check_size(size), _check_mass(mass)
    k = fourier_modes(n, torch.float64).wavenumbers.to(torch.float64)
    var = 1.0 / (m**2 + 4 * torch.sin(math.pi * k / n) ** 2)
    return var.to(dtype or torch.get_default_dtype())


def lattice_precision(size: int, mass: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """:math:`K = m^2 I - \\Delta`, the periodic lattice Laplacian plus mass term: ``(size, size)``."""
    n, m = _check_size(size, 3), _check_mass(mass)
    eye = torch.eye(n, dtype=torch.float64)
    shift = torch.roll(eye, 1, dims=1)
    k = (m**2 + 2) * eye - shift - shift.T
    return k.to(dtype or torch.get_default_dtype())


def lattice_field(
    num_samples: int,
    size: int = 32,
    mass: float = 0.5,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
) -> LatticeField:
    """Sample a free scalar field on a periodic 1-D lattice (exact Gaussian draws).

    :math:`\\phi \\sim \\mathcal N(0, (m^2 I - \\Delta)^{-1})`, drawn as
    :math:`\\phi = L \\epsilon` with the Cholesky factor :math:`L` of the
    covariance (computed in float64).

    :param int num_samples: configurations to draw.
    :param int size: N, lattice sites (>= 3). Default 32.
    :param float mass: m > 0; the correlation length is about 1/m. Default 0.5.
    :param int seed: seed of a private generator (the global RNG is untouched);
        None draws from the global torch RNG.
    :param dtype: of the returned tensors. Default ``torch.get_default_dtype()``.
    :rtype: LatticeField
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
    n, m = _check_size(size, 3), _check_mass(mass)
    dtype = dtype or torch.get_default_dtype()
    cov = torch.linalg.inv(lattice_precision(n, m, torch.float64))
    cov = 0.5 * (cov + cov.T)
    chol = torch.linalg.cholesky(cov)
    gen = None if seed is None else torch.Generator().manual_seed(int(seed))
    eps = torch.randn(num_samples, n, dtype=torch.float64, generator=gen)
    x = eps @ chol.T
    return LatticeField(
        x=x.to(dtype),
        covariance=cov.to(dtype),
        mass=m,
        modes=fourier_modes(n, dtype),
        mode_variances=lattice_spectrum(n, m, dtype),
    )


# -- spike trains from low-dimensional latent dynamics (issue 6) ----------------------------


@dataclass(frozen=True, eq=False)
class SpikeTrains:
    """Poisson spike counts driven by known latent dynamics.

    :ivar torch.Tensor counts: ``(num_trials, num_steps, num_neurons)`` spike
        counts per time bin (float, non-negative integers).
    :ivar torch.Tensor latents: ``(num_trials, num_steps, latent_dim)`` the true
        latent trajectories :math:`z_t`.
    :ivar torch.Tensor rates: ``(num_trials, num_steps, num_neurons)`` the
        Poisson rates :math:`\\lambda_t = \\exp(C z_t + b)` per bin.
    :ivar torch.Tensor dynamics: ``(latent_dim, latent_dim)`` the transition
        matrix A.
    :ivar torch.Tensor readout: ``(num_neurons, latent_dim)`` C.
    :ivar torch.Tensor bias: ``(num_neurons,)`` b, the log baseline rates.
    """

    counts: torch.Tensor
    latents: torch.Tensor
    rates: torch.Tensor
    dynamics: torch.Tensor
    readout: torch.Tensor
    bias: torch.Tensor

    def __len__(self) -> int:
        return len(self.counts)


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def spike_trains(
    num_trials: int,
    num_steps: int,
    num_neurons: int,
    latent_dim: int = 2,
    *,
    period: float = 25.0,
    decay: float = 0.98,
    baseline_rate: float = 0.5,
    gain: float = 1.0,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
) -> SpikeTrains:
    """Spike counts of a neural population driven by a rotating low-dimensional latent.

    A damped-rotation linear dynamical system with Gaussian innovations drives
    the log-rates of the neurons through a random readout (a Poisson linear
    dynamical system, the standard generative model of latent neural
    population dynamics; seed 004):

    .. math::

        z_1 \\sim \\mathcal N(0, I), \\qquad
        z_t = A z_{t-1} + \\epsilon_t,\\ \\ \\epsilon_t \\sim \\mathcal N\\big(0, (1 - \\rho^2) I\\big),

        x_{t,i} \\sim \\mathrm{Poisson}\\big(\\exp(c_i^\\top z_t + b_i)\\big),

    where A is block diagonal with 2x2 blocks :math:`\\rho R(\\omega_m)`,
    rotations by :math:`\\omega_m = 2\\pi m / \\text{period}` (block m = 1, 2,
    ...; an odd last dimension is an AR(1) with coefficient :math:`\\rho`), so
    :math:`z_t` is stationary with covariance I. The readout rows are
    :math:`c_i = \\text{gain} \\cdot u_i` with :math:`u_i` uniform on the unit
    sphere, and :math:`b_i = \\log(\\text{baseline\\_rate}) - \\text{gain}^2 / 2`,
    so that the mean rate of every neuron is ``baseline_rate`` spikes per bin.

    :param int num_trials: independent trials (sequences).
    :param int num_steps: time bins per trial.
    :param int num_neurons: neurons.
    :param int latent_dim: dimension of the latent dynamics. Default 2.
    :param float period: rotation period of the first latent plane, in bins. Default 25.
    :param float decay: :math:`\\rho \\in (0, 1)`, the damping per bin. Default 0.98.
    :param float baseline_rate: mean spikes per bin of each neuron. Default 0.5.
    :param float gain: norm of each readout row (how strongly the latent
        modulates the log-rate). Default 1.
    :param int seed: seed of a private generator (the global RNG is untouched);
        None draws from the global torch RNG.
    :param dtype: of the returned tensors. Default ``torch.get_default_dtype()``.
    :rtype: SpikeTrains
    """
    num_trials = _check_count("num_trials", num_trials)
    num_steps = _check_count("num_steps", num_steps)
    num_neurons = _check_count("num_neurons", num_neurons)
    latent_dim = _check_count("latent_dim", latent_dim)
    if not (isinstance(decay, (int, float)) and 0 < decay < 1):
        raise ValueError(f"decay must lie in (0, 1), got {decay!r}.")
    if not (isinstance(period, (int, float)) and period > 0):
        raise ValueError(f"period must be a positive number of bins, got {period!r}.")
    for name, value in (("baseline_rate", baseline_rate), ("gain", gain)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}.")
    dtype = dtype or torch.get_default_dtype()
    gen = None if seed is None else torch.Generator().manual_seed(int(seed))
    f64 = torch.float64

    a = torch.zeros(latent_dim, latent_dim, dtype=f64)
    for m in range(latent_dim // 2):
        w = 2 * math.pi * (m + 1) / period
        a[2 * m : 2 * m + 2, 2 * m : 2 * m + 2] = decay * torch.tensor(
            [[math.cos(w), -math.sin(w)], [math.sin(w), math.cos(w)]], dtype=f64
        )
    if latent_dim % 2:
        a[-1, -1] = decay
    noise = math.sqrt(1 - decay**2)
    z = torch.empty(num_trials, num_steps, latent_dim, dtype=f64)
    z[:, 0] = torch.randn(num_trials, latent_dim, dtype=f64, generator=gen)
    eps = noise * torch.randn(num_trials, num_steps, latent_dim, dtype=f64, generator=gen)
    for t in range(1, num_steps):
        z[:, t] = z[:, t - 1] @ a.T + eps[:, t]
    u = torch.randn(num_neurons, latent_dim, dtype=f64, generator=gen)
    readout = gain * u / u.norm(dim=-1, keepdim=True)
    bias = torch.full((num_neurons,), math.log(baseline_rate) - gain**2 / 2, dtype=f64)
    rates = torch.exp(z @ readout.T + bias)
    counts = torch.poisson(rates, generator=gen)
    return SpikeTrains(
        counts=counts.to(dtype),
        latents=z.to(dtype),
        rates=rates.to(dtype),
        dynamics=a.to(dtype),
        readout=readout.to(dtype),
        bias=bias.to(dtype),
    )


def hidden_confounder_data(num_data: int, feature_dim: int = 5, seed: int | None = None) -> CausalData:
    """The CEVAE paper's synthetic hidden-confounder experiment, with a known truth.

    .. math::

        z \\sim \\mathrm{Bern}(0.5), \\quad
        x_j \\mid z \\sim \\mathcal N\\big(z,\\ (5 z + 3 (1 - z))^2\\big), \\quad
        t \\mid z \\sim \\mathrm{Bern}(0.75 z + 0.25 (1 - z)),

        y \\mid t, z \\sim \\mathrm{Bern}\\big(\\sigma(3 (z + 2 (2 t - 2)))\\big),

    as in Pyro's CEVAE example (Louizos et al. 2017, sec. 5.1, with the
    outcome offset of Pyro's version, which makes the confounding bias of the
    naive difference of means about 0.11 instead of about 0.01). ``z`` is
    hidden; only the noisy proxies ``x`` are returned. ``mu0``, ``mu1`` are
    the true :math:`\\mathbb E[y \\mid do(t), z]`, so ``true_ite`` is exact
    per unit and the population ATE is
    :math:`\\tfrac12(\\sigma(3) + \\sigma(0) - \\sigma(-9) - \\sigma(-12)) \\approx 0.7262`.

    :param int num_data: units.
    :param int feature_dim: proxies of ``z``. Default 5.
    :param int seed: seed of a private generator (the global RNG is untouched).
    :returns: a :class:`~pvae.data.CausalData` named ``"hidden-confounder"``.
    """
    if isinstance(num_data, bool) or int(num_data) != num_data or num_data < 1:
        raise ValueError(f"num_data must be a positive integer, got {num_data!r}.")
    if isinstance(feature_dim, bool) or int(feature_dim) != feature_dim or feature_dim < 1:
        raise ValueError(f"feature_dim must be a positive integer, got {feature_dim!r}.")
    g = torch.Generator().manual_seed(_resolve_seed(seed))
    n = int(num_data)
    z = torch.bernoulli(torch.full((n,), 0.5), generator=g)
    sd = 5 * z + 3 * (1 - z)
    x = z[:, None] + sd[:, None] * torch.randn(n, int(feature_dim), generator=g)
    t = torch.bernoulli(0.75 * z + 0.25 * (1 - z), generator=g)
    mu0, mu1 = torch.sigmoid(3 * (z - 4)), torch.sigmoid(3 * z)
    u = torch.rand(2, n, generator=g)
    y0, y1 = (u[0] < mu0).float(), (u[1] < mu1).float()
    y = torch.where(t.bool(), y1, y0)
    y_cf = torch.where(t.bool(), y0, y1)
    return CausalData(x=x, t=t, y=y, y_cf=y_cf, mu0=mu0, mu1=mu1, name="hidden-confounder")


@dataclass(frozen=True, eq=False)
class SimulatedCounts:
    """Single-cell counts with a known truth (:func:`simulate_counts`).

    :ivar torch.Tensor counts: ``(cells, genes)`` counts (float, non-negative integers).
    :ivar torch.Tensor batch: ``(cells,)`` int64 batch codes.
    :ivar torch.Tensor cell_type: ``(cells,)`` int64 cell-type codes.
    :ivar torch.Tensor mean: ``(cells, genes)`` the negative binomial means
        :math:`\\mu_{cg}` (before zero inflation).
    :ivar torch.Tensor de_factors: ``(types, genes)`` the differential-expression
        factors of each cell type (1 where a gene is not differentially expressed).
    :ivar torch.Tensor batch_factors: ``(batches, genes)`` the multiplicative
        batch effects.
    :ivar torch.Tensor library: ``(cells,)`` the expected library sizes :math:`L_c`.
    :ivar float dispersion: the negative binomial's :math:`r` (``total_count``).
    """

    counts: torch.Tensor
    batch: torch.Tensor
    cell_type: torch.Tensor
    mean: torch.Tensor
    de_factors: torch.Tensor
    batch_factors: torch.Tensor
    library: torch.Tensor
    dispersion: float


def simulate_counts(
    num_cells: int = 2000,
    num_genes: int = 500,
    num_batches: int = 3,
    num_cell_types: int = 4,
    *,
    de_prob: float = 0.1,
    de_loc: float = 0.8,
    de_scale: float = 0.4,
    batch_scale: float = 0.5,
    library_loc: float = 8.0,
    library_scale: float = 0.3,
    dispersion: float = 5.0,
    zero_inflation: float = 0.0,
    mean_shape: float = 0.6,
    mean_rate: float = 0.3,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
) -> SimulatedCounts:
    """Multi-batch single-cell RNA-seq counts: Splatter's recipe in miniature.

    Gene base means :math:`\\lambda_g \\sim \\mathrm{Gamma}(\\text{shape}, \\text{rate})`;
    cell types and batches uniform over cells; each gene of each type is
    differentially expressed with probability ``de_prob``, by a factor
    :math:`f_{kg} = e^{\\pm u},\\ u \\sim \\mathcal N(\\text{de\\_loc}, \\text{de\\_scale}^2)`
    (up or down with probability 1/2; 1 otherwise); every gene of every batch
    carries a multiplicative batch effect
    :math:`b_{sg} = e^{v},\\ v \\sim \\mathcal N(0, \\text{batch\\_scale}^2)`;
    library sizes :math:`L_c \\sim \\mathrm{LogNormal}(\\text{library\\_loc},
    \\text{library\\_scale}^2)`. Then

    .. math::

        \\mu_{cg} = L_c \\frac{\\lambda_g f_{k_c g} b_{s_c g}}{\\sum_h \\lambda_h f_{k_c h} b_{s_c h}},
        \\qquad x_{cg} \\sim \\mathrm{NB}(\\mu_{cg}, r)
        = \\mathrm{Poisson}\\big(\\mathrm{Gamma}(r, r / \\mu_{cg})\\big),

    with each count set to zero with probability ``zero_inflation`` (dropouts).
    The defaults give strong batch effects (a linear classifier tells the
    batches apart from raw log counts) next to the biology.

    Reference: L. Zappia, B. Phipson, A. Oshlack. Splatter: simulation of
    single-cell RNA sequencing data. Genome Biology 18, 2017.

    :param int num_cells: cells.
    :param int num_genes: genes.
    :param int num_batches: batches.
    :param int num_cell_types: cell types.
    :param float de_prob: probability that a gene is differentially expressed in a type.
    :param float de_loc: mean of the log fold change of DE genes.
    :param float de_scale: spread of the log fold change of DE genes.
    :param float batch_scale: spread of the log batch factors (0: no batch effect).
    :param float library_loc: mean log library size.
    :param float library_scale: spread of the log library size.
    :param float dispersion: the negative binomial's :math:`r` (larger: closer to Poisson).
    :param float zero_inflation: probability of an extra zero per count.
    :param float mean_shape: shape of the gene means' Gamma (Splatter's 0.6).
    :param float mean_rate: rate of the gene means' Gamma (Splatter's 0.3).
    :param int seed: seed of a private NumPy generator (global RNGs untouched);
        None seeds it from the global torch RNG.
    :param dtype: of the float tensors. Default ``torch.get_default_dtype()``.
    :rtype: SimulatedCounts
    """
    n, g = _check_count("num_cells", num_cells), _check_count("num_genes", num_genes)
    nb, nk = _check_count("num_batches", num_batches), _check_count("num_cell_types", num_cell_types)
    for name, value, low in (("de_prob", de_prob, 0), ("zero_inflation", zero_inflation, 0)):
        if not (isinstance(value, (int, float)) and low <= value <= 1):
            raise ValueError(f"{name} must lie in [0, 1], got {value!r}.")
    for name, value in (("de_scale", de_scale), ("batch_scale", batch_scale), ("library_scale", library_scale)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    for name, value in (("dispersion", dispersion), ("mean_shape", mean_shape), ("mean_rate", mean_rate)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}.")
    rng = np.random.default_rng(_resolve_seed(seed))
    base = rng.gamma(mean_shape, 1.0 / mean_rate, size=g)
    de = rng.random((nk, g)) < de_prob
    sign = np.where(rng.random((nk, g)) < 0.5, -1.0, 1.0)
    de_factors = np.where(de, np.exp(sign * rng.normal(de_loc, de_scale, size=(nk, g))), 1.0)
    batch_factors = np.exp(rng.normal(0.0, batch_scale, size=(nb, g)))
    cell_type = rng.integers(nk, size=n)
    batch = rng.integers(nb, size=n)
    library = rng.lognormal(library_loc, library_scale, size=n)
    rel = base * de_factors[cell_type] * batch_factors[batch]
    mean = library[:, None] * rel / rel.sum(-1, keepdims=True)
    counts = rng.poisson(rng.gamma(dispersion, mean / dispersion)).astype(np.float64)
    if zero_inflation > 0:
        counts[rng.random((n, g)) < zero_inflation] = 0.0
    dtype = dtype or torch.get_default_dtype()
    floats = {k: torch.as_tensor(v, dtype=dtype) for k, v in (
        ("counts", counts), ("mean", mean), ("de_factors", de_factors),
        ("batch_factors", batch_factors), ("library", library))}
    return SimulatedCounts(batch=torch.as_tensor(batch, dtype=torch.long),
                           cell_type=torch.as_tensor(cell_type, dtype=torch.long),
                           dispersion=float(dispersion), **floats)


@dataclass(frozen=True, eq=False)
class Sprites:
    """Binary images of one shape each, with their independent generative factors.

    :ivar torch.Tensor images: ``(n, size * size)`` pixels in {0, 1} (float).
    :ivar torch.Tensor factors: ``(n, 5)`` int64 indices of shape, scale,
        orientation, x position, y position.
    :ivar tuple factor_names: ``("shape", "scale", "orientation", "x", "y")``.
    :ivar tuple factor_values: the value of each index, per factor (shape names,
        scales as a fraction of the largest, angles in radians, positions in [0, 1]).
    :ivar int size: image side in pixels.
    """

    images: torch.Tensor
    factors: torch.Tensor
    factor_names: tuple[str, ...]
    factor_values: tuple[tuple, ...]
    size: int


SPRITE_SHAPES = ("square", "ellipse", "triangle")


def sprites(
    num_images: int = 10000,
    size: int = 32,
    *,
    num_scales: int = 6,
    num_orientations: int = 20,
    num_positions: int = 16,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
) -> Sprites:
    """2-D sprites in the dSprites recipe (Matthey et al. 2017), drawn at random factor values.

    Each image holds one white shape (square, ellipse or triangle; dSprites'
    heart is replaced by a triangle) on black. Its five factors are drawn
    independently and uniformly: shape; scale (``num_scales`` values from 0.5
    to 1 of the largest size); orientation (``num_orientations`` angles in
    :math:`[0, 2\\pi)`); x and y position (``num_positions`` values each, the
    centre kept inside the frame). A pixel is on when its centre lies inside
    the rotated, scaled shape. As in dSprites, the square's 90° and the
    ellipse's 180° symmetry make orientation partly unidentifiable.

    Reference: L. Matthey, I. Higgins, D. Hassabis, A. Lerchner. dSprites:
    Disentanglement testing Sprites dataset, 2017.

    :param int num_images: images.
    :param int size: side in pixels. Default 32.
    :param int num_scales: scale values. Default 6.
    :param int num_orientations: orientation values. Default 20.
    :param int num_positions: positions per axis. Default 16.
    :param int seed: seed of a private NumPy generator; None seeds it from the
        global torch RNG.
    :param dtype: of the images. Default ``torch.get_default_dtype()``.
    """
    n, size = _check_count("num_images", num_images), _check_count("size", size)
    counts = (len(SPRITE_SHAPES), _check_count("num_scales", num_scales),
              _check_count("num_orientations", num_orientations), _check_count("num_positions", num_positions),
              num_positions)
    rng = np.random.default_rng(_resolve_seed(seed))
    idx = np.stack([rng.integers(c, size=n) for c in counts], axis=1)
    scales = np.linspace(0.5, 1.0, num_scales)
    angles = np.arange(num_orientations) * 2 * np.pi / num_orientations
    radius = 0.2  # of the frame, at scale 1
    positions = np.linspace(radius * 1.2, 1 - radius * 1.2, num_positions)
    grid = (np.arange(size) + 0.5) / size
    py, px = np.meshgrid(grid, grid, indexing="ij")
    images = np.empty((n, size, size), dtype=bool)
    for start in range(0, n, 2048):
        f = idx[start:start + 2048]
        r = (radius * scales[f[:, 1]])[:, None, None]
        c, s = np.cos(angles[f[:, 2]])[:, None, None], np.sin(angles[f[:, 2]])[:, None, None]
        dx, dy = px - positions[f[:, 3]][:, None, None], py - positions[f[:, 4]][:, None, None]
        u, v = (c * dx + s * dy) / r, (-s * dx + c * dy) / r
        square = np.maximum(np.abs(u), np.abs(v)) <= 0.8
        ellipse = u**2 + (v / 0.55) ** 2 <= 1.0
        triangle = (v >= -0.5) & (v <= 1.0 - np.sqrt(3) * np.abs(u))
        shape = f[:, 0][:, None, None]
        images[start:start + 2048] = np.where(shape == 0, square, np.where(shape == 1, ellipse, triangle))
    return Sprites(
        images=torch.as_tensor(images.reshape(n, -1), dtype=dtype or torch.get_default_dtype()),
        factors=torch.as_tensor(idx, dtype=torch.long),
        factor_names=("shape", "scale", "orientation", "x", "y"),
        factor_values=(SPRITE_SHAPES, tuple(scales), tuple(angles), tuple(positions), tuple(positions)),
        size=size,
    )


@dataclass(frozen=True, eq=False)
class FMRIBlocks:
    """Runs of a synthetic block- or event-design fMRI experiment with AR(1) noise.

    :ivar torch.Tensor x: ``(runs, regions * length)``, region by region.
    :ivar torch.Tensor subject: ``(runs,)`` int64 subject of each run.
    :ivar torch.Tensor task: ``(runs,)`` int64 task of each run.
    :ivar torch.Tensor signal: ``(runs, regions * length)`` the noise-free mean.
    :ivar torch.Tensor subject_maps: ``(subjects, regions)``.
    :ivar torch.Tensor task_maps: ``(tasks, regions)``.
    :ivar torch.Tensor time_course: ``(length,)`` the HRF-convolved design (peak 1).
    :ivar torch.Tensor stimulus: ``(length,)`` the design before the convolution:
        0/1 per scan (the boxcar, or the event train).
    :ivar float rho: the AR(1) coefficient of the noise.
    :ivar float noise_scale: its marginal standard deviation.
    :ivar int length: time points per region.
    """

    x: torch.Tensor
    subject: torch.Tensor
    task: torch.Tensor
    signal: torch.Tensor
    subject_maps: torch.Tensor
    task_maps: torch.Tensor
    time_course: torch.Tensor
    stimulus: torch.Tensor
    rho: float
    noise_scale: float
    length: int


def canonical_hrf(tr: float = 2.0, duration: float = 32.0) -> np.ndarray:
    """SPM's canonical double-gamma haemodynamic response sampled every ``tr`` seconds,
    :math:`h(t) = \\frac{t^5 e^{-t}}{5!} - \\frac16 \\frac{t^{15} e^{-t}}{15!}`, scaled to peak 1.

    The samples are at :math:`t = 0, \\mathrm{tr}, 2\\,\\mathrm{tr}, \\dots < \\mathrm{duration}`;
    :math:`h(0) = 0` and :math:`h > 0` only for :math:`0 < t < 12.07` s (then the undershoot), so
    ``tr`` must put a sample in that positive lobe, which also makes ``h[1] > 0``.

    :param float tr: seconds between samples, positive. Default 2.
    :param float duration: seconds covered, greater than ``tr``. Default 32.
    :raises ValueError: for a ``tr`` or ``duration`` that samples no positive response
        (``tr <= 0``, ``tr >= duration``, or ``tr`` of 12.07 s or more), which could not be
        scaled to peak 1.
    """
    for name, value in (("tr", tr), ("duration", duration)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}.")
    if tr >= duration:
        raise ValueError(f"tr must be below duration to sample the response more than once, got tr={tr!r} "
                         f">= duration={duration!r}. Try a smaller tr (e.g. 2.0) or a longer duration.")
    t = np.arange(0.0, duration, tr)
    h = t**5 * np.exp(-t) / math.factorial(5) - t**15 * np.exp(-t) / math.factorial(15) / 6
    if not h.max() > 0:
        raise ValueError(f"tr={tr!r} s samples only h(0) = 0 and the undershoot of the response (positive "
                         "for 0 < t < 12.07 s only), so it cannot be scaled to peak 1. Try tr < 12 s (e.g. 2.0).")
    return h / h.max()


def fmri_blocks(
    num_runs: int = 600,
    num_subjects: int = 4,
    num_tasks: int = 3,
    num_regions: int = 8,
    length: int = 60,
    *,
    rho: float = 0.6,
    noise_scale: float = 1.0,
    subject_scale: float = 1.0,
    task_scale: float = 1.0,
    block_length: int = 6,
    tr: float = 2.0,
    design: Literal["block", "event"] = "block",
    event_rate: float = 0.3,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
) -> FMRIBlocks:
    """A block- (or event-) design fMRI experiment in miniature, with known factors and AR(1) noise.

    Each run is one subject doing one task (both uniform); each region's
    series is the subject's spatial map (a constant offset), plus the task's
    map times the design convolved with the canonical HRF, plus stationary
    AR(1) noise:

    .. math::

        x_{nrt} = a\\, S_{s_n r} + b\\, K_{k_n r}\\, c_t + e_{nrt}, \\qquad
        c = \\mathrm{boxcar} * h, \\qquad
        e_{nr,t} = \\rho e_{nr,t-1} + \\sigma \\sqrt{1-\\rho^2}\\, \\eta_{nrt},

    maps :math:`S, K` standard normal, the boxcar alternating
    ``block_length`` scans off and on (``design="event"``: an event-related
    design instead, a brief event at each scan with probability
    ``event_rate`` and at the first, one sequence for every run). With large :math:`\\rho` the
    noise drifts slowly, like a block design's signal: an independent-noise
    likelihood reads the drift as structure. An event-related time course has
    more of its power at frequencies where AR(1) noise is weak, which is where
    modelling the noise (whitening) gains most.

    :param int num_runs: runs (data points).
    :param int num_subjects: subjects.
    :param int num_tasks: tasks.
    :param int num_regions: regions per run.
    :param int length: scans per run.
    :param float rho: AR(1) coefficient of the noise, in (-1, 1).
    :param float noise_scale: marginal sd :math:`\\sigma` of the noise.
    :param float subject_scale: :math:`a`.
    :param float task_scale: :math:`b`.
    :param int block_length: scans per off or on block.
    :param float tr: seconds per scan (for the HRF).
    :param str design: ``"block"`` (default) or ``"event"``.
    :param float event_rate: the probability of an event at a scan (``design="event"``).
    :param int seed: seed of a private NumPy generator; None seeds it from the
        global torch RNG.
    :param dtype: Default ``torch.get_default_dtype()``.
    :raises ValueError: for an invalid argument, before anything is drawn (no draw from the
        global torch RNG either); in particular for a design whose time course would be all
        zeros (it could not be scaled to peak 1): the block design needs
        ``length >= block_length + 2`` (an "on" scan and one after it, where the HRF is
        first positive), the event design ``length >= 2``; and for a ``tr`` that
        :func:`canonical_hrf` rejects.
    """
    n, r, t = _check_count("num_runs", num_runs), _check_count("num_regions", num_regions), _check_count("length", length)
    ns, nk = _check_count("num_subjects", num_subjects), _check_count("num_tasks", num_tasks)
    if not (isinstance(rho, (int, float)) and -1 < rho < 1):
        raise ValueError(f"rho must lie in (-1, 1), got {rho!r}.")
    if not (isinstance(noise_scale, (int, float)) and noise_scale > 0):
        raise ValueError(f"noise_scale must be positive, got {noise_scale!r}.")
    if design not in ("block", "event"):
        raise ValueError(f"design must be 'block' or 'event', got {design!r}.")
    if not (isinstance(event_rate, (int, float)) and 0 < event_rate <= 1):
        raise ValueError(f"event_rate must lie in (0, 1], got {event_rate!r}.")
    block = _check_count("block_length", block_length)
    hrf = canonical_hrf(tr)  # checks tr; hrf[0] = 0 < hrf[1]
    # the course is 0 up to one scan after the first "on" scan, where it is hrf[1] > 0: it needs
    # that scan for its peak (a course of zeros cannot be scaled to peak 1)
    first_on = block if design == "block" else 0
    if first_on + 1 >= t:
        fix = (f"Try length >= block_length + 2 = {block + 2}, or a block_length <= length - 2 = {t - 2}"
               if design == "block" else "Try length >= 2")
        raise ValueError(
            f"the {design} design of length={t} scans has no response to scale to peak 1: the HRF is 0 at "
            f"the first 'on' scan (scan {first_on}) and needs a scan after it. {fix}."
        )
    rng = np.random.default_rng(_resolve_seed(seed))  # after every check: bad input draws nothing
    subject_maps, task_maps = rng.normal(size=(ns, r)), rng.normal(size=(nk, r))
    if design == "block":
        stimulus = (np.arange(t) // block) % 2
    else:
        stimulus = (rng.random(t) < event_rate).astype(float)
        stimulus[0] = 1.0  # at least one event
    course = np.convolve(stimulus, hrf)[:t]
    course = course / course.max()
    subject, task = rng.integers(ns, size=n), rng.integers(nk, size=n)
    signal = (subject_scale * subject_maps[subject][:, :, None]
              + task_scale * task_maps[task][:, :, None] * course[None, None, :])
    noise = np.empty((n, r, t))
    noise[..., 0] = rng.normal(size=(n, r))
    innovations = rng.normal(size=(n, r, t)) * math.sqrt(1 - rho**2)
    for step in range(1, t):
        noise[..., step] = rho * noise[..., step - 1] + innovations[..., step]
    dtype = dtype or torch.get_default_dtype()
    floats = {k: torch.as_tensor(v, dtype=dtype) for k, v in (
        ("x", (signal + noise_scale * noise).reshape(n, -1)), ("signal", signal.reshape(n, -1)),
        ("subject_maps", subject_maps), ("task_maps", task_maps), ("time_course", course),
        ("stimulus", stimulus))}
    return FMRIBlocks(subject=torch.as_tensor(subject), task=torch.as_tensor(task), rho=float(rho),
                      noise_scale=float(noise_scale), length=t, **floats)


@dataclass(frozen=True, eq=False)
class Chains:
    """Chains of atoms with known bond-length, angle and dihedral distributions.

    :ivar torch.Tensor xyz: ``(n, atoms, 3)`` Cartesian coordinates.
    :ivar torch.Tensor internal: ``(n, 3 * atoms - 6)`` bonds, angles, dihedrals
        (the features of ``likelihood="internal_coordinates"``).
    :ivar float bond_mean: mean bond length.
    :ivar float bond_sd: its standard deviation.
    :ivar float angle_mean: mean bond angle (radians).
    :ivar float angle_sd: its standard deviation.
    :ivar tuple dihedral_modes: the dihedral rotamers (radians).
    """

    xyz: torch.Tensor
    internal: torch.Tensor
    bond_mean: float
    bond_sd: float
    angle_mean: float
    angle_sd: float
    dihedral_modes: tuple[float, ...]


def chains(
    num_chains: int = 2000,
    atoms: int = 10,
    *,
    bond_mean: float = 1.53,
    bond_sd: float = 0.02,
    angle_mean: float = 1.94,
    angle_sd: float = 0.04,
    dihedral_modes: tuple[float, ...] = (math.pi, math.pi / 3, -math.pi / 3),
    dihedral_sd: float = 0.15,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
) -> Chains:
    """Alkane-like chains: normal bond lengths (1.53 +- 0.02 Å, C-C), normal bond
    angles (1.94 rad = 111° +- 2.3°), dihedrals from the trans (180°) and gauche
    (±60°) rotamers with equal weights and spread ``dihedral_sd``, built by NeRF
    (:func:`pvae.models.cartesian_from_internal`) and placed at a random
    orientation. The Cartesian chains vary a lot in shape (rotamers) while their
    bond lengths hardly vary: the case where a Cartesian squared error learns
    the shapes and not the bonds (seed 003).

    :param int num_chains: chains.
    :param int atoms: atoms per chain (>= 4).
    :param int seed: seed of a private generator.
    :param dtype: Default ``torch.get_default_dtype()``.
    """
    from ..models.structures import cartesian_from_internal

    n, atoms = _check_count("num_chains", num_chains), _check_count("atoms", atoms)
    if atoms < 4:
        raise ValueError(f"atoms must be >= 4 (a dihedral needs four), got {atoms}.")
    g = torch.Generator().manual_seed(_resolve_seed(seed))
    f64 = torch.float64
    bonds = bond_mean + bond_sd * torch.randn(n, atoms - 1, generator=g, dtype=f64)
    angles = angle_mean + angle_sd * torch.randn(n, atoms - 2, generator=g, dtype=f64)
    modes = torch.tensor(dihedral_modes, dtype=f64)
    pick = torch.randint(len(dihedral_modes), (n, atoms - 3), generator=g)
    dihedrals = modes[pick] + dihedral_sd * torch.randn(n, atoms - 3, generator=g, dtype=f64)
    dihedrals = torch.remainder(dihedrals + math.pi, 2 * math.pi) - math.pi
    xyz = cartesian_from_internal(bonds, angles, dihedrals)
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=f64))
    rotation = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    rotation[..., 0] *= torch.linalg.det(rotation).sign().unsqueeze(-1)  # proper: a mirror flips dihedrals
    xyz = (xyz - xyz.mean(-2, keepdim=True)) @ rotation
    dtype = dtype or torch.get_default_dtype()
    return Chains(xyz=xyz.to(dtype), internal=torch.cat([bonds, angles, dihedrals], -1).to(dtype),
                  bond_mean=float(bond_mean), bond_sd=float(bond_sd), angle_mean=float(angle_mean),
                  angle_sd=float(angle_sd), dihedral_modes=tuple(float(m) for m in dihedral_modes))


# prototype cells: lattice constant (Å), then (species, ideal fractional position) per atom
_PROTOTYPES: dict[str, tuple[float, tuple[tuple[str, tuple[float, float, float]], ...]]] = {
    "rock_salt": (5.64, (("Na", (0, 0, 0)), ("Na", (0, .5, .5)), ("Na", (.5, 0, .5)), ("Na", (.5, .5, 0)),
                         ("Cl", (.5, 0, 0)), ("Cl", (0, .5, 0)), ("Cl", (0, 0, .5)), ("Cl", (.5, .5, .5)))),
    "cscl": (4.12, (("Cs", (0, 0, 0)), ("Cl", (.5, .5, .5)))),
    "perovskite": (3.905, (("Sr", (0, 0, 0)), ("Ti", (.5, .5, .5)), ("O", (.5, .5, 0)), ("O", (.5, 0, .5)),
                           ("O", (0, .5, .5)))),
}
CRYSTAL_SPECIES: tuple[str, ...] = ("none", "Na", "Cl", "Cs", "Sr", "Ti", "O")


@dataclass(frozen=True, eq=False)
class Crystals:
    """Perturbed crystals of known prototypes, one cell each, atoms in padded slots.

    :ivar torch.Tensor lattice: ``(n, 3, 3)`` cells (rows = vectors, Å), lower triangular.
    :ivar torch.Tensor frac: ``(n, atoms, 3)`` fractional coordinates in [0, 1); NaN in empty slots.
    :ivar torch.Tensor species: ``(n, atoms)`` codes into ``species_names``; 0 (``"none"``) = empty slot.
    :ivar torch.Tensor prototype: ``(n,)`` codes into ``prototype_names``.
    :ivar torch.Tensor ideal: ``(n, atoms, 3)`` the unperturbed fractional positions (NaN when empty).
    :ivar torch.Tensor boundary: ``(n, atoms)`` True for atoms whose ideal position lies on a
        face of the cell (a coordinate 0): thermal motion scatters them to both sides of it,
        near 0 and near 1.
    :ivar tuple species_names: element of each code.
    :ivar tuple prototype_names: name of each prototype code.
    """

    lattice: torch.Tensor
    frac: torch.Tensor
    species: torch.Tensor
    prototype: torch.Tensor
    ideal: torch.Tensor
    boundary: torch.Tensor
    species_names: tuple[str, ...]
    prototype_names: tuple[str, ...]

    def __len__(self) -> int:
        return self.lattice.shape[0]

    @property
    def present(self) -> torch.Tensor:
        """``(n, atoms)`` True where a slot holds an atom."""
        return self.species > 0


def crystals(
    num_cells: int = 3000,
    prototypes: tuple[str, ...] = ("rock_salt", "cscl", "perovskite"),
    *,
    strain: float = 0.03,
    thermal: float = 0.08,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
) -> Crystals:
    """Cells of rock salt (NaCl, conventional cell, 8 atoms, a = 5.64 Å), CsCl (2 atoms,
    4.12 Å) and cubic perovskite (SrTiO3, 5 atoms, 3.905 Å) in equal proportions, each
    with a random symmetric lattice strain :math:`A = a_0 (I + \\varepsilon)`,
    :math:`\\varepsilon_{ij} = \\varepsilon_{ji} \\sim \\mathcal N(0, \\text{strain}^2)`, and
    isotropic thermal displacements of every atom, :math:`\\mathcal N(0, \\text{thermal}^2)`
    per Cartesian axis (Å), wrapped into the cell. The slots of a cell past its atoms are
    empty (species 0, coordinates NaN), so every cell has ``max`` atoms of its prototypes.

    Every prototype puts atoms on the cell's faces (the origin, face centres, edge
    centres): their fractional coordinates scatter around 0, half of them just above
    0 and half just below 1, the case where a Euclidean likelihood on fractional
    coordinates fails and a periodic one does not (seeds 000, 001). The lattice is
    returned in its lower-triangular (Cholesky) form; fractional coordinates do not
    depend on the rotation.

    :param int num_cells: cells.
    :param prototypes: names among ``rock_salt``, ``cscl``, ``perovskite``.
    :param float strain: standard deviation of the strain entries. Default 0.03.
    :param float thermal: standard deviation of the displacements (Å). Default 0.08.
    :param int seed: seed of a private generator.
    :param dtype: Default ``torch.get_default_dtype()``.
    """
    n = _check_count("num_cells", num_cells)
    unknown = [p for p in prototypes if p not in _PROTOTYPES]
    if not prototypes or unknown:
        raise ValueError(f"prototypes must be a non-empty tuple of {sorted(_PROTOTYPES)}, got {prototypes!r}.")
    if not (strain >= 0 and thermal >= 0):
        raise ValueError(f"strain and thermal must be >= 0, got {strain!r}, {thermal!r}.")
    g = torch.Generator().manual_seed(_resolve_seed(seed))
    f64 = torch.float64
    slots = max(len(_PROTOTYPES[p][1]) for p in prototypes)
    ideal_t = torch.full((len(prototypes), slots, 3), float("nan"), dtype=f64)
    species_t = torch.zeros(len(prototypes), slots, dtype=torch.long)
    constant = torch.tensor([_PROTOTYPES[p][0] for p in prototypes], dtype=f64)
    for k, name in enumerate(prototypes):
        for j, (element, position) in enumerate(_PROTOTYPES[name][1]):
            ideal_t[k, j] = torch.tensor(position, dtype=f64)
            species_t[k, j] = CRYSTAL_SPECIES.index(element)
    proto = torch.randint(len(prototypes), (n,), generator=g)
    upper = torch.triu(strain * torch.randn(n, 3, 3, generator=g, dtype=f64))
    eps = upper + torch.triu(upper, 1).transpose(-1, -2)
    cell = constant[proto, None, None] * (torch.eye(3, dtype=f64) + eps)
    displacement = thermal * torch.randn(n, slots, 3, generator=g, dtype=f64) @ torch.linalg.inv(cell)
    ideal, species = ideal_t[proto], species_t[proto]
    frac = torch.remainder(ideal + displacement, 1.0)
    frac = torch.where(frac >= 1.0, frac - 1.0, frac)  # remainder can round up to exactly 1
    lattice = torch.linalg.cholesky(cell @ cell.transpose(-1, -2))
    dtype = dtype or torch.get_default_dtype()
    return Crystals(lattice=lattice.to(dtype), frac=frac.to(dtype), species=species, prototype=proto,
                    ideal=ideal.to(dtype), boundary=(ideal == 0).any(-1), species_names=CRYSTAL_SPECIES,
                    prototype_names=tuple(prototypes))
