"""``fit``: stochastic variational inference for any model/guide program.

The loop is written for speed (it is measured against a hand-written PyTorch
loop in ``benchmarks/train_speed.py``): the objective is traced directly
(no ``SVI``/param-store round trip), Pyro's validation runs once on the first
step and on the whole data, then is switched off, the optimiser is one fused
``torch.optim.Adam`` over all parameters, and tensor data are shuffled by an
index permutation, never through a ``DataLoader``.
"""

from __future__ import annotations

import math
import numbers
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import pyro
import torch
from pyro import poutine

from ..inputs import DataTypeError, as_data_args, as_data_tuple, is_array
from ..models.base import Program, program_verb
from .callbacks import (
    ClipGradNorm,
    CollapseDiagnostics,
    DivergenceGuard,
    EpochEnd,
    KLWarmup,
    ProgramHook,
    ProgressBar,
    RecordEpoch,
    Validation,
    check_clip_norm,
    check_patience,
)
from .capture import CapturedFunction, CapturedStep, TrainStep, make_train_step
from .engine import Callback, TrainState, adam, minibatches, restore, run, snapshot
from .objectives import Objective, make_objective

__all__ = ["CheckpointError", "FitResult", "TrainingDivergedError", "fit", "load_checkpoint"]

_INT_DEFAULTS = {"num_epochs": 10, "batch_size": 128}
CHECKPOINT_FORMAT = "pvae-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.pt"
_CHECKPOINT_KEYS = ("program", "epoch", "state", "optimizer", "history", "best_epoch", "best_val",
                    "bad_epochs", "best_state", "rng")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite. ``.result`` holds the run up to the last
    good epoch; the program's parameters were restored to that epoch."""

    def __init__(self, message: str, result: "FitResult") -> None:
        super().__init__(message)
        self.result = result


class CheckpointError(ValueError):
    """A checkpoint that is corrupt, foreign, or for another program."""


@dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`fit`.

    :ivar program: the trained program (the object passed in, trained in place).
    :ivar tuple history: one dict per epoch: ``epoch``, ``loss`` (objective per
        datum), ``elbo``, ``reconstruction``, ``kl`` (per datum, beta = 1),
        ``kl_weight``, ``seconds``, and ``val_elbo``, ``val_reconstruction``,
        ``val_kl`` with validation data.
    :ivar int best_epoch: epoch with the best validation ELBO (the last epoch
        without validation data).
    :ivar bool stopped_early: whether early stopping ended the run.
    :ivar checkpoint_path: the last checkpoint written, or None.
    """

    program: Any = field(repr=False)
    history: tuple[dict[str, float], ...]
    best_epoch: int
    stopped_early: bool
    checkpoint_path: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "history": [dict(h) for h in self.history],
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "checkpoint_path": self.checkpoint_path,
        }


# -- data ----------------------------------------------------------------------
def _as_tensors(program: Program, data: Any, name: str, device) -> tuple[torch.Tensor, ...] | None:
    """Arrays -> tuple of converted tensors (:func:`pvae.inputs.as_data_tuple`); a
    DataLoader-like iterable -> None (its batches are converted as they come)."""
    if hasattr(data, "__iter__") and not isinstance(data, (str, bytes, tuple, list, dict)) and not is_array(data):
        return None
    try:
        return as_data_tuple(program, data, name, device=device)
    except DataTypeError as err:
        if not isinstance(data, (tuple, list)) and not is_array(data):
            raise DataTypeError(f"{err} A DataLoader (any iterable of batches) works too.") from None
        raise


def _batches(program, tensors, loader, batch_size: int, shuffle: bool, device) -> Iterator[tuple[torch.Tensor, ...]]:
    if tensors is None:
        for batch in loader:
            yield as_data_args(program, batch if isinstance(batch, (tuple, list)) else (batch,), device=device)
        return
    yield from minibatches(tensors, batch_size, shuffle)


def _num_steps(tensors, loader, batch_size: int) -> int | None:
    if tensors is not None:
        return math.ceil(tensors[0].shape[0] / batch_size)
    try:
        return len(loader)
    except TypeError:
        return None


# -- parameters and state --------------------------------------------------------
def _collect_params(program: Program, args: tuple) -> list[torch.Tensor]:
    """Module parameters plus any ``pyro.param`` sites the program creates."""
    seen: dict[int, torch.Tensor] = {}
    if isinstance(program, torch.nn.Module):
        seen.update((id(p), p) for p in program.parameters())
    with poutine.block(), pyro.validation_enabled(False):
        guide_trace = poutine.trace(program.guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(program.model, trace=guide_trace)).get_trace(*args)
    for tr in (guide_trace, model_trace):
        for site in tr.nodes.values():
            if site["type"] == "param":
                value = site["value"]
                p = value.unconstrained() if hasattr(value, "unconstrained") else value
                if isinstance(p, torch.Tensor) and p.requires_grad:
                    seen.setdefault(id(p), p)
    return list(seen.values())


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _read_weights_only(path: str | os.PathLike, default_name: str, hint: str) -> tuple[Path, Any]:
    """``(path, contents)`` of a checkpoint file (or ``default_name`` in a directory), read with
    ``torch.load(weights_only=True)``; a missing, corrupt or foreign file is a :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}. {hint}")
    try:
        return path, torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for bad files
        message = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"{path} is corrupt or not a pvae checkpoint (it was loaded with weights_only=True, "
            f"which never runs pickled code): {type(err).__name__}: {message}"
        ) from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a pvae checkpoint safely (``torch.load(weights_only=True)``: no code
    is unpickled).

    :param path: the checkpoint file, or the directory holding ``checkpoint.pt``.
    :raises CheckpointError: if the file is missing, corrupt, or not pvae's.
    """
    path, ckpt = _read_weights_only(path, CHECKPOINT_NAME, "Try the --out/checkpoint_dir of a fit.")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pvae checkpoint (no '{CHECKPOINT_FORMAT}' format tag).")
    missing = sorted(set(_CHECKPOINT_KEYS) - set(ckpt))
    if missing or not isinstance(ckpt["state"], dict) or "params" not in ckpt["state"]:
        raise CheckpointError(f"{path} is an incomplete pvae checkpoint (missing {missing or ['state.params']}).")
    return ckpt


def _check_compatible(ckpt: dict, program: Program, params: Sequence[torch.Tensor], path: Path) -> None:
    def shapes(state: dict) -> dict[str, tuple]:
        out = {f"params.{i}": tuple(p.shape) for i, p in enumerate(state["params"])}
        out.update({k: tuple(v.shape) for k, v in state.get("module", {}).items()})
        return out

    saved, current = shapes(ckpt["state"]), shapes(snapshot(program, params))
    if ckpt.get("program") != type(program).__name__ or saved != current:
        diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise CheckpointError(
            f"{path} was written for a {ckpt.get('program')} that differs from this "
            f"{type(program).__name__} (e.g. at {diff[:3]}: saved {[saved.get(k) for k in diff[:3]]}, "
            f"now {[current.get(k) for k in diff[:3]]}). Try another checkpoint_dir, or resume=False."
        )


class Checkpoint(Callback):
    """Continues a run from ``checkpoint.pt`` with ``resume``; its :attr:`writer`
    (a callback to run *last*, after every other ``on_epoch_end``) writes the file
    atomically after every epoch: parameters, optimiser, history, early-stopping
    state, divergence reference, RNG state, and the ``state_dict`` of every
    callback that has one (a :class:`~pvae.infer.LearningRateSchedule`'s scheduler).

    On resume this call's learning rate and weight decay win over the saved ones,
    except that a learning-rate schedule restored from the checkpoint continues at
    the rate it had reached. A run that had stopped early is finished: it is
    returned as it ended, without another epoch.

    :param pathlib.Path path: the checkpoint file.
    :param bool resume: continue from ``path`` if it exists.
    :param float learning_rate: this call's learning rate.
    :param float weight_decay: this call's weight decay.
    :param callbacks: the run's callbacks, whose ``state_dict`` the checkpoint carries.
    """

    def __init__(self, path: Path, resume: bool, learning_rate: float, weight_decay: float,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.path, self.resume = path, resume
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.callbacks = list(callbacks)
        self.writer = _CheckpointWriter(self)

    def _stateful(self) -> dict[str, Callback]:
        """The callbacks a checkpoint carries state for, by ``"ClassName#k"`` (the k-th
        stateful callback of its class: other options of fit do not shift the keys)."""
        out: dict[str, Callback] = {}
        for cb in self.callbacks:
            if type(cb).state_dict is not Callback.state_dict:
                name = type(cb).__name__
                out[f"{name}#{sum(k.startswith(name + '#') for k in out)}"] = cb
        return out

    def on_fit_start(self, state: TrainState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not (self.resume and self.path.exists()):
            return
        ckpt = load_checkpoint(self.path)
        _check_compatible(ckpt, state.program, state.params, self.path)
        restore(state.program, state.params, ckpt["state"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        for group in state.optimizer.param_groups:
            group["lr"], group["weight_decay"] = self.learning_rate, self.weight_decay
        state.best_state, state.reference = ckpt["best_state"], ckpt.get("reference")
        state.history = [dict(h) for h in ckpt["history"]]
        state.epoch = int(ckpt["epoch"]) + 1
        state.best_epoch, state.best_val, state.bad_epochs = ckpt["best_epoch"], ckpt["best_val"], ckpt["bad_epochs"]
        state.stop = state.stopped_early = bool(ckpt.get("stopped_early", False))
        saved = ckpt.get("callbacks") or {}
        for key, cb in self._stateful().items():
            if saved.get(key) is not None:
                cb.load_state_dict(saved[key])
        _set_rng_state(ckpt["rng"])

    def save(self, state: TrainState) -> None:
        """Write the checkpoint of the epoch that just ended."""
        _atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "program": type(state.program).__name__,
                "epoch": state.epoch,
                "state": state.good_state,
                "optimizer": state.optimizer.state_dict(),
                "history": state.history,
                "best_epoch": state.best_epoch,
                "best_val": state.best_val,
                "bad_epochs": state.bad_epochs,
                "best_state": state.best_state,
                "reference": state.reference,
                "stopped_early": state.stopped_early,
                "callbacks": {key: cb.state_dict() for key, cb in self._stateful().items()},
                "rng": _rng_state(),
            },
            self.path,
        )


class _CheckpointWriter(Callback):
    """:class:`Checkpoint`'s writer: the last ``on_epoch_end``, so that the file holds
    every callback's row values and the RNG state after every callback's draws."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint

    def on_epoch_end(self, state: TrainState) -> None:
        self.checkpoint.save(state)


# -- schedules -------------------------------------------------------------------
@dataclass(frozen=True)
class _LinearWarmup:
    """KL weight rising linearly from 0 to 1 over ``epochs`` (a picklable schedule: spawned
    processes of the Lightning path receive it)."""

    epochs: float

    def __call__(self, epoch: float) -> float:
        return min(1.0, epoch / self.epochs) if self.epochs > 0 else 1.0


def _program_objective(program: Any, objective: str | Objective | None) -> str | Objective:
    """``objective``, or the first of the program's declared ``objectives`` when None
    (else ``"elbo"``); a name the program does not declare is refused."""
    declared = tuple(getattr(program, "objectives", ()) or ())
    if objective is None:
        return declared[0] if declared else "elbo"
    if declared and isinstance(objective, str) and objective not in declared:
        raise ValueError(
            f"{type(program).__name__} trains correctly with objective {' or '.join(map(repr, declared))}, "
            f"not {objective!r} (see its docstring). Try objective={declared[0]!r}, or pass an Objective "
            "instance to override this."
        )
    return objective


def _kl_schedule(kl_warmup: int | float | Callable[[float], float] | None) -> Callable[[float], float]:
    """Epoch (fractional) -> KL weight."""
    if callable(kl_warmup):
        return kl_warmup
    if kl_warmup is not None and not (kl_warmup >= 0 and math.isfinite(kl_warmup)):  # NaN fails both
        raise ValueError(f"kl_warmup must be a finite number of epochs >= 0 or a callable, got {kl_warmup!r}.")
    return _LinearWarmup(float(kl_warmup or 0))


# -- the step ------------------------------------------------------------------
def _train_step(compile, program, objective, params, tensors, loader, batch_size, num_epochs) -> TrainStep:
    steps = _num_steps(tensors, loader, batch_size)
    return make_train_step(compile, program, objective, params,
                           num_steps=None if steps is None else steps * num_epochs)


# -- evaluation ------------------------------------------------------------------
def _evaluation(program, objective: Objective, compiled: bool) -> Callable[..., tuple[torch.Tensor, ...]]:
    """A batch's (ELBO, reconstruction, KL) totals, captured as a graph if ``compiled``."""
    def terms(*batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        t = objective(program.model, program.guide, batch, {}, 1.0)
        return t.elbo, t.reconstruction, t.kl

    return CapturedFunction(terms, "pvae.fit's validation pass") if compiled else terms


@torch.no_grad()
def _evaluate(program, evaluate_batch, tensors, loader, batch_size: int, device) -> dict[str, float]:
    totals = torch.zeros(3)
    n = 0
    for batch in _batches(program, tensors, loader, batch_size, False, device):
        totals += torch.stack(evaluate_batch(*batch)).cpu()
        n += batch[0].shape[0]
    elbo, rec, kl = (totals / n).tolist()
    return {"elbo": elbo, "reconstruction": rec, "kl": kl}


# -- the loop --------------------------------------------------------------------
def prepare_program(program: Any, tensors: tuple[torch.Tensor, ...] | None,
                    val_tensors: tuple[torch.Tensor, ...] | None, first_batch: Callable[[], tuple]) -> None:
    """What :func:`fit` does to a program before training (here and on many processes).

    The program's ``validate(*data)`` checks the training and validation tensors,
    then its ``on_fit_start(*data)`` (e.g. input standardisation, whose statistics
    are buffers) runs on the training tensors, or on ``first_batch()`` when the
    data come from a ``DataLoader`` (``tensors`` None). Either hook may be absent.
    """
    validate = getattr(program, "validate", None)
    if callable(validate):
        for t in (tensors, val_tensors):
            if t is not None:
                validate(*t)
    fit_start = getattr(program, "on_fit_start", None)
    if callable(fit_start):
        fit_start(*(tensors if tensors is not None else first_batch()))


@program_verb(convert=False)
def fit(
    program: Program,
    data: Any,
    *,
    num_epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    validation_data: Any = None,
    objective: str | Objective | None = None,
    num_particles: int = 1,
    kl_warmup: int | float | Callable[[float], float] | None = None,
    patience: int | None = None,
    restore_best: bool = True,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    seed: int | None = None,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    callback: Callable[[dict[str, float]], None] | None = None,
    divergence_factor: float | None = 1e3,
    diagnostics_every: int | None = 10,
    compile: bool | Literal["graph", "inductor", "auto"] = False,
    callbacks: Sequence[Callback] = (),
    strategy: str | None = None,
    devices: int | str = "auto",
    num_nodes: int = 1,
    accelerator: str = "cpu",
) -> FitResult:
    """Fit a program's parameters by stochastic variational inference.

    Maximises the objective (by default the ELBO, with the program's own beta
    and an optional KL warm-up) with Adam over minibatches, keeps a per-epoch
    history, checkpoints, stops early on a validation plateau, and stops with
    a clear error when the loss diverges.

    .. math::

        \\mathrm{ELBO}(x) = \\mathbb E_{q(z \\mid x)}[\\log p(x \\mid z)]
            - \\mathrm{KL}(q(z \\mid x) \\,\\|\\, p(z)),
        \\quad \\text{loss} = -\\tfrac{1}{B} \\sum_{b} \\mathrm{ELBO}_{\\beta, w}(x_b).

    :param program: anything with ``model`` and ``guide`` callables taking the
        batch tensors as positional arguments (pvae's models or a user's pair).
        If it has a method ``on_train_step(epoch: float)``, it is called before
        every step with the fractional epoch: programs use it for their own
        annealing schedules (e.g. a Gumbel-softmax temperature). If it has a
        method ``on_fit_start(*data)``, it is called once before the first
        step with the training tensors (the first batch of a loader), before
        the parameters are collected: data-dependent initialisation, such as
        :meth:`pvae.models.CountVAE.standardize_inputs`.
    :param data: a tensor ``(n, ...)``, a tuple of tensors sharing their first
        dimension (passed to the program as positional arguments, e.g.
        ``(x, mask)``), or an iterable of batches such as a ``DataLoader``.
    :param int num_epochs: passes over the data (an integer: ``True`` or ``10.0``
        are refused; numpy integers are fine). Default 10.
    :param int batch_size: minibatch size for tensor data (an integer). Default 128.
    :param float learning_rate: Adam's step size. Default 1e-3.
    :param validation_data: like ``data``; evaluated after every epoch.
    :param objective: ``"elbo"``, ``"iwae"``, ``"renyi"`` or ``"enum_elbo"`` (built by
        :func:`~pvae.infer.make_objective` with ``num_particles``), or an
        :class:`~pvae.infer.objectives.Objective` instance for other options, e.g.
        ``IWAEObjective(num_particles=5, estimator="dreg")`` or
        ``ElboObjective(estimator="stl")``. With an importance-weighted objective
        the history also holds ``bound``, its value per datum. Default None: the
        first of the program's declared ``objectives`` (an SSVAE's
        ``"enum_elbo"``; see :class:`~pvae.models.base.Program`), else ``"elbo"``;
        a name the program does not declare is refused.
    :param int num_particles: particles per datum for the objective. Default 1.
    :param kl_warmup: KL annealing: a number of epochs over which the KL weight
        rises linearly from 0 to 1 (per step), or a callable ``epoch -> weight``
        taking a fractional epoch.
    :param int patience: stop after this many epochs without a better
        validation ELBO (needs ``validation_data``). 0 or None: never stop early
        (as in :meth:`pvae.causal.CEVAE.fit`); negative values are refused.
    :param bool restore_best: with early stopping, end at the best epoch's
        parameters (without an early stop it has no effect). Default True.
    :param float weight_decay: Adam's L2 penalty. Default 0.
    :param float clip_norm: clip the gradient norm to this value, > 0 (None: no clipping).
    :param checkpoint_dir: write ``checkpoint.pt`` there after every epoch
        (atomically: a crash never leaves a half-written file).
    :param bool resume: continue from ``checkpoint_dir``'s checkpoint; with the
        same ``seed`` this reproduces an uninterrupted run exactly, a
        :class:`~pvae.infer.LearningRateSchedule` in ``callbacks`` included (its
        state is checkpointed; it continues at the rate it had reached, whatever
        ``learning_rate`` says; without a schedule this call's ``learning_rate``
        and ``weight_decay`` win over the saved ones). A run that had stopped
        early is finished: resuming it returns it as it ended, without training.
    :param int seed: seed for Pyro, torch, numpy and random: the noise, the
        minibatch order and any ``pyro.param`` sites first made during the
        fit. The program's own weights were drawn when it was built; seed
        before building it (``pyro.set_rng_seed``) for a run that is the same
        in every process (torch seeds each new process at random).
    :param bool progress: show a progress bar with the live ELBO; default only
        on a terminal and outside CI.
    :param device: move the program and tensor data there.
    :param callback: called with each epoch's history row.
    :param float divergence_factor: a loss per datum above this multiple of
        ``|first loss| + 1`` counts as divergence, as does NaN or inf (None: only
        NaN or inf). Default 1000.
    :param int diagnostics_every: every this many epochs and after the last
        one, add posterior-collapse diagnostics to the history row
        (``active_units`` and ``mutual_information``, from
        :func:`pvae.infer.collapse_summary` on up to 256 validation rows, or
        training rows without validation data; tensor data only), and warn with
        :class:`~pvae.infer.PosteriorCollapseWarning` if no unit is active at the
        end. None: never. Default 10.
    :param callbacks: :class:`~pvae.infer.Callback` objects of your own, run
        after fit's (the engine's seven hooks; e.g.
        :class:`~pvae.infer.LearningRateSchedule`).
    :param compile: capture the training step (objective and backward pass) once
        and replay it (:class:`~pvae.infer.CapturedStep`): ``True`` or
        ``"graph"`` replays make_fx's graph (the same numbers as eager, to the
        bit, under the same seed), ``"inductor"`` compiles it with
        ``torch.compile`` (float-close to eager; the first compile takes tens of
        seconds; on CUDA it runs as a CUDA graph), ``"auto"`` captures runs of at least
        ``pvae.infer.capture.AUTO_COMPILE_MIN_STEPS`` (1000) steps, compiles runs of at least
        ``AUTO_INDUCTOR_MIN_STEPS`` (20,000) with inductor, and keeps the graph only if,
        timed over its first 10 replays against 10 eager steps, it is faster. The graph is checked against an
        eager step at the first step and every 100 after, and re-captured if the
        program changed; a program that cannot be captured trains eagerly with
        one :class:`~pvae.infer.CaptureWarning` naming why. Batches of
        another shape (the last partial one) run eagerly. Default False.
    :param str strategy: train on several processes or machines with PyTorch Lightning
        (the ``[lightning]`` extra): ``"ddp_spawn"``, ``"ddp"`` or another Lightning
        strategy, with ``devices`` processes (or accelerators) per node on ``num_nodes``
        nodes and ``batch_size`` rows per process; see :func:`pvae.lightning.fit_distributed`
        (checkpoints are Lightning's, read by :func:`pvae.lightning.load_checkpoint`).
        ``divergence_factor`` and ``diagnostics_every`` act there too. ``patience`` (other
        than 0), ``clip_norm``, ``callback``, ``callbacks``, ``device`` and
        ``restore_best=False`` (it acts only after an early stop) are this engine's
        and are refused there (use Lightning's callbacks and ``accelerator``).
        Default None: this process.
    :param devices: with ``strategy``: processes or accelerators per node. Default ``"auto"``.
    :param int num_nodes: with ``strategy``: machines. Default 1.
    :param str accelerator: with ``strategy``: ``"cpu"``, ``"gpu"`` or ``"auto"``. Default ``"cpu"``.
        ``devices``, ``num_nodes`` and ``accelerator`` other than their defaults without
        ``strategy`` are refused (this process trains on ``device``).
    :returns: a :class:`FitResult`.
    :raises TrainingDivergedError: on a diverging loss, naming the epoch and
        step, or on parameters that became NaN or infinite during an epoch
        (a non-finite gradient under a finite loss; checked once per epoch),
        naming the epoch and the parameters; parameters are restored to the last
        good epoch and the last checkpoint is left intact (it never holds
        non-finite parameters).
    """
    for name, value in (("num_epochs", num_epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}. Try {name}={_INT_DEFAULTS[name]}.")
    num_epochs, batch_size = int(num_epochs), int(batch_size)
    patience = check_patience(patience) or None  # 0: never stop early, as in CEVAE.fit
    if clip_norm is not None:
        clip_norm = check_clip_norm(clip_norm)
    objective = _program_objective(program, objective)
    if strategy is not None:
        engine_only = {"patience": patience is not None, "clip_norm": clip_norm is not None,
                       "callback": callback is not None, "callbacks": bool(callbacks), "device": device is not None,
                       # it acts only after an early stop, and patience is refused here
                       "restore_best=False": restore_best is not True}
        refused = [name for name, given in engine_only.items() if given]
        if refused:
            raise ValueError(f"{refused} are options of the single-process engine, not of strategy={strategy!r}. "
                             "Try Lightning's callbacks through pvae.lightning.fit_distributed(callbacks=...).")
        from ..lightning import fit_distributed

        return fit_distributed(program, data, strategy=strategy, devices=devices, num_nodes=num_nodes,
                               accelerator=accelerator, num_epochs=num_epochs, batch_size=batch_size,
                               learning_rate=learning_rate, validation_data=validation_data, objective=objective,
                               num_particles=num_particles, kl_warmup=kl_warmup, weight_decay=weight_decay,
                               checkpoint_dir=checkpoint_dir, resume=resume, seed=seed, progress=bool(progress),
                               compile=compile, divergence_factor=divergence_factor,
                               diagnostics_every=diagnostics_every)
    distributed_only = {"devices": (devices, "auto"), "num_nodes": (num_nodes, 1), "accelerator": (accelerator, "cpu")}
    given = [f"{name}={value!r}" for name, (value, default) in distributed_only.items() if value != default]
    if given:
        raise ValueError(f"{', '.join(given)} only act with strategy=... (PyTorch Lightning); without it pvae.fit "
                         "trains in this process. Try strategy='ddp_spawn' for several processes, or device='cuda' "
                         "to train this process on a GPU.")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}.")
    if patience is not None and validation_data is None:
        raise ValueError("patience (early stopping) needs validation_data.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir.")
    objective = make_objective(objective, num_particles=num_particles) if isinstance(objective, str) else objective
    schedule = _kl_schedule(kl_warmup)

    if device is not None and isinstance(program, torch.nn.Module):
        program.to(device)
    tensors = _as_tensors(program, data, "data", device)
    loader = data if tensors is None else None
    val_tensors = _as_tensors(program, validation_data, "validation_data", device) if validation_data is not None else None
    val_loader = validation_data if validation_data is not None and val_tensors is None else None
    if seed is not None:
        pyro.set_rng_seed(seed)
    first = next(_batches(program, tensors, loader, batch_size, False, device))
    prepare_program(program, tensors, val_tensors, lambda: first)
    params = _collect_params(program, first)
    was_training = program.training if isinstance(program, torch.nn.Module) else None
    if was_training is not None:
        program.train()  # checked as it will train (a program may differ by mode, e.g. a relaxation)
    with pyro.validation_enabled(True), torch.no_grad():
        objective(program.model, program.guide, first, {}, 1.0)  # Pyro's checks, once
    if was_training is not None:
        program.train(was_training)
    if not params:
        raise ValueError("the program has no trainable parameters: nothing to fit.")
    optimizer = adam(params, learning_rate, weight_decay)
    train_step = _train_step(compile, program, objective, params, tensors, loader, batch_size, num_epochs)

    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    state = TrainState(program, objective, params, optimizer, train_step, int(num_epochs),
                       _num_steps(tensors, loader, batch_size))
    evaluate_batch = _evaluation(program, objective, isinstance(train_step, CapturedStep))

    def evaluate() -> dict[str, float]:
        return _evaluate(program, evaluate_batch, val_tensors, val_loader, max(batch_size, 1024), device)
    diag_source = val_tensors if val_tensors is not None else tensors
    validation = Validation(evaluate if validation_data is not None else None, patience, restore_best)
    bar = ProgressBar(progress)
    step_hook = getattr(program, "on_train_step", None)

    def diverged(message: str, state: TrainState) -> TrainingDivergedError:
        return TrainingDivergedError(message, FitResult(program, tuple(state.history), state.best_epoch, False,
                                                        _str(ckpt_path)))

    steps_first = [KLWarmup(schedule)] + ([ProgramHook(step_hook)] if callable(step_hook) else [])
    guards = [DivergenceGuard(divergence_factor, diverged, learning_rate, ckpt_path)]
    guards += [ClipGradNorm(clip_norm)] if clip_norm is not None else []
    epoch_end = [validation]
    if diag_source is not None and diagnostics_every:
        epoch_end.append(CollapseDiagnostics(tuple(t[:256] for t in diag_source), int(diagnostics_every)))
    epoch_end.append(RecordEpoch())
    checkpoint = Checkpoint(ckpt_path, resume, learning_rate, weight_decay) if ckpt_path is not None else None
    if callback is not None:
        epoch_end.append(EpochEnd(callback))
    hooks = [*steps_first, *guards, bar, *epoch_end, *callbacks]
    if checkpoint is not None:  # restores first, writes last
        checkpoint.callbacks = hooks
        hooks = [checkpoint, *hooks, checkpoint.writer]
    try:
        with pyro.validation_enabled(False):  # checked once above
            run(state, lambda: _batches(program, tensors, loader, batch_size, True, device), hooks)
    finally:
        bar.close()
    return FitResult(program, tuple(state.history), state.best_epoch, state.stopped_early, _str(ckpt_path))


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
