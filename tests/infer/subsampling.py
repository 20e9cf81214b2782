"""A pair whose data plate subsamples at random, with a known log-evidence per datum,
shared by the tests that bounds, PSIS and the amortisation gap keep one subsample."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

SUB_SIGMA, SUB_N = 0.5, 6


def subsampling_pair(exact: bool = True):
    """x_i ~ N(z_i, 0.5^2), z_i ~ N(0, 1), datum i has the value i, and a plate that
    draws 2 of the 6 indices at random on every run. The exact guide is the posterior
    N(x_i / 1.25, 0.2): every log-weight is log p(x_i) = log N(x_i; 0, 1.25) exactly,
    and the six values of log p(x_i) lie at least 0.4 nats apart, so each per-datum
    value names its datum. Otherwise the guide is the prior N(0, 1).

    :returns: ``model, guide, x, log_p`` (the exact log p(x_i) of every datum).
    """
    post_scale = (SUB_SIGMA**2 / (1 + SUB_SIGMA**2)) ** 0.5

    def model(x):
        with pyro.plate("data", SUB_N, subsample_size=2) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, SUB_SIGMA), obs=x[idx])

    def guide(x):
        with pyro.plate("data", SUB_N, subsample_size=2) as idx:
            loc = x[idx] / (1 + SUB_SIGMA**2) if exact else 0.0 * x[idx]
            pyro.sample("z", dist.Normal(loc, post_scale if exact else 1.0))

    x = torch.arange(SUB_N, dtype=torch.get_default_dtype())
    log_p = dist.Normal(0.0, (1 + SUB_SIGMA**2) ** 0.5).log_prob(x)
    return model, guide, x, log_p
