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

import torch

__all__ = ["FourierModes", "LatticeField", "fourier_modes", "lattice_field", "lattice_precision", "lattice_spectrum"]


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
        """The first ``num_modes`` columns of :attr:`basis`: ``(size, num_modes)``."""
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
