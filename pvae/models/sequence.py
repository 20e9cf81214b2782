"""A VAE of aligned protein sequences (DeepSequence, EVE) as a Pyro program.

.. math::

    p_\\theta(x, z) = \\mathcal N(z; 0, I) \\prod_{l=1}^L
        \\mathrm{Categorical}\\big(x_l; \\mathrm{softmax}(f_\\theta(z)_l)\\big), \\qquad
    q_\\phi(z \\mid x) = \\mathcal N\\big(z; \\mu_\\phi(\\mathrm{onehot}(x)),
        \\mathrm{diag}\\,\\sigma_\\phi(\\mathrm{onehot}(x))^2\\big),

over sequences :math:`x \\in \\{0..A-1\\}^L` coded over
:data:`pvae.data.ALPHABET` (20 amino acids and the gap). Training maximises
the weighted ELBO of DeepSequence,

.. math::

    \\mathcal L = \\sum_i w_i\\, \\mathrm{ELBO}(x_i),

with the sequence weights :math:`w_i` of :func:`pvae.data.sequence_weights`
(one over the number of neighbours of :math:`x_i`) as a per-datum
``poutine.scale`` of the data plate. Per-datum bounds
(:func:`pvae.infer.elbo`, :func:`pvae.infer.iwae_bound`,
:func:`pvae.infer.log_evidence`, :func:`pvae.analysis.mutation_effects`) are
unweighted, as everywhere in pvae: a weight says how much a sequence counts in
training, not how likely it is.

Kept from the papers: the categorical likelihood per position, the one-hot
encoder, the weighted ELBO, and as options DeepSequence's structured output
layer (:class:`SequenceLogits`: a dictionary over the alphabet, grouped
sparsity gates, a learned temperature) and EVE's decoder dropout. The
defaults are a dense output layer without dropout: both papers pair the
structured layer with a variational prior on the decoder weights, and it is
that prior which makes the parts count (it shrinks the weights, which the
temperature then rescales, and pulls the gates towards sparsity). With point
estimates of the weights, as here, a dictionary of ``rank >= alphabet_size``
reparameterises the same function class, the temperature is redundant with
the weights' scale and the gates are not pushed towards zero; a ``rank`` below
the alphabet is a true low-rank constraint (``H L C + C A`` weights instead of
``H L A``). ``pvae.fit(..., weight_decay=...)`` (a Gaussian prior's MAP
estimate) restores part of the prior's role, and it matters: on the p53
family's ClinVar variants (``benchmarks/protein_p53.py``) one VAE's ROC AUC is
0.94 without it and 0.98-0.99 with ``weight_decay=1e-3`` (3e-3 is too strong).
Not implemented: the variational posterior over decoder weights, a global
latent, which pvae's per-datum bounds exclude (every latent sits in the data
plate).

References

1. A. J. Riesselman, J. B. Ingraham, D. S. Marks. Deep generative models of
   genetic variation capture the effects of mutations. Nature Methods 15, 2018.
2. J. Frazer et al. Disease variant prediction with deep generative models of
   evolutionary data. Nature 599, 2021.
3. N. Srivastava, G. Hinton, A. Krizhevsky, I. Sutskever, R. Salakhutdinov.
   Dropout: a simple way to prevent neural networks from overfitting. JMLR 15, 2014.
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal, Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import is_validation_enabled
from pyro.nn import pyro_method
from torch import nn

from ..inputs import DataError, DataTypeError
from .base import DATA_PLATE, LATENT_SITE, OBS_SITE
from .likelihoods import make_likelihood
from .nets import Activation, NormalHead, diagonal_normal, mlp, one_hot
from .registry import Example, register_model
from .vae import _check_dim, _StandardNormalLatent

__all__ = ["AutoregressiveCategorical", "GRUSequenceDecoder", "SequenceLogits", "SequenceVAE"]


class SequenceLogits(nn.Module):
    """The output layer of a sequence decoder: hidden units to per-position logits.

    For hidden units :math:`h \\in \\mathbb R^H`, position :math:`l` and letter
    :math:`a`,

    .. math::

        \\ell_{la}(h) = \\tau \\Big(\\sum_{k=1}^H W_{lak}\\, h_k + b_{la}\\Big), \\qquad
        W_{lak} = \\sigma(S_{l, g(k)}) \\sum_{c=1}^C D_{ca}\\, V_{lck},

    DeepSequence's structured layer [1]: a dictionary :math:`D \\in \\mathbb
    R^{C \\times A}` over the alphabet shared by every position (``rank`` =
    :math:`C`; with ``rank=None`` the layer is dense, :math:`W` itself is the
    parameter), sparsity gates :math:`\\sigma(S)` shared by each group
    :math:`g(k) = \\lfloor k / \\text{group size} \\rfloor` of hidden units at
    each position (:math:`S \\in \\mathbb R^{L \\times H/\\text{group size}}`,
    ``sparsity_group_size=0``: all gates 1), and a temperature
    :math:`\\tau = \\mathrm{softplus}(\\lambda)`, learned from
    :math:`\\tau = 1` (``temperature=False``: :math:`\\tau = 1` fixed). EVE [2]
    keeps the same layer. Output: ``(..., length * alphabet_size)`` logits,
    position-major (the raw outputs of the ``"categorical"`` likelihood).

    :param int in_dim: hidden units :math:`H`.
    :param int length: positions :math:`L`.
    :param int alphabet_size: letters :math:`A`.
    :param rank: dictionary size :math:`C`, or None for a dense layer. Default None.
    :param int sparsity_group_size: hidden units per gate (DeepSequence: 4);
        must divide ``in_dim``. Default 0 (no gates).
    :param bool temperature: learn :math:`\\tau`. Default False.
    """

    def __init__(
        self,
        in_dim: int,
        length: int,
        alphabet_size: int,
        rank: int | None = None,
        sparsity_group_size: int = 0,
        temperature: bool = False,
    ) -> None:
        super().__init__()
        in_dim = _check_dim("in_dim", in_dim)
        length, alphabet_size = _check_dim("length", length), _check_dim("alphabet_size", alphabet_size)
        if sparsity_group_size and in_dim % _check_dim("sparsity_group_size", sparsity_group_size):
            raise ValueError(
                f"sparsity_group_size must divide the decoder's last hidden width {in_dim}, got "
                f"{sparsity_group_size!r}. Try 0 (no gates) or a divisor such as 4."
            )
        self.length, self.alphabet_size, self.sparsity_group_size = length, alphabet_size, int(sparsity_group_size)
        self.rank = None if rank is None else _check_dim("rank", rank)
        # nn.Linear's initialisation (dense: the very same draws); V D keeps its scale, as the
        # columns of D have unit norm on average
        bound = 1 / math.sqrt(in_dim)
        width = alphabet_size if rank is None else self.rank
        self.weight = nn.Parameter(torch.empty(length, width, in_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(length, alphabet_size).uniform_(-bound, bound))
        self.dictionary = (None if rank is None
                           else nn.Parameter(torch.randn(self.rank, alphabet_size) / math.sqrt(self.rank)))
        groups = in_dim // self.sparsity_group_size if self.sparsity_group_size else 0
        self.gate_logits = nn.Parameter(torch.zeros(length, groups)) if groups else None
        # softplus(log(e - 1)) = 1: the temperature starts at 1
        self.raw_temperature = nn.Parameter(torch.tensor(math.log(math.e - 1))) if temperature else None

    def full_weight(self) -> torch.Tensor:
        """The effective :math:`W`: ``(length, alphabet_size, in_dim)``."""
        w = self.weight if self.dictionary is None else self.dictionary.T @ self.weight
        if self.gate_logits is not None:
            w = w * torch.sigmoid(self.gate_logits).repeat_interleave(self.sparsity_group_size, -1).unsqueeze(-2)
        return w

    def temperature(self) -> torch.Tensor | float:
        """:math:`\\tau`: ``softplus(raw_temperature)``, or 1 when not learned."""
        return 1.0 if self.raw_temperature is None else F.softplus(self.raw_temperature)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = F.linear(h, self.full_weight().flatten(0, 1), self.bias.flatten())
        return logits if self.raw_temperature is None else self.temperature() * logits


class GRUSequenceDecoder(nn.Module):
    """An autoregressive decoder: a GRU that reads ``z`` and the letters so far.

    .. math::

        h_0 = \\tanh(W_0 z + b_0), \\qquad
        h_l = \\mathrm{GRU}\\big(h_{l-1}, [e(x_{l-1}); z]\\big), \\qquad
        p(x_l \\mid x_{<l}, z) = \\mathrm{softmax}(W h_l + b),

    with :math:`e` a learned embedding and :math:`x_0` a start symbol (code
    ``alphabet_size``), the decoder of the character-level molecule VAEs
    (Gomez-Bombarelli et al. 2018; the MOSES VAE, Polykovskiy et al. 2020, with
    ``z`` fed into every step). Used through :class:`AutoregressiveCategorical`.

    :param int latent_dim: dimension of ``z``.
    :param int length: positions :math:`L`.
    :param int alphabet_size: letters :math:`A`.
    :param int hidden_size: GRU width. Default 256.
    :param int num_layers: stacked GRU layers. Default 1.
    :param float dropout: dropout between GRU layers (``num_layers > 1``). Default 0.
    """

    def __init__(self, latent_dim: int, length: int, alphabet_size: int, hidden_size: int = 256,
                 num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.latent_dim, self.length = _check_dim("latent_dim", latent_dim), _check_dim("length", length)
        self.alphabet_size = _check_dim("alphabet_size", alphabet_size)
        self.hidden_size, self.num_layers = _check_dim("hidden_size", hidden_size), _check_dim("num_layers", num_layers)
        self.embedding = nn.Embedding(alphabet_size + 1, alphabet_size)  # the last code is the start symbol
        self.initial = nn.Linear(latent_dim, num_layers * hidden_size)
        self.gru = nn.GRU(alphabet_size + latent_dim, hidden_size, num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.output = nn.Linear(hidden_size, alphabet_size)

    def _initial_state(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.initial(z)).unflatten(-1, (self.num_layers, self.hidden_size))
        return h.transpose(0, 1).contiguous()

    def _step_inputs(self, z: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        e = self.embedding(previous)
        return torch.cat([e, z.unsqueeze(-2).expand(*e.shape[:-1], z.shape[-1])], -1)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(n, length, alphabet_size)`` of ``x`` ``(n, length)`` given ``z`` ``(n, d)``."""
        start = x.new_full((x.shape[0], 1), self.alphabet_size)
        out, _ = self.gru(self._step_inputs(z, torch.cat([start, x[:, :-1]], 1)), self._initial_state(z))
        return self.output(out)

    def generate(self, z: torch.Tensor, greedy: bool = False) -> torch.Tensor:
        """Codes ``(n, length)`` drawn letter by letter (``greedy``: the most likely letter each step)."""
        h = self._initial_state(z)
        previous = torch.full((z.shape[0], 1), self.alphabet_size, dtype=torch.long, device=z.device)
        codes = []
        for _ in range(self.length):
            out, h = self.gru(self._step_inputs(z, previous), h)
            logits = self.output(out[:, 0])
            previous = (logits.argmax(-1) if greedy else dist.Categorical(logits=logits).sample()).unsqueeze(-1)
            codes.append(previous)
        return torch.cat(codes, 1)


class AutoregressiveCategorical(dist.TorchDistribution):
    """:math:`p(x \\mid z) = \\prod_l p(x_l \\mid x_{<l}, z)` of a
    :class:`GRUSequenceDecoder`: batch shape ``z.shape[:-1]``, event shape
    ``(length,)`` over int64 codes.

    ``log_prob(x)`` is exact (teacher forcing, one GRU pass); ``sample()``
    draws ancestrally, letter by letter; ``mode`` is the greedy sequence (the
    most likely letter at each step given the letters before it: an
    approximation of the most likely sequence, as beam-free decoders use).
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(self, decoder: GRUSequenceDecoder, z: torch.Tensor, validate_args: bool | None = None) -> None:
        self.decoder, self.z = decoder, z
        super().__init__(z.shape[:-1], torch.Size([decoder.length]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> "AutoregressiveCategorical":
        return AutoregressiveCategorical(self.decoder, self.z.expand(*batch_shape, self.z.shape[-1]))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(self.batch_shape, value.shape[:-1])
        z = self.z.expand(*shape, self.z.shape[-1]).reshape(-1, self.z.shape[-1])
        x = value.expand(*shape, value.shape[-1]).reshape(-1, value.shape[-1])
        logp = self.decoder(z, x).log_softmax(-1).gather(-1, x.unsqueeze(-1)).squeeze(-1)
        return logp.sum(-1).reshape(shape)

    def _draw(self, sample_shape: torch.Size, greedy: bool) -> torch.Tensor:
        z = self.z.expand(*sample_shape, *self.z.shape)
        with torch.no_grad():
            codes = self.decoder.generate(z.reshape(-1, z.shape[-1]), greedy=greedy)
        return codes.reshape(*z.shape[:-1], self.decoder.length)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self._draw(torch.Size(sample_shape), greedy=False)

    @property
    def mode(self) -> torch.Tensor:
        return self._draw(torch.Size(), greedy=True)


def _example() -> Example:
    x = torch.randint(0, 4, (8, 5))
    kwargs = {"length": 5, "alphabet_size": 4, "latent_dim": 2, "hidden_dims": (8,), "rank": 3,
              "sparsity_group_size": 2, "temperature": True, "dropout": 0.1}
    return Example(kwargs, (x, torch.rand(8) + 0.1))


@register_model("sequence_vae", example=_example)
class SequenceVAE(_StandardNormalLatent):
    """A VAE of fixed-length categorical sequences (an alignment's focus columns).

    ``model(x, weights=None)`` / ``guide(x, weights=None)``: ``x`` is ``(batch,
    length)`` integer codes in ``0..alphabet_size-1`` (``msa.codes`` of
    :func:`pvae.data.load_msa`), ``weights`` optional ``(batch,)`` positive
    sequence weights (``msa.weights``), a ``poutine.scale`` of every data-plate
    site in model and guide, so that training objectives maximise
    :math:`\\sum_i w_i \\mathrm{ELBO}(x_i)` while per-datum bounds ignore them.
    Latent at site ``"z"``, observations at ``"x"`` in
    ``pyro.plate("data", dim=-1)``. Train with ``pvae.fit(vae, (msa.codes,
    msa.weights))``. See the module docstring for the choices kept from
    DeepSequence and EVE.

    Networks: the encoder is an :func:`~pvae.models.mlp` on the flattened
    one-hot sequence (``length * alphabet_size`` inputs) with a diagonal-Normal
    head; the decoder an mlp from ``z`` (with ``dropout`` after each hidden
    layer) followed by a :class:`SequenceLogits` output layer. Dropout is active
    in ``train()`` mode only; :func:`pvae.fit` leaves the program in ``eval()``
    mode, so bounds evaluated after it see a deterministic decoder (a freshly
    built module is in ``train()`` mode: call ``.eval()`` before evaluating one
    with dropout).

    :param int length: positions (focus columns) :math:`L`.
    :param int alphabet_size: letters :math:`A`. Default 21 (:data:`pvae.data.ALPHABET`).
    :param int latent_dim: dimension of ``z``. Default 16.
    :param hidden_dims: encoder widths; the decoder mirrors them unless
        ``decoder_hidden_dims`` is given. Default ``(256, 128)``.
    :param float beta: weight of the KL term, a finite number > 0. Default 1.
    :param str activation: hidden activation. Default ``"relu"``.
    :param decoder_hidden_dims: decoder widths, if not the mirror.
    :param rank: dictionary size :math:`C` of the structured output layer
        (DeepSequence: 40), or None for a dense layer. Default None.
    :param int sparsity_group_size: decoder hidden units per sparsity gate
        (DeepSequence: 4), or 0 for none. Default 0.
    :param bool temperature: learn an output temperature. Default False.
    :param float dropout: dropout probability of the decoder's hidden layers
        (EVE: 0.1; between GRU layers for ``decoder="gru"``). Default 0.
    :param str decoder: ``"mlp"`` (positions independent given ``z``, with
        :class:`SequenceLogits`) or ``"gru"`` (autoregressive,
        :class:`GRUSequenceDecoder`: molecule strings, whose letters depend on
        each other far more than an alignment's columns do given ``z``; GRU
        layers of width ``decoder_hidden_dims``, default one layer of
        ``hidden_dims[0]``; ``rank``, gates and temperature do not apply).
        Default ``"mlp"``.
    """

    #: how each positional argument is read (:mod:`pvae.inputs`), and its name in errors
    data_kinds = ("labels", "features")
    data_names = ("x", "weights")

    def __init__(
        self,
        length: int,
        alphabet_size: int = 21,
        latent_dim: int = 16,
        hidden_dims: Sequence[int] = (256, 128),
        beta: float = 1.0,
        activation: Activation = "relu",
        decoder_hidden_dims: Sequence[int] | None = None,
        *,
        rank: int | None = None,
        sparsity_group_size: int = 0,
        temperature: bool = False,
        dropout: float = 0.0,
        decoder: Literal["mlp", "gru"] = "mlp",
    ) -> None:
        super().__init__(latent_dim, beta)
        if decoder not in ("mlp", "gru"):
            raise ValueError(f"decoder must be 'mlp' or 'gru', got {decoder!r}.")
        self.decoder_kind = decoder
        self.length, self.alphabet_size = _check_dim("length", length), _check_dim("alphabet_size", alphabet_size)
        hidden_dims = tuple(hidden_dims)
        dec_hidden = tuple(reversed(hidden_dims)) if decoder_hidden_dims is None else tuple(decoder_hidden_dims)
        enc_in = self.length * self.alphabet_size
        self.likelihood = make_likelihood("categorical", self.length, cardinalities=[self.alphabet_size] * self.length)
        self.encoder_body = mlp(enc_in, hidden_dims, activation=activation)
        self.encoder_head = NormalHead(hidden_dims[-1] if hidden_dims else enc_in, self.latent_dim)
        if decoder == "gru":
            if rank is not None or sparsity_group_size or temperature:
                raise ValueError("rank, sparsity_group_size and temperature belong to the MLP decoder's output "
                                 "layer (SequenceLogits); decoder='gru' takes none of them.")
            dec_hidden = (hidden_dims[0],) if decoder_hidden_dims is None else dec_hidden
            if not dec_hidden or len(set(dec_hidden)) != 1:
                raise ValueError(f"decoder='gru' stacks GRU layers of one width: decoder_hidden_dims must be equal "
                                 f"widths, e.g. (256,) or (512, 512, 512), got {dec_hidden!r}.")
            self.decoder = GRUSequenceDecoder(self.latent_dim, self.length, self.alphabet_size, dec_hidden[0],
                                              len(dec_hidden), dropout)
            return
        body = mlp(self.latent_dim, dec_hidden, activation=activation, dropout=dropout)
        self.decoder = body.append(SequenceLogits(dec_hidden[-1] if dec_hidden else self.latent_dim, self.length,
                                                  self.alphabet_size, rank, sparsity_group_size, temperature))

    def validate(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Check codes and weights; called by model and guide when Pyro validation
        is on, and once on the whole data by :func:`pvae.fit`.

        :raises DataError: on a wrong shape (a one-hot given instead of codes
            included) or dtype, codes outside ``0..alphabet_size-1`` (a
            :class:`~pvae.models.SupportError`), or weights that are not
            ``(batch,)``, finite and positive.
        """
        L, A = self.length, self.alphabet_size
        if not isinstance(x, torch.Tensor):
            raise DataTypeError(f"x must be a tensor of integer codes, got {type(x).__name__}. Try msa.codes.")
        shape = tuple(x.shape)
        if x.dim() == 3 or (x.dim() == 2 and shape[1] == L * A):
            raise DataError(
                f"x must be integer codes of shape (batch, {L}), got shape {shape}, a one-hot: pass integer codes, "
                "e.g. msa.codes, not its one-hot (x.argmax(-1) converts one)."
            )
        if x.dim() != 2 or shape[1] != L:
            raise DataError(
                f"x must be integer codes of shape (batch, {L}), got shape {shape}. This model was built for "
                f"length={L}; try SequenceVAE(msa.length) for another alignment."
            )
        if x.is_floating_point() or x.dtype == torch.bool:
            raise DataTypeError(f"x must hold integer codes, got dtype {x.dtype}. Try x.long().")
        self.likelihood.check(x)
        if weights is None:
            return
        if not isinstance(weights, torch.Tensor) or weights.shape != shape[:1]:
            got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
            raise DataError(
                f"weights must have shape ({shape[0]},), one per sequence of x, got {got}. Try msa.weights."
            )
        bad = ~(torch.isfinite(weights) & (weights > 0))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise DataError(
                f"weights must be non-negative, finite and non-zero (Pyro's poutine.scale needs scale > 0); "
                f"{int(bad.sum())} are not, e.g. weights[{i}] = {weights[i].item():g}. "
                "Try msa.weights, or drop the sequences of weight 0."
            )

    def _weighted(self, weights: torch.Tensor | None) -> contextlib.AbstractContextManager:
        return poutine.scale(scale=weights) if weights is not None else contextlib.nullcontext()

    # -- the program ---------------------------------------------------------
    @pyro_method
    def model(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """p(x, z): prior, decoder, a categorical per position. Returns the latent sample."""
        if is_validation_enabled():
            self.validate(x, weights)
        with pyro.plate(DATA_PLATE, x.shape[0], dim=-1), self._weighted(weights):
            with self._beta_scaled():
                z = pyro.sample(LATENT_SITE, self._prior())
            pyro.sample(OBS_SITE, self.decode(z), obs=x)
        return z

    @pyro_method
    def guide(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """q(z | x): the amortised encoder of the one-hot sequence. Returns the latent sample."""
        if is_validation_enabled():  # the guide runs first: its one-hot would fail on bad codes
            self.validate(x, weights)
        loc, scale = self.encode(x)
        with pyro.plate(DATA_PLATE, x.shape[0], dim=-1), self._weighted(weights):
            with self._beta_scaled():
                return pyro.sample(LATENT_SITE, diagonal_normal(loc, scale))

    # -- conveniences --------------------------------------------------------
    def encode(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of q(z | x): ``(loc, scale)``, each ``(batch, latent_dim)``.
        ``weights`` are ignored (accepted so that ``encode(*data)`` works)."""
        nets = self._modules
        onehot = one_hot(x, self.alphabet_size, self.prior_loc.dtype)  # capturable; validate checks the range
        return nets["encoder_head"](nets["encoder_body"](onehot.flatten(-2)))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder logits, ``(*z.shape[:-1], length, alphabet_size)``; a softmax over
        the last dim gives each position's letter probabilities (the MLP decoder
        only: a GRU decoder's logits depend on the letters before each position)."""
        if self.decoder_kind == "gru":
            raise TypeError("logits(z) needs decoder='mlp': a GRU decoder's letter probabilities depend on the "
                            "letters before them. Try decode(z).log_prob(x), .sample() or .mode.")
        return self._modules["decoder"](z).unflatten(-1, (self.length, self.alphabet_size))

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z): batch shape ``z.shape[:-1]``, event shape ``(length,)`` over int64 codes."""
        nets = self._modules
        if self.decoder_kind == "gru":
            return AutoregressiveCategorical(nets["decoder"], z)
        return nets["likelihood"](nets["decoder"](z)).to_event(1)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = False) -> torch.Tensor:
        """Draw sequences from the model: int64 codes ``(num_samples, length)``.

        :param int num_samples: sequences, each from its own ``z ~ p(z)``.
        :param bool mean: take the most likely letter per position given ``z``
            instead of drawing one.
        """
        z = self._prior().sample((num_samples,))
        d = self.decode(z)
        return d.mode if mean else d.sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The most likely letter per position at the encoder mean (greedy, for a GRU
        decoder): int64 codes, shape of ``x``."""
        loc, _ = self.encode(x)
        return self.decode(loc).mode
