"""Geometry of 3-D structures for the programs that generate them: valid
lattices, periodic distances, and internal coordinates of chains.

* :func:`lattice_from_raw`: six unconstrained numbers (a decoder's output) to a
  lattice matrix whose rows are the cell vectors: an LLL-reduced basis, lower
  triangular with a positive diagonal, so the metric :math:`G = L L^\\top` is
  positive definite and the volume :math:`\\det L = \\prod_i L_{ii} > 0` for
  *every* input: the decoder cannot write an invalid cell.
* :func:`minimum_image_distance`: the distance between two points of a
  periodic cell over all images, :math:`\\min_{n \\in \\mathbb Z^3} \\|(f_a - f_b + n) L\\|`.
* :func:`internal_coordinates` / :func:`cartesian_from_internal`: a chain's
  bond lengths, bond angles and dihedrals, and the inverse map by the
  natural-extension reference frame (NeRF) construction, placing atom
  :math:`i` from atoms :math:`i-3, i-2, i-1`.

References

1. J. Parsons, J. B. Holmes, J. M. Rojas, J. Tsai, C. E. M. Strauss. Practical
   conversion from torsion space to Cartesian space for in silico protein
   synthesis. J. Comput. Chem. 26, 2005 (NeRF).
2. T. Xie, X. Fu, O.-E. Ganea, R. Barzilay, T. Jaakkola. Crystal Diffusion
   Variational Autoencoder for Periodic Material Generation. ICLR 2022
   (periodic coordinates and lattices in a generative model).
3. A. K. Lenstra, H. W. Lenstra, L. Lovász. Factoring polynomials with
   rational coefficients. Math. Ann. 261, 1982 (LLL-reduced bases).
4. Seeds 000, 001, 003: likelihoods that respect the physics.
"""

from __future__ import annotations

import itertools

import torch

__all__ = ["cartesian_from_internal", "internal_coordinates", "lattice_from_raw", "minimum_image_distance"]


def lattice_from_raw(raw: torch.Tensor) -> torch.Tensor:
    """Lattice matrices ``(..., 3, 3)`` (rows = cell vectors) from ``(..., 6)`` raw numbers.

    The rows are an LLL-reduced basis (Lenstra, Lenstra and Lovász 1982, with
    :math:`\\delta = 3/4`) by construction, in Gram-Schmidt form: lengths
    :math:`L_{11} = e^{r_1}` (:math:`r_1` clamped to [-4, 4]),
    :math:`L_{22} = L_{11} \\sqrt{3/4 - \\mu_{21}^2}\\, e^{\\min(\\mathrm{softplus}(r_2), 4)}`,
    :math:`L_{33} = L_{22} \\sqrt{3/4 - \\mu_{32}^2}\\, e^{\\min(\\mathrm{softplus}(r_3), 4)}`,
    coefficients :math:`\\mu_{ij} = \\tfrac12 \\tanh(r_{ij})` from ``raw[..., 3:]``
    ``(mu_21, mu_31, mu_32)``, and :math:`L_{ij} = \\mu_{ij} L_{jj}` below the diagonal.
    Size reduction (:math:`|\\mu| \\le 1/2`) and the Lovász condition hold for
    every input, and every lattice has such a basis, so nothing is out of
    reach (up to rotation); the cell is never degenerate, its metric is well
    conditioned, and its shortest periodic images lie near the wrapped
    difference (:func:`minimum_image_distance`). A size-reduced basis alone is
    not enough: two nearly parallel vectors can hide the shortest image three
    cells away (found by the brute-force test).
    """
    if raw.shape[-1] != 6:
        raise ValueError(f"lattice_from_raw needs 6 numbers per cell in the last dimension, got {tuple(raw.shape)}.")
    mu = 0.5 * torch.tanh(raw[..., 3:])
    growth = torch.nn.functional.softplus(raw[..., 1:3]).clamp(max=4.0).exp()
    l11 = raw[..., 0].clamp(-4.0, 4.0).exp()
    l22 = l11 * (0.75 - mu[..., 0] ** 2).sqrt() * growth[..., 0]
    l33 = l22 * (0.75 - mu[..., 2] ** 2).sqrt() * growth[..., 1]
    zero = torch.zeros_like(l11)
    rows = [
        torch.stack([l11, zero, zero], -1),
        torch.stack([mu[..., 0] * l11, l22, zero], -1),
        torch.stack([mu[..., 1] * l11, mu[..., 2] * l22, l33], -1),
    ]
    return torch.stack(rows, -2)


def minimum_image_distance(frac_a: torch.Tensor, frac_b: torch.Tensor, lattice: torch.Tensor,
                           reach: int = 2) -> torch.Tensor:
    """Shortest distance between fractional positions ``frac_a`` and ``frac_b`` ``(..., 3)``
    over the periodic images of the cell ``lattice`` ``(..., 3, 3)`` (rows = vectors).

    The fractional difference is wrapped into [-1/2, 1/2)^3, then the images
    within ``reach`` cells in each direction are searched: exact when the
    shortest image lies that close, as for the LLL-reduced cells of
    :func:`lattice_from_raw` (checked against a search over +-5 cells in the
    tests); raise ``reach`` for a cell that is far from reduced.

    :returns: ``(...)`` distances in the lattice's units.
    """
    delta = frac_a - frac_b
    delta = delta - torch.round(delta)
    shifts = torch.tensor(list(itertools.product(range(-reach, reach + 1), repeat=3)), dtype=delta.dtype,
                          device=delta.device)  # (S, 3)
    cart = (delta.unsqueeze(-2) + shifts) @ lattice  # (..., S, 3)
    return cart.norm(dim=-1).amin(-1)


def _angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
    return torch.arccos(cos.clamp(-1.0, 1.0))


def internal_coordinates(xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bond lengths, bond angles and dihedrals of chains ``(..., n, 3)``, n >= 4.

    :returns: ``bonds (..., n-1)`` (:math:`|x_i - x_{i-1}|`), ``angles (..., n-2)``
        (at atom :math:`i-1` between :math:`i-2` and :math:`i`, in :math:`[0, \\pi]`) and
        ``dihedrals (..., n-3)`` (of :math:`i-3, i-2, i-1, i`, in :math:`[-\\pi, \\pi]`, IUPAC sign:
        positive when, looking along the middle bond, the near bond turns clockwise onto the far one).
    """
    if xyz.dim() < 2 or xyz.shape[-1] != 3 or xyz.shape[-2] < 4:
        raise ValueError(f"xyz must be (..., atoms, 3) with at least 4 atoms, got {tuple(xyz.shape)}.")
    b = xyz[..., 1:, :] - xyz[..., :-1, :]
    bonds = b.norm(dim=-1)
    angles = _angle(-b[..., :-1, :], b[..., 1:, :])
    b1, b2, b3 = b[..., :-2, :], b[..., 1:-1, :], b[..., 2:, :]
    n1, n2 = torch.cross(b1, b2, dim=-1), torch.cross(b2, b3, dim=-1)
    m1 = torch.cross(n1, b2 / b2.norm(dim=-1, keepdim=True), dim=-1)
    dihedrals = -torch.atan2((m1 * n2).sum(-1), (n1 * n2).sum(-1))  # IUPAC sign: clockwise positive
    return bonds, angles, dihedrals


def cartesian_from_internal(bonds: torch.Tensor, angles: torch.Tensor, dihedrals: torch.Tensor) -> torch.Tensor:
    """Chains ``(..., n, 3)`` from :func:`internal_coordinates` (NeRF).

    Atom 0 at the origin, atom 1 on the x axis, atom 2 in the xy plane; each
    further atom from the previous three. Inverts :func:`internal_coordinates`
    up to a rigid motion. O(n) sequential steps, vectorised over the batch.
    """
    n = bonds.shape[-1] + 1
    if angles.shape[-1] != n - 2 or dihedrals.shape[-1] != n - 3 or n < 4:
        raise ValueError(
            f"need n-1 bonds, n-2 angles, n-3 dihedrals for n >= 4 atoms; got {bonds.shape[-1]}, "
            f"{angles.shape[-1]}, {dihedrals.shape[-1]}."
        )
    zero = torch.zeros_like(bonds[..., 0])
    x0 = torch.stack([zero, zero, zero], -1)
    x1 = torch.stack([bonds[..., 0], zero, zero], -1)
    # atom 2: bond b1 from atom 1, at angle a0 to the bond back to atom 0
    x2 = x1 + bonds[..., 1, None] * torch.stack(
        [-torch.cos(angles[..., 0]), torch.sin(angles[..., 0]), zero], -1)
    atoms = [x0, x1, x2]
    for i in range(3, n):
        a, b, c = atoms[-3], atoms[-2], atoms[-1]
        bc = c - b
        bc = bc / bc.norm(dim=-1, keepdim=True)
        normal = torch.cross(b - a, bc, dim=-1)
        normal = normal / normal.norm(dim=-1, keepdim=True)
        m = torch.stack([bc, torch.cross(normal, bc, dim=-1), normal], -1)  # columns
        theta, phi, length = angles[..., i - 2], dihedrals[..., i - 3], bonds[..., i - 1]
        d = torch.stack([-length * torch.cos(theta), length * torch.sin(theta) * torch.cos(phi),
                         length * torch.sin(theta) * torch.sin(phi)], -1)
        atoms.append(c + (m @ d.unsqueeze(-1)).squeeze(-1))
    return torch.stack(atoms, -2)
