"""Crystals: the prototype generator, lattice coordinates, periodic contacts, and the
crystal program (valid lattices for any latent; the periodic likelihood keeps the atoms
on the cell's faces that a Normal one loses)."""

from __future__ import annotations

import itertools
import math

import pyro
import pytest
import torch

import pvae
from pvae.data import CRYSTAL_SPECIES, crystals
from pvae.models import (
    CrystalVAE,
    SupportError,
    closest_contact,
    lattice_coordinates,
    lattice_from_coordinates,
    lattice_from_raw,
    lattice_parameters,
    minimum_image_distance,
    reduced_lattice_coordinates,
    shortest_lattice_vector,
)


def _rotation(g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q * torch.linalg.det(q).sign()


# -- the generator --------------------------------------------------------------------------
def test_crystals_are_strained_prototypes_with_thermal_motion_across_the_cell_faces():
    c = crystals(3000, strain=0.03, thermal=0.08, seed=0, dtype=torch.float64)
    again = crystals(3000, strain=0.03, thermal=0.08, seed=0, dtype=torch.float64)
    assert torch.equal(c.lattice, again.lattice) and torch.equal(c.frac.nan_to_num(), again.frac.nan_to_num())
    atoms = {"rock_salt": 8, "cscl": 2, "perovskite": 5}
    for k, name in enumerate(c.prototype_names):
        rows = c.prototype == k
        assert 900 < int(rows.sum()) < 1100  # equal thirds of 3000
        assert (c.present[rows].sum(-1) == atoms[name]).all()
    assert c.species_names == CRYSTAL_SPECIES and int(c.species.max()) < len(CRYSTAL_SPECIES)
    # rock salt: 4 Na and 4 Cl; the empty slots have NaN coordinates
    salt = c.species[c.prototype == 0][0]
    assert sorted(salt.tolist()) == [1] * 4 + [2] * 4
    assert torch.isnan(c.frac[~c.present]).all() and not torch.isnan(c.frac[c.present]).any()
    frac = c.frac[c.present]
    assert ((frac >= 0) & (frac < 1)).all()
    # lower-triangular cells; each length a_0 (1 + eps_ii) with eps_ii ~ N(0, 0.03^2)
    assert torch.equal(c.lattice, torch.tril(c.lattice)) and (torch.diagonal(c.lattice, dim1=1, dim2=2) > 0).all()
    lengths = lattice_parameters(c.lattice)[:, :3]
    a0 = torch.tensor([5.64, 4.12, 3.905], dtype=torch.float64)[c.prototype]
    rel = lengths / a0[:, None] - 1
    assert float(rel.std()) == pytest.approx(0.03, rel=0.1), float(rel.std())  # off-diagonal strain adds ~0.4%
    # thermal displacement: per-axis sd 0.08 A, so the rms distance from the ideal site is 0.08 sqrt(3)
    cell = c.lattice.unsqueeze(1).expand(-1, c.frac.shape[1], -1, -1)[c.present]
    d = minimum_image_distance(c.frac[c.present], c.ideal[c.present], cell)
    assert float(d.pow(2).mean().sqrt()) == pytest.approx(0.08 * math.sqrt(3), rel=0.03)
    # atoms on a face sit on both sides of it: near 0 and near 1 in the same coordinate
    on_face = (c.ideal == 0) & c.present.unsqueeze(-1)
    assert torch.equal(on_face.any(-1), c.boundary)
    near_one = (c.frac[on_face] > 0.5).float().mean()
    assert 0.45 < float(near_one) < 0.55, float(near_one)
    with pytest.raises(ValueError, match="prototypes"):
        crystals(10, ("diamond",))


# -- lattice coordinates --------------------------------------------------------------------
def test_lattice_coordinates_are_rotation_invariant_and_invert_to_the_lower_triangular_cell():
    g = torch.Generator().manual_seed(0)
    cells = torch.randn(200, 3, 3, generator=g, dtype=torch.float64) + 3 * torch.eye(3, dtype=torch.float64)
    coords = lattice_coordinates(cells)
    rotated = cells @ torch.stack([_rotation(g) for _ in range(200)])
    assert torch.allclose(lattice_coordinates(rotated), coords, atol=1e-10)
    rebuilt = lattice_from_coordinates(coords)
    assert torch.allclose(rebuilt @ rebuilt.transpose(-1, -2), cells @ cells.transpose(-1, -2), atol=1e-9)
    assert torch.allclose(lattice_coordinates(rebuilt), coords, atol=1e-10)
    # every real 6-vector is a valid cell, and the decoder's cells are what their coordinates say
    raw = 10 * torch.randn(1000, 6, generator=g, dtype=torch.float64)
    assert (torch.linalg.det(lattice_from_coordinates(raw / 5)) > 0).all()
    assert torch.allclose(reduced_lattice_coordinates(raw), lattice_coordinates(lattice_from_raw(raw)), atol=1e-8)
    # the textbook parameters: a cube, and a hexagonal cell (gamma = 120 degrees)
    cube = 4.0 * torch.eye(3, dtype=torch.float64)
    assert torch.allclose(lattice_parameters(cube), torch.tensor([4.0, 4, 4, 90, 90, 90], dtype=torch.float64))
    hexagonal = torch.tensor([[3.0, 0, 0], [-1.5, 1.5 * math.sqrt(3), 0], [0, 0, 5.0]], dtype=torch.float64)
    assert torch.allclose(lattice_parameters(hexagonal), torch.tensor([3.0, 3, 5, 90, 90, 120], dtype=torch.float64))
    with pytest.raises(ValueError, match="linearly dependent"):
        lattice_coordinates(torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1]]))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        lattice_parameters(torch.ones(3, 2))


def test_closest_contact_and_the_shortest_lattice_vector_equal_a_brute_force_search():
    g = torch.Generator().manual_seed(1)
    lattice = lattice_from_raw(torch.randn(20, 6, generator=g, dtype=torch.float64))
    frac = torch.rand(20, 4, 3, generator=g, dtype=torch.float64)
    present = torch.rand(20, 4, generator=g) > 0.3
    shifts = torch.tensor(list(itertools.product(range(-5, 6), repeat=3)), dtype=torch.float64)
    for b in range(20):
        cart_shift = shifts @ lattice[b]
        shortest = cart_shift.norm(dim=-1)[shifts.abs().sum(-1) > 0].min()
        best = shortest
        atoms = present[b].nonzero().squeeze(-1).tolist()
        for i, j in itertools.combinations(atoms, 2):
            diff = (frac[b, i] - frac[b, j]) @ lattice[b]
            best = torch.minimum(best, (diff + cart_shift).norm(dim=-1).min())
        assert float(shortest_lattice_vector(lattice[b])) == pytest.approx(float(shortest), rel=1e-12)
        assert float(closest_contact(frac[b:b + 1], lattice[b:b + 1], present[b:b + 1])[0]) == pytest.approx(
            float(best), rel=1e-12)


# -- the program ----------------------------------------------------------------------------
def _data(n: int, seed: int):
    c = crystals(n, seed=seed)
    return c, (c.lattice, c.frac, c.species)


def test_crystal_vae_writes_a_valid_lattice_for_any_latent_and_refuses_bad_structures():
    _, args = _data(16, 0)
    vae = CrystalVAE(8, len(CRYSTAL_SPECIES), latent_dim=3, hidden_dims=(16,))
    for scale in (1.0, 30.0, 1e4):
        with torch.no_grad():
            lattice, frac, species = vae._structures(scale * torch.randn(500, 3), mean=True)
            drawn = vae._structures(scale * torch.randn(500, 3), mean=False)[0]
        for cells in (lattice, drawn):
            assert torch.isfinite(cells).all()
            assert (torch.linalg.eigvalsh(cells @ cells.transpose(-1, -2)) > 0).all()
            assert (torch.linalg.det(cells) > 0).all()
        assert ((frac >= 0) & (frac < 1)).all() and frac.shape == (500, 8, 3) and species.shape == (500, 8)
    lattice, frac, species = args
    vae.validate(*args)  # NaN in empty slots is fine
    bad = frac.clone()
    bad[0, 0, 1] = 1.0
    with pytest.raises(SupportError, match=r"frac\[0, 0, 1\] = 1.0 .* Try frac % 1"):
        vae.validate(lattice, bad, species)
    with pytest.raises(ValueError, match=r"species codes must lie in 0..6"):
        vae.validate(lattice, frac, species + 7 * (species > 5))
    with pytest.raises(ValueError, match=r"frac must have shape \(16, 8, 3\)"):
        vae.validate(lattice, frac[:, :5], species)
    flat = lattice.clone()
    flat[0, 2] = flat[0, 1]
    with pytest.raises(ValueError, match="linearly dependent"):
        vae.validate(flat, frac, species)
    with pytest.raises(TypeError, match="integer codes"):
        vae.validate(lattice, frac, species.float())
    with pytest.raises(ValueError, match="coordinates must be"):
        CrystalVAE(8, 7, coordinates="wrapped_normal")


def test_the_periodic_likelihood_keeps_atoms_on_the_cell_faces_that_a_normal_one_loses():
    train, train_args = _data(1500, 0)
    test, test_args = _data(500, 1)
    errors = {}
    for coordinates in ("von_mises", "normal"):
        pyro.set_rng_seed(0)
        vae = CrystalVAE(8, len(CRYSTAL_SPECIES), coordinates=coordinates, latent_dim=8, hidden_dims=(64, 64))
        pvae.fit(vae, train_args, num_epochs=25, batch_size=100, learning_rate=3e-3, progress=False)
        lattice, frac, species = vae.reconstruct(*test_args)
        assert torch.equal(species, test.species)  # the prototype is always recovered
        d = minimum_image_distance(frac, test.frac, test.lattice.unsqueeze(1))
        errors[coordinates] = (float(d[test.present & test.boundary].mean()),
                               float(d[test.present & ~test.boundary].mean()))
        generated = vae.sample(1000)
        errors[coordinates] += (float((closest_contact(generated[1], generated[0], generated[2] > 0) > 1.0)
                                      .float().mean()),)
    # thermal motion alone puts a reconstruction at the ideal site 0.08 E|chi_3| = 0.128 A from the atom
    vm_face, vm_inside, vm_clear = errors["von_mises"]
    n_face, n_inside, n_clear = errors["normal"]
    assert vm_face < 0.2 and vm_inside < 0.2, errors  # measured 0.13, 0.13
    assert n_face > 1.5, errors  # measured 2.9: the mean of 0.01 and 0.99 is the cell's middle
    # generated structures: atoms the Normal model puts mid-cell collide with the atoms there
    assert vm_clear > 0.9 and n_clear < 0.1, errors  # measured 0.98, 0.00
