"""Latent tools and decoder geometry against cases with known answers.

Exact identities (linear decoders) are checked to float64 round-off (1e-10);
grid and optimiser results carry the tolerance their method guarantees,
stated at each assertion.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch

from pvae import VAE
from pvae.analysis import (
    GeodesicResult,
    curve_length,
    decoder_mean,
    encode_mean,
    geodesic_dijkstra,
    geodesic_optimize,
    interpolate,
    interpolate_latent,
    latent_arithmetic,
    magnification_factor,
    plot_geodesics,
    plot_image_rows,
    plot_interpolation,
    plot_traversal,
    prototype,
    pullback_metric,
    traverse,
)

D64 = torch.float64


class LinearAE:
    """The autoencoder protocol with a linear decoder f(z) = W z + c (float64)."""

    def __init__(self, input_dim: int = 6, latent_dim: int = 3) -> None:
        g = torch.Generator().manual_seed(1)
        self.W = torch.randn(input_dim, latent_dim, generator=g, dtype=D64)
        self.c = torch.randn(input_dim, generator=g, dtype=D64)
        self.latent_dim = latent_dim
        self.dtype = D64

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W.T + self.c

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = torch.linalg.lstsq(self.W, (x - self.c).T).solution.T
        return loc, torch.ones_like(loc)

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(self.f(z), 0.1).to_event(1)


def _bump(z: torch.Tensor) -> torch.Tensor:
    """A curved decoder: the plane lifted by a tall Gaussian bump at the origin."""
    height = 3.0 * torch.exp(-(z**2).sum(-1, keepdim=True) / 0.5)
    return torch.cat([z, height], dim=-1)


# -- latent tools -------------------------------------------------------------------
def test_prototype_is_the_decoded_prior_mean():
    vae = VAE(10, latent_dim=4, hidden_dims=(16,))
    expected = vae.decode(torch.zeros(4)).mean  # Bernoulli: the probabilities
    assert torch.equal(prototype(vae), expected)
    ae = LinearAE()
    torch.testing.assert_close(prototype(ae), ae.c, rtol=0, atol=1e-12)


def test_traverse_sets_one_coordinate():
    ae = LinearAE()
    values = torch.linspace(-2, 2, 5, dtype=D64)
    out = traverse(ae, 1, values)
    assert out.shape == (5, 6)
    torch.testing.assert_close(out, ae.c + values[:, None] * ae.W[:, 1], rtol=0, atol=1e-12)
    base = torch.randn(4, 3, dtype=D64)
    out = traverse(ae, 2, values, base=base)
    assert out.shape == (4, 5, 6)
    z = base[:, None, :].repeat(1, 5, 1)
    z[..., 2] = values
    torch.testing.assert_close(out, ae.f(z), rtol=0, atol=1e-12)


def test_interpolation_shapes_and_endpoints():
    ae = LinearAE()
    z_a, z_b = torch.randn(2, 3, dtype=D64), torch.randn(2, 3, dtype=D64)
    for method in ("linear", "slerp"):
        single = interpolate(ae, z_a[0], z_b[0], num_steps=7, method=method)
        assert single.shape == (7, 6)
        batch = interpolate(ae, z_a, z_b, num_steps=7, method=method)
        assert batch.shape == (2, 7, 6)
        torch.testing.assert_close(batch[:, 0], ae.f(z_a), rtol=0, atol=1e-10)
        torch.testing.assert_close(batch[:, -1], ae.f(z_b), rtol=0, atol=1e-10)
    mid = interpolate(ae, z_a[0], z_b[0], num_steps=3)[1]
    torch.testing.assert_close(mid, ae.f(0.5 * (z_a[0] + z_b[0])), rtol=0, atol=1e-12)


def test_slerp_keeps_the_norm_between_equal_norm_endpoints():
    z_a = torch.randn(5, 8, dtype=D64)
    z_b = torch.randn(5, 8, dtype=D64)
    z_b = z_b / z_b.norm(dim=-1, keepdim=True) * z_a.norm(dim=-1, keepdim=True)
    path = interpolate_latent(z_a, z_b, 11, method="slerp")
    norms = path.norm(dim=-1)  # (5, 11)
    torch.testing.assert_close(norms, z_a.norm(dim=-1, keepdim=True).expand(5, 11), rtol=1e-12, atol=0)
    linear_norms = interpolate_latent(z_a, z_b, 11).norm(dim=-1)
    assert (linear_norms[:, 5] < norms[:, 5] - 1e-3).all(), "the linear midpoint should cut inside the sphere"
    # parallel endpoints fall back to the straight path (no division by sin 0)
    par = interpolate_latent(z_a[0], 2 * z_a[0], 4, method="slerp")
    torch.testing.assert_close(par, interpolate_latent(z_a[0], 2 * z_a[0], 4), rtol=0, atol=1e-12)


def test_latent_arithmetic_is_data_arithmetic_for_a_linear_decoder():
    ae = LinearAE()
    z_a, z_b, z_0 = (torch.randn(4, 3, dtype=D64) for _ in range(3))
    out = latent_arithmetic(ae, z_a, z_b, z_0)
    torch.testing.assert_close(out, ae.f(z_a) + ae.f(z_b) - ae.f(z_0), rtol=0, atol=1e-12)
    # for a nonlinear decoder the two differ: the check above can fail
    vae = VAE(10, latent_dim=3, hidden_dims=(16,))
    za, zb, z0 = (torch.randn(4, 3) for _ in range(3))
    f = decoder_mean(vae)
    assert (latent_arithmetic(vae, za, zb, z0) - (f(za) + f(zb) - f(z0))).abs().max() > 1e-3


def test_encode_mean_and_protocol_errors():
    vae = VAE(10, latent_dim=3, hidden_dims=(16,))
    x = torch.bernoulli(torch.full((5, 10), 0.5))
    torch.testing.assert_close(encode_mean(vae, x), vae.encode(x)[0])
    with pytest.raises(TypeError, match=r"no callable decode\(\).*Try"):
        prototype(object(), latent_dim=2)
    with pytest.raises(TypeError, match=r"no callable encode\(\)"):
        encode_mean(object(), x)
    with pytest.raises(TypeError, match="latent_dim.*Try"):
        traverse(type("NoDim", (), {"decode": lambda self, z: None})(), 0, [0.0])
    with pytest.raises(ValueError, match=r"dim must be an integer in \[0, 3\)"):
        traverse(vae, 3, [0.0, 1.0])
    with pytest.raises(ValueError, match="method must be one of"):
        interpolate(vae, torch.zeros(3), torch.ones(3), 5, method="cubic")
    with pytest.raises(TypeError, match="must return a torch/Pyro distribution"):
        prototype(type("Bad", (), {"decode": lambda self, z: z, "latent_dim": 2})())


# -- geometry -----------------------------------------------------------------------
def test_pullback_metric_of_a_linear_decoder_is_WtW_everywhere():
    ae = LinearAE()
    z = 3 * torch.randn(4, 5, 3, dtype=D64)
    g = pullback_metric(ae.f, z)
    assert g.shape == (4, 5, 3, 3)
    torch.testing.assert_close(g, (ae.W.T @ ae.W).expand(4, 5, 3, 3), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pullback_metric(ae, z[0, 0]), ae.W.T @ ae.W, rtol=1e-12, atol=1e-12)


def test_pullback_metric_of_a_vae_matches_autograd_jacobians():
    vae = VAE(12, latent_dim=2, hidden_dims=(16,), activation="tanh")
    z = torch.randn(6, 2)
    g = pullback_metric(vae, z)
    f = decoder_mean(vae)
    for i in range(6):
        j = torch.autograd.functional.jacobian(f, z[i])  # (12, 2)
        torch.testing.assert_close(g[i], j.T @ j, rtol=1e-5, atol=1e-6)
    mf = magnification_factor(vae, z)
    torch.testing.assert_close(mf, torch.linalg.det(g).sqrt(), rtol=1e-4, atol=1e-7)


def test_curve_length_of_a_straight_line_under_a_linear_decoder():
    ae = LinearAE()
    z_a, z_b = torch.randn(3, dtype=D64), torch.randn(3, dtype=D64)
    expected = (ae.W @ (z_b - z_a)).norm()
    for n in (2, 9):
        line = interpolate_latent(z_a, z_b, n)
        for method in ("chord", "metric"):
            torch.testing.assert_close(curve_length(ae.f, line, method=method), expected, rtol=1e-12, atol=0)


def test_curve_length_converges_as_points_increase():
    # the unit circle under the identity: chord sums are inscribed polygons, rising to 2 pi
    lengths = []
    for n in (8, 64, 512):
        t = torch.linspace(0, 2 * math.pi, n, dtype=D64)
        lengths.append(curve_length(lambda z: z, torch.stack([t.cos(), t.sin()], -1)).item())
    assert lengths[0] < lengths[1] < lengths[2] <= 2 * math.pi, lengths
    assert 2 * math.pi - lengths[2] < 1e-4, lengths  # polygon error ~ (2 pi)^3 / (24 n^2) = 4e-5
    # chord and metric forms agree on a curved decoder once refined (to 1e-4 relative)
    curve = interpolate_latent(torch.tensor([-2.0, 0.3], dtype=D64), torch.tensor([2.0, -0.1], dtype=D64), 5)
    chord = curve_length(_bump, curve, refine=200)
    metric = curve_length(_bump, curve, method="metric", refine=200)
    assert abs(chord - metric) / chord < 1e-4, (chord, metric)


Z_A = torch.tensor([-1.3, 0.4], dtype=D64)
Z_B = torch.tensor([1.7, -0.9], dtype=D64)


def test_geodesics_of_a_linear_decoder_are_straight():
    ae = LinearAE(input_dim=5, latent_dim=2)
    straight = (ae.W @ (Z_B - Z_A)).norm()
    dij = geodesic_dijkstra(ae.f, Z_A, Z_B, grid=48, neighborhood=3)
    assert isinstance(dij, GeodesicResult) and dij.method == "dijkstra"
    torch.testing.assert_close(dij.straight_length, straight, rtol=1e-10, atol=0)
    torch.testing.assert_close(dij.points[0], Z_A, rtol=0, atol=0)
    torch.testing.assert_close(dij.points[-1], Z_B, rtol=0, atol=0)
    # a grid path with 32 step directions is at most 1/cos(9.2 deg) - 1 = 1.3% longer (+ slack for the ends)
    assert straight - 1e-9 <= dij.length <= 1.02 * straight, (dij.length, straight)
    opt = geodesic_optimize(ae.f, Z_A, Z_B, num_points=16, num_steps=50)
    torch.testing.assert_close(opt.length, straight, rtol=1e-9, atol=0)  # the straight line is optimal
    line = interpolate_latent(Z_A, Z_B, 16)
    torch.testing.assert_close(opt.points, line, rtol=0, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_geodesics_on_a_bump_go_around_it(optimizer):
    z_a, z_b = torch.tensor([-2.0, 0.3], dtype=D64), torch.tensor([2.0, -0.1], dtype=D64)
    dij = geodesic_dijkstra(_bump, z_a, z_b, grid=48)
    opt = geodesic_optimize(_bump, z_a, z_b, num_points=24, num_steps=300, optimizer=optimizer,
                            learning_rate=0.02 if optimizer == "adam" else None)
    for r in (dij, opt):
        # straight over the bump: 7.85; around it: 4.56 (fine-grid Dijkstra + L-BFGS, both agree to 1%)
        assert r.length < 0.65 * r.straight_length, (r.method, r.length, r.straight_length)
        torch.testing.assert_close(r.points[0], z_a, rtol=0, atol=0)
        torch.testing.assert_close(r.points[-1], z_b, rtol=0, atol=0)
    assert abs(opt.length - dij.length) / dij.length < 0.02, (opt.length, dij.length)
    refined = geodesic_optimize(_bump, z_a, z_b, num_points=24, num_steps=100, init=dij.points)
    assert refined.length <= dij.length * (1 + 1e-3), (refined.length, dij.length)


def test_geodesic_optimize_is_batched_and_validates():
    z_a = torch.tensor([[-2.0, 0.3], [-2.0, -0.4]], dtype=D64)
    z_b = torch.tensor([[2.0, -0.1], [1.5, 0.5]], dtype=D64)
    res = geodesic_optimize(_bump, z_a, z_b, num_points=12, num_steps=100)
    assert res.points.shape == (2, 12, 2) and res.length.shape == (2,)
    one = geodesic_optimize(_bump, z_a[1], z_b[1], num_points=12, num_steps=100)
    assert abs(one.length - res.length[1]) / one.length < 1e-3, (one.length, res.length)
    assert set(res.to_dict()) == {"points", "length", "straight_length", "ratio", "method"}
    with pytest.raises(ValueError, match="num_points must be an integer >= 3"):
        geodesic_optimize(_bump, z_a, z_b, num_points=2)
    with pytest.raises(ValueError, match="outside bounds.*Try"):
        geodesic_dijkstra(_bump, z_a[0], z_b[0], bounds=(-1.0, 1.0))
    with pytest.raises(ValueError, match="one pair"):
        geodesic_dijkstra(_bump, z_a, z_b)
    with pytest.raises(TypeError, match="decoder_mean_fn.*Try"):
        pullback_metric(42, z_a)


def test_geodesics_on_a_vae_decoder():
    vae = VAE(16, latent_dim=2, hidden_dims=(16,))
    z_a, z_b = torch.tensor([-1.0, 0.5]), torch.tensor([1.0, -0.5])
    dij = geodesic_dijkstra(vae, z_a, z_b, grid=24)
    opt = geodesic_optimize(vae, z_a, z_b, num_points=12, num_steps=50, init=dij.points)
    # the straight line is a feasible curve: the optimum is no longer (1e-3 for float32 length sums)
    assert opt.length <= opt.straight_length * (1 + 1e-3), (opt.length, opt.straight_length)
    assert all(p.grad is None for p in vae.parameters()), "analysis must not leave gradients on the model"


# -- figures ------------------------------------------------------------------------
def test_latent_figures_are_written(tmp_path):
    vae = VAE(64, latent_dim=2, hidden_dims=(16,))
    values = torch.linspace(-2, 2, 5)
    rows = torch.stack([traverse(vae, d, values) for d in range(2)])
    paths = [
        plot_traversal(rows, (8, 8), tmp_path / "traversal.png", values=values, row_labels=["z[0]", "z[1]"]),
        plot_interpolation(
            torch.stack([interpolate(vae, -torch.ones(2), torch.ones(2), 6, method=m) for m in ("linear", "slerp")]),
            (8, 8), tmp_path / "interp.png", row_labels=["linear", "slerp"]),
        plot_image_rows([rows[0], rows[1][:3]], None, tmp_path / "rows.png", row_labels=["a", "b"]),
    ]
    dij = geodesic_dijkstra(vae, torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 1.0]), grid=16)
    grid = torch.stack(torch.meshgrid(torch.linspace(-2, 2, 10), torch.linspace(-2, 2, 10), indexing="xy"), -1)
    paths.append(plot_geodesics(
        {"straight": interpolate_latent(dij.points[0], dij.points[-1], 2), "Dijkstra": dij.points},
        tmp_path / "geo.png", z_loc=torch.randn(50, 2), labels=torch.randint(0, 3, (50,)),
        background=magnification_factor(vae, grid).log().detach(), extent=(-2, 2, -2, 2)))
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000, p
    with pytest.raises(ValueError, match="num_points, 2"):
        plot_geodesics({"c": torch.zeros(4, 3)}, tmp_path / "bad.png")
