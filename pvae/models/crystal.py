"""A VAE for periodic crystals: a lattice that is always valid, fractional
coordinates on the torus, atom types.

A crystal is a cell (three vectors, the rows of :math:`A`) and ``atoms`` slots,
each empty or holding an atom of a species at fractional coordinates
:math:`f \\in [0, 1)^3` (Cartesian position :math:`f A`). With the decoder's
outputs :math:`(r, \\ell, c)` of :math:`z`,

.. math::

    z \\sim \\mathcal N(0, I), \\qquad
    \\lambda(A) \\sim \\mathcal N\\big(\\lambda(L_\\theta(z)), \\mathrm{diag}\\,\\sigma^2\\big), \\qquad
    s_j \\sim \\mathrm{Categorical}(\\mathrm{softmax}\\,\\ell_j(z)),

    f_{jk} \\sim \\mathrm{vonMises}\\big(2\\pi \\mu_{jk}(z), \\kappa_{jk}\\big)
    \\ \\text{on the circle of circumference 1, for } s_j \\ne 0,

where :math:`L_\\theta(z)` = :func:`~pvae.models.lattice_from_raw` of the
decoder's six lattice outputs (an LLL-reduced cell for *every* :math:`z`: the
decoder cannot write an invalid lattice), :math:`\\lambda` the
rotation-invariant :func:`~pvae.models.lattice_coordinates` (log Gram-Schmidt
lengths and the coefficients :math:`\\mu_{ij}`; any draw of them is a valid cell
too), species 0 an empty slot whose coordinates are not observed, and the
location :math:`\\mu_{jk}` read from a (cos, sin) pair (the ``von_mises``
likelihood). ``coordinates="normal"`` puts a Normal on the fractional
coordinates instead, same networks: the baseline that the periodic likelihood
is measured against, which calls 0.99 and 0.01 far apart. The encoder reads the
lattice coordinates, the one-hot species and :math:`(\\cos 2\\pi f, \\sin 2\\pi f)`
of each present atom (zeros for empty slots), in both variants.

Fixed-length slots with an empty species are the simplest way to a fixed
number of atoms per cell; the order of the slots is the data's (a prototype's
atoms in a fixed order), so the program is not invariant to permuting atoms or
translating the origin; equivariant decoders (CDVAE's score network) are
beyond a VAE's decoder here.

References

1. T. Xie, X. Fu, O.-E. Ganea, R. Barzilay, T. Jaakkola. Crystal Diffusion
   Variational Autoencoder for Periodic Material Generation. ICLR 2022.
2. J. Noh et al. Inverse design of solid-state materials via a continuous
   representation. Matter 1, 2019 (a VAE over crystal images).
3. Seeds 000 and 001: a crystal likelihood must respect periodic boundaries and
   the requirements of a valid lattice.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import pyro
import torch
from pyro.infer import is_validation_enabled
from pyro.nn import pyro_method

from ..inputs import DataError, DataTypeError
from .base import DATA_PLATE, LATENT_SITE
from .likelihoods import SupportError, make_likelihood
from .nets import Activation, NormalHead, diagonal_normal, mlp, one_hot
from .registry import Example, register_model
from .structures import lattice_coordinates, lattice_from_coordinates, reduced_lattice_coordinates
from .vae import _check_dim, _StandardNormalLatent

__all__ = ["CrystalVAE"]

LATTICE_SITE, SPECIES_SITE, COORDINATE_SITE = "lattice", "species", "frac"


def _example() -> Example:
    from ..data import crystals

    c = crystals(8, ("cscl", "perovskite"), seed=int(torch.randint(2**31, ())))
    kwargs = {"atoms": 5, "num_species": 7, "latent_dim": 2, "hidden_dims": (8,)}
    return Example(kwargs, (c.lattice, c.frac, c.species), observed=(0, 1, 2))


@register_model("crystal_vae", example=_example)
class CrystalVAE(_StandardNormalLatent):
    """Periodic crystals with a fixed number of atom slots: ``model(lattice, frac, species)``.

    ``lattice`` ``(batch, 3, 3)``: the cell vectors as rows (any orientation; an
    LLL-reduced basis, as :func:`pvae.data.crystals` gives and pymatgen's
    ``Structure.get_reduced_structure("LLL")`` makes, is what the decoder spans);
    ``frac`` ``(batch, atoms, 3)``: fractional coordinates in [0, 1) (anything,
    NaN included, in empty slots); ``species`` ``(batch, atoms)``: integer codes in
    ``0..num_species-1``, 0 = empty slot. Sites ``"z"``, ``"lattice"`` (the six
    :func:`~pvae.models.lattice_coordinates`), ``"species"``, ``"frac"`` (the
    ``3 * atoms`` coordinates of the present atoms), cells in
    ``pyro.plate("data", dim=-1)``.

    :param int atoms: slots per cell.
    :param int num_species: species codes, the empty slot (0) included.
    :param str coordinates: ``"von_mises"`` (periodic, default) or ``"normal"``
        (Euclidean, the baseline) for the fractional coordinates.
    :param int latent_dim: Default 8.
    :param hidden_dims: encoder widths; the decoder mirrors them. Default ``(256, 128)``.
    :param float beta: weight of the KL term, a finite number > 0. Default 1.
    :param str activation: Default ``"relu"``.
    :param lattice_scale: standard deviation of the Normal over the six lattice
        coordinates: ``"learned"`` (default, one per coordinate) or a number. A
        learned scale explains strain that is independent from coordinate to
        coordinate as noise (a factor-analysis model cannot tell the two apart, and
        the KL term charges for encoding it): reconstructed cell lengths then err by
        about the strain's spread (0.115 Å on :func:`pvae.data.crystals`). A small fixed
        scale (0.005: half a percent of a length) makes the encoder carry the strain
        (0.059 Å).
    """

    data_kinds = ("features", "any", "labels")
    data_names = ("lattice", "frac", "species")

    def __init__(
        self,
        atoms: int,
        num_species: int,
        coordinates: Literal["von_mises", "normal"] = "von_mises",
        latent_dim: int = 8,
        hidden_dims: Sequence[int] = (256, 128),
        beta: float = 1.0,
        activation: Activation = "relu",
        lattice_scale: float | Literal["learned"] = "learned",
    ) -> None:
        super().__init__(latent_dim, beta)
        self.atoms = _check_dim("atoms", atoms)
        self.num_species = _check_dim("num_species", num_species)
        if self.num_species < 2:
            raise ValueError(f"num_species must be >= 2 (the empty slot and one element), got {num_species}.")
        if coordinates not in ("von_mises", "normal"):
            raise ValueError(f"coordinates must be 'von_mises' or 'normal', got {coordinates!r}.")
        self.coordinates = coordinates
        self.lattice_likelihood = make_likelihood("normal", 6, scale=lattice_scale)
        self.species_likelihood = make_likelihood("categorical", self.atoms,
                                                  cardinalities=[self.num_species] * self.atoms)
        self.coordinate_likelihood = make_likelihood(
            coordinates, 3 * self.atoms, **({"period": 1.0} if coordinates == "von_mises" else {}))
        hidden_dims = tuple(hidden_dims)
        enc_in = 6 + self.atoms * (self.num_species + 6)
        self.encoder_body = mlp(enc_in, hidden_dims, activation=activation)
        self.encoder_head = NormalHead(hidden_dims[-1] if hidden_dims else enc_in, self.latent_dim)
        self._splits = [6, self.species_likelihood.output_dim, self.coordinate_likelihood.output_dim]
        self.decoder = mlp(self.latent_dim, tuple(reversed(hidden_dims)), sum(self._splits), activation=activation)
        # the encoder reads (lattice_coordinates - input_loc) / input_scale; identity until standardize_inputs
        self.register_buffer("input_loc", torch.zeros(6))
        self.register_buffer("input_scale", torch.ones(6))
        self.register_buffer("inputs_standardized", torch.tensor(False))

    @torch.no_grad()
    def standardize_inputs(self, lattice: torch.Tensor) -> None:
        """Standardise the encoder's six lattice inputs to mean 0 and standard deviation 1 over
        the cells of ``lattice`` (deviations floored at 1e-3). :func:`pvae.fit` calls it once
        (:meth:`on_fit_start`); the statistics are buffers in the ``state_dict``. Why: strained
        cells differ by a few percent (log-lengths 1.5 +- 0.03), a signal the first layer
        barely sees unscaled. Measured on :func:`pvae.data.crystals` (3000 cells, 150 epochs,
        ``lattice_scale=0.005``): mean error of the reconstructed cell lengths 0.111 Å
        without, 0.059 Å with, training loss 11.3 and -25.5 nats per cell."""
        coords = lattice_coordinates(lattice)
        self.input_loc.copy_(coords.mean(0))
        self.input_scale.copy_(coords.std(0).nan_to_num(1.0).clamp(min=1e-3))
        self.inputs_standardized.fill_(True)

    def on_fit_start(self, lattice: torch.Tensor, frac: torch.Tensor, species: torch.Tensor) -> None:
        """Called by :func:`pvae.fit` before training: :meth:`standardize_inputs`, once."""
        if not bool(self.inputs_standardized):
            self.standardize_inputs(lattice)

    # -- inputs ------------------------------------------------------------------
    def validate(self, lattice: torch.Tensor, frac: torch.Tensor, species: torch.Tensor) -> None:
        """Check shapes, dtypes and supports; called once by :func:`pvae.fit`.

        :raises DataError: on wrong shapes, species codes out of range, a degenerate cell,
            or present atoms whose coordinates are NaN or outside [0, 1)
            (:class:`~pvae.models.SupportError`).
        """
        n = lattice.shape[0] if isinstance(lattice, torch.Tensor) and lattice.dim() else 0
        for name, value, shape in (("lattice", lattice, (n, 3, 3)), ("frac", frac, (n, self.atoms, 3)),
                                   ("species", species, (n, self.atoms))):
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise DataError(f"{name} must have shape {shape} (cells, ...), got {got}.")
        if species.is_floating_point() or species.dtype == torch.bool:
            raise DataTypeError(f"species must be integer codes, got {species.dtype}.")
        if n and (species.min() < 0 or species.max() >= self.num_species):
            raise DataError(f"species codes must lie in 0..{self.num_species - 1} (0 = empty slot), got "
                            f"{int(species.min())}..{int(species.max())}.")
        if not torch.isfinite(lattice).all():
            raise DataError("lattice holds NaN or infinite entries.")
        try:
            lattice_coordinates(lattice)
        except ValueError as err:
            raise DataError(str(err)) from None
        present = (species > 0).unsqueeze(-1).expand_as(frac)
        bad = present & ~((frac >= 0) & (frac < 1))
        if bool(bad.any()):
            cell, slot, axis = (int(i) for i in bad.nonzero()[0])
            raise SupportError(
                f"frac[{cell}, {slot}, {axis}] = {float(frac[cell, slot, axis])} is not a fractional coordinate "
                "in [0, 1) of a present atom (species > 0). Try frac % 1, or species 0 for an empty slot."
            )

    def _features(self, lattice: torch.Tensor, frac: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        present = (species > 0).unsqueeze(-1)
        angle = 2 * math.pi * torch.where(present, frac, torch.zeros_like(frac))
        circle = torch.cat([angle.cos(), angle.sin()], -1) * present
        cell = (lattice_coordinates(lattice) - self.input_loc) / self.input_scale
        return torch.cat([cell, one_hot(species, self.num_species, lattice.dtype).flatten(-2),
                          circle.flatten(-2)], -1)

    def _decode(self, z: torch.Tensor):
        raw_lattice, raw_species, raw_frac = self._modules["decoder"](z).split(self._splits, -1)
        return (self.lattice_likelihood(reduced_lattice_coordinates(raw_lattice)),
                self.species_likelihood(raw_species), self.coordinate_likelihood(raw_frac))

    # -- the program --------------------------------------------------------------
    @pyro_method
    def model(self, lattice: torch.Tensor, frac: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """p(lattice, species, frac, z). Returns the latent sample."""
        if is_validation_enabled():
            self.validate(lattice, frac, species)
        present = (species > 0).repeat_interleave(3, -1)
        coords = torch.where(present, frac.flatten(-2), torch.zeros_like(frac.flatten(-2)))
        with pyro.plate(DATA_PLATE, lattice.shape[0], dim=-1):
            with self._beta_scaled():
                z = pyro.sample(LATENT_SITE, self._prior())
            p_lattice, p_species, p_frac = self._decode(z)
            pyro.sample(LATTICE_SITE, p_lattice.to_event(1), obs=lattice_coordinates(lattice))
            pyro.sample(SPECIES_SITE, p_species.to_event(1), obs=species)
            pyro.sample(COORDINATE_SITE, p_frac.mask(present).to_event(1), obs=coords)
        return z

    @pyro_method
    def guide(self, lattice: torch.Tensor, frac: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """q(z | crystal): the amortised encoder. Returns the latent sample."""
        loc, scale = self.encode(lattice, frac, species)
        with pyro.plate(DATA_PLATE, lattice.shape[0], dim=-1):
            with self._beta_scaled():
                return pyro.sample(LATENT_SITE, diagonal_normal(loc, scale))

    # -- conveniences -------------------------------------------------------------
    def encode(self, lattice: torch.Tensor, frac: torch.Tensor, species: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of q(z | crystal): ``(loc, scale)``, each ``(batch, latent_dim)``."""
        nets = self._modules
        return nets["encoder_head"](nets["encoder_body"](self._features(lattice, frac, species)))

    def _structures(self, z: torch.Tensor, mean: bool) -> list[torch.Tensor]:
        p_lattice, p_species, p_frac = self._decode(z)
        if mean:
            coords = p_lattice.mean
            species = self.species_likelihood.point(p_species)
            frac = self.coordinate_likelihood.point(p_frac)
        else:
            coords, species, frac = p_lattice.sample(), p_species.sample(), p_frac.sample()
        return [lattice_from_coordinates(coords), frac.unflatten(-1, (self.atoms, 3)), species]

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> list[torch.Tensor]:
        """Generate crystals: ``[lattice (n, 3, 3), frac (n, atoms, 3), species (n, atoms)]``
        from :math:`z \\sim p(z)`, each part at its point value (``mean=True``: the decoded
        lattice, the likeliest species, the location of each coordinate) or drawn from its
        likelihood (``mean=False``). Every lattice is valid by construction. The species
        say which slots hold atoms: the coordinates of an empty slot (species 0) are the
        decoder's, finite and meaningless. Coordinates are wrapped into [0, 1) for
        ``coordinates="von_mises"`` and left as decoded for ``"normal"``."""
        return self._structures(self._prior().sample((num_samples,)), mean)

    @torch.no_grad()
    def reconstruct(self, lattice: torch.Tensor, frac: torch.Tensor, species: torch.Tensor) -> list[torch.Tensor]:
        """The point reconstruction at the encoder mean: ``[lattice, frac, species]`` as in
        :meth:`sample` (the lattice in lower-triangular form)."""
        return self._structures(self.encode(lattice, frac, species)[0], True)
