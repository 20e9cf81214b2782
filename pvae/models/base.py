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

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol, TypeVar, runtime_checkable

import pyro

from ..inputs import as_data_args, program_owner

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
    "program_verb",
    "split_program",
]

_F = TypeVar("_F", bound=Callable[..., Any])



@runtime_checkable
class Program(Protocol):
    """Anything with a Pyro ``model`` and ``guide`` of the same signature.

    Optionally a program declares ``objectives``, a tuple of the objective names
    (:func:`pvae.infer.make_objective`) it trains correctly with; the first is
    :func:`pvae.fit`'s default for it, and ``fit`` refuses another name (an
    :class:`~pvae.infer.Objective` instance is taken as the user's choice).
    E.g. a semi-supervised VAE's discrete label must be summed out exactly
    (``("enum_elbo",)``); a relaxed-categorical VAE's training densities are a
    relaxation, not importance weights (``("elbo",)``).
    """

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


def _is_program(value: Any) -> bool:
    return callable(getattr(value, "model", None)) and callable(getattr(value, "guide", None))


def split_program(verb: str, args: tuple[Any, ...], guide: Callable[..., Any] | None = None) -> tuple[Program, tuple[Any, ...]]:
    """Read a verb's positional arguments in either of pvae's two calling conventions.

    ``verb(model, guide, *args)``, Pyro's convention (as ``Trace_ELBO().loss`` and
    ``Predictive`` read it), or ``verb(program, *args)`` for anything with
    ``.model`` and ``.guide``. A second positional argument that is callable is
    the guide (data never are). ``vae.model, vae.guide`` are recognised as the
    program ``vae`` itself, so its dtype, device and declared data kinds apply.

    :param str verb: the verb's name, for the error message.
    :param tuple args: the verb's positional arguments.
    :param guide: a guide given by keyword (the older ``guide=`` form of the
        amortisation verbs); then ``args[0]`` is the model.
    :returns: ``(program, data_args)``.
    :raises TypeError: naming both accepted forms when neither fits.
    """
    first = args[0] if args else None
    if guide is None and len(args) >= 2 and callable(args[1]) and not _is_program(args[1]):
        guide, args = args[1], (first, *args[2:])
    if guide is not None:
        if not callable(first) or not callable(guide):
            raise TypeError(_convention_error(verb, args[:1] + (guide,)))
        return program_owner(ModelGuidePair(first, guide)), tuple(args[1:])
    if _is_program(first):
        return first, tuple(args[1:])
    raise TypeError(_convention_error(verb, args[:2]))


def _convention_error(verb: str, got: tuple[Any, ...]) -> str:
    seen = ", ".join(type(a).__name__ for a in got) or "nothing"
    return (
        f"{verb}() takes {verb}(model, guide, *data, ...) with two callables, or "
        f"{verb}(program, *data, ...) with an object that has .model and .guide; got ({seen}). "
        "Try pvae.models.ModelGuidePair(model, guide) for a hand-written pair."
    )


def _validate(program: Any, data: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Run the program's ``validate(*data, **model_kwargs)`` when it has one; the
    verb's keyword arguments that ``validate`` names (e.g. a multimodal program's
    ``present``) go with the data."""
    validate = getattr(program_owner(program), "validate", None)
    if not callable(validate):
        return
    names = {
        p.name for p in inspect.signature(validate).parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    validate(*data, **{k: v for k, v in kwargs.items() if k in names})


def program_verb(
    form: Literal["pair", "program"] = "program",
    *,
    convert: bool = True,
    guide_keyword: bool = False,
) -> Callable[[_F], _F]:
    """Decorate a verb so that it accepts both calling conventions and any array.

    The decorated function is called as ``verb(model, guide, *data, **kwargs)``
    or ``verb(program, *data, **kwargs)`` (see :func:`split_program`). The body
    receives ``(model, guide, *data)`` with ``form="pair"`` and
    ``(program, *data)`` with ``form="program"``; with ``convert`` the data pass
    through :func:`pvae.inputs.as_data_args` on the way (NumPy, pandas, any
    dtype -> the program's dtype and device), then through the program's own
    ``validate(*data)`` when it has one (the check :func:`pvae.fit` runs), so
    that NaN without a mask or data off the likelihood's support get the same
    clear error in every verb instead of a failure deep inside the guide.

    :param str form: what the body takes, ``"pair"`` or ``"program"``.
    :param bool convert: convert the positional data. Default True.
    :param bool guide_keyword: also accept the guide as a ``guide=`` keyword.
    """
    if form not in ("pair", "program"):
        raise ValueError(f"form must be 'pair' or 'program', got {form!r}.")

    def decorate(fn: _F) -> _F:
        @functools.wraps(fn)
        def verb(*args: Any, **kwargs: Any) -> Any:
            guide = kwargs.pop("guide", None) if guide_keyword else None
            program, data = split_program(fn.__name__, args, guide)
            if convert:
                data = as_data_args(program, data)
                _validate(program, data, kwargs)
            if form == "pair":
                return fn(program.model, program.guide, *data, **kwargs)
            return fn(program, *data, **kwargs)

        return verb  # type: ignore[return-value]

    return decorate
