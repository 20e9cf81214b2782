"""The training step, eager or captured once and replayed.

:class:`TrainStep` is one step of :func:`pvae.fit` before the optimiser update:
the objective on a batch and its backward pass, gradients left in each
parameter's ``.grad``. :class:`CapturedStep` records that whole computation
once per batch signature with :func:`torch.fx.experimental.proxy_tensor.make_fx`
(the program's Python, Pyro's effect handlers and autograd run once; the graph
holds only tensor operations, the reparameterised noise draws among them) and
then replays the graph, optionally compiled by ``torch.compile`` (inductor).

A captured program is assumed static, as JAX assumes of a jitted function. The
assumption is checked, not trusted:

- at the first step and every ``check_every`` steps after, the step runs eagerly
  and the recorded graph is replayed on the same batch from the same random
  state; if their losses or gradients differ, the graph is captured anew from
  that batch (the step itself used the eager result, so no update ever comes
  from a stale graph at a check). Inductor compiles that recorded graph, and
  its output is compared with the recorded graph's once, at the capture, from
  the same random state: the loss, and every trained parameter's gradient (a
  miscompiled backward pass with a right loss would otherwise train wrongly,
  silently), each to float rounding (``_GRAD_RTOL`` states how close). A
  rounding difference that moves a pre-activation across a ReLU's kink changes
  a gradient by more than rounding (up to a few per cent of a small tensor's),
  but only on that batch with that noise, so a gradient disagreement counts
  only if it repeats on a second draw of the noise. A compiled step that
  disagrees is dropped, with a :class:`CaptureWarning` naming what disagreed
  (the parameter and its relative error), and the recorded graph, which the
  checks hold to the eager step, is replayed uncompiled;
- a program that cannot be captured falls back to eager steps with one
  :class:`CaptureWarning` naming the reason and the sample site where it
  happened: data-dependent Python control flow or ``.item()`` (make_fx refuses
  to read a traced value), Python-side randomness (``random`` / ``numpy.random``
  draws would be frozen into the graph), enumerated discrete sites, and a
  program that changes its own Python state every step (``on_train_step``, e.g.
  a Gumbel-softmax temperature schedule, would be frozen too).

Batches of another shape than the captured one (the last partial batch of an
epoch) run eagerly rather than paying for a second capture.

A program may ask :func:`is_capturing` and take a fixed-shape path while it is
being recorded and a faster, data-dependent one when it runs eagerly (CEVAE's
twin heads run each arm's network on that arm's rows eagerly, both networks on
every row under capture); the two must agree to float tolerance, which the
checks above verify, and such a program's captured run matches its eager run
to float rounding rather than to the bit.

The KL warm-up weight is a graph input (a 0-d tensor), so a schedule changes it
without a new capture. The captured graph draws its noise from torch's global
generator exactly as the eager step does, so with ``mode="graph"`` a captured
run equals the eager run to the bit under the same seed (and resumes exactly);
inductor's fused kernels round differently, so ``mode="inductor"`` matches
eager only to float tolerance (it is told to use torch's generator too).

References

1. J. Ansel et al. PyTorch 2: Faster machine learning through dynamic Python
   bytecode transformation and graph compilation. ASPLOS 2024.
2. R. Frostig, M. J. Johnson, C. Leary. Compiling machine learning programs via
   high-level tracing. SysML 2018 (JAX's tracing assumption).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import random
import time
import warnings
from typing import Any, Callable, Literal, Sequence

import numpy as np
import pyro
import torch
from pyro.poutine.messenger import Messenger
from torch.utils._python_dispatch import TorchDispatchMode

from .._stack import user_stacklevel
from .objectives import EnumElboObjective, Objective, StepTerms

CaptureMode = Literal["graph", "inductor"]
CAPTURE_MODES: tuple[str, ...] = ("graph", "inductor")

__all__ = ["CAPTURE_MODES", "CaptureMode", "CaptureWarning", "CapturedFunction", "CapturedStep", "TrainStep",
           "capture_mode", "is_capturing", "make_train_step", "trace_graph"]

_capturing = 0  # trace_graph calls under way (make_fx is running a program)


def is_capturing() -> bool:
    """Whether a program is being recorded into a graph right now (by ``make_fx``, for
    ``compile=`` in :func:`pvae.fit`, the bounds and CEVAE).

    A captured graph holds fixed shapes and cannot read tensor values into
    Python; a program may branch on this to keep to that while it is recorded
    and take a data-dependent, cheaper path when it runs eagerly.
    """
    return _capturing > 0


class CaptureWarning(UserWarning):
    """The training step could not be captured (or captured usefully) and runs eagerly."""


class _Uncapturable(Exception):
    def __init__(self, reason: str, site: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.site = reason, site


class TrainStep:
    """The eager step: objective on a batch, backward pass, gradients in ``.grad``.

    :param program: the program (``model`` and ``guide``).
    :param objective: the training objective.
    :param params: the tensors to differentiate.
    :param dict kwargs: keyword arguments of the program on every step. Default none.
    :param int data_size: differentiate the loss over this many data (a
        full-data objective, e.g. CEVAE's) instead of the batch size. Default None.
    """

    def __init__(self, program: Any, objective: Objective, params: Sequence[torch.Tensor],
                 kwargs: dict[str, Any] | None = None, data_size: int | None = None) -> None:
        self.program, self.objective, self.params = program, objective, list(params)
        self.kwargs, self.data_size = dict(kwargs or {}), data_size

    def __call__(self, batch: tuple[torch.Tensor, ...], kl_weight: float) -> StepTerms:
        """Run the step on ``batch``; return the detached :class:`StepTerms`."""
        terms = self.objective(self.program.model, self.program.guide, batch, self.kwargs, kl_weight)
        for p in self.params:
            p.grad = None
        (terms.loss / (self.data_size or batch[0].shape[0])).backward()
        # detached: a term that kept its graph would keep the step's activations and batch
        # alive until the epoch's totals are taken (an epoch's worth of memory)
        return StepTerms(terms.loss.detach(), terms.reconstruction.detach(), terms.kl.detach(),
                         None if terms.bound is None else terms.bound.detach())

    @property
    def description(self) -> str:
        """What runs: ``"eager"``."""
        return "eager"


class _SiteTracker(Messenger):
    """Remembers the sample site being processed, for the fallback warning."""

    def __init__(self) -> None:
        super().__init__()
        self.site: str | None = None

    def _pyro_sample(self, msg: dict) -> None:
        self.site = msg["name"]


class _NoValueReads(TorchDispatchMode):
    """Refuses to read a tensor's value into Python while the step is captured: the
    value would be frozen into the graph (make_fx itself refuses this for traced
    tensors, not for a parameter read directly)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _VALUE_READS:
            raise _Uncapturable(_VALUE_READ_REASON)
        if func in _DATA_SHAPED or (func in _INDEXING and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()) or ())):
            raise _Uncapturable(
                "the program makes a tensor whose shape depends on the data (boolean indexing, nonzero, "
                "masked_select), which a graph of fixed shapes cannot hold; torch.where keeps the shape"
            )
        return func(*args, **(kwargs or {}))


_VALUE_READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default)
_DATA_SHAPED = (torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default,
                torch.ops.aten.unique_dim.default, torch.ops.aten._unique2.default)
_INDEXING = (torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default)
_VALUE_READ_REASON = (
    "the program reads a tensor's value in Python (.item(), float(t), or `if` on a tensor), so the "
    "graph would freeze that value or the branch it chose"
)


class CapturedStep(TrainStep):
    """The step captured once per batch signature and replayed (see the module).

    :param program: the program (``model`` and ``guide``).
    :param objective: the training objective.
    :param params: the tensors to differentiate.
    :param str mode: ``"graph"`` (replay make_fx's graph) or ``"inductor"``
        (``torch.compile`` it). Default ``"graph"``.
    :param int check_every: compare the graph with an eager step at the first
        step and every this many steps after. Default 100.
    :param bool verbose: print the capture (and compile) time once. Default False.
    :param int measure: after the first step, time this many eager steps against as
        many replays (alternating; the same numbers either way) and train eagerly
        if the graph is not faster (``compile="auto"``). Default 0: keep the graph.
    :param kwargs: as for :class:`TrainStep`.
    :param data_size: as for :class:`TrainStep`.
    """

    def __init__(
        self,
        program: Any,
        objective: Objective,
        params: Sequence[torch.Tensor],
        *,
        mode: CaptureMode = "graph",
        check_every: int = 100,
        verbose: bool = False,
        measure: int = 0,
        kwargs: dict[str, Any] | None = None,
        data_size: int | None = None,
    ) -> None:
        super().__init__(program, objective, params, kwargs, data_size)
        _check_mode(mode)
        if int(check_every) != check_every or check_every < 1:
            raise ValueError(f"check_every must be a positive integer, got {check_every!r}.")
        self.mode, self.check_every, self.verbose, self.measure = mode, int(check_every), verbose, int(measure)
        self._timings: tuple[list[float], list[float]] = ([], [])  # replays, eager steps (measure)
        self.fallback: str | None = None  # why the step runs eagerly, once decided
        self.capture_seconds = 0.0
        self.captures = 0
        self._graph: Callable[..., Any] | None = None  # what is replayed: the recorded graph, or it compiled
        self._recorded: Callable[..., Any] | None = None  # make_fx's graph, which the checks replay
        self._signature: tuple | None = None
        self._used: list[int] = []  # params that receive a gradient
        self._trainable: tuple[bool, ...] = ()  # params' requires_grad when captured
        self._mutated: list[torch.Tensor] = []  # buffers the graph updates in place (running statistics)
        self._has_bound = False
        self._steps = 0
        if isinstance(objective, EnumElboObjective):
            self._fall_back("the objective enumerates discrete sites exactly (enum_elbo)", None)
        elif callable(getattr(program, "on_train_step", None)):
            self._fall_back(
                "the program changes its own Python state every step (on_train_step), which a captured "
                "graph would freeze", None,
            )

    @property
    def description(self) -> str:
        """What runs: ``"captured (graph)"``, ``"captured (inductor)"`` or ``"eager (<reason>)"``."""
        return f"eager ({self.fallback})" if self.fallback else f"captured ({self.mode})"

    def __call__(self, batch: tuple[torch.Tensor, ...], kl_weight: float) -> StepTerms:
        """Run the step on ``batch``, from the graph where it is valid."""
        if self.fallback is not None:
            return super().__call__(batch, kl_weight)
        signature = tuple((tuple(t.shape), t.dtype, t.device) for t in batch)
        if self._graph is not None and tuple(p.requires_grad for p in self.params) != self._trainable:
            self._graph = None  # parameters were frozen or unfrozen: the graph's gradients are not theirs
        if self._graph is None and self._signature not in (None, signature):
            return super().__call__(batch, kl_weight)  # capture anew on a batch like the last graph's, not the partial one
        if self._graph is None:
            self._capture(batch)
            self._steps = 0  # a new graph is checked at its first step
            if self.fallback is not None:
                return super().__call__(batch, kl_weight)
        if signature != self._signature:
            return super().__call__(batch, kl_weight)  # e.g. the last partial batch
        self._steps += 1
        weight = torch.tensor(float(kl_weight), dtype=batch[0].dtype if batch[0].is_floating_point() else None)
        if self._steps == 1 or self._steps % self.check_every == 0:
            return self._checked(batch, weight, kl_weight)
        if self._steps <= 1 + 2 * self.measure:
            return self._measured(batch, weight, kl_weight)
        try:
            return self._replay(batch, weight)
        except RuntimeError as err:  # a graph that cannot run this batch: never train on it
            self._fall_back(f"the captured graph failed on a later batch ({str(err).splitlines()[0]})", None)
            return super().__call__(batch, kl_weight)

    # -- capture ------------------------------------------------------------------------
    def _function(self) -> Callable[..., Any]:
        objective, program, params, kwargs, size = self.objective, self.program, self.params, self.kwargs, self.data_size
        trainable = [i for i, p in enumerate(params) if p.requires_grad]  # frozen ones get no gradient, as eagerly

        def step(kl_weight: torch.Tensor, *batch: torch.Tensor):
            terms = objective(program.model, program.guide, batch, kwargs, kl_weight)
            grads = torch.autograd.grad(terms.loss / (size or batch[0].shape[0]), [params[i] for i in trainable],
                                        allow_unused=True)
            values = [terms.loss.detach(), terms.reconstruction, terms.kl]
            if terms.bound is not None:
                values.append(terms.bound)
            return values, [g for g in grads if g is not None], [i for i, g in zip(trainable, grads) if g is not None]

        return step

    def _capture(self, batch: tuple[torch.Tensor, ...]) -> None:
        step = self._function()
        used: list[int] = []
        has_bound: list[bool] = []

        def traced(kl_weight: torch.Tensor, *b: torch.Tensor):
            values, grads, idx = step(kl_weight, *b)
            used[:] = idx
            has_bound[:] = [len(values) == 4]
            return (*values, *grads)

        tick = time.perf_counter()
        weight = torch.tensor(1.0, dtype=batch[0].dtype if batch[0].is_floating_point() else None)

        def warm_up() -> None:  # fills the objective's per-program caches (the plate-nesting guess)
            with torch.no_grad():
                self.objective(self.program.model, self.program.guide, batch, self.kwargs, 1.0)

        buffers = _module_buffers(self.program)
        trainable = tuple(p.requires_grad for p in self.params)
        try:
            with _kept(buffers):  # the warm-up and the trace are not steps: they update no running statistics
                graph = trace_graph(traced, (weight, *batch), warm_up)
        except _Uncapturable as err:
            self._fall_back(err.reason, err.site)
            return
        mutated = _mutated_constants(graph)
        kept = {t.untyped_storage().data_ptr() for t in buffers}
        if any(t.untyped_storage().data_ptr() not in kept for t in mutated):
            self._fall_back("the program updates tensors in place (e.g. running statistics) that are not buffers "
                            "of modules pvae can find from it, so the extra runs of a capture and its checks could not "
                            "be undone (this capture's two updated them)", None)
            return
        self._graph = self._recorded = graph
        self._used, self._has_bound, self._mutated, self._trainable = used, has_bound[0], mutated, trainable
        self._signature = tuple((tuple(t.shape), t.dtype, t.device) for t in batch)
        if self.mode == "inductor":
            self._graph = _compile(graph, batch[0].device)
            # compiled now, as it will run, so that the time printed includes it
            disagreement = self._compiled_disagreement(batch, weight)
            if disagreement is not None:
                self._graph = self._recorded
                warnings.warn(f"pvae (compile='inductor'): {disagreement}; the graph is replayed uncompiled (the "
                              "eager step's numbers, without inductor's speed-up).", CaptureWarning,
                              stacklevel=user_stacklevel())
        self.capture_seconds += time.perf_counter() - tick
        self.captures += 1
        if self.verbose:
            what = "captured and compiled" if self.mode == "inductor" else "captured"
            print(f"pvae: {what} the training step ({self.mode}) in {self.capture_seconds:.1f} s")

    def _compiled_disagreement(self, batch: tuple[torch.Tensor, ...], weight: torch.Tensor) -> str | None:
        """How the compiled step disagrees with the recorded graph on ``batch``, or None.

        Both run from the same random state, which is then put back, as are the
        buffers the graph updates; their gradients are outputs, never put in
        ``.grad``, so the check leaves no trace: the parameters, the optimiser
        and the random streams are as if it had not run. Its cost is two runs of
        the step (the first compiles it) and a few norms, once per capture; a
        gradient disagreement costs two more runs, on another draw of the noise.
        """

        def both(redraw: bool) -> tuple[tuple[StepTerms, list[torch.Tensor]], ...]:
            runs = []
            for graph in (None, self._recorded):  # None: the compiled step
                with _fork_rng(batch), _kept(self._mutated):
                    if redraw:
                        _next_draw(batch)
                    runs.append(self._run_graph(batch, weight, graph))
            return tuple(runs)

        (compiled, compiled_grads), (recorded, recorded_grads) = both(False)
        if not _close(_values(compiled), _values(recorded)):
            return "the compiled step's loss disagrees with the recorded graph's"
        first = _gradient_disagreement(compiled_grads, recorded_grads)
        del compiled, compiled_grads  # (a CUDA graph's next replay writes over these outputs)
        if first is None:
            return None
        (_, compiled_grads), (_, recorded_grads) = both(True)
        again = _gradient_disagreement(compiled_grads, recorded_grads)
        if again is None:  # a coincidence of this batch and draw (a kink crossed), not a wrong backward pass
            return None
        index, error = first
        if index < 0:
            return "the compiled step returns other gradients than the recorded graph (their number or shapes)"
        name = _parameter_name(self.program, self.params, self._used[index])
        return (f"the compiled step's gradient of {name} differs from the recorded graph's by {_percent(error)} of "
                f"its norm, and the worst by {_percent(again[1])} on a second draw of the noise (float rounding "
                f"is about 1e-4%; the tolerance {_percent(_GRAD_RTOL)} of each gradient's norm plus {_GRAD_FLOOR:g} "
                "of the norm of all of them)")

    def _fall_back(self, reason: str, site: str | None) -> None:
        self.fallback = reason + (f" (at sample site {site!r})" if site else "")
        warnings.warn(
            f"pvae (compile=...): the training step runs eagerly: {self.fallback}. Nothing is lost "
            "but speed; compile=False silences this.",
            CaptureWarning,
            stacklevel=user_stacklevel(),
        )

    # -- replay -------------------------------------------------------------------------
    def _run_graph(self, batch: tuple[torch.Tensor, ...], weight: torch.Tensor,
                   graph: Callable[..., Any] | None = None) -> tuple[StepTerms, list[torch.Tensor]]:
        """The step's terms and gradients from ``graph`` (default: the one replayed)."""
        # the graph holds the backward pass as ordinary operations: autograd must not
        # record them again (that costs 5-10% of a replay, and under torch.compile a
        # second, joint backward graph, which also keeps CUDA graphs off their fast path)
        with torch.no_grad():
            out = (self._graph if graph is None else graph)(weight, *batch)
        k = 4 if self._has_bound else 3
        values, grads = out[:k], list(out[k:])
        return StepTerms(values[0], values[1], values[2], values[3] if self._has_bound else None), grads

    def _replay(self, batch: tuple[torch.Tensor, ...], weight: torch.Tensor) -> StepTerms:
        terms, grads = self._run_graph(batch, weight)
        for p in self.params:
            p.grad = None
        for i, g in zip(self._used, grads):
            self.params[i].grad = g
        return terms

    def _measured(self, batch: tuple[torch.Tensor, ...], weight: torch.Tensor, kl_weight: float) -> StepTerms:
        """Steps 2 .. 2 * measure + 1 alternate eager steps and replays (the same
        numbers either way) and time them; a graph no faster than eager is dropped."""
        tick = time.perf_counter()
        terms = TrainStep.__call__(self, batch, kl_weight) if self._steps % 2 else self._replay(batch, weight)
        self._timings[self._steps % 2].append(time.perf_counter() - tick)
        if self._steps == 1 + 2 * self.measure:
            replay, eager = (sorted(t)[len(t) // 2] for t in self._timings)
            if replay >= eager:
                self.fallback = (f"the captured step is not faster here ({1e3 * replay:.2f} ms against "
                                 f"{1e3 * eager:.2f} ms eager)")
                if self.verbose:
                    print(f"pvae.fit(compile='auto'): training eagerly: {self.fallback}")
        return terms

    def _checked(self, batch: tuple[torch.Tensor, ...], weight: torch.Tensor, kl_weight: float) -> StepTerms:
        """An eager step, with the recorded graph replayed from the same random state
        beside it; a graph that disagrees is captured anew.

        The recorded (uncompiled) graph is what is checked: it repeats the eager
        numbers to the bit while the program is static, so staleness is all a
        difference can mean. Inductor's fused kernels round differently, and a
        rounding difference that moves a pre-activation across a ReLU's kink
        changes a gradient by far more than the rounding (0.3% of its norm, seen
        on MNIST): compared with eager, a sound compiled step can look stale."""
        with _fork_rng(batch), _kept(self._mutated):  # only the eager step updates running statistics
            replayed, grads = self._run_graph(batch, weight, self._recorded)
        eager = TrainStep.__call__(self, batch, kl_weight)
        eager_grads = [self.params[i].grad for i in self._used]
        unused_now = [i for i, p in enumerate(self.params) if p.grad is not None and i not in self._used]
        if unused_now or not _close([replayed.loss, *grads], [eager.loss, *eager_grads]):
            if self._steps == 1:  # a graph that is wrong at once will not be right later
                self._fall_back("the captured graph disagrees with the eager step at once: the program is "
                                "not static (its Python state or structure changes between calls)", None)
            self._graph = None  # the program changed: capture it again on the next full batch
        return eager


# A captured graph pays for its capture (0.2-0.5 s) after 150-700 steps on MNIST-8k and
# the digits (benchmarks/train_speed.py and iwae_speed.py: capture seconds / seconds
# saved per step); compile="auto" captures runs of at least this many steps.
AUTO_COMPILE_MIN_STEPS = 1000
# ... and keeps the graph only if its replay beats the eager step, timed over this many
# steps of each (it does not always: IWAE K=5 on MNIST-8k replayed at 1.1x eager once)
AUTO_COMPILE_MEASURE = 10
# Runs of at least this many steps are also compiled by inductor: its first compile
# (1-11 s on 2 CPU cores without dynamo, 4-75 s on an H200) pays after 1,400-16,500
# steps on the CPU (train_speed.py, iwae_speed.py: 0.58-0.84x the hand loop against the
# graph's 0.78-0.94x) and 1,500 steps on an H200 once inductor is loaded (gpu_speed.py:
# 0.16x against the graph's 0.47x; 27,000 steps when the process compiles for the first time)
AUTO_INDUCTOR_MIN_STEPS = 20_000
COMPILE_CHOICES = (False, True, "graph", "inductor", "auto")


def check_compile(compile: Any, choices: tuple[Any, ...] = COMPILE_CHOICES) -> None:
    """:raises ValueError: unless ``compile`` is one of ``choices`` (default
    :data:`COMPILE_CHOICES`; ``1``, ``1.0`` or ``numpy.True_`` is not ``True``)."""
    if not any(compile is c if isinstance(c, bool) else isinstance(compile, str) and compile == c for c in choices):
        raise ValueError(f"compile must be one of {list(choices)}, got {compile!r}.")


def capture_mode(compile: bool | CaptureMode) -> CaptureMode | None:
    """The capture mode a resolved ``compile=`` value names: None for ``False``
    (eager), ``"graph"`` for ``True``, else the mode itself."""
    return None if compile is False else "graph" if compile is True else compile


def _check_mode(mode: Any) -> None:
    if mode not in CAPTURE_MODES:
        raise ValueError(f"mode must be one of {list(CAPTURE_MODES)}, got {mode!r}.")


def make_train_step(
    compile: bool | Literal["graph", "inductor", "auto"],
    program: Any,
    objective: Objective,
    params: Sequence[torch.Tensor],
    *,
    num_steps: int | None = None,
    kwargs: dict[str, Any] | None = None,
    data_size: int | None = None,
) -> TrainStep:
    """The training step a ``compile=`` option asks for (:func:`pvae.fit`, :meth:`pvae.causal.CEVAE.fit`).

    :param compile: ``False`` (eager), ``True`` / ``"graph"``, ``"inductor"``
        (:class:`CapturedStep`), or ``"auto"``: captured if ``num_steps`` is at
        least ``AUTO_COMPILE_MIN_STEPS``, also compiled by inductor if it is at
        least ``AUTO_INDUCTOR_MIN_STEPS``, and kept only if its replay is faster
        than eager over ``AUTO_COMPILE_MEASURE`` steps of each.
    :param int num_steps: the run's expected number of steps (None: unknown,
        so ``"auto"`` stays eager).
    :param kwargs: as for :class:`TrainStep`.
    :param data_size: as for :class:`TrainStep`.
    :raises ValueError: on another ``compile`` value.
    """
    check_compile(compile)
    measure = 0
    if compile == "auto":
        if num_steps is None or num_steps < AUTO_COMPILE_MIN_STEPS:
            compile = False
        else:
            compile = "inductor" if num_steps >= AUTO_INDUCTOR_MIN_STEPS else "graph"
        measure = AUTO_COMPILE_MEASURE
    mode = capture_mode(compile)
    if mode is None:
        return TrainStep(program, objective, params, kwargs, data_size)
    return CapturedStep(program, objective, params, mode=mode, verbose=True, measure=measure,
                        kwargs=kwargs, data_size=data_size)


def trace_graph(fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...],
                warm_up: Callable[[], None] | None = None) -> Callable[..., Any]:
    """Record ``fn(*inputs)`` as a graph of tensor operations with make_fx.

    The random state of torch, ``random`` and NumPy is left as it was (the graph
    draws its own noise when it runs); ``warm_up`` runs first, eagerly, so that
    caches a program fills on its first call are not recorded.

    :raises _Uncapturable: with the reason and the sample site when ``fn`` reads
        tensor values into Python, makes data-dependent shapes, draws Python-side
        random numbers, or does anything else tracing cannot follow.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    def guarded(*args: torch.Tensor):
        global _capturing
        _capturing += 1
        try:
            with _NoValueReads():
                return fn(*args)
        finally:
            _capturing -= 1

    py_state, np_state = random.getstate(), np.random.get_state()
    tracker = _SiteTracker()
    try:
        with _fork_rng(inputs):
            if warm_up is not None:
                warm_up()
            random.setstate(py_state)
            np.random.set_state(np_state)
            with tracker:
                graph = make_fx(guarded)(*inputs)
    except _Uncapturable as err:
        raise _Uncapturable(err.reason, tracker.site) from None
    except Exception as err:  # what else a program does that tracing cannot follow
        text = str(err)
        if "_local_scalar_dense" in text or "data-dependent" in text:
            raise _Uncapturable(_VALUE_READ_REASON, tracker.site) from None
        raise _Uncapturable(f"{type(err).__name__}: {text.splitlines()[0] if text else ''}", tracker.site) from None
    finally:
        python_drew = random.getstate() != py_state or not _same_numpy_state(np.random.get_state(), np_state)
        random.setstate(py_state)
        np.random.set_state(np_state)
    if python_drew:
        raise _Uncapturable(
            "the program draws Python-side random numbers (random / numpy.random), which a captured "
            "graph would freeze; use torch's generator (pyro.sample, torch.randn)"
        )
    return graph


class CapturedFunction:
    """A no-grad evaluation ``fn(*tensors) -> tuple of tensors`` captured at its
    first call and replayed for inputs of the same shapes (others run ``fn``).

    The first replay is checked against ``fn`` from the same random state; a
    function that cannot be captured, or whose graph disagrees, runs eagerly
    from then on, with one :class:`CaptureWarning`.

    :param callable fn: the evaluation; it must return a tuple of tensors.
    :param str what: what it is, for the warning.
    :param callable warm_up: run once, eagerly, before the capture.
    :param str mode: ``"graph"`` (replay the captured graph: the eager numbers
        to the bit) or ``"inductor"`` (the graph compiled by ``torch.compile``;
        fused kernels, float-close; the compile runs inside the first call).
    """

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]], what: str,
                 warm_up: Callable[[], None] | None = None, mode: CaptureMode = "graph") -> None:
        _check_mode(mode)
        self.fn, self.what, self.warm_up, self.mode = fn, what, warm_up, mode
        self.fallback: str | None = None
        self._graph: Callable[..., Any] | None = None
        self._signature: tuple | None = None

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``fn(*inputs)``, from the graph where it is valid."""
        signature = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        if self.fallback is not None or (self._signature is not None and signature != self._signature):
            return self.fn(*inputs)
        if self._graph is None:
            with torch.no_grad():
                try:
                    self._graph = trace_graph(lambda *a: tuple(self.fn(*a)), inputs, self.warm_up)
                except _Uncapturable as err:
                    return self._eager(err.reason + (f" (at sample site {err.site!r})" if err.site else ""), inputs)
            if self.mode == "inductor":
                self._graph = _compile(self._graph, inputs[0].device if inputs else torch.device("cpu"))
            self._signature = signature
            with _fork_rng(inputs), torch.no_grad():
                replayed = self._graph(*inputs)
            eager = self.fn(*inputs)
            if not _close(list(replayed), list(eager)):
                self.fallback = "its captured graph disagrees with the eager evaluation"
                warnings.warn(f"{self.what} runs eagerly: {self.fallback}.", CaptureWarning, stacklevel=user_stacklevel())
            return eager
        with torch.no_grad():
            return tuple(self._graph(*inputs))

    def _eager(self, reason: str, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        self.fallback = reason
        warnings.warn(f"{self.what} runs eagerly: {reason}.", CaptureWarning, stacklevel=user_stacklevel())
        return self.fn(*inputs)


def _values(terms: StepTerms) -> list[torch.Tensor]:
    return [t for t in (terms.loss, terms.reconstruction, terms.kl, terms.bound) if t is not None]


def _close(a: list[torch.Tensor], b: list[torch.Tensor | None]) -> bool:
    """Each pair equal to 1e-3 of its norm: a graph replayed from the same random
    state gives the eager numbers to the bit (inductor's fused kernels give the
    loss to about 1e-7 of it), while a stale graph (a frozen constant, a missing
    site) is off by far more."""
    return len(a) == len(b) and all(
        y is not None and x.shape == y.shape
        and float(torch.linalg.vector_norm((x - y).detach().double()))
        <= 1e-3 * float(torch.linalg.vector_norm(y.detach().double())) + 1e-6
        for x, y in zip(a, b)
    )


# The compiled step's gradients against the recorded graph's (at a capture): each within
# _GRAD_RTOL of its own norm plus _GRAD_FLOOR of the norm of all the step's gradients
# together. Inductor's fused kernels and oneDNN's products round differently from torch's:
# over 1,000 comparisons on this CPU (VAEs on the digits and MNIST, ELBO, IWAE-5, DReG, up
# to two 1024-unit layers, along training runs) every gradient was within 1e-5 of its norm
# (medians 2e-7 to 4e-6) but in two, where a pre-activation had crossed a ReLU's kink (4e-4
# and 6.5e-3 of a bias's norm; gone on another draw of the noise, which a disagreement must
# survive). 1e-3 is the loss check's tolerance, over 100x that rounding, and it catches a
# backward pass wrong by 1% for every parameter whose gradient is at least 0.1% of the
# whole. The floor is for a gradient that cancels to ~0 (a bias before a BatchNorm: 1e-7,
# against 5 for the whole), which is rounding of its own size.
_GRAD_RTOL = 1e-3
_GRAD_FLOOR = 1e-5


def _gradient_disagreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[int, float] | None:
    """The gradient of ``a`` that differs most from ``b`` past tolerance (the most
    times its tolerance), as (its index, its relative error ``||a_i - b_i|| / ||b_i||``);
    None when all agree; index -1 when the lists do not even match in length or shapes."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return -1, float("inf")
    if not b:
        return None
    norms = [float(torch.linalg.vector_norm(y.detach().double())) for y in b]
    errors = [float(torch.linalg.vector_norm((x - y).detach().double())) for x, y in zip(a, b)]
    floor = _GRAD_FLOOR * float(np.sqrt(sum(n * n for n in norms)))
    worst, index = 1.0, None
    for i, (norm, error) in enumerate(zip(norms, errors)):
        tolerance = _GRAD_RTOL * norm + floor
        excess = 0.0 if error == 0 else error / tolerance if tolerance > 0 else float("inf")
        if not excess <= worst:  # nan (a non-finite gradient in either) fails too
            worst, index = float("inf") if excess != excess else excess, i
    if index is None:
        return None
    return index, errors[index] / norms[index] if norms[index] > 0 else float("inf")


def _percent(x: float) -> str:
    return f"{100 * x:.3g}%"


def _parameter_name(program: Any, params: Sequence[torch.Tensor], index: int) -> str:
    """``params[index]`` by its name in the program's modules or Pyro's param store, for
    a message; else by its place and shape."""
    p = params[index]
    named = list(program.named_parameters()) if isinstance(program, torch.nn.Module) else []
    named += list(pyro.get_param_store().named_parameters())
    for name, q in named:
        if q is p:
            return repr(name)
    return f"parameter {index} (shape {tuple(p.shape)})"


def _module_buffers(program: Any) -> list[torch.Tensor]:
    """The buffers of the program's modules: the program itself, the modules whose
    methods its ``model`` and ``guide`` are, and the modules plain functions name
    (closure variables and globals)."""
    modules = [program]
    for fn in (program.model, program.guide):
        modules.append(getattr(fn, "__self__", None))
        try:
            names = inspect.getclosurevars(fn)
        except TypeError:  # a callable object or a builtin: no code to read
            continue
        modules.extend((*names.nonlocals.values(), *names.globals.values()))
    seen: dict[int, torch.Tensor] = {}
    for m in modules:
        if isinstance(m, torch.nn.Module):
            seen.update((id(b), b) for b in m.buffers())
    return list(seen.values())


def _mutated_constants(graph: torch.fx.GraphModule) -> list[torch.Tensor]:
    """The graph's tensor constants that its operations write in place (a BatchNorm's
    running statistics): replaying the graph updates them, as a step does. Read from
    the operations' schemas, and by name for the running statistics, which
    ``aten.native_batch_norm`` updates without declaring it."""
    out: dict[int, torch.Tensor] = {}
    for node in graph.graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None:
            continue
        for arg, value in zip(schema.arguments, node.args):
            written = arg.alias_info is not None and arg.alias_info.is_write
            if (written or arg.name in ("running_mean", "running_var")) and getattr(value, "op", None) == "get_attr":
                tensor = getattr(graph, value.target)
                out[id(tensor)] = tensor
    return list(out.values())


@contextlib.contextmanager
def _kept(tensors: Sequence[torch.Tensor]):
    """Run the block, then put ``tensors`` back as they were (a run that is not a step)."""
    saved = [t.detach().clone() for t in tensors]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved):
                t.copy_(s)


def _fork_rng(tensors: Sequence[torch.Tensor]):
    """Fork torch's random state on the CPU and on every CUDA device the tensors are on."""
    devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    return torch.random.fork_rng(devices=devices)


def _next_draw(tensors: Sequence[torch.Tensor]) -> None:
    """Move torch's random state on the CPU and on the CUDA devices of the tensors (what
    :func:`_fork_rng` puts back) past one draw: a step run after it draws other noise."""
    for device in ["cpu", *sorted({f"cuda:{t.device.index or 0}" for t in tensors if t.device.type == "cuda"})]:
        torch.rand((), device=device)


def _same_numpy_state(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and tuple(a[2:]) == tuple(b[2:])


def _compile(graph: torch.fx.GraphModule, device: torch.device) -> Callable[..., Any]:
    """The recorded graph compiled by inductor (at its first call).

    On the CPU inductor compiles the graph directly (:class:`_InductorGraph`):
    the graph holds aten operations and fixed shapes already, and this step
    checks the batch signature itself, so dynamo's re-tracing and its guards,
    70 microseconds a call on this CPU, buy nothing (7% of a digits epoch, 2.5%
    of an MNIST one: ``benchmarks/train_speed.py``). On CUDA it goes through
    ``torch.compile`` and also runs as a CUDA graph (what
    ``mode="reduce-overhead"`` sets), which removes the kernel launches' CPU
    cost. Either way the compiled code draws from torch's generator
    (``fallback_random``), as the eager step does."""
    options = {"fallback_random": True}
    if device.type == "cuda":
        return torch.compile(graph, backend="inductor", dynamic=False, fullgraph=True,
                             options={**options, "triton.cudagraphs": True})
    return _InductorGraph(graph, options)


class _InductorGraph:
    """A recorded graph compiled by ``torch._inductor.compile_fx.compile_fx`` at its
    first call, without dynamo; ``torch.compile`` where that entry point is
    missing or fails (it is not public API). Its float32 matrix products run on
    oneDNN where that is faster on this CPU (:func:`_onednn_gemms`)."""

    def __init__(self, graph: torch.fx.GraphModule, options: dict[str, Any]) -> None:
        # inductor's passes may rewrite the graph they are given: hand them their own
        # copy of the graph, on the same tensors (the live parameters)
        self.graph = torch.fx.GraphModule(graph, copy.deepcopy(graph.graph))
        self.options = options
        self.onednn_gemms = _onednn_gemms(self.graph) if _onednn_is_faster(self.graph) else 0
        self._compiled: Callable[..., Any] | None = None

    def __call__(self, *inputs: torch.Tensor) -> Any:
        if self._compiled is None:
            try:
                from torch._inductor.compile_fx import compile_fx

                self._compiled = compile_fx(self.graph, list(inputs), config_patches=self.options)
            except Exception:  # not public API: where it fails, torch.compile's path (which raises if it fails too)
                self._compiled = torch.compile(self.graph, backend="inductor", dynamic=False, fullgraph=True,
                                               options=self.options)
        return self._compiled(*inputs)


# -- matrix products on oneDNN ---------------------------------------------------------------
# PyTorch's CPU matrix products go to MKL, which runs AVX2 code on AMD processors: on this
# AMD EPYC its sgemm reaches ~116 GFLOP/s a core, where oneDNN's AVX-512 kernels (in every
# x86 PyTorch build) take 0.47x the time for the VAE's products (100 x 784 x 400, plain and
# transposed). The compiled step may take either: the same maths, rounded alike to float
# tolerance (the checks replay the recorded graph, which keeps torch's products). Wrapped as
# custom operators, so that inductor keeps them as external kernels.
_ONEDNN = hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()

if _ONEDNN:
    @torch.library.custom_op("pvae::onednn_mm", mutates_args=())
    def _onednn_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a @ b`` by oneDNN's inner-product kernel (``b`` read transposed, no copy)."""
        return torch.ops.mkldnn._linear_pointwise(a, b.t(), None, "none", [], "")

    @_onednn_mm.register_fake
    def _(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.new_empty((a.shape[0], b.shape[1]))

    @torch.library.custom_op("pvae::onednn_addmm", mutates_args=())
    def _onednn_addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``bias + a @ b`` (``bias`` one value per column) by oneDNN."""
        return torch.ops.mkldnn._linear_pointwise(a, b.t(), bias, "none", [], "")

    @_onednn_addmm.register_fake
    def _(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.new_empty((a.shape[0], b.shape[1]))


def _gemm_nodes(graph: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The graph's float32 CPU ``mm`` / ``addmm`` (bias one value per column, no
    ``beta`` / ``alpha``) that oneDNN can take."""
    aten, out = torch.ops.aten, []
    for node in graph.graph.nodes:
        val = node.meta.get("val")
        if node.op != "call_function" or not isinstance(val, torch.Tensor) or val.dtype != torch.float32 \
                or val.device.type != "cpu" or node.kwargs:
            continue
        if node.target is aten.mm.default or (
                node.target is aten.addmm.default
                and getattr(node.args[0], "meta", {}).get("val") is not None
                and node.args[0].meta["val"].shape == (val.shape[-1],)):
            out.append(node)
    return out


def _onednn_is_faster(graph: torch.fx.GraphModule, repeats: int = 5) -> bool:
    """Whether oneDNN multiplies the graph's largest float32 product faster than torch
    does here (timed once, a few milliseconds, at compile time)."""
    nodes = _gemm_nodes(graph) if _ONEDNN else []
    if not nodes:
        return False
    node = max(nodes, key=lambda n: n.meta["val"].numel() * n.args[-2].meta["val"].shape[-1])
    generator = torch.Generator().manual_seed(0)  # the global stream is the program's
    a = torch.randn(node.args[-2].meta["val"].shape, generator=generator)
    b = torch.randn(node.args[-1].meta["val"].shape, generator=generator)

    def best(fn: Callable[[], torch.Tensor]) -> float:
        fn()
        times = []
        for _ in range(repeats):
            tick = time.perf_counter()
            fn()
            times.append(time.perf_counter() - tick)
        return min(times)

    with torch.no_grad():
        return best(lambda: _onednn_mm(a, b)) < 0.9 * best(lambda: torch.mm(a, b))


def _onednn_gemms(graph: torch.fx.GraphModule) -> int:
    """Rewrite the graph's float32 matrix products to oneDNN's, in place; how many."""
    nodes = _gemm_nodes(graph)
    for node in nodes:
        node.target = (torch.ops.pvae.onednn_mm.default if node.target is torch.ops.aten.mm.default
                       else torch.ops.pvae.onednn_addmm.default)
    if nodes:
        graph.recompile()
    return len(nodes)
