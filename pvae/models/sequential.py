"""The deep Markov model (Krishnan et al. 2017): a sequential VAE as a Pyro program.

Observations :math:`x_{1:T}` (spike counts of a population per time bin,
fluorescence traces, ...) are emitted by a low-dimensional latent state that
follows its own nonlinear Markov dynamics (seed 004, 序列 VAE / deep state
space models):

.. math::

    p_\\theta(x_{1:T}, z_{1:T}) = \\prod_{t=1}^{T} p_\\theta(z_t \\mid z_{t-1})\\,
        p_\\theta(x_t \\mid z_t),

    p_\\theta(z_t \\mid z_{t-1}) = \\mathcal N\\big(z_t;\\ (1 - g_t) \\odot W z_{t-1}
        + g_t \\odot h_t,\\ \\mathrm{diag}\\,\\sigma^2_t\\big),

with Krishnan et al.'s *gated transition*: a gate
:math:`g_t = \\mathrm{sigmoid}(\\mathrm{MLP}_g(z_{t-1}))` mixes a linear
transition :math:`W z_{t-1}` (initialised to the identity) with a nonlinear
proposal :math:`h_t = \\mathrm{MLP}_h(z_{t-1})`, and
:math:`\\sigma_t = \\mathrm{softplus}(V\\, \\mathrm{relu}(h_t))`; :math:`z_0` is
learned. The emission :math:`p_\\theta(x_t \\mid z_t)` is any pvae likelihood
(``poisson`` for spike counts, ``bernoulli`` for binned spike / no-spike,
``normal`` for calcium imaging) on an MLP of :math:`z_t`.

The guide is the DMM's structured "combiner" posterior, Markov in :math:`z`
and reading the future of the sequence through a backward RNN:

.. math::

    q_\\phi(z_{1:T} \\mid x_{1:T}) = \\prod_{t=1}^{T} q_\\phi(z_t \\mid z_{t-1}, x_{t:T}),
    \\qquad
    \\tilde h_t = \\tfrac12\\big(\\tanh(U z_{t-1} + c) + h^{\\leftarrow}_t\\big),
    \\qquad
    q_\\phi(z_t \\mid \\cdot) = \\mathcal N\\big(\\mu(\\tilde h_t), \\mathrm{diag}\\,\\sigma^2(\\tilde h_t)\\big),

where :math:`h^{\\leftarrow}_t = \\mathrm{GRU}(x_t, h^{\\leftarrow}_{t+1})` runs from
the end of the sequence backwards (the "structured inference network ST-R"
of Krishnan et al.). The ELBO splits into a reconstruction term per step and
one KL per step between the inferred and the prior dynamics:

.. math::

    \\mathrm{ELBO} = \\sum_{t} \\mathbb E_q\\big[\\log p_\\theta(x_t \\mid z_t)\\big]
        - \\sum_t \\mathbb E_q\\Big[\\mathrm{KL}\\big(q_\\phi(z_t \\mid z_{t-1}, x_{t:T})
            \\,\\|\\, p_\\theta(z_t \\mid z_{t-1})\\big)\\Big].

**Ragged sequences.** Data are ``(batch, T, features)``, padded to a common
``T``; a ``(batch,)`` integer tensor of lengths or a ``(batch, T)`` bool mask
(True on observed steps, a prefix of each row) marks the real steps. Padded
steps leave the loss exactly: their latent sites sit under
``poutine.mask(False)`` in model and guide, their observations are masked and
replaced by a valid fill value (padding may hold anything, NaN included), and
the backward RNN starts at each sequence's own last step (packed sequences).
The time loops use ``pyro.markov``.

References

1. R. G. Krishnan, U. Shalit, D. Sontag. Structured Inference Networks for
   Nonlinear State Space Models. AAAI 2017.
2. Pyro's deep Markov model example (examples/dmm.py).
3. C. Pandarinath et al. Inferring single-trial neural population dynamics
   using sequential auto-encoders (LFADS). Nature Methods 15, 2018.
4. J. H. Macke, L. Buesing, J. P. Cunningham, B. M. Yu, K. V. Shenoy, M. Sahani.
   Empirical models of spiking in neural populations. NeurIPS 2011 (Poisson
   linear dynamical systems).
5. Seed 004: sequential VAEs for neural population dynamics.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import is_validation_enabled
from pyro.nn import PyroModule, pyro_method
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..inputs import DataError, DataTypeError
from .base import DATA_PLATE, LATENT_SITE, OBS_SITE
from .likelihoods import Likelihood, LikelihoodName, make_likelihood
from .nets import Activation, NormalHead, diagonal_normal, mlp, positive
from .registry import Example, register_model
from .vae import _check_dim, _StandardNormalLatent

__all__ = ["Combiner", "GatedTransition", "SequentialVAE"]


class GatedTransition(nn.Module):
    """Krishnan et al.'s gated transition: ``z_{t-1} -> (loc, scale)`` of p(z_t | z_{t-1}).

    .. math::

        g = \\mathrm{sigmoid}(\\mathrm{MLP}_g(z)), \\quad h = \\mathrm{MLP}_h(z), \\quad
        \\mathrm{loc} = (1 - g) \\odot W z + g \\odot h, \\quad
        \\mathrm{scale} = \\mathrm{softplus}(V\\, \\mathrm{relu}(h)).

    :param int latent_dim: dimension of z.
    :param int transition_dim: hidden width of the gate and proposal MLPs.
    :param str activation: their hidden activation. Default ``"relu"``.
    """

    def __init__(self, latent_dim: int, transition_dim: int, activation: Activation = "relu") -> None:
        super().__init__()
        self.gate = mlp(latent_dim, (transition_dim,), latent_dim, activation=activation)
        self.proposed_mean = mlp(latent_dim, (transition_dim,), latent_dim, activation=activation)
        self.linear = nn.Linear(latent_dim, latent_dim)
        self.to_scale = nn.Linear(latent_dim, latent_dim)
        with torch.no_grad():  # start near the identity dynamics z_t = z_{t-1}
            self.linear.weight.copy_(torch.eye(latent_dim))
            self.linear.bias.zero_()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate = torch.sigmoid(self.gate(z))
        proposed = self.proposed_mean(z)
        loc = (1 - gate) * self.linear(z) + gate * proposed
        return loc, positive(self.to_scale(torch.relu(proposed)))


class Combiner(nn.Module):
    """The DMM guide's combiner: ``(z_{t-1}, h_t) -> (loc, scale)`` of q(z_t | z_{t-1}, x_{t:T}).

    .. math:: \\tilde h = \\tfrac12 (\\tanh(U z_{t-1} + c) + h_t), \\qquad
        (\\mathrm{loc}, \\mathrm{scale}) = \\mathrm{NormalHead}(\\tilde h).

    :param int latent_dim: dimension of z.
    :param int rnn_dim: width of the RNN state h.
    """

    def __init__(self, latent_dim: int, rnn_dim: int) -> None:
        super().__init__()
        self.z_to_hidden = nn.Linear(latent_dim, rnn_dim)
        self.head = NormalHead(rnn_dim, latent_dim)

    def forward(self, z_prev: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(0.5 * (torch.tanh(self.z_to_hidden(z_prev)) + h))


def _example() -> Example:
    x = torch.poisson(torch.full((8, 5, 3), 1.5))
    lengths = torch.tensor([5, 5, 4, 3, 5, 2, 5, 1])
    kwargs = {"input_dim": 3, "latent_dim": 2, "transition_dim": 8, "rnn_dim": 8,
              "emitter_hidden_dims": (8,), "likelihood": "poisson"}
    reason = ("the guide is Markov (q(z_t | z_{t-1}, x) reads the sampled z_{t-1}), and the "
              "batch-mixture estimator of I(x; z) needs each q(z | x) on its own")
    return Example(kwargs, (x, lengths), sample_args=(4, 5), unsupported={"mutual_information": reason})


@register_model("sequential_vae", example=_example)
class SequentialVAE(PyroModule):
    """A deep Markov model over sequences ``x`` of shape ``(batch, T, input_dim)``.

    ``model(x, mask=None)`` and ``guide(x, mask=None)`` keep the sequences in
    ``pyro.plate("data", dim=-1)`` (one datum = one sequence), the latent state
    at the sites ``"z_1"``, ..., ``"z_T"`` (each ``(batch, latent_dim)``) and
    the observations at one site ``"x"`` with event shape ``(T, input_dim)``
    (given the states, the emissions are independent, so they are scored in
    one vectorised pass). ``mask`` is None (all steps observed), a
    ``(batch,)`` integer tensor of sequence lengths, or a ``(batch, T)`` bool
    mask whose True entries form a prefix of each row. Train with
    ``pvae.fit(dmm, (x, lengths))``.

    :param int input_dim: features per step (neurons).
    :param int latent_dim: dimension of the state z_t. Default 8.
    :param int transition_dim: hidden width of the gated transition. Default 64.
    :param int rnn_dim: width of the guide's backward GRU. Default 64.
    :param emitter_hidden_dims: hidden widths of the emission MLP. Default ``(64,)``.
    :param likelihood: a name from :data:`pvae.models.LIKELIHOODS` or a
        :class:`~pvae.models.likelihoods.Likelihood` for p(x_t | z_t); e.g.
        ``"poisson"`` for spike counts. Default ``"normal"``.
    :param float beta: weight of the KL terms, a finite number > 0 (a ``poutine.scale`` on every
        latent site). Default 1.
    :param str activation: hidden activation. Default ``"relu"``.
    :param dict likelihood_kwargs: options of the likelihood.
    """

    #: how each positional argument is read (:mod:`pvae.inputs`), and its name in errors
    data_kinds = ("features", "any")  # mask: lengths (integers) or a bool mask
    data_names = ("x", "mask")

    def __init__(
        self,
        input_dim: int,
        latent_dim: int = 8,
        transition_dim: int = 64,
        rnn_dim: int = 64,
        emitter_hidden_dims: Sequence[int] = (64,),
        likelihood: LikelihoodName | Likelihood = "normal",
        beta: float = 1.0,
        activation: Activation = "relu",
        likelihood_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.input_dim = _check_dim("input_dim", input_dim)
        self.latent_dim = _check_dim("latent_dim", latent_dim)
        transition_dim = _check_dim("transition_dim", transition_dim)
        self.rnn_dim = _check_dim("rnn_dim", rnn_dim)
        self.beta = beta  # checked by the setter (> 0 and finite)
        self.likelihood = make_likelihood(likelihood, self.input_dim, **(likelihood_kwargs or {}))
        self.emitter = mlp(self.latent_dim, tuple(emitter_hidden_dims), self.likelihood.output_dim,
                           activation=activation)
        self.transition = GatedTransition(self.latent_dim, transition_dim, activation)
        self.combiner = Combiner(self.latent_dim, self.rnn_dim)
        self.rnn = nn.GRU(self.input_dim, self.rnn_dim, batch_first=True)
        self.z_0 = nn.Parameter(torch.zeros(self.latent_dim))  # the model's initial state
        self.z_q_0 = nn.Parameter(torch.zeros(self.latent_dim))  # the guide's
        self.h_0 = nn.Parameter(torch.zeros(1, 1, self.rnn_dim))  # the backward GRU's

    beta = _StandardNormalLatent.beta
    _beta_scaled = _StandardNormalLatent._beta_scaled

    def _param(self, name: str) -> torch.Tensor:
        # not the attribute: see VAE's hot-path note on PyroModule attribute access
        return self._parameters[name]

    # -- arguments ---------------------------------------------------------------
    def _steps(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(lengths, step_mask)`` from ``mask`` (None, lengths or a (batch, T) mask);
        ``(None, None)`` when every step of every sequence is observed."""
        if mask is None:
            return None, None
        steps = x.shape[1]
        if mask.dtype == torch.bool:
            lengths, step_mask = mask.sum(-1), mask
        else:
            lengths = mask
            step_mask = torch.arange(steps, device=x.device) < lengths.unsqueeze(-1)
        if bool((lengths == steps).all()):
            return None, None
        return lengths, step_mask

    def validate(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Check ``x`` and ``mask``; called once by :func:`pvae.fit`.

        :raises ValueError: on wrong shapes, lengths outside ``1..T``, a mask
            that is not a prefix of each row, or observed values that are NaN or
            outside the likelihood's support.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.input_dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise DataError(
                f"x must be a 3-D tensor of shape (batch, T, {self.input_dim}) (sequences padded to a "
                f"common length T), got {got}."
            )
        batch, steps, _ = x.shape
        if mask is not None:
            if not isinstance(mask, torch.Tensor):
                raise DataTypeError(f"mask must be a tensor of lengths or a bool mask, got {type(mask).__name__}.")
            if mask.dtype == torch.bool:
                if mask.shape != (batch, steps):
                    raise DataError(f"a bool mask must have shape ({batch}, {steps}) (batch, T), got "
                                     f"{tuple(mask.shape)}.")
                if bool((mask[:, 1:] & ~mask[:, :-1]).any()) or not bool(mask[:, 0].all()):
                    row = int((~mask[:, 0] | (mask[:, 1:] & ~mask[:, :-1]).any(-1)).nonzero()[0])
                    raise DataError(
                        f"the observed steps of each sequence must be a prefix of its row (ragged "
                        f"sequences padded at the end, at least one step); row {row} of the mask is "
                        f"{mask[row].int().tolist()}. Try lengths = mask.sum(-1) after moving the padding "
                        "to the end."
                    )
            elif mask.is_floating_point():
                raise DataTypeError(f"lengths must be an integer tensor (or the mask a bool one), got {mask.dtype}.")
            elif mask.shape != (batch,) or bool((mask < 1).any() | (mask > steps).any()):
                raise DataError(
                    f"lengths must have shape ({batch},) with values in 1..{steps}, got shape "
                    f"{tuple(mask.shape)} and values {mask.tolist() if mask.numel() <= 10 else '...'}."
                )
        _, step_mask = self._steps(x, mask)
        entry_mask = None if step_mask is None else step_mask.unsqueeze(-1).expand_as(x)
        self.likelihood.check(x, entry_mask)

    def _observed(self, x: torch.Tensor, step_mask: torch.Tensor | None) -> torch.Tensor:
        if step_mask is None:
            return x
        return torch.where(step_mask.unsqueeze(-1), x, torch.full_like(x, self.likelihood.fill_value))

    @staticmethod
    def _step_mask(step_mask: torch.Tensor | None, t: int):
        return contextlib.nullcontext() if step_mask is None else poutine.mask(mask=step_mask[:, t])

    # -- the backward RNN --------------------------------------------------------
    def _backward_rnn(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """``(batch, T, rnn_dim)``: :math:`h^{\\leftarrow}_t`, run from each sequence's
        own last step back to its first (zeros on padded steps)."""
        rnn = self._modules["rnn"]
        batch, steps, _ = x.shape
        h_0 = self._param("h_0").expand(1, batch, self.rnn_dim).contiguous()
        if lengths is None:
            out, _ = rnn(x.flip(1), h_0)
            return out.flip(1)
        # reverse each sequence within its length (padding stays at the end), run
        # the packed sequences, and reverse back with the same (involutive) index
        t = torch.arange(steps, device=x.device)
        index = torch.where(t < lengths.unsqueeze(-1), lengths.unsqueeze(-1) - 1 - t, t)
        reversed_x = x.gather(1, index.unsqueeze(-1).expand_as(x))
        packed = pack_padded_sequence(reversed_x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = rnn(packed, h_0)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
        return out.gather(1, index.unsqueeze(-1).expand_as(out))

    # -- the program -------------------------------------------------------------
    @pyro_method
    def model(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """p(x, z): gated Markov dynamics and emissions. Returns the states ``(..., batch, T, latent_dim)``."""
        if is_validation_enabled():
            self.validate(x, mask)
        nets = self._modules
        batch, steps, _ = x.shape
        _, step_mask = self._steps(x, mask)
        z = self._param("z_0").expand(batch, self.latent_dim)
        states = []
        with pyro.plate(DATA_PLATE, batch, dim=-1):
            for t in pyro.markov(range(steps)):
                loc, scale = nets["transition"](z)
                with self._step_mask(step_mask, t), self._beta_scaled():
                    z = pyro.sample(f"{LATENT_SITE}_{t + 1}", diagonal_normal(loc, scale))
                states.append(z)
            states = torch.stack(torch.broadcast_tensors(*states), dim=-2)
            px = nets["likelihood"](nets["emitter"](states))
            if step_mask is not None:
                px = px.mask(step_mask.unsqueeze(-1))
            pyro.sample(OBS_SITE, px.to_event(2), obs=self._observed(x, step_mask))
        return states

    @pyro_method
    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """q(z | x): the combiner on a backward GRU, Markov in z. Returns the states."""
        nets = self._modules
        batch, steps, _ = x.shape
        lengths, step_mask = self._steps(x, mask)
        h = self._backward_rnn(self._observed(x, step_mask), lengths)
        z = self._param("z_q_0").expand(batch, self.latent_dim)
        states = []
        with pyro.plate(DATA_PLATE, batch, dim=-1):
            for t in pyro.markov(range(steps)):
                loc, scale = nets["combiner"](z, h[:, t])
                with self._step_mask(step_mask, t), self._beta_scaled():
                    z = pyro.sample(f"{LATENT_SITE}_{t + 1}", diagonal_normal(loc, scale))
                states.append(z)
        return torch.stack(torch.broadcast_tensors(*states), dim=-2)

    # -- conveniences ------------------------------------------------------------
    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide along its mean path: ``(loc, scale)``, each ``(batch, T, latent_dim)``.

        Step t's Normal given :math:`z_{t-1}` set to the previous step's mean (no
        sampling): the inferred latent trajectory and its uncertainty. Values
        on padded steps are meaningless.
        """
        nets = self._modules
        batch, steps, _ = x.shape
        lengths, step_mask = self._steps(x, mask)
        h = self._backward_rnn(self._observed(x, step_mask), lengths)
        z = self._param("z_q_0").expand(batch, self.latent_dim)
        locs, scales = [], []
        for t in range(steps):
            z, scale = nets["combiner"](z, h[:, t])
            locs.append(z)
            scales.append(scale)
        return torch.stack(locs, 1), torch.stack(scales, 1)

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x_t | z_t) for states ``(..., latent_dim)``: batch shape ``z.shape[:-1]``,
        event shape ``(input_dim,)``."""
        nets = self._modules
        return nets["likelihood"](nets["emitter"](z)).to_event(1)

    @torch.no_grad()
    def sample_states(self, num_samples: int, num_steps: int) -> torch.Tensor:
        """Latent trajectories from the prior dynamics: ``(num_samples, num_steps, latent_dim)``."""
        z = self._param("z_0").expand(num_samples, self.latent_dim)
        states = []
        for _ in range(num_steps):
            loc, scale = self.transition(z)
            z = dist.Normal(loc, scale).sample()
            states.append(z)
        return torch.stack(states, 1)

    @torch.no_grad()
    def sample(self, num_samples: int, num_steps: int, mean: bool = False) -> torch.Tensor:
        """Sequences from p(x): ``(num_samples, num_steps, input_dim)`` (the emission
        means along sampled trajectories if ``mean``)."""
        px = self.decode(self.sample_states(num_samples, num_steps))
        return self.likelihood.point(px.base_dist) if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The emission's point prediction along the inferred mean trajectory, shape of ``x``."""
        loc, _ = self.encode(x, mask)
        return self.likelihood.point(self.decode(loc).base_dist)
