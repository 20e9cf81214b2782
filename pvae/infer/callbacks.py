"""The callbacks :func:`pvae.fit` trains with (the engine: ``pvae.infer.engine``).

Each does one job and keeps its state in the run's
:class:`~pvae.infer.engine.TrainState` where a checkpoint must carry it. Users
pass their own with ``pvae.fit(..., callbacks=[...])``; they run after these.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .._stack import user_stacklevel
from .engine import Callback, TrainState, _names, nonfinite_tensors, restore, snapshot
from .objectives import StepTerms

__all__ = [
    "ClipGradNorm",
    "CollapseDiagnostics",
    "DivergenceGuard",
    "EpochEnd",
    "KLWarmup",
    "LearningRateSchedule",
    "ProgramHook",
    "ProgressBar",
    "RecordEpoch",
    "Validation",
]


class KLWarmup(Callback):
    """Sets the KL weight of every step from a schedule of the fractional epoch.

    :param callable schedule: ``epoch -> weight``.
    """

    def __init__(self, schedule: Callable[[float], float]) -> None:
        self.schedule = schedule

    def on_step_start(self, state: TrainState, batch: tuple) -> None:
        state.kl_weight = self.schedule(state.progress)


class ProgramHook(Callback):
    """Calls the program's ``on_train_step(epoch)`` before every step (its own
    annealing schedules, e.g. a Gumbel-softmax temperature)."""

    def __init__(self, hook: Callable[[float], None]) -> None:
        self.hook = hook

    def on_step_start(self, state: TrainState, batch: tuple) -> None:
        self.hook(state.progress)


class DivergenceGuard(Callback):
    """Stops a diverging run: a loss per datum that is NaN, infinite or above
    ``factor`` times ``|first loss| + 1`` (checked before the update), or
    parameters that became NaN or infinite during an epoch (a non-finite gradient
    under a finite loss; the engine checks once per epoch, before the epoch's
    parameters become the last good state), restores the last good epoch's
    parameters and raises ``error(message, state)``.

    :param float factor: the size criterion (None: only NaN or inf).
    :param callable error: builds the exception from the message and the state.
    :param float learning_rate: named in the message's advice.
    :param checkpoint_path: named in the message when a checkpoint survives.
    """

    def __init__(self, factor: float | None, error: Callable[[str, TrainState], Exception],
                 learning_rate: float, checkpoint_path: Path | None = None) -> None:
        self.factor, self.error = factor, error
        self.learning_rate, self.checkpoint_path = learning_rate, checkpoint_path

    def on_gradients(self, state: TrainState, terms: StepTerms, batch_size: int) -> None:
        value = terms.loss.item() / batch_size
        if state.reference is None:
            state.reference = abs(value) + 1.0
        if not math.isfinite(value) or (self.factor is not None and value > self.factor * state.reference):
            # only now (the run is over): were the parameters already non-finite, from the last update?
            bad = nonfinite_tensors(state.program, state.params) if not math.isfinite(value) else []
            restore(state.program, state.params, state.good_state)
            why = (f"the loss per datum became {value:.4g} at epoch {state.epoch} step {state.step} because the "
                   f"parameters {_names(bad)} were already NaN or infinite (after the previous update: a non-finite "
                   "gradient?)" if bad else None)
            raise self.error(self._message(value, state, why), state)

    def on_nonfinite(self, state: TrainState, names: list[str]) -> None:
        why = (f"the parameters {_names(names)} became NaN or infinite during epoch {state.epoch} (a non-finite "
               "gradient: the loss, computed before each update, stayed finite)")
        raise self.error(self._message(math.nan, state, why), state)

    def _message(self, value: float, state: TrainState, why: str | None = None) -> str:
        if why is None:
            size = "became" if not math.isfinite(value) else \
                f"exceeded {self.factor:g}x its first value ({state.reference - 1:.4g}):"
            why = f"the loss per datum {size} {value:.4g} at epoch {state.epoch} step {state.step}"
        where = "their values before training" if state.epoch == 0 else f"the end of epoch {state.epoch - 1}"
        path = self.checkpoint_path
        kept = f"; the last good checkpoint {path} is intact" if path is not None and path.exists() else ""
        return (
            f"training diverged: {why} (learning_rate={self.learning_rate:g}). The parameters were restored to "
            f"{where}{kept}. Try a smaller learning_rate, clip_norm=..., or check the data for extreme values "
            "(and the program for log, sqrt or division at 0)."
        )


class ClipGradNorm(Callback):
    """Clips the gradients' total norm to ``max_norm`` before each update.

    :param float max_norm: the largest norm, > 0.
    """

    def __init__(self, max_norm: float) -> None:
        self.max_norm = check_clip_norm(max_norm)

    def on_gradients(self, state: TrainState, terms: StepTerms, batch_size: int) -> None:
        torch.nn.utils.clip_grad_norm_(state.params, self.max_norm)


def check_clip_norm(value: Any) -> float:
    """``value`` as a float > 0, or a ValueError (a norm <= 0 would stop or reverse learning)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(
            f"clip_norm must be a number > 0 (the largest gradient norm), got {value!r}: 0 would stop all "
            "learning and a negative norm would reverse the gradient. Try clip_norm=10.0, or None for no clipping."
        )
    return float(value)


class LearningRateSchedule(Callback):
    """Steps a ``torch.optim.lr_scheduler`` after every update (or every epoch), and
    adds ``learning_rate`` to each epoch's row: the rate of the epoch's last update
    (for ``every="epoch"`` the rate of the whole epoch).

    A checkpoint of :func:`pvae.fit` carries the scheduler's ``state_dict``, and a
    resumed run continues the schedule (and its learning rate) where it stopped.

    :param callable make: ``optimizer -> scheduler``, e.g.
        ``lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, 0.999)``.
    :param str every: ``"step"`` or ``"epoch"``. Default ``"step"``.
    """

    def __init__(self, make: Callable[[torch.optim.Optimizer], Any], every: str = "step") -> None:
        if every not in ("step", "epoch"):
            raise ValueError(f"every must be 'step' or 'epoch', got {every!r}.")
        self.make, self.every = make, every
        self.scheduler: Any = None
        self._pending: dict[str, Any] | None = None  # a checkpoint's state, loaded once the scheduler exists
        self._used = math.nan

    def on_fit_start(self, state: TrainState) -> None:
        self.scheduler = self.make(state.optimizer)
        if self._pending is not None:
            self._load(state.optimizer, self._pending)
            self._pending = None

    def on_step_end(self, state: TrainState, terms: StepTerms, batch_size: int) -> None:
        if self.every == "step":
            self._used = state.optimizer.param_groups[0]["lr"]
            self.scheduler.step()

    def on_epoch_end(self, state: TrainState) -> None:
        if self.every == "epoch":
            self._used = state.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
        state.row["learning_rate"] = float(self._used)

    def state_dict(self) -> dict[str, Any] | None:
        """The scheduler's ``state_dict`` (for a checkpoint)."""
        return None if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue a checkpointed schedule (applied when the scheduler is made, if it is not yet)."""
        if self.scheduler is None:
            self._pending = saved
        else:
            self._load(self.scheduler.optimizer, saved)

    def _load(self, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(saved)
        # the rate the schedule had reached, whatever this call's learning_rate set
        for group, lr in zip(optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr


class ProgressBar(Callback):
    """A tqdm bar over the run's steps with the live ELBO per datum; on by
    default only on a terminal outside CI."""

    def __init__(self, enabled: bool | None, desc: str = "pvae.fit") -> None:
        if enabled is None:
            enabled = sys.stderr.isatty() and not os.environ.get("CI")
        self.enabled, self.desc, self.bar = enabled, desc, None

    def on_epoch_start(self, state: TrainState) -> None:
        if self.enabled and self.bar is None:
            from tqdm.auto import tqdm

            steps = state.steps_per_epoch
            total = None if steps is None else steps * (state.num_epochs - state.epoch)
            self.bar = tqdm(total=total, desc=self.desc, unit="step", leave=False, mininterval=0.5)

    def on_step_end(self, state: TrainState, terms: StepTerms, batch_size: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if state.step % 20 == 0:
                self.bar.set_postfix(epoch=state.epoch, elbo=f"{terms.elbo.item() / batch_size:.2f}", refresh=False)

    def close(self) -> None:
        """Close the bar (also after an error)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_fit_end(self, state: TrainState) -> None:
        self.close()


class CollapseDiagnostics(Callback):
    """Every ``every`` epochs and after the last, adds ``active_units`` and
    ``mutual_information`` (:func:`pvae.infer.collapse_summary` on ``args``) to the
    row; warns with :class:`~pvae.infer.PosteriorCollapseWarning` if no unit is
    active at the end. A program that does not support them turns them off with
    one warning.

    :param tuple args: the data to diagnose (a few hundred rows).
    :param int every: epochs between reports.
    """

    def __init__(self, args: tuple, every: int) -> None:
        self.args, self.every = args, every

    def on_epoch_end(self, state: TrainState) -> None:
        if self.args is None or not ((state.epoch + 1) % self.every == 0 or state.epoch == state.num_epochs - 1):
            return
        from .diagnostics import collapse_summary

        try:
            # a report must not perturb training: its draws leave the RNG as it was
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                summary = collapse_summary(state.program, *self.args)
        except (ValueError, NotImplementedError, TypeError) as err:
            warnings.warn(f"collapse diagnostics are off for this program: {err}", stacklevel=user_stacklevel())
            self.args = None
            return
        state.row["active_units"] = summary["active_units"]
        state.row["mutual_information"] = summary["mutual_information"]

    def on_fit_end(self, state: TrainState) -> None:
        last = state.history[-1] if state.history else {}
        if last.get("active_units") == 0:
            from .diagnostics import PosteriorCollapseWarning

            warnings.warn(
                f"the posterior collapsed: no latent unit is active after epoch {last['epoch']} "
                f"(KL {last['kl']:.3g} nats per datum). Try kl_warmup=..., a smaller beta, or a "
                "weaker decoder.",
                PosteriorCollapseWarning,
                stacklevel=user_stacklevel(),
            )


class Validation(Callback):
    """Scores every epoch on held-out data, keeps the best epoch, stops after
    ``patience`` epochs without improvement, and can end at the best epoch.

    Without validation data every epoch counts as the best so far.

    :param callable evaluate: ``() -> dict`` of validation metrics with an
        ``"elbo"`` (higher is better), or None for no validation data.
    :param int patience: epochs without a better score before stopping, >= 1
        (None or 0: never stop early, as in :meth:`pvae.causal.CEVAE.fit`).
    :param bool restore_best: after an early stop, end at the best epoch's parameters.
    """

    def __init__(self, evaluate: Callable[[], dict[str, float]] | None, patience: int | None,
                 restore_best: bool) -> None:
        patience = check_patience(patience)
        self.evaluate, self.patience, self.restore_best = evaluate, patience or None, restore_best
        self.stopped_early = False  # after the run: ``state.stopped_early`` (also a resumed run that had stopped)

    def on_epoch_end(self, state: TrainState) -> None:
        improved = True
        if self.evaluate is not None:
            if isinstance(state.program, torch.nn.Module):
                state.program.eval()
            val = self.evaluate()
            state.row.update({f"val_{k}": v for k, v in val.items()})
            improved = val["elbo"] > state.best_val
            if improved:
                state.best_val = val["elbo"]
        if improved:
            state.best_epoch, state.bad_epochs = state.epoch, 0
            if self.patience is not None:
                state.best_state = snapshot(state.program, state.params)
        else:
            state.bad_epochs += 1
        if self.patience is not None and state.bad_epochs >= self.patience:
            state.stop = state.stopped_early = self.stopped_early = True

    def on_fit_end(self, state: TrainState) -> None:
        self.stopped_early = state.stopped_early
        if state.stopped_early and self.restore_best and state.best_state is not None:
            restore(state.program, state.params, state.best_state)


def check_patience(patience: Any) -> int | None:
    """``patience`` as an int >= 0 or None (0 and None: never stop early), or a ValueError."""
    if patience is None:
        return None
    if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 0:
        raise ValueError(f"patience must be a non-negative integer (0 or None: never stop early), got {patience!r}. "
                         "Try patience=5.")
    return int(patience)


class RecordEpoch(Callback):
    """Adds the epoch's wall seconds (steps, validation and bookkeeping) to the row
    and appends the row to the history."""

    def on_epoch_end(self, state: TrainState) -> None:
        state.row["seconds"] = time.perf_counter() - state.epoch_started
        state.history.append(state.row)


class EpochEnd(Callback):
    """Calls ``fn(row)`` with each finished epoch's history row (``fit``'s ``callback=``)."""

    def __init__(self, fn: Callable[[dict[str, float]], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, state: TrainState) -> None:
        self.fn(state.row)

