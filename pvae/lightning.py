"""Many processes, many machines: any pvae program trained with PyTorch Lightning
(the ``[lightning]`` extra, package ``lightning``).

pvae writes no distributed runtime; it runs on the one the field uses.
:class:`PvaeModule` wraps any program (``model`` / ``guide``) and any pvae
objective (ELBO with beta and KL warm-up, IWAE, DReG, Renyi, CEVAE's) as a
``lightning.LightningModule`` that a plain ``lightning.Trainer`` trains on any
strategy (``ddp``, ``ddp_spawn``), accelerator and ``num_nodes``;
:func:`pvae.fit` with ``strategy=`` runs the same thing without Lightning code
(:func:`fit_distributed`).

**Scaling.** Each process (rank) sees its shard of the data (Lightning's
``DistributedSampler``) and computes the step of pvae's engine on its local
batch (:func:`pvae.infer.make_train_step`: eager, or the captured graph with
``compile=``), whose gradient is that of the loss *per datum*. The gradients
are then averaged over the ranks (one all-reduce of the flattened gradients),
so with ``R`` ranks of batch ``B`` the update is that of one process with batch
``R B``: per-datum quantities (a plate's subsample scale, beta, the KL warm-up
weight, IWAE's per-datum logsumexp) never depend on the number of ranks.
Where the ranks do not divide the data, the rows the ``DistributedSampler``
repeats to even out the shards are weighted zero (and the ranks' gradients
weighted by their rows), so each datum counts once in every step, in the
epoch's training row and in the validation ELBO. The loss per datum of the
global batch travels in the same all-reduce, so the divergence guard
(``divergence_factor``) decides on it, identically on every rank.
DDP's own gradient hooks are switched off for this (``require_backward_grad_sync``),
because a captured step computes its gradients outside autograd's hooks.
With ``seed``, rank :math:`r` draws the noise of step :math:`s` from
``torch.manual_seed(step_seed(seed, r, s))``: each rank its own noise, and a
resumed run draws what the uninterrupted one would have.

**Per-datum evaluation.** :func:`distributed_bounds` evaluates the ELBO or
IWAE bound of every datum in fixed chunks, chunk ``k`` under the seed
``seed + k``; ranks share the chunks round-robin and gather the results in data
order, so the numbers are the same on one process as on any number of them.

References

1. W. Falcon et al. PyTorch Lightning. 2019. https://lightning.ai
2. S. Li et al. PyTorch Distributed: Experiences on Accelerating Data Parallel
   Training. VLDB 2020 (DDP's gradient averaging).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import pyro
import torch
import torch.distributed as dist

INSTALL_HINT = 'pip install "pvae-pyro[lightning]"  (or: pip install lightning)'


def require_lightning() -> Any:
    """Import ``lightning``, or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module("lightning")
    except ImportError as err:
        raise ImportError(f"pvae.lightning needs the package 'lightning' ({err}). Try: {INSTALL_HINT}") from err


L = require_lightning()

from ._stack import user_stacklevel  # noqa: E402
from .data.streaming import ArrayDataset  # noqa: E402
from .inputs import as_data_args, as_data_tuple  # noqa: E402
from .infer.capture import make_train_step  # noqa: E402
from .infer.objectives import Objective, make_objective  # noqa: E402
from .infer.engine import adam  # noqa: E402
from .infer.train import CheckpointError, FitResult, _kl_schedule, _read_weights_only, prepare_program  # noqa: E402

__all__ = ["DistributedTrainingError", "PvaeModule", "distributed_bounds", "fit_distributed", "load_checkpoint",
           "require_lightning", "step_seed"]

HISTORY_NAME = "pvae_history.json"
LAST_CHECKPOINT = "last.ckpt"


class DistributedTrainingError(RuntimeError):
    """A process of a distributed run died or failed; the message names the rank and the last checkpoint."""


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of the noise that ``rank`` draws at optimiser step ``step`` of a run seeded ``seed``."""
    return (int(seed) * 1_000_003 + int(step) * 4_099 + int(rank)) % (2**63)


def _average_gradients(params: Sequence[torch.Tensor], sums: Sequence[float | torch.Tensor] = (),
                       scale: float | None = None) -> list[float]:
    """Average ``.grad`` over the ranks: one all-reduce of the flattened gradients.

    A rank without a gradient for a parameter contributes zeros (its rows did not
    reach it: as in one process with the global batch). A parameter that no rank has
    a gradient for keeps ``.grad`` None, as in one process, so that Adam leaves it
    alone (no weight decay, no step from its running moments): one flag per
    parameter, counting the ranks that have its gradient, travels in the same all-reduce.

    :param sums: numbers (the step's loss and rows) summed over the ranks in the same
        all-reduce; returned as floats (on one process: as given).
    :param float scale: multiply this rank's gradients by it before the sum (ranks whose
        batches hold different numbers of the data's rows: ``world * rows / total rows``).
        Default None: the plain mean.
    """
    _, world = _world()
    if world == 1:
        return [float(s) for s in sums]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    if scale is not None:
        flat.mul_(scale)
    has_grad = torch.tensor([float(p.grad is not None) for p in params], dtype=flat.dtype, device=flat.device)
    extra = [torch.as_tensor(s, dtype=flat.dtype, device=flat.device).reshape(1) for s in sums]
    flat = torch.cat([flat, has_grad, *extra])
    dist.all_reduce(flat)
    k, m = len(grads), len(extra)
    summed = flat[flat.numel() - m:].tolist()
    ranks_with_grad = flat[flat.numel() - m - k:flat.numel() - m].tolist()
    flat = flat[:flat.numel() - m - k].div_(world)
    for p, chunk, count in zip(params, flat.split([g.numel() for g in grads]), ranks_with_grad):
        p.grad = chunk.view_as(p).to(p.dtype) if count > 0 else None  # (the flat buffer has the widest dtype)
    return summed


def _padded_shards(loader: Any) -> tuple[tuple[int, ...], int] | None:
    """How many of each rank's rows in an epoch of ``loader`` are the data's own, and this
    rank's index, when its sampler is a ``DistributedSampler`` that pads; None otherwise.

    A ``DistributedSampler`` (Lightning's, injected into every loader) without ``drop_last``
    repeats rows until the ranks' shares are equal: of the ``n`` rows (padded to
    ``total_size``) rank :math:`r` takes the positions :math:`r, r + R, \\dots`, so its first
    ``len(range(r, n, R))`` rows are the data's and the rest (at most one a rank when
    ``n >= R``) are repeats. Batches take consecutive rows of a rank's share.
    """
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if len(loader) == 1 else None
    batch_sampler = getattr(loader, "batch_sampler", None)
    for sampler in (getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None), batch_sampler):
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            break
    else:
        return None
    try:
        n = len(sampler.dataset)
    except TypeError:
        return None
    if sampler.drop_last or sampler.total_size <= n:  # nothing repeated (e.g. UnrepeatedDistributedSampler)
        return None
    return tuple(len(range(r, n, sampler.num_replicas)) for r in range(sampler.num_replicas)), int(sampler.rank)


def _own_rows(shards: tuple[tuple[int, ...], int] | None, position: int, rows: int) -> tuple[int, ...] | None:
    """Rows of the data's own in every rank's batch of ``rows`` rows starting at ``position``
    of its share (see :func:`_padded_shards`); None when nothing is padded."""
    if shards is None:
        return None
    return tuple(min(max(own - position, 0), rows) for own in shards[0])


class PvaeModule(L.LightningModule):
    """A pvae program and objective as a ``lightning.LightningModule``.

    Example (any Lightning strategy; ``devices=2`` processes on one machine)::

        module = PvaeModule(vae, objective="elbo", learning_rate=1e-3)
        trainer = lightning.Trainer(max_epochs=10, strategy="ddp", accelerator="cpu", devices=2)
        trainer.fit(module, ArrayDataset(x).loader(batch_size=128))
        module.history          # one row per epoch, as pvae.fit's (on rank 0)

    Batches are tuples of the program's positional data (a tensor alone is a
    one-tuple). Logged once per epoch, as means per datum over every rank's rows:
    ``loss``, ``elbo``, ``reconstruction``, ``kl`` (and ``bound`` for
    importance-weighted objectives), ``kl_weight``, and ``val_elbo``,
    ``val_reconstruction``, ``val_kl`` with validation data.
    Optimisation is manual: pvae's step (eager or captured) leaves the
    gradients, which are averaged over the ranks, then Adam updates (see the
    module docstring). A program's ``on_train_step(epoch)`` (its own schedules,
    e.g. a Gumbel-softmax temperature) is called before every step with the
    fractional epoch, as :func:`pvae.fit` calls it.

    **Each datum once.** When the ranks do not divide the data, Lightning's
    ``DistributedSampler`` repeats rows so that every rank gets as many; those
    repeats are weighted zero (cut from the batch before the step, the other
    ranks' gradients weighted by their rows), so that every step is that of one
    process on the global batch of the data's own rows, and an epoch's training
    row and the validation ELBO count every datum exactly once.

    :param program: anything with ``model`` and ``guide`` whose parameters are an
        ``nn.Module``'s (pvae's programs; a user's ``PyroModule``).
    :param objective: ``"elbo"``, ``"iwae"``, ``"renyi"`` or an
        :class:`~pvae.infer.objectives.Objective` (e.g. DReG, CEVAE's).
    :param int num_particles: for a named objective. Default 1.
    :param float learning_rate: Adam's step size. Default 1e-3.
    :param float weight_decay: Adam's L2 penalty. Default 0.
    :param kl_warmup: epochs of linear KL warm-up, or a callable ``epoch -> weight``.
    :param compile: the step of :func:`pvae.fit` (``False``, ``True``/``"graph"``,
        ``"inductor"``, ``"auto"``), built in each rank. Default False.
    :param int seed: seed the noise of every step from ``(seed, rank, step)``
        (:func:`step_seed`). Default None (leave the generators alone).
    :param float divergence_factor: as :func:`pvae.fit`'s: a loss per datum above this
        multiple of ``|first loss| + 1`` stops the run with a ``FloatingPointError``, as
        does NaN or inf. The loss is that of the global batch (summed over the ranks in the
        gradients' all-reduce, before the update), so every rank takes the same decision,
        that of one process with the global batch. Default None: only NaN or inf.
    :param tuple diagnostics: data rows (a tuple of tensors, a few hundred rows) for
        :func:`pvae.infer.collapse_summary`: every ``diagnostics_every`` epochs and
        after the last, the row gets ``active_units`` and ``mutual_information``, as
        :func:`pvae.fit`'s. Default None: no diagnostics.
    :param int diagnostics_every: epochs between those reports. Default 10.

    Once per epoch (before a checkpoint is written) the parameters are checked to be
    finite: a non-finite gradient under a finite loss stops the run with a
    ``FloatingPointError`` naming the parameters, and never reaches a checkpoint.
    """

    def __init__(self, program: Any, objective: str | Objective = "elbo", num_particles: int = 1,
                 learning_rate: float = 1e-3, weight_decay: float = 0.0,
                 kl_warmup: int | float | Callable[[float], float] | None = None,
                 compile: bool | Literal["graph", "inductor", "auto"] = False, seed: int | None = None,
                 divergence_factor: float | None = None, diagnostics: tuple | None = None,
                 diagnostics_every: int | None = 10) -> None:
        super().__init__()
        if not isinstance(program, torch.nn.Module):
            raise TypeError(
                f"PvaeModule needs a program whose parameters live in an nn.Module (a PyroModule), got "
                f"{type(program).__name__}. Try pyro.nn.PyroModule for a hand-written model and guide."
            )
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}.")
        self.program = program
        self.objective = make_objective(objective, num_particles=num_particles) if isinstance(objective, str) \
            else objective
        self.learning_rate, self.weight_decay = float(learning_rate), float(weight_decay)
        self.kl_schedule = _kl_schedule(kl_warmup)  # picklable (ddp_spawn pickles the module)
        self.compile, self.seed = compile, seed
        if divergence_factor is not None and not divergence_factor > 0:
            raise ValueError(f"divergence_factor must be > 0 or None, got {divergence_factor!r}. Try 1e3.")
        if diagnostics_every is not None and (isinstance(diagnostics_every, bool) or int(diagnostics_every) != diagnostics_every
                                              or diagnostics_every < 0):
            raise ValueError(f"diagnostics_every must be a positive integer or None, got {diagnostics_every!r}.")
        self.divergence_factor = divergence_factor
        self.diagnostics = diagnostics if diagnostics_every else None
        self.diagnostics_every = int(diagnostics_every or 0)
        self._reference: float | None = None  # |first loss per datum| + 1, over all ranks' rows
        self.automatic_optimization = False
        self.history: list[dict[str, float]] = []
        self._step_fn = None
        self._epoch_started = 0.0
        self._totals: torch.Tensor | None = None
        self._seen, self._kl_last = 0, 1.0
        self._position, self._shards = 0, None  # rows of this rank's share taken this epoch; see _padded_shards
        self._val_totals: torch.Tensor | None = None
        self._val_seen, self._val_position, self._val_shards = 0, 0, None
        self._val_row: dict[str, float] = {}

    # -- set-up -------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self._params(), self.learning_rate, self.weight_decay)  # pvae.fit's (fused) Adam

    def _params(self) -> list[torch.Tensor]:
        return [p for p in self.program.parameters() if p.requires_grad]

    def on_train_start(self) -> None:
        wrapper = self.trainer.model
        if hasattr(wrapper, "require_backward_grad_sync"):
            wrapper.require_backward_grad_sync = False  # gradients are averaged by _average_gradients
        steps = self.trainer.num_training_batches
        total = None if not math.isfinite(steps) else int(steps) * int(self.trainer.max_epochs or 1)
        self._step_fn = make_train_step(self.compile, self.program, self.objective, self._params(), num_steps=total)

    def on_train_epoch_start(self) -> None:
        self._epoch_started = time.perf_counter()
        self._totals, self._seen, self._val_row = None, 0, {}
        self._position, self._shards = 0, _padded_shards(self.trainer.train_dataloader)

    def _width(self) -> tuple[torch.dtype, torch.device]:
        p = self._params()
        return (p[0].dtype, p[0].device) if p else (torch.get_default_dtype(), self.device)

    def _batch(self, batch: Any) -> tuple[torch.Tensor, ...]:
        batch = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        return as_data_args(self.program, batch, device=self.device)

    # -- steps --------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        batch = self._batch(batch)
        rows = batch[0].shape[0]
        counts = _own_rows(self._shards, self._position, rows)  # None: every row is the data's own
        self._position += rows
        own = rows if counts is None else counts[self._shards[1]]
        if own < rows:  # the sampler's repeats at the end of this rank's share: weighted zero
            batch = tuple(t[:own] for t in batch)
        steps = self.trainer.num_training_batches
        epoch = self.current_epoch + (batch_idx / steps if math.isfinite(steps) and steps else 0.0)
        kl_weight = float(self.kl_schedule(epoch))
        hook = getattr(self.program, "on_train_step", None)
        if callable(hook):  # the program's own schedules (a temperature), as pvae.fit's ProgramHook
            hook(epoch)
        if self.seed is not None:
            torch.manual_seed(step_seed(self.seed, self.global_rank, self.global_step))
        params = self._params()
        if own:
            with pyro.validation_enabled(False):
                terms = self._step_fn(batch, kl_weight)
        else:  # nothing of the data's own in this rank's batch: no gradient, but the same collectives
            terms = None
            for p in params:
                p.grad = None
        # each rank's gradient of its loss per datum, weighted by its rows when they differ:
        # the gradient of the global batch's loss per datum, as in one process
        scale = None if counts is None or len(set(counts)) == 1 else len(counts) * own / sum(counts)
        loss, seen = _average_gradients(params, (terms.loss if own else 0.0, own), scale)  # the step's one sync
        value = loss / seen  # the global batch's loss per datum: the same on every rank
        self._kl_last = kl_weight
        if self._reference is None:
            self._reference = abs(value) + 1.0
        factor = self.divergence_factor
        if not math.isfinite(value) or (factor is not None and value > factor * self._reference):
            why = "became" if not math.isfinite(value) else \
                f"exceeded {factor:g}x its first value ({self._reference - 1:.4g}):"
            world = _world()[1]
            whose = f" of the global batch ({world} ranks' rows)" if world > 1 else ""
            raise FloatingPointError(
                f"the loss per datum{whose} {why} {value:.4g} at epoch {self.current_epoch}, batch {batch_idx}; "
                "the last checkpoint is untouched. Try a lower learning_rate."
            )
        self.optimizers().step()
        if terms is not None:
            # the epoch's totals, added in place (as pvae's engine does): Lightning's per-step
            # self.log costs more than a small step, so the rows are logged once per epoch
            parts = torch.stack([terms.loss, terms.reconstruction, terms.kl,
                                 terms.loss.new_zeros(()) if terms.bound is None else terms.bound,
                                 terms.loss.new_tensor(float(terms.bound is not None))])
            self._totals = parts if self._totals is None else self._totals.add_(parts)
            self._seen += own
        return torch.tensor(value)

    def on_validation_epoch_start(self) -> None:
        self._val_totals, self._val_seen, self._val_position = None, 0, 0
        self._val_shards = _padded_shards(self.trainer.val_dataloaders)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        batch = self._batch(batch)
        rows = batch[0].shape[0]
        counts = _own_rows(self._val_shards, self._val_position, rows)
        self._val_position += rows
        own = rows if counts is None else counts[self._val_shards[1]]
        if not own:  # only the sampler's repeats
            return
        batch = batch if own == rows else tuple(t[:own] for t in batch)
        with torch.no_grad(), pyro.validation_enabled(False):
            terms = self.objective(self.program.model, self.program.guide, batch, {}, 1.0)
        parts = torch.stack([terms.elbo, terms.reconstruction, terms.kl]).detach()
        self._val_totals = parts if self._val_totals is None else self._val_totals.add_(parts)
        self._val_seen += own

    def on_validation_epoch_end(self) -> None:
        """The validation means per datum over every rank's rows, each datum once (one all-reduce)."""
        dtype, device = self._width()
        totals = torch.zeros(4, dtype=dtype, device=device)
        if self._val_totals is not None:
            totals[:3] = self._val_totals.to(dtype)
        totals[3] = self._val_seen
        if _world()[1] > 1:
            dist.all_reduce(totals)
        if totals[3] <= 0:
            return
        elbo, rec, kl = (totals[:3] / totals[3]).tolist()
        val = {"val_elbo": elbo, "val_reconstruction": rec, "val_kl": kl}
        self.log_dict(val, on_epoch=True, sync_dist=True)  # the same on every rank already
        if not self.trainer.sanity_checking:
            self._val_row = val

    def _check_finite(self) -> None:
        """Once per epoch, before a checkpoint can be written: NaN parameters stop the run."""
        from .infer.engine import _names, nonfinite_tensors

        bad = nonfinite_tensors(self.program, self._params())
        if bad:
            raise FloatingPointError(
                f"the parameters {_names(bad)} became NaN or infinite during epoch {self.current_epoch} on rank "
                f"{self.global_rank} (a non-finite gradient: the loss stayed finite); the last checkpoint is "
                "untouched. Try a lower learning_rate, or check the program for log or sqrt at 0."
            )

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:  # before the epoch's checkpoint
            self._check_finite()

    def on_train_epoch_end(self) -> None:
        self._check_finite()
        dtype, device = self._width()
        totals = torch.zeros(6, dtype=dtype, device=device)  # loss, rec, kl, bound, has bound, rows
        if self._totals is not None:
            totals[:5] = self._totals.to(dtype)
        totals[5] = self._seen
        if _world()[1] > 1:
            dist.all_reduce(totals)  # sums over the ranks: means per datum of the whole epoch
        if totals[5] <= 0:  # no batch this epoch (empty shards): no row
            return
        loss, rec, kl, bound = (totals[:4] / totals[5]).tolist()
        train = {"loss": loss, "elbo": rec - kl, "reconstruction": rec, "kl": kl, "kl_weight": self._kl_last,
                 **({"bound": bound} if totals[4] > 0 else {})}
        self.log_dict(train, on_epoch=True, sync_dist=True)  # the same on every rank already
        val = dict(self._val_row)  # this epoch's validation, if it ran
        row = {"epoch": self.current_epoch, **train, **val, **self._diagnose(),
               "seconds": time.perf_counter() - self._epoch_started}
        self.history.append(row)
        root = self.trainer.default_root_dir
        if self.global_rank == 0 and root:
            path = Path(root) / HISTORY_NAME
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.history))
            os.replace(tmp, path)

    def _diagnose(self) -> dict[str, float]:
        """``active_units`` and ``mutual_information`` when due (as pvae.fit's CollapseDiagnostics)."""
        epoch, last = self.current_epoch, int(self.trainer.max_epochs or 1) - 1
        if self.diagnostics is None or not ((epoch + 1) % self.diagnostics_every == 0 or epoch == last):
            return {}
        from .infer.diagnostics import collapse_summary

        args = tuple(t.to(self.device) for t in self.diagnostics)
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]), pyro.validation_enabled(False):
                summary = collapse_summary(self.program, *args)
        except (ValueError, NotImplementedError, TypeError) as err:
            if self.global_rank == 0:
                warnings.warn(f"collapse diagnostics are off for this program: {err}", stacklevel=user_stacklevel())
            self.diagnostics = None
            return {}
        return {"active_units": summary["active_units"], "mutual_information": summary["mutual_information"]}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pvae_history"] = list(self.history)
        checkpoint["pvae_reference"] = self._reference

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("pvae_history", []))
        self._reference = checkpoint.get("pvae_reference", self._reference)


def load_checkpoint(path: str | os.PathLike, program: Any) -> dict[str, Any]:
    """Load a Lightning checkpoint of a :class:`PvaeModule` into ``program``, safely
    (``torch.load(weights_only=True)``: no pickled code runs).

    :param path: the ``.ckpt`` file, or a directory holding ``last.ckpt``.
    :param program: the program to load the parameters into (its ``state_dict`` keys).
    :returns: the checkpoint (``epoch``, ``global_step``, ``pvae_history``, ...).
    :raises CheckpointError: if the file is missing, corrupt, foreign, or for another program.
    """
    path, ckpt = _read_weights_only(path, LAST_CHECKPOINT, "Try the checkpoint_dir of a distributed fit.")
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not any(k.startswith("program.") for k in state):
        raise CheckpointError(f"{path} is not a checkpoint of a pvae.lightning.PvaeModule (no 'program.' weights).")
    weights = {k[len("program."):]: v for k, v in state.items() if k.startswith("program.")}
    try:
        program.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{path} holds the weights of another program: {str(err).splitlines()[0]}") from None
    return ckpt


# -- evaluation ---------------------------------------------------------------------
def distributed_bounds(program: Any, data: Any, bound: Literal["elbo", "iwae", "log_evidence"] = "elbo",
                       num_particles: int = 1,
                       batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """Per-datum ELBO, IWAE bound or log-evidence ``(n,)`` of ``data``, in data order, the same on
    any number of processes.

    The rows are cut into chunks of ``batch_size``; chunk :math:`k` is evaluated
    under the seed ``seed + k`` (the global generators are restored afterwards).
    With torch.distributed initialised (inside a Lightning run, or after
    ``torch.distributed.init_process_group``), rank :math:`r` of :math:`R` takes
    the chunks :math:`k \\equiv r \\pmod R` and every rank returns all :math:`n`
    values (an all-gather); on one process it computes every chunk itself. The
    results agree to the last bit.

    :param program: the program (``model`` / ``guide``).
    :param data: a tensor or a tuple of tensors (the program's positional data).
    :param str bound: ``"elbo"`` (:func:`pvae.infer.elbo_terms`), ``"iwae"``
        (:func:`pvae.infer.iwae_bound`) or ``"log_evidence"`` (:func:`pvae.infer.log_evidence`,
        its ``log_evidence.value``: pass a large ``num_particles``). Default ``"elbo"``.
    :param int num_particles: particles per datum. Default 1.
    :param int batch_size: rows per chunk. Default 256.
    :param int seed: the seed of chunk 0. Default 0.
    """
    from .infer import elbo_terms, iwae_bound, log_evidence

    if bound not in ("elbo", "iwae", "log_evidence"):
        raise ValueError(f"bound must be 'elbo', 'iwae' or 'log_evidence', got {bound!r}.")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    tensors = as_data_tuple(program, data, "data")
    n = tensors[0].shape[0]
    rank, world = _world()
    chunks = range(rank, math.ceil(n / batch_size), world)
    values = []
    with torch.no_grad(), pyro.validation_enabled(False):
        for k in chunks:
            batch = tuple(t[k * batch_size:(k + 1) * batch_size] for t in tensors)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed) + k)
                if bound == "elbo":
                    v = elbo_terms(program.model, program.guide, *batch, num_particles=num_particles).elbo
                elif bound == "iwae":
                    v = iwae_bound(program.model, program.guide, *batch, num_particles=num_particles).value
                else:
                    v = log_evidence(program.model, program.guide, *batch,
                                     num_particles=num_particles).log_evidence.value
            values.append(v)
    mine = torch.cat(values) if values else tensors[0].new_zeros(0)
    if world == 1:
        return mine
    # gather: rank r's values are its chunks in order; pad to the longest rank's length
    longest = (math.ceil(n / batch_size) + world - 1) // world * batch_size
    padded = torch.cat([mine, mine.new_full((longest - mine.numel(),), float("nan"))])
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    out = mine.new_empty(n)
    for r, values_r in enumerate(gathered):
        for j, k in enumerate(range(r, math.ceil(n / batch_size), world)):
            rows = slice(k * batch_size, min((k + 1) * batch_size, n))
            out[rows] = values_r[j * batch_size: j * batch_size + (rows.stop - rows.start)]
    return out


# -- pvae.fit(strategy=...) ----------------------------------------------------------
def _tensors(program: Any, data: Any, name: str) -> tuple[torch.Tensor, ...] | None:
    """``data`` as the program's tensors, or None for a ``DataLoader``."""
    return None if isinstance(data, torch.utils.data.DataLoader) else as_data_tuple(program, data, name)


def _first_batch(program: Any, loader: Any) -> tuple[torch.Tensor, ...]:
    first = next(iter(loader))
    return as_data_args(program, tuple(first) if isinstance(first, (tuple, list)) else (first,))


def _loader(data: Any, tensors: tuple | None, batch_size: int, shuffle: bool) -> Any:
    return data if tensors is None else ArrayDataset(*tensors).loader(batch_size=batch_size, shuffle=shuffle)


def fit_distributed(
    program: Any,
    data: Any,
    *,
    strategy: str = "ddp_spawn",
    devices: int | str = "auto",
    num_nodes: int = 1,
    accelerator: str = "cpu",
    num_epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    validation_data: Any = None,
    objective: str | Objective = "elbo",
    num_particles: int = 1,
    kl_warmup: int | float | Callable[[float], float] | None = None,
    weight_decay: float = 0.0,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    seed: int | None = None,
    progress: bool = False,
    compile: bool | Literal["graph", "inductor", "auto"] = False,
    timeout: float = 120.0,
    callbacks: Sequence[Any] = (),
    divergence_factor: float | None = 1e3,
    diagnostics_every: int | None = 10,
) -> FitResult:
    """Train ``program`` with Lightning on ``devices`` processes per node; :func:`pvae.fit` calls
    this when given ``strategy``.

    ``batch_size`` is per process (the global batch is ``batch_size * devices * num_nodes``);
    ``data`` is a tensor, a tuple of tensors or a ``DataLoader`` (e.g.
    ``pvae.data.ArrayDataset(x).loader()`` over a memory map); Lightning shards it
    over the ranks. As :func:`pvae.fit` does, the program's ``validate(*data)`` checks
    the data and its ``on_fit_start(*data)`` (e.g. input standardisation) runs once, in
    this process, before the ranks start. With ``checkpoint_dir``, Lightning's checkpoint ``last.ckpt``
    is written there after every epoch (:func:`load_checkpoint` reads it with
    ``weights_only=True``) and ``resume=True`` continues from it. The trained
    parameters end up in ``program`` (for ``ddp_spawn`` Lightning copies them back
    from rank 0).

    :param str strategy: a Lightning strategy: ``"ddp_spawn"`` (default: works from
        a notebook or a test), ``"ddp"`` (relaunches the script, as ``torchrun`` does;
        the usual choice on clusters), or any other name or Strategy object.
    :param devices: processes per node (CPU) or accelerators. Default ``"auto"``.
    :param int num_nodes: machines. Default 1.
    :param str accelerator: ``"cpu"``, ``"gpu"``, ``"auto"``. Default ``"cpu"``.
    :param float timeout: seconds a rank waits for the others in a collective before
        failing (gloo/NCCL timeout). Default 120.
    :param callbacks: Lightning callbacks of your own.
    :param float divergence_factor: as :func:`pvae.fit`'s, on the loss per datum of the global
        batch (every rank takes the same decision). Default 1000.
    :param int diagnostics_every: as :func:`pvae.fit`'s: collapse diagnostics on up to 256
        validation rows (training rows without validation data; tensor data only) every
        this many epochs and after the last, and a
        :class:`~pvae.infer.PosteriorCollapseWarning` if no unit is active at the end.
        None: never. Default 10.
    :raises DistributedTrainingError: when a rank dies or raises; it names the rank and
        the last checkpoint, which is left intact.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.strategies import DDPStrategy

    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir.")
    tensors = _tensors(program, data, "data")
    val_tensors = None if validation_data is None else _tensors(program, validation_data, "validation_data")
    prepare_program(program, tensors, val_tensors, lambda: _first_batch(program, data))
    diagnostics = None
    if diagnostics_every:
        source = val_tensors if validation_data is not None else tensors
        if source is not None:
            diagnostics = tuple(t[:256] for t in source)
    module = PvaeModule(program, objective, num_particles, learning_rate, weight_decay, kl_warmup, compile, seed,
                        divergence_factor, diagnostics, diagnostics_every)
    train = _loader(data, tensors, batch_size, True)
    valid = None if validation_data is None else _loader(validation_data, val_tensors, max(batch_size, 1024), False)
    root = Path(checkpoint_dir) if checkpoint_dir is not None else Path(tempfile.mkdtemp(prefix="pvae-lightning-"))
    if isinstance(strategy, str) and strategy in ("ddp", "ddp_spawn"):
        strategy = DDPStrategy(start_method="spawn" if strategy == "ddp_spawn" else "popen",
                               process_group_backend="gloo" if accelerator == "cpu" else None,
                               timeout=timedelta(seconds=float(timeout)))
    # top_k=1 without a monitor keeps the latest epoch's file; last.ckpt is a copy of it
    ckpt_cb = [ModelCheckpoint(dirpath=root, save_last=True, save_top_k=1, every_n_epochs=1)] \
        if checkpoint_dir is not None else []
    last = root / LAST_CHECKPOINT
    chatter = logging.getLogger("lightning.pytorch")
    level = chatter.level
    if not progress:
        chatter.setLevel(logging.WARNING)  # "GPU available: False", tips: the Trainer's chatter in this process
    try:
        trainer = L.Trainer(max_epochs=int(num_epochs), strategy=strategy, devices=devices, num_nodes=int(num_nodes),
                            accelerator=accelerator, logger=False, enable_checkpointing=bool(ckpt_cb),
                            callbacks=[*ckpt_cb, *callbacks], enable_progress_bar=bool(progress),
                            enable_model_summary=False, default_root_dir=str(root), num_sanity_val_steps=0)
        trainer.fit(module, train, valid, ckpt_path=str(last) if resume else None)
    except Exception as err:
        if not _is_process_failure(err):
            raise
        rank = getattr(err, "error_index", None)
        where = f"the last checkpoint {last} is intact; resume with resume=True" if last.is_file() \
            else "no checkpoint was written (pass checkpoint_dir to keep one)"
        raise DistributedTrainingError(
            f"a training process ({'rank ' + str(rank) if rank is not None else 'a rank'}) failed: "
            f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}; {where}."
        ) from err
    finally:
        chatter.setLevel(level)
    history_file = root / HISTORY_NAME
    history = tuple(json.loads(history_file.read_text())) if history_file.is_file() else tuple(module.history)
    best = history[-1]["epoch"] if history else -1
    if history and history[-1].get("active_units") == 0:
        from .infer.diagnostics import PosteriorCollapseWarning

        final = history[-1]
        warnings.warn(
            f"the posterior collapsed: no latent unit is active after epoch {final['epoch']} "
            f"(KL {final['kl']:.3g} nats per datum). Try kl_warmup=..., a smaller beta, or a weaker decoder.",
            PosteriorCollapseWarning, stacklevel=user_stacklevel())
    return FitResult(program, history, int(best), False, str(last) if last.is_file() else None)


def _is_process_failure(err: BaseException) -> bool:
    mp_errors = tuple(getattr(torch.multiprocessing, name) for name in ("ProcessExitedException",
                                                                        "ProcessRaisedException")
                      if hasattr(torch.multiprocessing, name))
    return isinstance(err, mp_errors) or "gloo" in str(err).lower() or isinstance(err, dist.DistBackendError)
