"""The semi-supervised VAE (Kingma et al. 2014, model M2) as a Pyro program.

A class label :math:`y` and a continuous style :math:`z` generate the data:

.. math::

    p_\\theta(x, y, z) = \\mathrm{Cat}(y; \\tfrac1C \\mathbf 1)\\, \\mathcal N(z; 0, I)\\,
        p_\\theta(x \\mid y, z), \\qquad
    q_\\phi(y, z \\mid x) = \\mathrm{Cat}\\big(y; \\pi_\\phi(x)\\big)\\,
        \\mathcal N\\big(z; \\mu_\\phi(x, y), \\mathrm{diag}\\,\\sigma^2_\\phi(x, y)\\big).

The label is observed for a few data and latent for the rest (seed 000: the
few labelled data anchor the clusters the generative model finds in the
many unlabelled ones). A labelled datum has the bound

.. math::

    -\\mathcal L(x, y) = \\mathbb E_{q_\\phi(z \\mid x, y)}\\big[\\log p_\\theta(x \\mid y, z)
        + \\log p(y) + \\log p(z) - \\log q_\\phi(z \\mid x, y)\\big] \\le \\log p_\\theta(x, y),

and an unlabelled one sums over the :math:`C` classes exactly, with the
classifier as the weights:

.. math::

    -\\mathcal U(x) = \\sum_{y=1}^{C} q_\\phi(y \\mid x)\\,\\big(-\\mathcal L(x, y)\\big)
        + \\mathcal H\\big(q_\\phi(y \\mid x)\\big) \\le \\log p_\\theta(x).

The classifier :math:`q_\\phi(y \\mid x)` only learns from the unlabelled
term, so Kingma et al. add its log-likelihood on the labelled data:

.. math::

    \\mathcal J^\\alpha = \\sum_{(x, y)\\ \\text{labelled}} \\mathcal L(x, y)
        + \\sum_{x\\ \\text{unlabelled}} \\mathcal U(x)
        + \\alpha \\sum_{(x, y)\\ \\text{labelled}} -\\log q_\\phi(y \\mid x).

**One program for mixed batches.** ``model(x, y)`` and ``guide(x, y)`` take
integer labels with ``-1`` for unknown. The label site ``"y"`` is latent in
the program for every datum; a known label enters through the guide as a
point mass :math:`q(y \\mid x, y_\\text{known}) = \\delta_{y_\\text{known}}`
(log-mass 0 at the label, :math:`-10^4` elsewhere), which turns the ELBO of
that datum into :math:`-\\mathcal L(x, y)` exactly. So a batch may mix
labelled and unlabelled data, and every per-datum tool of :mod:`pvae.infer`
(``elbo_terms``, ``iwae_bound``) reads a bound on :math:`\\log p(x, y)` for a
labelled datum and on :math:`\\log p(x)` for an unlabelled one.

**Exact enumeration.** The guide marks ``"y"`` with
``infer={"enumerate": "parallel"}``; Pyro's ``TraceEnum_ELBO`` then sums over
all :math:`C` values in one vectorised pass (the class in a new dimension
left of the data plate) instead of sampling it. Train with
:class:`pvae.infer.EnumElboObjective`, which also adds the
:meth:`SemiSupervisedVAE.auxiliary_loss` (the :math:`\\alpha` term) to the
loss::

    y_train = torch.where(is_labelled, y, -1)
    pvae.fit(ssvae, (x, y_train), objective=pvae.infer.EnumElboObjective())
    ssvae.predict(x_test)

Outside ``TraceEnum_ELBO`` (e.g. ``iwae_bound``) the site is sampled, which
gives valid Monte Carlo bounds.

References

1. D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling. Semi-Supervised
   Learning with Deep Generative Models. NeurIPS 2014.
2. N. Siddharth, B. Paige, J.-W. van de Meent, A. Desmaison, N. Goodman,
   P. Kohli, F. Wood, P. Torr. Learning Disentangled Representations with
   Semi-Supervised Deep Generative Models. NeurIPS 2017.
3. F. Obermeyer, E. Bingham, M. Jankowiak, J. Chiu, N. Pradhan, A. Rush,
   N. Goodman. Tensor Variable Elimination for Plated Factor Graphs. ICML 2019
   (Pyro's parallel enumeration).
4. Seed 000: semi-supervised learning by treating the unknown label as a latent.
"""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import is_validation_enabled
from pyro.nn import pyro_method

from ..inputs import DataError, DataTypeError
from .base import DATA_PLATE, LATENT_SITE, OBS_SITE
from .likelihoods import Likelihood, LikelihoodName
from .nets import Activation, diagonal_normal, mlp, one_hot
from .registry import Example, register_model
from .vae import _check_dim, _EncoderDecoder

__all__ = ["LABEL_SITE", "UNLABELLED", "SemiSupervisedVAE"]

#: Site name of the class label.
LABEL_SITE = "y"
#: The label value that marks an unlabelled datum.
UNLABELLED = -1
# log-mass of the classes a known label rules out: exp(-1e4) is exactly 0 in
# float32 and float64, and finite, so 0 * (-log q) stays 0 under enumeration
_LOG_ZERO = -1.0e4


def _broadcast_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate the features of ``a`` and ``b`` after broadcasting their batch
    dims (``b`` may carry enumeration or particle dims on the left)."""
    batch = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*batch, a.shape[-1]), b.expand(*batch, b.shape[-1])], dim=-1)


def _example() -> Example:
    x = torch.randint(0, 2, (8, 6)).float()
    y = torch.tensor([0, 1, 2, 3, -1, -1, -1, -1])
    kwargs = {"input_dim": 6, "num_classes": 4, "latent_dim": 2, "hidden_dims": (8,)}
    reason = ("the guide is hierarchical (q(z | x, y) reads the sampled label), and the "
              "batch-mixture estimator of I(x; z) needs each q(z | x) on its own")
    return Example(kwargs, (x, y), unsupported={"mutual_information": reason})


@register_model("ssvae", example=_example)
class SemiSupervisedVAE(_EncoderDecoder):
    """Kingma et al.'s M2: a VAE whose class label is observed when known, latent otherwise.

    ``model(x, y=None)`` and ``guide(x, y=None)`` keep the data in
    ``pyro.plate("data", dim=-1)``, the label at site ``"y"`` (an integer
    class), the style at site ``"z"`` and the observations at site ``"x"``.
    ``y`` is ``(batch,)`` integer labels with ``-1`` (``pvae.models.ssvae.UNLABELLED``) for
    unknown ones; ``y=None`` means all unknown. See the module docstring for
    how known labels enter (a point mass in the guide) and how to train.

    Networks: the classifier :math:`q(y \\mid x)` is an MLP
    ``input_dim -> classifier_hidden_dims -> num_classes``; the encoder
    :math:`q(z \\mid x, y)` and decoder :math:`p(x \\mid y, z)` are a conditional
    VAE's (:class:`~pvae.models.ConditionalVAE`'s builders, the one-hot label
    appended to their inputs).

    :param int input_dim: features of ``x``.
    :param int num_classes: number of classes C. Default 10.
    :param int latent_dim: dimension of ``z``. Default 10.
    :param hidden_dims: hidden widths of the encoder; the decoder mirrors them
        unless ``decoder_hidden_dims`` is given. Default ``(256, 128)``.
    :param classifier_hidden_dims: hidden widths of the classifier. Default:
        ``hidden_dims``.
    :param float alpha: weight of the classification loss per labelled datum,
        :math:`\\alpha` in :math:`\\mathcal J^\\alpha` (read by
        :meth:`auxiliary_loss`). Kingma et al. set :math:`\\alpha = 0.1 N` for
        the *mean* over labelled data, i.e. a weight of :math:`0.1 N / N_l` per
        labelled datum: :meth:`kingma_alpha`. Default 1 (Kingma's value with
        10% of the labels).
    :param likelihood: a name from :data:`pvae.models.LIKELIHOODS` or a
        :class:`~pvae.models.likelihoods.Likelihood`. Default ``"bernoulli"``.
    :param float beta: weight of the KL term of ``z``, a finite number > 0. Default 1.
    :param str activation: hidden activation. Default ``"relu"``.
    :param decoder_hidden_dims: hidden widths of the decoder.
    :param dict likelihood_kwargs: options of the likelihood.
    """

    #: how each positional argument is read (:mod:`pvae.inputs`), and its name in errors
    data_kinds = ("features", "labels")
    data_names = ("x", "y")
    #: pvae.fit's objective for it (see :class:`~pvae.models.base.Program`): the label is
    #: summed out exactly and the classifier's loss added; "elbo" would sample the label
    #: with no gradient for the classifier, which then stays at chance
    objectives = ("enum_elbo",)

    def __init__(
        self,
        input_dim: int,
        num_classes: int = 10,
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (256, 128),
        classifier_hidden_dims: Sequence[int] | None = None,
        alpha: float = 1.0,
        likelihood: LikelihoodName | Likelihood = "bernoulli",
        beta: float = 1.0,
        activation: Activation = "relu",
        decoder_hidden_dims: Sequence[int] | None = None,
        likelihood_kwargs: dict | None = None,
    ) -> None:
        num_classes = _check_dim("num_classes", num_classes)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}.")
        super().__init__(input_dim, latent_dim, hidden_dims, likelihood, beta, activation,
                         decoder_hidden_dims, likelihood_kwargs, condition_dim=num_classes)
        self.num_classes, self.alpha = num_classes, float(alpha)
        cls_hidden = tuple(hidden_dims if classifier_hidden_dims is None else classifier_hidden_dims)
        self.classifier = mlp(self.input_dim, cls_hidden, num_classes, activation=activation)
        self.register_buffer("prior_logits", torch.zeros(num_classes), persistent=False)

    @staticmethod
    def kingma_alpha(num_data: int, num_labelled: int) -> float:
        """Kingma et al.'s :math:`\\alpha = 0.1 N` as a weight per labelled datum: :math:`0.1 N / N_l`.

        :param int num_data: N, all training data (labelled and unlabelled).
        :param int num_labelled: :math:`N_l`, the labelled ones.
        """
        if num_labelled < 1 or num_data < num_labelled:
            raise ValueError(f"need 1 <= num_labelled <= num_data, got {num_labelled} and {num_data}.")
        return 0.1 * num_data / num_labelled

    # -- arguments ---------------------------------------------------------------
    def validate(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Check ``x`` and ``y``; called once by :func:`pvae.fit`.

        :raises ValueError: on wrong shapes, values outside the likelihood's
            support, or labels outside ``-1..num_classes-1``.
        """
        self._check_x(x)
        if y is None:
            return
        if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dtype == torch.bool:
            raise DataTypeError(
                f"y must be an integer tensor of labels (-1 for unknown), got "
                f"{getattr(y, 'dtype', type(y).__name__)}. Try y.long()."
            )
        if y.shape != (x.shape[0],):
            raise DataError(f"y must have shape ({x.shape[0]},) (one label per row of x), got {tuple(y.shape)}.")
        if y.numel() and (y.min() < UNLABELLED or y.max() >= self.num_classes):
            raise DataError(
                f"labels y must lie in 0..{self.num_classes - 1}, or be {UNLABELLED} for unknown; "
                f"got values in {int(y.min())}..{int(y.max())}."
            )

    def _check_classes(self, y, unknown: bool, what: str, hint: str = "") -> torch.Tensor:
        """``y`` as a long tensor of classes in ``0..num_classes-1`` (and ``-1`` if
        ``unknown``), or a clear error. The helpers below call it: an integer outside the
        range would otherwise become an all-zero one-hot, a decoder input no class gives."""
        if isinstance(y, bool) or (isinstance(y, torch.Tensor) and y.dtype == torch.bool):
            raise DataTypeError(f"{what} must be integer class labels, got a bool.")
        if not isinstance(y, torch.Tensor):
            try:
                y = torch.as_tensor(y)
            except (TypeError, ValueError, RuntimeError):
                raise DataTypeError(f"{what} must be integer class labels, got {type(y).__name__}.") from None
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise DataTypeError(f"{what} must be integer class labels, got {y.dtype}. Try y.long().")
        low = UNLABELLED if unknown else 0
        if y.numel() and (int(y.min()) < low or int(y.max()) >= self.num_classes):
            allowed = f"0..{self.num_classes - 1}" + (f", or {UNLABELLED} for unknown" if unknown else "")
            hint = "" if unknown or int(y.min()) != UNLABELLED else f" {UNLABELLED} (unknown) is not a class here{hint}."
            raise DataError(
                f"{what} must lie in {allowed} (num_classes={self.num_classes}); got values in "
                f"{int(y.min())}..{int(y.max())}.{hint}"
            )
        return y.long()

    def _one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return one_hot(y, self.num_classes, self.prior_loc.dtype)

    def _guide_logits(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        """Logits of the label's guide, ``(batch, C)``: the classifier's where ``y``
        is unknown, a point mass at the label where known; and whether any is unknown."""
        logits = self._modules["classifier"](x)
        if y is None:
            return logits, True
        known = y >= 0
        point = torch.where(self._one_hot(y.clamp(min=0)) > 0, 0.0, _LOG_ZERO).to(logits.dtype)
        return torch.where(known.unsqueeze(-1), point, logits), not bool(known.all())

    # -- the program -------------------------------------------------------------
    @pyro_method
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """p(x, y, z): the generative program. Returns the label sample."""
        if is_validation_enabled():
            self.validate(x, y)
        nets = self._modules
        with pyro.plate(DATA_PLATE, x.shape[0], dim=-1):
            label = pyro.sample(LABEL_SITE, dist.Categorical(logits=self.prior_logits))
            with self._beta_scaled():
                z = pyro.sample(LATENT_SITE, self._prior())
            px = nets["likelihood"](nets["decoder"](_broadcast_cat(z, self._one_hot(label))))
            pyro.sample(OBS_SITE, px.to_event(1), obs=x)
        return label

    @pyro_method
    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """q(y | x) q(z | x, y): the classifier (a point mass where y is known),
        then the style encoder. Returns the label sample (or its enumeration)."""
        nets = self._modules
        logits, any_unknown = self._guide_logits(x, y)
        # a batch of known labels has nothing to sum over: sample the point masses
        infer = {"enumerate": "parallel"} if any_unknown else {}
        with pyro.plate(DATA_PLATE, x.shape[0], dim=-1):
            label = pyro.sample(LABEL_SITE, dist.Categorical(logits=logits), infer=infer)
            h = nets["encoder_body"](_broadcast_cat(x, self._one_hot(label)))
            loc, scale = nets["encoder_head"](h)
            with self._beta_scaled():
                pyro.sample(LATENT_SITE, diagonal_normal(loc, scale))
        return label

    def auxiliary_loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Kingma et al.'s classification term, :math:`\\alpha \\sum_{\\text{labelled}} -\\log q_\\phi(y \\mid x)`.

        A loss (scalar, summed over the labelled rows of the batch, 0 if there
        are none), not part of any bound: :class:`pvae.infer.EnumElboObjective`
        adds it to the loss it minimises.
        """
        if y is None or self.alpha == 0:
            return x.new_zeros(())
        known = y >= 0
        if not bool(known.any()):
            return x.new_zeros(())
        logits = self._modules["classifier"](x[known])
        return self.alpha * F.cross_entropy(logits, y[known].long(), reduction="sum")

    # -- the classifier ----------------------------------------------------------
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities :math:`q_\\phi(y \\mid x)`: ``(batch, num_classes)``."""
        return torch.softmax(self._modules["classifier"](x), dim=-1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's most probable class: ``(batch,)`` int64."""
        return self._modules["classifier"](x).argmax(-1)

    def _labels(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """``y`` with the unknown labels filled by the classifier's prediction.

        :raises DataError: if ``y`` is not ``(batch,)`` integer labels in ``-1..num_classes-1``.
        """
        predicted = self.predict(x)
        if y is None:
            return predicted
        y = self._check_classes(y, unknown=True, what="labels y")
        if y.shape != predicted.shape:
            raise DataError(f"y must have shape {tuple(predicted.shape)} (one label per row of x), "
                            f"got {tuple(y.shape)}.")
        return torch.where(y >= 0, y, predicted)

    # -- conveniences ------------------------------------------------------------
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of q(z | x, y): ``(loc, scale)``, each ``(batch, latent_dim)``;
        unknown labels (``-1`` or ``y=None``) are the classifier's prediction.

        :raises DataError: on labels outside ``-1..num_classes-1`` or of the wrong shape.
        :raises DataTypeError: on labels that are not integers.
        """
        nets = self._modules
        h = nets["encoder_body"](_broadcast_cat(x, self._one_hot(self._labels(x, y))))
        return nets["encoder_head"](h)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> dist.TorchDistribution:
        """p(x | y, z), batch shape ``z.shape[:-1]``, event shape ``(input_dim,)``.

        :param torch.Tensor z: ``(..., latent_dim)``.
        :param torch.Tensor y: integer classes in ``0..num_classes-1`` (an int, or a
            tensor broadcasting with ``z.shape[:-1]``); ``-1`` (unknown) is refused:
            the decoder needs a class.
        :raises DataError: on a class outside ``0..num_classes-1``.
        :raises DataTypeError: on labels that are not integers.
        """
        y = self._check_classes(y, unknown=False, what="classes y",
                                hint=": the decoder needs a class (predict(x) gives the classifier's)")
        y = y.to(self.prior_loc.device)
        nets = self._modules
        return nets["likelihood"](nets["decoder"](_broadcast_cat(z, self._one_hot(y)))).to_event(1)

    @torch.no_grad()
    def sample(self, num_samples: int, y: torch.Tensor | int | None = None, mean: bool = False) -> torch.Tensor:
        """Draws from p(x) (or p(x | y)): ``(num_samples, input_dim)``.

        :param int num_samples: rows to draw.
        :param y: a class for all rows, ``(num_samples,)`` classes, or None to
            draw the class from the uniform prior. Classes must lie in
            ``0..num_classes-1``; ``-1`` (unknown) is refused, use None.
        :param bool mean: return the decoder's mean instead of a draw.
        :raises DataError: on a class outside ``0..num_classes-1``.
        :raises DataTypeError: on labels that are not integers.
        """
        if y is None:
            y = dist.Categorical(logits=self.prior_logits).sample((num_samples,))
        y = self._check_classes(y, unknown=False, what="classes y",
                                hint=": pass y=None to draw the class from the prior").to(self.prior_loc.device)
        if y.dim() > 1 or (y.dim() == 1 and y.shape[0] not in (1, num_samples)):
            raise DataError(f"y must be one class or ({num_samples},) classes, got shape {tuple(y.shape)}.")
        y = y.expand(num_samples)
        z = self._prior().sample((num_samples,))
        px = self.decode(z, y)
        return self.likelihood.point(px.base_dist) if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's point reconstruction at the encoder mean (with the known
        or predicted label; ``-1`` or ``y=None``: predicted), shape of ``x``.

        :raises DataError: on labels outside ``-1..num_classes-1`` or of the wrong shape.
        """
        labels = self._labels(x, y)
        loc, _ = self.encode(x, labels)
        return self.likelihood.point(self.decode(loc, labels).base_dist)
