"""Geometry of 3-D structures for the programs that generate them: valid
lattices, periodic distances, and internal coordinates of chains.

* :func:`lattice_from_raw`: six unconstrained numbers (a decoder's output) to a
  lattice matrix whose rows are the cell vectors: an LLL-reduced basis, lower
  triangular with a positive diagonal, so the metric :math:`G = L L^\\top` is
  positive definite and the volume :math:`\\det L = \\prod_i L_{ii} > 0` for
  *every* input: the decoder cannot write an invalid cell.
* :func:`lattice_coordinates`: six real numbers of a cell that any rotation
  leaves alone, the log Gram-Schmidt lengths and the coefficients
  :math:`\\mu_{ij}` (a likelihood over them is over cells, not over rotated
  matrices); :func:`lattice_parameters` gives the crystallographer's
  :math:`(a, b, c, \\alpha, \\beta, \\gamma)`.
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

__all__ = [
    "cartesian_from_internal",
    "closest_contact",
    "internal_coordinates",
    "lattice_coordinates",
    "lattice_from_coordinates",
    "lattice_from_raw",
    "lattice_parameters",
    "minimum_image_distance",
    "reduced_lattice_coordinates",
    "shortest_lattice_vector",
]


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
    return lattice_from_coordinates(reduced_lattice_coordinates(raw))


def reduced_lattice_coordinates(raw: torch.Tensor) -> torch.Tensor:
    """The :func:`lattice_coordinates` ``(..., 6)`` of :func:`lattice_from_raw` ``(raw)``,
    without building the matrix: what a decoder's lattice head writes."""
    if raw.shape[-1] != 6:
        raise ValueError(f"lattice_from_raw needs 6 numbers per cell in the last dimension, got {tuple(raw.shape)}.")
    mu = 0.5 * torch.tanh(raw[..., 3:])
    log_growth = torch.nn.functional.softplus(raw[..., 1:3]).clamp(max=4.0)
    log_l11 = raw[..., 0].clamp(-4.0, 4.0)
    log_l22 = log_l11 + 0.5 * torch.log(0.75 - mu[..., 0] ** 2) + log_growth[..., 0]
    log_l33 = log_l22 + 0.5 * torch.log(0.75 - mu[..., 2] ** 2) + log_growth[..., 1]
    return torch.cat([torch.stack([log_l11, log_l22, log_l33], -1), mu], -1)


def _canonical(lattice: torch.Tensor) -> torch.Tensor:
    """The lower-triangular form (positive diagonal) of cells ``(..., 3, 3)``: the Cholesky
    factor of the metric :math:`G = A A^\\top`, the same cell rotated."""
    if lattice.dim() < 2 or lattice.shape[-2:] != (3, 3):
        raise ValueError(f"lattice must be (..., 3, 3) with the cell vectors as rows, got {tuple(lattice.shape)}.")
    factor, info = torch.linalg.cholesky_ex(lattice @ lattice.transpose(-1, -2))
    if bool((info != 0).any()):
        raise ValueError("lattice has a cell whose vectors are linearly dependent (its metric is not "
                         "positive definite); a cell needs three independent vectors.")
    return factor


def lattice_coordinates(lattice: torch.Tensor) -> torch.Tensor:
    """Six rotation-invariant coordinates ``(..., 6)`` of cells ``(..., 3, 3)`` (rows = vectors):
    :math:`(\\log L_{11}, \\log L_{22}, \\log L_{33}, \\mu_{21}, \\mu_{31}, \\mu_{32})` of the
    lower-triangular form :math:`L` (the Cholesky factor of the metric
    :math:`A A^\\top`), with :math:`\\mu_{ij} = L_{ij} / L_{jj}`.

    Every real 6-vector is the coordinates of a valid cell (exp keeps the diagonal
    positive), and the cells of :func:`lattice_from_raw` are those with
    :math:`|\\mu_{ij}| \\le 1/2` and :math:`L_{22}^2 \\ge (3/4 - \\mu_{21}^2) L_{11}^2`,
    :math:`L_{33}^2 \\ge (3/4 - \\mu_{32}^2) L_{22}^2` (LLL-reduced, Lenstra et al. 1982).
    """
    c = _canonical(lattice)
    diag = torch.diagonal(c, dim1=-2, dim2=-1)
    mu = torch.stack([c[..., 1, 0] / diag[..., 0], c[..., 2, 0] / diag[..., 0], c[..., 2, 1] / diag[..., 1]], -1)
    return torch.cat([diag.log(), mu], -1)


def lattice_from_coordinates(coordinates: torch.Tensor) -> torch.Tensor:
    """The lower-triangular cells ``(..., 3, 3)`` of :func:`lattice_coordinates` ``(..., 6)``."""
    diag = coordinates[..., :3].exp()
    mu = coordinates[..., 3:]
    zero = torch.zeros_like(diag[..., 0])
    rows = [
        torch.stack([diag[..., 0], zero, zero], -1),
        torch.stack([mu[..., 0] * diag[..., 0], diag[..., 1], zero], -1),
        torch.stack([mu[..., 1] * diag[..., 0], mu[..., 2] * diag[..., 1], diag[..., 2]], -1),
    ]
    return torch.stack(rows, -2)


def lattice_parameters(lattice: torch.Tensor) -> torch.Tensor:
    """:math:`(a, b, c, \\alpha, \\beta, \\gamma)` ``(..., 6)`` of cells ``(..., 3, 3)``: the
    vectors' lengths and the angles (degrees) between b and c, a and c, a and b."""
    if lattice.dim() < 2 or lattice.shape[-2:] != (3, 3):
        raise ValueError(f"lattice must be (..., 3, 3) with the cell vectors as rows, got {tuple(lattice.shape)}.")
    a, b, c = lattice.unbind(-2)
    lengths = lattice.norm(dim=-1)
    angles = torch.stack([_angle(b, c), _angle(a, c), _angle(a, b)], -1).rad2deg()
    return torch.cat([lengths, angles], -1)


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


def closest_contact(frac: torch.Tensor, lattice: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """The shortest distance between two atoms of each periodic structure, images included.

    :param frac: fractional coordinates ``(batch, atoms, 3)``.
    :param lattice: cells ``(batch, 3, 3)`` (rows = vectors).
    :param present: bool ``(batch, atoms)``, False for empty slots (ignored). Default all.
    :returns: ``(batch,)``: the minimum over pairs of distinct atoms of
        :func:`minimum_image_distance`, and over each atom and its own images (the
        shortest lattice vector); ``inf`` for a structure with no two atoms and no cell.
    """
    n = frac.shape[-2]
    pair = minimum_image_distance(frac.unsqueeze(-2), frac.unsqueeze(-3), lattice[..., None, None, :, :])
    keep = ~torch.eye(n, dtype=torch.bool, device=frac.device)
    if present is not None:
        keep = keep & present.unsqueeze(-1) & present.unsqueeze(-2)
    contact = torch.where(keep, pair, torch.full_like(pair, float("inf"))).flatten(-2).amin(-1)
    return torch.minimum(contact, shortest_lattice_vector(lattice))


def shortest_lattice_vector(lattice: torch.Tensor, reach: int = 2) -> torch.Tensor:
    """Length ``(...)`` of the shortest nonzero vector :math:`n L`, :math:`n \\in \\mathbb Z^3`,
    of cells ``(..., 3, 3)``: the distance from an atom to its own nearest image (exact within
    ``reach`` cells, as for :func:`minimum_image_distance`)."""
    shifts = torch.tensor([s for s in itertools.product(range(-reach, reach + 1), repeat=3) if any(s)],
                          dtype=lattice.dtype, device=lattice.device)
    return (shifts @ lattice).norm(dim=-1).amin(-1)


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
