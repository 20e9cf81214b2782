"""trace_pair records what Pyro's poutine.trace + replay + particle plate record."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

import pvae
from pvae.infer.traces import PARTICLE_PLATE, trace_pair


def _pyro_pair(model, guide, args, num_particles, nesting):
    """The reference: Pyro's own handlers, stacked as Pyro's vectorised ELBOs stack them."""
    plate = pyro.plate(PARTICLE_PLATE, num_particles, dim=-nesting - 1)
    if num_particles > 1:
        guide, model = plate(guide), plate(model)
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    return model_trace, guide_trace


def _nested_program():
    """A global latent, two nested plates, a mask, a poutine.scale and two observations."""
    loc = torch.randn(3)

    def model(x):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("groups", 2, dim=-2), pyro.plate("data", x.shape[-1], dim=-1):
            with poutine.scale(scale=0.5):
                z = pyro.sample("z", dist.Normal(g, 1.0))
            with poutine.mask(mask=x > 0):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        pyro.sample("y", dist.Normal(loc, 1.0).to_event(1), obs=torch.zeros(3))

    def guide(x):
        pyro.sample("g", dist.Normal(0.3, 0.5))
        with pyro.plate("groups", 2, dim=-2), pyro.plate("data", x.shape[-1], dim=-1):
            with poutine.scale(scale=0.5):
                pyro.sample("z", dist.Normal(x, 0.7))

    return model, guide, (torch.randn(2, 4),), 2


def _vae_program():
    vae = pvae.VAE(6, 3, hidden_dims=(8,), likelihood="bernoulli")
    return vae.model, vae.guide, (torch.bernoulli(torch.full((5, 6), 0.5)),), 1


@pytest.mark.parametrize("program", [_nested_program, _vae_program])
@pytest.mark.parametrize("num_particles", [1, 4])
def test_trace_pair_records_what_pyros_handlers_record(program, num_particles):
    model, guide, args, nesting = program()
    pyro.set_rng_seed(0)
    model_trace, guide_trace, particle_dim = trace_pair(model, guide, args, {}, num_particles, nesting)
    pyro.set_rng_seed(0)
    ref_model, ref_guide = _pyro_pair(model, guide, args, num_particles, nesting)
    assert particle_dim == -nesting - 1
    for ours, ref in ((model_trace, ref_model), (guide_trace, ref_guide)):
        ref_sites = {n: s for n, s in ref.nodes.items() if s["type"] == "sample"}
        assert list(ours.nodes) == list(ref_sites)
        for name, site in ours.nodes.items():
            expected = ref_sites[name]
            for key in ("is_observed", "scale", "cond_indep_stack", "infer"):
                assert site[key] == expected[key], (name, key)
            torch.testing.assert_close(site["value"], expected["value"])
            if site["mask"] is None:
                assert expected["mask"] is None
            else:
                assert torch.equal(torch.as_tensor(site["mask"]), torch.as_tensor(expected["mask"]))
            if site_is_subsample(site):  # a plate's index site
                continue
            assert site["fn"].batch_shape == expected["fn"].batch_shape, name
            torch.testing.assert_close(site["fn"].log_prob(site["value"]),
                                       expected["fn"].log_prob(expected["value"]))
    # the model's latents are the guide's draws, the very tensors
    assert model_trace.nodes["z"]["value"] is guide_trace.nodes["z"]["value"]


def test_trace_pair_errors_are_pyros():
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    def observed_guide(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(0.0, 1.0), obs=x)

    x = torch.zeros(3)
    with pytest.raises(RuntimeError, match="site z must be sampled in trace"):
        trace_pair(model, observed_guide, (x,), {}, 1, 1)

    def wrong_shape(x):  # a batch dim of 3 where the 4 particles go
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(torch.zeros(3, 1), 1.0))

    with pytest.raises(ValueError, match="Shape mismatch inside plate"):
        trace_pair(model, wrong_shape, (x,), {}, 4, 1)

    def deeper(x):  # nests a plate at the particle dim
        with pyro.plate("more", 2, dim=-2), pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="deeper than when max_plate_nesting"):
        trace_pair(model, deeper, (x,), {}, 4, 1)
