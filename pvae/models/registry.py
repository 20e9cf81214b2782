"""The model zoo: pvae's programs by name.

Every entry is a class (or factory) whose instances are pvae programs
(``model`` / ``guide`` of one signature). An entry also carries a small
worked example (constructor keyword arguments and a batch of model arguments)
that the parametrised zoo test runs through every tool, so a new model is
tested the moment it is registered::

    @register_model("cvae", example=lambda: ({"input_dim": 6, "num_classes": 3},
                                             (torch.rand(8, 6).round(), torch.arange(8) % 3)))
    class ConditionalVAE(...): ...

    vae = pvae.models.get_model("cvae", input_dim=64, num_classes=10)
    pvae.models.list_models()   # ['cvae', 'denoising_vae', 'linear_vae', ...]

Options of an objective (beta, IWAE, DReG, Renyi) are not zoo entries (DESIGN
principle 2), and neither are the test oracles of :mod:`pvae.models.oracles`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import torch

from .vae import VAE

__all__ = ["Example", "ModelEntry", "get_model", "list_models", "model_entry", "register_model"]

T = TypeVar("T")


@dataclass(frozen=True)
class Example:
    """A small worked example of a registered model, for tests and docs.

    :ivar dict kwargs: constructor keyword arguments of a small instance.
    :ivar tuple args: positional arguments of ``model`` / ``guide`` (a small
        batch); all tensors, so that ``pvae.fit(program, args)`` takes them.
    :ivar tuple observed: indices into ``args`` of the observed data; their
        shapes are what ``reconstruct(*args)`` returns (one tensor, or a list
        with one per index). Default ``(0,)``.
    :ivar tuple sample_args: positional arguments of ``sample``. Default
        ``(4,)`` (four draws). The draws have shape ``(sample_size, features)``
        for each observed index.
    :ivar int sample_size: rows drawn by ``sample(*sample_args)``. Default 4.
    :ivar dict unsupported: generic checks of the zoo test this model cannot
        pass, by name, each with the reason (the test then checks that the
        tool really refuses it, and skips it). Known names:
        ``"mutual_information"`` (the batch-mixture estimator of
        :func:`pvae.infer.mutual_information` needs a guide whose sites depend
        on ``x`` only; ``pvae.fit``'s collapse diagnostics use it). Default none.
    """

    kwargs: dict[str, Any]
    args: tuple[Any, ...]
    observed: tuple[int, ...] = (0,)
    sample_args: tuple[Any, ...] = (4,)
    sample_size: int = 4
    unsupported: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    :ivar str name: its registry name.
    :ivar factory: the class (or callable) ``get_model`` calls with keyword arguments.
    :ivar example: a callable returning an :class:`Example` (or a
        ``(kwargs, args)`` pair), or None.
    """

    name: str
    factory: Callable[..., Any]
    example_fn: Callable[[], Example | tuple] | None = field(default=None, repr=False)

    def example(self) -> Example:
        """A fresh :class:`Example` (new tensors from the current torch seed).

        :raises ValueError: if the entry was registered without one.
        """
        if self.example_fn is None:
            raise ValueError(
                f"model {self.name!r} was registered without an example. Try "
                f"register_model({self.name!r}, example=lambda: (kwargs, args))."
            )
        ex = self.example_fn()
        if isinstance(ex, Example):
            return ex
        if isinstance(ex, tuple) and len(ex) == 2 and isinstance(ex[0], dict):
            return Example(dict(ex[0]), tuple(ex[1]))
        raise TypeError(
            f"the example of model {self.name!r} must return an Example or a (kwargs, args) pair, "
            f"got {type(ex).__name__}."
        )

    def build(self, **overrides: Any) -> tuple[Any, Example]:
        """The example's program and its :class:`Example`: ``(program, example)``."""
        ex = self.example()
        return self.factory(**{**ex.kwargs, **overrides}), ex


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, *, example: Callable[[], Example | tuple] | None = None
) -> Callable[[T], T]:
    """Class decorator: add a program class to the zoo under ``name``.

    :param str name: the registry name (lower case, e.g. ``"cvae"``).
    :param example: a callable returning an :class:`Example` or a
        ``(kwargs, args)`` pair: small constructor arguments and a batch of
        model arguments. The zoo test runs every registered model's example.
    :raises ValueError: if ``name`` is taken by another class.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}.")

    def decorate(factory: T) -> T:
        old = _REGISTRY.get(name)
        if old is not None and getattr(old.factory, "__qualname__", None) != getattr(factory, "__qualname__", None):
            raise ValueError(
                f"model name {name!r} is already registered for {old.factory!r}. Try another name; "
                f"registered: {list_models()}."
            )
        _REGISTRY[name] = ModelEntry(name, factory, example)
        return factory

    return decorate


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` registered under ``name``.

    :raises ValueError: naming the known models if ``name`` is not one.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model {name!r}; known models: {list_models()}. "
            "Try pvae.models.list_models(), or register_model(name) on your class."
        ) from None


def get_model(name: str, **kwargs: Any) -> Any:
    """Build the registered model ``name`` with keyword arguments ``kwargs``.

    :param str name: one of :func:`list_models`.
    :raises ValueError: naming the known models if ``name`` is not one.
    """
    return model_entry(name).factory(**kwargs)


def _vae_example() -> Example:
    x = torch.randint(0, 2, (8, 6)).float()
    return Example({"input_dim": 6, "latent_dim": 2, "hidden_dims": (8,)}, (x,))


register_model("vae", example=_vae_example)(VAE)
