"""Periodic likelihood, valid lattices, minimum-image distances, internal coordinates."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import pvae
from pvae.models import VAE, SupportError, make_likelihood
from pvae.models.structures import (
    cartesian_from_internal,
    internal_coordinates,
    lattice_from_raw,
    minimum_image_distance,
)

F64 = torch.float64


def _raw_at(loc_fraction: torch.Tensor) -> torch.Tensor:
    """Decoder outputs (cos, sin) that put the location at ``loc_fraction`` of the period."""
    angle = 2 * math.pi * loc_fraction
    return torch.cat([torch.cos(angle), torch.sin(angle)], -1)


def test_von_mises_density_is_the_closed_form_and_wraps_around():
    lik = make_likelihood("von_mises", 3).double()
    with torch.no_grad():
        lik.raw_concentration.copy_(torch.tensor([0.0, 1.0, 3.0], dtype=F64))
    loc = torch.tensor([[0.01, 0.5, 0.25]], dtype=F64)
    x = torch.tensor([[0.99, 0.1, 0.7]], dtype=F64)
    kappa = lik.raw_concentration.detach().exp()
    theta, mu = 2 * math.pi * x, 2 * math.pi * loc
    want = kappa * torch.cos(theta - mu) - torch.log(2 * math.pi * torch.special.i0(kappa)) + math.log(2 * math.pi)
    got = lik(_raw_at(loc)).log_prob(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # Pyro approximates log I0 to ~1e-7
    # 0.99 is as close to a location at 0.01 as 0.03 is: 0.02 along the circle
    d = lik(_raw_at(torch.tensor([[0.01, 0.01, 0.01]], dtype=F64)))
    torch.testing.assert_close(d.log_prob(torch.full((1, 3), 0.99, dtype=F64)),
                               d.log_prob(torch.full((1, 3), 0.03, dtype=F64)))
    assert (d.log_prob(torch.full((1, 3), 0.99, dtype=F64)) > d.log_prob(torch.full((1, 3), 0.5, dtype=F64))).all()
    # angles in radians: the density integrates to 1 over [0, 2 pi)
    ang = make_likelihood("von_mises", 1, period=2 * math.pi).double()
    grid = torch.linspace(0, 2 * math.pi, 20001, dtype=F64)[:-1, None]
    dens = ang(_raw_at(torch.full((grid.shape[0], 1), 0.3, dtype=F64))).log_prob(grid).exp()
    assert float(dens.detach().sum() * (2 * math.pi / 20000)) == pytest.approx(1.0, abs=1e-6)


def test_points_and_draws_wrap_into_the_period_and_off_support_data_are_refused():
    lik = make_likelihood("von_mises", 4)
    d = lik(_raw_at(torch.tensor([[0.999, 0.0, 0.5, 0.75]])))
    point = lik.point(d)
    assert ((point >= 0) & (point < 1)).all()
    torch.testing.assert_close(point, torch.tensor([[0.999, 0.0, 0.5, 0.75]]), atol=1e-5, rtol=0)
    draws = d.sample((500,))
    assert ((draws >= 0) & (draws < 1)).all()
    for bad in (1.0, -0.1, 3.5):
        with pytest.raises(SupportError, match=r"\[0, 1\)"):
            lik.check(torch.tensor([[0.1, 0.2, bad, 0.3]]))
    lik.check(torch.tensor([[0.1, 0.2, math.nan, 0.3]]), torch.tensor([[True, True, False, True]]))
    with pytest.raises(ValueError, match="period"):
        make_likelihood("von_mises", 2, period=0)


def test_a_vae_on_fractional_coordinates_trains():
    x = torch.remainder(torch.randn(64, 6) * 0.05 + 0.98, 1.0)  # points straddling the cell boundary
    vae = VAE(6, latent_dim=2, hidden_dims=(16,), likelihood="von_mises")
    fit = pvae.fit(vae, x, num_epochs=3, batch_size=32, seed=0, progress=False, diagnostics_every=None)
    assert math.isfinite(fit.history[-1]["loss"])
    rec = vae.reconstruct(x)
    assert rec.shape == x.shape and ((rec >= 0) & (rec < 1)).all()


@pytest.mark.parametrize("scale", [1.0, 10.0, 1e6])
def test_lattice_is_positive_definite_and_of_positive_volume_for_any_raw_output(scale):
    g = torch.Generator().manual_seed(0)
    raw = scale * torch.randn(2000, 6, generator=g)
    raw[0] = torch.tensor([1e30, -1e30, 1e30, 1e30, -1e30, 1e30])
    lattice = lattice_from_raw(raw)
    assert torch.isfinite(lattice).all()
    metric = lattice @ lattice.transpose(-1, -2)
    torch.linalg.cholesky(metric)  # raises if any is not positive definite
    assert (torch.linalg.det(lattice) > 0).all()
    with pytest.raises(ValueError, match="6 numbers"):
        lattice_from_raw(torch.zeros(2, 5))


def test_minimum_image_distance_equals_a_brute_force_search():
    g = torch.Generator().manual_seed(1)
    lattice = lattice_from_raw(torch.randn(200, 6, generator=g, dtype=F64))
    a, b = torch.rand(200, 3, generator=g, dtype=F64), torch.rand(200, 3, generator=g, dtype=F64)
    images = torch.tensor(list(itertools.product(range(-5, 6), repeat=3)), dtype=F64)
    brute = (((a - b)[:, None, :] + images) @ lattice).norm(dim=-1).amin(-1)
    torch.testing.assert_close(minimum_image_distance(a, b, lattice), brute, atol=1e-12, rtol=0)
    # two atoms either side of the boundary of a unit cube are 0.02 apart, not 0.98
    cube = torch.eye(3, dtype=F64)
    d = minimum_image_distance(torch.tensor([0.99, 0.5, 0.5], dtype=F64), torch.tensor([0.01, 0.5, 0.5], dtype=F64), cube)
    assert d.item() == pytest.approx(0.02)


def test_nerf_inverts_the_internal_coordinates():
    g = torch.Generator().manual_seed(2)
    xyz = torch.cumsum(torch.randn(10, 12, 3, generator=g, dtype=F64), dim=-2)  # random chains
    bonds, angles, dihedrals = internal_coordinates(xyz)
    rebuilt = cartesian_from_internal(bonds, angles, dihedrals)
    for got, want in zip(internal_coordinates(rebuilt), (bonds, angles, dihedrals)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the same chain up to a rigid motion: all pairwise distances agree
    torch.testing.assert_close(torch.cdist(rebuilt, rebuilt), torch.cdist(xyz, xyz), atol=1e-5, rtol=0)
    # the IUPAC sign: looking down B->C, A at +x turns clockwise onto D at +y: +90 degrees
    square = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 1, 1]], dtype=F64)
    assert internal_coordinates(square)[2].item() == pytest.approx(math.pi / 2)
    with pytest.raises(ValueError, match="at least 4 atoms"):
        internal_coordinates(torch.zeros(3, 3))


def test_internal_coordinates_density_is_lognormal_bonds_folded_von_mises_angles_von_mises_dihedrals():
    from pvae.data import chains

    c = chains(8, 6, seed=0, dtype=F64)
    lik = make_likelihood("internal_coordinates", 12).double()
    raw = torch.randn(8, lik.output_dim, dtype=F64)
    got = lik(raw).log_prob(c.internal).sum(-1)
    nb, na, nd = 5, 4, 3
    loc = torch.atan2(raw[:, nb + na + nd:], raw[:, nb:nb + na + nd])
    angles, dihedrals = c.internal[:, nb:nb + na], c.internal[:, nb + na:]
    vm_angles = torch.distributions.VonMises(loc[:, :na], 1.0)
    folded = (vm_angles.log_prob(angles).exp() + vm_angles.log_prob(-angles).exp()).log()  # |theta|'s density
    want = (torch.distributions.LogNormal(raw[:, :nb], 0.1).log_prob(c.internal[:, :nb]).sum(-1)
            + folded.sum(-1) + torch.distributions.VonMises(loc[:, na:], 1.0).log_prob(dihedrals).sum(-1))
    torch.testing.assert_close(got, want)
    with pytest.raises(SupportError, match="bonds > 0"):
        lik.check(torch.cat([-c.internal[:, :1], c.internal[:, 1:]], -1))
    with pytest.raises(ValueError, match="3 \\* atoms - 6"):
        make_likelihood("internal_coordinates", 13)


@pytest.mark.parametrize("loc", [0.3, 1.5, -1.0, 3.0])
@pytest.mark.parametrize("concentration", [0.5, 4.0])
def test_bond_angle_density_integrates_to_one_on_0_pi_and_matches_its_draws(loc, concentration):
    lik = make_likelihood("internal_coordinates", 6).double()  # 4 atoms: 3 bonds, 2 angles, 1 dihedral
    with torch.no_grad():
        lik.raw_concentration.fill_(math.log(concentration))
    raw = torch.zeros(1, lik.output_dim, dtype=F64)
    raw[0, 3:6], raw[0, 6:] = math.cos(loc), math.sin(loc)
    angle = lik(raw).parts[1]
    grid = torch.linspace(0, math.pi, 200_001, dtype=F64)
    density = angle.log_prob(grid[:, None].expand(-1, 2)).exp()[:, 0]
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-6)
    torch.manual_seed(0)
    draws = angle.sample((200_000,))[:, 0, 0]
    assert ((draws >= 0) & (draws <= math.pi)).all()
    # the draws' mean is the density's mean (the unfolded density's missed it by up to 0.1 rad)
    se = draws.std().item() / math.sqrt(len(draws))
    assert draws.mean().item() == pytest.approx(torch.trapezoid(density * grid, grid).item(), abs=4 * se)


def test_chains_carry_their_internal_coordinates():
    from pvae.data import chains

    c = chains(500, 8, seed=1, dtype=F64)
    got = torch.cat(internal_coordinates(c.xyz), -1)
    diff = got - c.internal
    diff[:, 13:] = torch.remainder(diff[:, 13:] + math.pi, 2 * math.pi) - math.pi  # dihedrals modulo 2 pi
    assert diff.abs().max() < 1e-8
    assert c.internal[:, :7].std().item() == pytest.approx(0.02, rel=0.1)


def test_internal_coordinates_model_keeps_bond_lengths_that_a_cartesian_model_loses():
    """Seed 003's lesson, measured: both VAEs see the same 2000 chains of 10 atoms
    (bonds 1.53 +- 0.02); the internal-coordinates model's generated bonds stay
    within the data's spread (measured: 1.528 +- 0.022), the Cartesian model's
    (a Normal on xyz) do not (1.79 +- 0.76)."""
    from pvae.data import chains

    c = chains(2000, 10, seed=0)
    ic = VAE(24, latent_dim=4, hidden_dims=(64,), likelihood="internal_coordinates")
    pvae.fit(ic, c.internal, num_epochs=60, learning_rate=1e-2, seed=0, progress=False, diagnostics_every=None)
    cart = VAE(30, latent_dim=4, hidden_dims=(64,), likelihood="normal")
    pvae.fit(cart, c.xyz.flatten(1), num_epochs=60, learning_rate=1e-2, seed=0, progress=False, diagnostics_every=None)
    torch.manual_seed(0)
    ic_bonds = ic.sample(1000)[:, :9]
    cart_bonds = internal_coordinates(cart.sample(1000).reshape(-1, 10, 3))[0]
    assert abs(ic_bonds.mean().item() - 1.53) < 0.02 and ic_bonds.std().item() < 0.04
    assert cart_bonds.std().item() > 0.1
