"""pvae's plate-friendly distributions equal torch's in value and gradient."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pvae.infer.objectives import detach_distribution
from pvae.models.likelihoods import make_likelihood
from pvae.models.nets import DiagonalNormal, Independent, StandardNormal, diagonal_normal


def _params(*shape):
    loc = torch.randn(*shape, requires_grad=True)
    scale = torch.rand(*shape).add(0.2).requires_grad_()
    return loc, scale


def test_diagonal_normal_matches_normal_after_expansion_in_value_and_gradient():
    loc, scale = _params(4, 3)
    ours, ref = diagonal_normal(loc, scale).expand((5, 4)), dist.Normal(loc, scale).to_event(1).expand((5, 4))
    z = ref.rsample()
    lp, lp_ref = ours.log_prob(z), ref.log_prob(z)
    assert lp.shape == (5, 4)
    torch.testing.assert_close(lp, lp_ref)
    grads = torch.autograd.grad(lp.sum(), [loc, scale], retain_graph=True)  # through z too
    grads_ref = torch.autograd.grad(lp_ref.sum(), [loc, scale])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)
    # a value with more batch dims than the distribution broadcasts, as in torch
    wide = torch.randn(2, 1, 4, 3)
    torch.testing.assert_close(DiagonalNormal(loc, scale).log_prob(wide), dist.Normal(loc, scale).log_prob(wide))
    # DReG / STL detach the parameters: the value stays, the gradient goes through z only
    detached = detach_distribution(ours)
    torch.testing.assert_close(detached.log_prob(z), lp_ref)
    assert not detached.log_prob(z.detach()).requires_grad


def test_log_prob_of_its_own_draw_uses_the_noise_with_torchs_value_and_gradient():
    """log q(z) at z = loc + scale * eps from rsample is computed from eps: same value,
    same total gradient in loc and scale; DReG's detached copy still differentiates through z."""
    loc, scale = _params(4, 3)
    ours = diagonal_normal(loc, scale).expand((5, 4))
    z = ours.rsample()
    assert z is ours.base_dist._drawn[0]  # the draw the shortcut recognises
    ref = dist.Normal(loc, scale).to_event(1)
    lp, lp_ref = ours.log_prob(z), ref.log_prob(z)
    torch.testing.assert_close(lp, lp_ref)
    # d/dloc is zero (z moves with loc): absent from the graph rather than computed as 0
    for g, g_ref in zip(torch.autograd.grad(lp.sum(), [loc, scale], retain_graph=True, materialize_grads=True),
                        torch.autograd.grad(lp_ref.sum(), [loc, scale], retain_graph=True)):
        torch.testing.assert_close(g, g_ref)
    # the path derivative (STL/DReG): parameters detached, gradient through z only, nonzero
    lp_stl = detach_distribution(ours).log_prob(z)
    ref_stl = dist.Normal(loc.detach(), scale.detach()).to_event(1).log_prob(z)
    torch.testing.assert_close(lp_stl, ref_stl)
    g_stl = torch.autograd.grad(lp_stl.sum(), [loc, scale], retain_graph=True)
    g_ref = torch.autograd.grad(ref_stl.sum(), [loc, scale])
    assert g_stl[0].abs().sum() > 0
    for g, gr in zip(g_stl, g_ref):
        torch.testing.assert_close(g, gr)
    # any other tensor, even equal in value, takes the general formula
    other = z.detach().clone().requires_grad_()
    torch.testing.assert_close(torch.autograd.grad(ours.log_prob(other).sum(), other)[0],
                               torch.autograd.grad(ref.log_prob(other).sum(), other)[0])


def test_standard_normal_prior_matches_normal_and_refuses_other_parameters():
    zeros, ones = torch.zeros(3), torch.ones(3)
    prior = StandardNormal(zeros, ones).to_event(1).expand((5, 4))
    z = torch.randn(5, 4, 3, requires_grad=True)
    lp, lp_ref = prior.log_prob(z), dist.Normal(0.0, 1.0).expand((3,)).to_event(1).log_prob(z)
    torch.testing.assert_close(lp, lp_ref)
    torch.testing.assert_close(torch.autograd.grad(lp.sum(), z)[0], -z)
    with pytest.raises(ValueError, match="loc = 0 and scale = 1"):
        StandardNormal(zeros + 1, ones, validate_args=True).log_prob(z)


def test_same_shape_expand_returns_the_distribution_and_other_shapes_a_new_one():
    d = diagonal_normal(*_params(4, 3))
    assert isinstance(d, Independent) and d.expand((4,)) is d
    wider = d.expand((2, 4))
    assert wider is not d and wider.batch_shape == (2, 4) and isinstance(wider.base_dist, DiagonalNormal)
    px = make_likelihood("bernoulli", 3)(torch.randn(4, 3))
    features = px.to_event(1)
    assert px.expand((4, 3)) is px and features.expand((4,)) is features
    assert features.expand((5, 4)).batch_shape == (5, 4)


@pytest.mark.parametrize("event_dims", [1, 2])
def test_bernoulli_features_match_bernoulli_to_event(event_dims):
    logits = torch.randn(5, 2, 3, requires_grad=True)
    x = torch.bernoulli(torch.full((2, 3), 0.5))
    ours = make_likelihood("bernoulli", 3)(logits).to_event(event_dims)
    ref = dist.Bernoulli(logits=logits).to_event(event_dims)
    lp, lp_ref = ours.log_prob(x), ref.log_prob(x)
    assert lp.shape == ref.batch_shape
    torch.testing.assert_close(lp, lp_ref)
    torch.testing.assert_close(torch.autograd.grad(lp.sum(), logits)[0], torch.autograd.grad(lp_ref.sum(), logits)[0])


def test_pyro_plates_see_the_same_densities():
    """Under a particle plate and a data plate the traced log-densities are torch's."""
    loc, scale = _params(4, 3)

    def program(dist_fn):
        with pyro.plate("particles", 5, dim=-2), pyro.plate("data", 4, dim=-1):
            return pyro.sample("z", dist_fn(loc, scale))

    pyro.set_rng_seed(0)
    ours = poutine.trace(program).get_trace(diagonal_normal)
    pyro.set_rng_seed(0)
    ref = poutine.trace(program).get_trace(lambda l, s: dist.Normal(l, s).to_event(1))
    ours.compute_log_prob()
    ref.compute_log_prob()
    torch.testing.assert_close(ours.nodes["z"]["log_prob"], ref.nodes["z"]["log_prob"])
    assert ours.nodes["z"]["log_prob"].shape == (5, 4)
