"""The training engine: one small loop, its state in one dataclass, everything
else a callback.

:func:`run` passes over minibatches: a step (:class:`~pvae.infer.capture.TrainStep`,
eager or captured) leaves gradients in ``.grad``, the optimiser updates, and
once per epoch the step totals become a history row. What a training run
does beyond that (the progress bar, validation and early stopping, checkpoints
and resume, the divergence guard, collapse diagnostics, learning-rate and KL
schedules, a user's own hooks) is a :class:`Callback` with eight hooks, called
in list order:

==================  ==================================================================
hook                when
==================  ==================================================================
``on_fit_start``    once, before the first epoch (resume restores state here)
``on_epoch_start``  before an epoch's first step
``on_step_start``   before each step, with the batch (set ``state.kl_weight`` here)
``on_gradients``    after the backward pass, before the update (may raise or clip)
``on_step_end``     after the update, with the step's terms
``on_epoch_end``    after the epoch's row is computed (``state.row``); set
                    ``state.stop`` to end the run after this epoch
``on_fit_end``      once, after the last epoch (also after an early stop)
``on_nonfinite``    the parameters became NaN or infinite during the epoch; they
                    are already restored to ``state.good_state`` (raise your error)
==================  ==================================================================

**The last good state.** Once per epoch, before the end-of-epoch snapshot
becomes ``state.good_state`` (which checkpoints write), every trained tensor is
checked to be finite: one reduction an epoch, nothing per step. A non-finite
gradient makes the update NaN without the loss (computed before the update)
showing it; if that happens, the parameters are restored to the last good
state, the callbacks' ``on_nonfinite`` runs (the divergence guard raises its
error there), and otherwise :class:`NonFiniteParametersError` is raised: a run
never ends with, snapshots or checkpoints NaN parameters. Within an epoch the
next step's loss is NaN, which the divergence guard catches at that step.

PyTorch Lightning and Ignite keep their trainers short the same way (events and
handlers); this engine has eight events and no other machinery.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import pyro
import torch
from torch.optim import optimizer as _torch_optimizer

from .capture import TrainStep
from .objectives import Objective, StepTerms

__all__ = ["Callback", "FusedAdam", "NonFiniteParametersError", "TrainState", "adam", "minibatches",
           "nonfinite_tensors", "restore", "run", "snapshot"]


class NonFiniteParametersError(FloatingPointError):
    """Trained tensors became NaN or infinite during an epoch (the engine's own
    error when no callback raised one in ``on_nonfinite``); the parameters were
    restored to the last good state.

    :ivar list names: the non-finite tensors (state-dict keys, or ``params.i``).
    :ivar int epoch: the epoch in which they became non-finite.
    """

    def __init__(self, message: str, names: list[str], epoch: int) -> None:
        super().__init__(message)
        self.names, self.epoch = names, epoch


@dataclass
class TrainState:
    """Everything a training run carries from step to step.

    :ivar program: the program being trained.
    :ivar objective: its objective.
    :ivar list params: the trained tensors.
    :ivar optimizer: the optimiser.
    :ivar step_fn: the step (:class:`~pvae.infer.TrainStep`, eager or captured).
    :ivar int num_epochs: the epoch to stop before.
    :ivar int steps_per_epoch: steps of a full epoch, if known.
    :ivar int epoch: the current epoch (the first one to run, before the loop).
    :ivar int step: the step within the epoch.
    :ivar float kl_weight: the KL weight of the next step (callbacks set it).
    :ivar list history: one row per finished epoch.
    :ivar dict row: the current epoch's row, built in ``on_epoch_end``.
    :ivar bool stop: end the run after this epoch.
    :ivar float epoch_started: ``time.perf_counter()`` at the epoch's start.
    :ivar dict good_state: the parameters at the end of the last finished epoch.
    :ivar int best_epoch: the epoch with the best validation score so far (-1: none).
    :ivar float best_val: that score.
    :ivar int bad_epochs: epochs since it improved.
    :ivar dict best_state: the parameters at ``best_epoch``, if kept.
    :ivar float reference: ``|first loss per datum| + 1``, the divergence guard's scale.
    :ivar bool stopped_early: whether early stopping set ``stop`` (a checkpoint carries it:
        a resumed run that had stopped early trains no further).
    """

    program: Any
    objective: Objective
    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    step_fn: TrainStep
    num_epochs: int
    steps_per_epoch: int | None = None
    epoch: int = 0
    step: int = 0
    kl_weight: float = 1.0
    history: list[dict[str, float]] = field(default_factory=list)
    row: dict[str, float] = field(default_factory=dict)
    stop: bool = False
    epoch_started: float = 0.0
    good_state: dict[str, Any] | None = None
    best_epoch: int = -1
    best_val: float = -math.inf
    bad_epochs: int = 0
    best_state: dict[str, Any] | None = None
    reference: float | None = None
    stopped_early: bool = False

    @property
    def progress(self) -> float:
        """The fractional epoch of the next step."""
        return self.epoch + (self.step / self.steps_per_epoch if self.steps_per_epoch else 0.0)


class Callback:
    """A hook into the training engine (``pvae.infer.engine.run``); override the methods you need (all do nothing)."""

    def on_fit_start(self, state: TrainState) -> None:
        """Once, before the first epoch."""

    def on_epoch_start(self, state: TrainState) -> None:
        """Before an epoch's first step."""

    def on_step_start(self, state: TrainState, batch: tuple[torch.Tensor, ...]) -> None:
        """Before each step."""

    def on_gradients(self, state: TrainState, terms: StepTerms, batch_size: int) -> None:
        """After the backward pass, before the optimiser's update."""

    def on_step_end(self, state: TrainState, terms: StepTerms, batch_size: int) -> None:
        """After the optimiser's update."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After the epoch's row (``state.row``) is computed."""

    def on_fit_end(self, state: TrainState) -> None:
        """Once, after the last epoch."""

    def on_nonfinite(self, state: TrainState, names: list[str]) -> None:
        """The tensors ``names`` became NaN or infinite during ``state.epoch``; the
        parameters are already restored to ``state.good_state``. Raise an error here to
        replace the engine's :class:`NonFiniteParametersError`."""

    def state_dict(self) -> dict[str, Any] | None:
        """State a checkpoint must carry for a resumed run to continue this callback
        exactly (e.g. a learning-rate scheduler's), or None (the default: nothing).
        It must load with ``torch.load(weights_only=True)``: tensors, numbers,
        strings, and lists, tuples and dicts of them."""
        return None

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue from what :meth:`state_dict` returned (a resumed run calls it from
        ``on_fit_start``, possibly before this callback's own ``on_fit_start``)."""


def adam(params: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The engine's optimiser: Adam as one fused kernel over every parameter, the
    cheapest Adam step torch has (on this CPU 1.0-1.3 ms a step for 0.7 M parameters
    against 4.5 ms for the default multi-tensor one), stepped by :class:`FusedAdam`;
    multi-tensor where a device has no fused kernel. The same algorithm either way;
    the last bits may differ."""
    params = list(params)
    try:
        return FusedAdam(params, lr=lr, weight_decay=weight_decay)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` with a lean step.

    :meth:`torch.optim.Optimizer.step` spends 25-60 microseconds a call on the
    CPU in general-purpose Python (the hook and profiler wrapper, per-parameter
    state checks, grouping tensors by device) around its one fused kernel: 5%
    of a small model's compiled training step (the digits in
    ``benchmarks/train_speed.py``). Once every parameter with a gradient has
    its state, this step calls the same kernel, ``torch._fused_adam_``,
    directly on state lists it gathered once: the same update to the bit and
    the same ``state_dict``. The lists are gathered again after
    ``load_state_dict``, ``add_param_group`` or a change in which parameters
    have gradients (a state tensor replaced by hand in between would not be
    seen). Torch's wrapper runs around the step while a step hook is
    registered or the profiler runs, so hooks and the profiler's label work as
    for any optimiser. Torch's own step runs for the first step (which creates
    the state), a closure, a gradient scaler, a tensor learning rate, AMSGrad,
    maximisation, decoupled weight decay, parameters spread over devices or
    dtypes, and always where that kernel is missing or refuses a probe call (a
    torch whose private kernel differs): nothing but speed depends on the lean
    path.

    :param params: the parameters (or parameter groups).
    :param kwargs: ``torch.optim.Adam``'s options; ``fused=True`` is set.
    """

    def __init__(self, params: Iterable[Any], **kwargs: Any) -> None:
        super().__init__(params, **{**kwargs, "fused": True})
        self._lean: dict[tuple[torch.device, torch.dtype], bool] = {}  # per device and dtype: the kernel answers
        # which parameters had gradients, and per group the parameters and state lists to step
        self._plan: tuple[list[list[bool]], list[tuple[list[torch.Tensor], ...]]] | None = None

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Adam update; see the class docstring for when torch's own step runs."""
        if self._observed():
            return self._observed_step(closure)
        return self._step(closure)

    step.hooked = True  # torch would wrap it in its hook-and-profiler wrapper: that runs only when observed

    def _step(self, closure: Callable[[], Any] | None = None) -> Any:
        if closure is not None or getattr(self, "grad_scale", None) is not None \
                or getattr(self, "found_inf", None) is not None or not all(map(_lean_options, self.param_groups)):
            return self._torch_step(closure)
        with_grad = [[p.grad is not None for p in group["params"]] for group in self.param_groups]
        if self._plan is None or self._plan[0] != with_grad:
            self._plan = self._gather(with_grad)
            if self._plan is None:
                return self._torch_step()
        with torch.no_grad():  # as torch's step runs (its grad-mode decorator)
            for group, (params, exp_avgs, exp_avg_sqs, steps) in zip(self.param_groups, self._plan[1]):
                if params:
                    torch._foreach_add_(steps, 1)
                    self._update(group, params, [p.grad for p in params], exp_avgs, exp_avg_sqs, steps)
        return None

    # torch's wrapper (step hooks, the profiler's label) around the step, for when they are in use
    _observed_step = torch.optim.Optimizer.profile_hook_step(_step)

    def _observed(self) -> bool:
        """Whether a step hook is registered (on this optimiser or globally) or the profiler runs."""
        return bool(getattr(self, "_optimizer_step_pre_hooks", None) or getattr(self, "_optimizer_step_post_hooks", None)
                    or getattr(_torch_optimizer, "_global_optimizer_pre_hooks", None)
                    or getattr(_torch_optimizer, "_global_optimizer_post_hooks", None)
                    or torch._C._autograd._profiler_enabled())

    def _gather(self, with_grad: list[list[bool]]) -> tuple[list[list[bool]], list[tuple[list[torch.Tensor], ...]]] | None:
        """Per group, the parameters with a gradient and their state tensors; None
        where torch's step must run (state still to create, mixed devices or dtypes)."""
        lists = []
        for group, mask in zip(self.param_groups, with_grad):
            params = [p for p, has in zip(group["params"], mask) if has]
            states = [self.state.get(p) for p in params]
            kinds = {(p.device, p.dtype) for p in params}
            if not all(states) or len(kinds) > 1 or not all(map(self._kernel_works, kinds)):
                return None
            lists.append((params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                          [s["step"] for s in states]))
        return with_grad, lists

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's, then the state tensors are gathered again at the next step."""
        super().load_state_dict(state_dict)
        self._plan = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, then the state tensors are gathered again at the next step."""
        super().add_param_group(param_group)
        self._plan = None

    @staticmethod
    def _update(group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor],
                exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                           beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                           maximize=False)

    def _kernel_works(self, kind: tuple[torch.device, torch.dtype]) -> bool:
        """Whether the direct kernel call runs for this device and dtype (probed once on a throwaway tensor)."""
        if kind not in self._lean:
            device, dtype = kind
            t = [torch.zeros(1, device=device, dtype=dtype) for _ in range(4)]
            try:
                with torch.no_grad():
                    self._update(self.param_groups[0], [t[0]], [t[1]], [t[2]], [t[3]],
                                 [torch.ones((), device=device, dtype=torch.float32)])
                self._lean[kind] = True
            except (AttributeError, RuntimeError, TypeError):
                self._lean[kind] = False
        return self._lean[kind]

    def _torch_step(self, closure: Callable[[], Any] | None = None) -> Any:
        # torch.optim.Adam's step without the hook-and-profiler wrapper torch puts on it
        # once a plain Adam exists (this class's step runs that wrapper itself when it is
        # needed), but with its grad-mode decorator
        step = torch.optim.Adam.step
        return (step.__wrapped__ if getattr(step, "hooked", False) else step)(self, closure)


def _lean_options(group: dict[str, Any]) -> bool:
    """Whether :class:`FusedAdam`'s direct kernel call serves a parameter group's options."""
    return not (isinstance(group["lr"], torch.Tensor) or group["amsgrad"] or group["maximize"]
                or group.get("decoupled_weight_decay", False))


def snapshot(program: Any, params: Sequence[torch.Tensor]) -> dict[str, Any]:
    """A copy of every trained tensor: the module's state (parameters and
    buffers) plus the ``pyro.param`` tensors that are not the module's."""
    state: dict[str, Any] = {}
    own: set[int] = set()
    if isinstance(program, torch.nn.Module):
        state["module"] = {k: v.detach().clone() for k, v in program.state_dict().items()}
        own = {id(p) for p in program.parameters()}
    state["params"] = [p.detach().clone() for p in params if id(p) not in own]
    return state


def nonfinite_tensors(program: Any, params: Sequence[torch.Tensor]) -> list[str]:
    """The names of the trained tensors ``params`` that hold a NaN or an infinity (the
    module's parameter names, else the Pyro param store's, else ``param i``); one
    synchronisation in all.
    Buffers are not trained and not checked (a buffer may hold an infinity on purpose).

    Each tensor's sum in float64 is finite exactly when the tensor is (float32 values
    cannot overflow it; NaN and infinities carry through): one reduction per tensor, 7x
    cheaper than ``isfinite(p).all()``, which runs only to name the tensors once one failed."""
    params = [p for p in params if p.is_floating_point() and p.numel()]
    if not params:
        return []
    with torch.no_grad():
        device = params[0].device  # (a no-op move for parameters on one device)
        sums = torch.stack([p.sum(dtype=torch.float64).to(device) for p in params])
        if bool(torch.isfinite(sums).all()):
            return []
        finite = torch.stack([torch.isfinite(p).all().to(device) for p in params]).tolist()
    if all(finite):
        return []
    names = {id(p): name for name, p in pyro.get_param_store().named_parameters()}
    if isinstance(program, torch.nn.Module):
        names.update((id(p), name) for name, p in program.named_parameters())
    return [names.get(id(p), f"param {i}") for i, (p, ok) in enumerate(zip(params, finite)) if not ok]


def restore(program: Any, params: Sequence[torch.Tensor], state: dict[str, Any]) -> None:
    """Write a :func:`snapshot` back into the program and parameters."""
    own: set[int] = set()
    with torch.no_grad():
        if "module" in state and isinstance(program, torch.nn.Module):
            program.load_state_dict(state["module"])
            own = {id(p) for p in program.parameters()}
        for p, saved in zip([p for p in params if id(p) not in own], state["params"]):
            p.copy_(saved)


def _names(names: list[str], limit: int = 3) -> str:
    """``'a', 'b', 'c' and 2 more``: the first few of a list of tensor names."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def minibatches(tensors: Sequence[torch.Tensor], batch_size: int, shuffle: bool) -> Iterator[tuple[torch.Tensor, ...]]:
    """Minibatches of tensors sharing their first dimension, in a fresh random order
    (``torch.randperm``) when ``shuffle``; the last one may be smaller."""
    n = tensors[0].shape[0]
    if shuffle:
        order = torch.randperm(n, device=tensors[0].device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield tuple(t.index_select(0, idx) for t in tensors)
    else:
        for start in range(0, n, batch_size):
            yield tuple(t[start : start + batch_size] for t in tensors)


def run(state: TrainState, batches: Callable[[], Iterable[tuple[torch.Tensor, ...]]],
        callbacks: Sequence[Callback]) -> TrainState:
    """Train from ``state.epoch`` to ``state.num_epochs`` (or until a callback stops it).

    :param state: the run's state (callbacks may change it, e.g. on resume).
    :param batches: returns an epoch's iterable of batches (tuples of tensors).
    :param callbacks: the hooks, called in order.
    :returns: ``state``, after ``on_fit_end``.
    """
    is_module = isinstance(state.program, torch.nn.Module)
    for cb in callbacks:
        cb.on_fit_start(state)
    bad = nonfinite_tensors(state.program, state.params)
    if bad:
        raise NonFiniteParametersError(
            f"{_names(bad)} are NaN or infinite before training starts (epoch {state.epoch}): there is no good "
            "state to train from. Try a freshly built program, or resume=False if they came from a checkpoint.",
            bad, state.epoch)
    state.good_state = snapshot(state.program, state.params)
    # a run that a checkpoint says had stopped early is finished: it trains no further
    for epoch in range(state.epoch, state.epoch if state.stop else state.num_epochs):
        state.epoch, state.step, state.row = epoch, 0, {}
        if is_module:
            state.program.train()
        state.epoch_started = time.perf_counter()
        for cb in callbacks:
            cb.on_epoch_start(state)
        # running totals, added in place: no per-step synchronisation (.item()) and no per-step
        # allocations that outlive the step (they would pin the heap above each freed batch)
        totals: torch.Tensor | None = None
        n_seen = 0
        for step, batch in enumerate(batches()):
            state.step = step
            for cb in callbacks:
                cb.on_step_start(state, batch)
            terms = state.step_fn(batch, state.kl_weight)
            b = batch[0].shape[0]
            for cb in callbacks:
                cb.on_gradients(state, terms, b)
            state.optimizer.step()
            for cb in callbacks:
                cb.on_step_end(state, terms, b)
            parts = torch.stack([terms.loss, terms.reconstruction, terms.kl]
                                + ([] if terms.bound is None else [terms.bound])).detach()
            totals = parts if totals is None else totals.add_(parts)
            n_seen += b
        loss, rec, kl, *bound = (totals / n_seen).tolist()
        state.row = {"epoch": epoch, "loss": loss, "elbo": rec - kl, "reconstruction": rec, "kl": kl,
                     "kl_weight": float(state.kl_weight), **({"bound": bound[0]} if bound else {})}
        bad = nonfinite_tensors(state.program, state.params)  # once an epoch: NaN never becomes the good state
        if bad:
            restore(state.program, state.params, state.good_state)
            for cb in callbacks:
                cb.on_nonfinite(state, bad)
            where = "their values before training" if epoch == 0 else f"the end of epoch {epoch - 1}"
            raise NonFiniteParametersError(
                f"training diverged: {_names(bad)} became NaN or infinite during epoch {epoch} (a non-finite "
                f"gradient, e.g. from sqrt or log at 0, although the loss was finite). The parameters were restored "
                f"to {where}. Try a smaller learning_rate, clip_norm=..., or check the program for non-finite "
                "gradients.", bad, epoch)
        state.good_state = snapshot(state.program, state.params)
        for cb in callbacks:
            cb.on_epoch_end(state)
        if state.stop:
            break
    for cb in callbacks:
        cb.on_fit_end(state)
    if is_module:
        state.program.eval()
    return state

