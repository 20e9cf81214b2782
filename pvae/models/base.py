"""The program protocol every pvae tool speaks.

A *program* is any object with two callables, ``model(*args, **kwargs)`` and
``guide(*args, **kwargs)``, taking the same arguments: a Pyro generative model
and its variational family. pvae's own models are programs, and so is a user's
hand-written pair (wrap two functions with :class:`ModelGuidePair`).

Site-name conventions used by pvae's models (user programs may use any names):
``"x"`` observations, ``"z"`` latents, ``"t"`` treatment, ``"y"`` outcome, and
the data plate ``"data"`` at ``dim=-1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import pyro

# pvae's modules keep their parameters to themselves (DESIGN principle 5): with
# this Pyro setting, PyroModule parameters never enter the global param store,
# so two models in one process cannot share parameters through equal names.
# Hand-written ``pyro.param`` sites in users' functions still use the store.
pyro.settings.set(module_local_params=True)

OBS_SITE = "x"
LATENT_SITE = "z"
TREATMENT_SITE = "t"
OUTCOME_SITE = "y"
DATA_PLATE = "data"

__all__ = [
    "DATA_PLATE",
    "LATENT_SITE",
    "OBS_SITE",
    "OUTCOME_SITE",
    "TREATMENT_SITE",
    "ModelGuidePair",
    "Program",
    "as_program",
]



@runtime_checkable
class Program(Protocol):
    """Anything with a Pyro ``model`` and ``guide`` of the same signature."""

    def model(self, *args: Any, **kwargs: Any) -> Any: ...

    def guide(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class ModelGuidePair:
    """A hand-written model/guide pair seen as a :class:`Program`.

    :param callable model: the Pyro model.
    :param callable guide: the Pyro guide, with the same signature.
    """

    model: Callable[..., Any]
    guide: Callable[..., Any]


def as_program(program: Any, guide: Callable[..., Any] | None = None) -> Program:
    """Return ``program`` as a :class:`Program`.

    Accepts an object with ``model`` and ``guide`` callables, or a model
    callable together with ``guide``.

    :raises TypeError: naming what is missing.
    """
    if guide is not None:
        if not callable(program) or not callable(guide):
            raise TypeError(
                f"model and guide must be callables, got {type(program).__name__} "
                f"and {type(guide).__name__}."
            )
        return ModelGuidePair(program, guide)
    missing = [n for n in ("model", "guide") if not callable(getattr(program, n, None))]
    if missing:
        raise TypeError(
            f"{type(program).__name__} is not a pvae program: it has no callable "
            f"{' or '.join(missing)}. Try pvae.models.ModelGuidePair(model, guide) "
            "for a hand-written pair."
        )
    return program
