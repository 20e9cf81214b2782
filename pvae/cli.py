"""The ``pvae`` command line: ``pvae fit | evaluate | gap | effect | demo``.

This module only parses arguments, calls pvae's public API and reports; the
training loop lives in :func:`pvae.fit`, the bounds and the amortisation gap in
:mod:`pvae.infer` and the causal effects in :mod:`pvae.causal`. ``python -m
pvae`` runs it too.

Usage::

    pvae fit --data digits --latent-dim 8 --epochs 50 --out runs/digits
    pvae fit --data csv:table.csv --likelihood normal --out runs/table   # NaN = missing
    pvae fit --data mnist:../shared/data/mnist --out runs/mnist        # the folder's t10k (test) files
    pvae fit --data mnist-train:PATH --out runs/mnist60k                # ... its train-* files
    pvae fit ... --out runs/mnist --resume     # continue an interrupted fit (same options)
    pvae evaluate runs/digits                  # ELBO on the same validation split
    pvae evaluate runs/digits --data digits    # ... or on any data set
    pvae gap runs/digits --num-data 100        # amortisation gap on 100 training rows -> gap.json
    pvae effect --data table.csv --treatment t --outcome y --out reports/effect   # CEVAE's ATE and ITEs
    pvae demo --out reports/demo               # train on digits, write a figure report

``--data`` names a data set: ``digits`` (scikit-learn's 8x8 digits),
``mnist:PATH`` (the 10k test files ``t10k-*-ubyte[.gz]`` of a folder of MNIST
IDX files; ``mnist-test:PATH`` says the same explicitly, ``mnist-train:PATH``
reads the folder's 60k ``train-*`` files) or ``csv:PATH`` (a numeric CSV).

A fit folder holds ``config.json`` (everything needed to rebuild the model and
its data split, and the data's row count and SHA-256, so that ``evaluate``
refuses data that changed since the fit), ``model.pt`` (the weights, a plain
``state_dict`` read back with ``torch.load(weights_only=True)``: no code is
ever unpickled), ``metrics.json`` and ``checkpoint.pt`` (:func:`pvae.fit`'s
resumable state). ``config.json`` is written before training, so an
interrupted fit's folder describes the run its checkpoint belongs to.

A run never overwrites another silently: ``pvae fit`` refuses a folder that
already holds a run's files unless given ``--overwrite`` (which deletes those
files, and only those, first) or ``--resume``. ``pvae demo`` replaces a
previous *demo report* in its folder (so ``make demo`` can be run again) and
refuses anything else there without ``--overwrite``. ``pvae gap`` and
``pvae evaluate`` add ``gap.json`` and ``evaluation.json`` to a fit folder and
touch nothing else there. ``pvae effect --out DIR`` writes ``effect.json``,
``ite.csv`` and ``cevae.pt`` (:meth:`pvae.causal.CEVAE.save`) and, like ``fit``,
refuses a folder holding a previous run or effect unless given ``--overwrite``.

Errors a user can act on (bad arguments or data, missing files, corrupt
weights, Ctrl-C) are reported as one line ``pvae: error: ...`` on stderr with
exit status 2; a diverged fit exits with status 1. ``--debug`` shows the full
traceback instead.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import inspect
import json
import math
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence, get_args

import pyro
import torch

import pvae
from pvae.causal import CEVAE
from pvae.causal.cevae import PRESETS, OutcomeDist
from pvae.data import Dataset, csv_header, load_csv, load_digits, load_mnist
from pvae.infer import (
    CheckpointError,
    FitResult,
    GapReport,
    TrainingDivergedError,
    amortization_gap,
    collapse_diagnostics,
    site_log_probs,
)
from pvae.inputs import DataError
from pvae.models import LIKELIHOODS

__all__ = ["main"]

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.json"
MODEL_NAME = "model.pt"
EVALUATION_NAME = "evaluation.json"
GAP_NAME = "gap.json"
CHECKPOINT_NAME = "checkpoint.pt"  # pvae.fit's, in checkpoint_dir
DEMO_FIGURES = ("training_curves.png", "reconstructions.png", "samples.png", "prototype.png", "latent_map.png")
# what `pvae effect --out DIR` writes
EFFECT_NAME, ITE_NAME, CEVAE_NAME = "effect.json", "ite.csv", "cevae.pt"
EFFECT_FILES = (EFFECT_NAME, ITE_NAME, CEVAE_NAME)
# read from a fit's weights: stale once they change (a resumed fit deletes them)
DERIVED_FILES = (EVALUATION_NAME, GAP_NAME)
# every file a fit, demo or effect writes (and the checkpoint's temporary file): what --overwrite deletes
RUN_FILES = (CONFIG_NAME, METRICS_NAME, MODEL_NAME, CHECKPOINT_NAME, CHECKPOINT_NAME + ".tmp", *DERIVED_FILES,
             *DEMO_FIGURES, *EFFECT_FILES)
CONFIG_FORMAT = "pvae-cli-config-v1"
VALIDATION_FRACTION = 0.1
SMOKE_EPOCHS = 2
SMOKE_ROWS = 512
_IMAGE_SHAPES = {"digits": (8, 8), "mnist": (28, 28)}
# the MNIST kinds of --data and the split of the folder's IDX files each reads ("mnist": today's test files)
_MNIST_SPLITS = {"mnist": "test", "mnist-test": "test", "mnist-train": "train"}
_DATA_SPECS = ("'digits', 'mnist:PATH' (the t10k test files of a folder of MNIST IDX files; 'mnist-train:PATH' "
               "for its train files) or 'csv:PATH' (numeric CSV file)")
GAP_ROWS = 100  # q* is refined per data point: a small default
_UNITS = "nats per datum"
COLLAPSE_ROWS = 1000  # the mutual information costs O(n^2): diagnose the first rows only


# -- data --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Data:
    """A loaded data set: features, optional missing-value mask, labels."""

    x: torch.Tensor
    mask: torch.Tensor | None
    labels: torch.Tensor | None
    name: str
    image_shape: tuple[int, ...] | None

    def tensors(self, index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The program's arguments ``(x,)`` or ``(x, mask)``, rows ``index`` (all if None)."""
        out = (self.x,) if self.mask is None else (self.x, self.mask)
        return out if index is None else tuple(t[index] for t in out)


def _parse_data_spec(spec: str) -> tuple[str, str | None]:
    """``"digits"`` / ``"mnist:PATH"`` / ``"mnist-train:PATH"`` / ``"mnist-test:PATH"`` /
    ``"csv:PATH"`` -> ``(kind, path)``."""
    kind, sep, path = spec.partition(":")
    if kind == "digits" and not sep:
        return kind, None
    if (kind in _MNIST_SPLITS or kind == "csv") and path:
        return kind, path
    raise ValueError(f"--data must be {_DATA_SPECS}, got {spec!r}.")


def _family(kind: str) -> str:
    """``"mnist"`` for every MNIST kind, else ``kind``."""
    return "mnist" if kind in _MNIST_SPLITS else kind


def _load_mnist_split(spec: str, path: str, split: str, binarize: bool) -> Dataset:
    """:func:`pvae.data.load_mnist` of one split; a folder without the training files gets a hint."""
    try:
        return load_mnist(path, split=split, binarize="static" if binarize else None)
    except FileNotFoundError:
        if split != "train" or not Path(path).is_dir():
            raise
        raise FileNotFoundError(
            f"--data {spec}: {path} holds no MNIST training files (train-images-idx3-ubyte and "
            f"train-labels-idx1-ubyte, gzipped or not). Try mnist:{path} for its t10k test files."
        ) from None


def _load_data(spec: str, binarize: bool | None, likelihood: str, limit: int | None = None) -> tuple[_Data, bool]:
    """Load ``spec``; returns the data and whether it was binarised.

    ``binarize=None`` binarises the image sets (digits, MNIST) for the
    Bernoulli likelihood only; a CSV is binarised (at 0.5) only on request.
    """
    kind, path = _parse_data_spec(spec)
    family = _family(kind)
    if binarize is None:
        binarize = likelihood == "bernoulli" and family in _IMAGE_SHAPES
    labels = mask = None
    if kind == "digits":
        ds: Dataset = load_digits(binarize=binarize)
        x, labels, name = ds.x, ds.y, ds.name
    elif family == "mnist":
        ds = _load_mnist_split(spec, path, _MNIST_SPLITS[kind], binarize)
        x, labels, name = ds.x, ds.y, ds.name
    else:
        x, name = load_csv(path).x, Path(path).name
        nan = torch.isnan(x)
        mask = ~nan if nan.any() else None
        if binarize:
            x = torch.where(nan, x, (x > 0.5).to(x.dtype))
    if limit is not None:
        x, labels, mask = (None if t is None else t[:limit] for t in (x, labels, mask))
    return _Data(x, mask, labels, name, _IMAGE_SHAPES.get(family)), binarize


def _split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded 90/10 train / validation split of ``n`` rows: two index tensors."""
    if n < 2:
        raise ValueError(f"the data have {n} row(s); a train / validation split needs at least 2.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(VALIDATION_FRACTION * n))
    return order[n_val:], order[:n_val]


def _fingerprint(x: torch.Tensor) -> str:
    """SHA-256 of the data's shape and float32 values (every NaN hashed alike)."""
    values = x.detach().to("cpu", torch.float32).contiguous()
    values = values.masked_fill(torch.isnan(values), float("nan"))
    digest = hashlib.sha256(repr(tuple(values.shape)).encode())
    digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def _check_same_data(data: _Data, fitted: dict[str, Any], spec: str, folder: Path) -> None:
    """Refuse data that differ from those the fit in ``folder`` split (its ``n_rows`` and
    ``sha256``); a config written before pvae recorded them gets a warning."""
    if "n_rows" not in fitted or "sha256" not in fitted:
        print(f"pvae: warning: {folder / CONFIG_NAME} does not record the data's row count and checksum "
              f"(written by an older pvae): the {VALIDATION_FRACTION:.0%} split is rebuilt from the data as "
              "they are now, which gives the fit's split only if they are unchanged.", file=sys.stderr)
        return
    n, expected = len(data.x), fitted["n_rows"]
    retry = f"Try --data {spec} to use the whole data set, or re-run `pvae fit`."
    if n != expected:
        raise ValueError(f"the data at {spec} now have {n} rows, the fit in {folder} had {expected}: "
                         f"its validation split cannot be rebuilt. {retry}")
    if _fingerprint(data.x) != fitted["sha256"]:
        raise ValueError(f"the data at {spec} changed since the fit in {folder} (same {n} rows, other values): "
                         f"its validation split cannot be rebuilt. {retry}")


def _resolve_spec(spec: str) -> str:
    """``spec`` with an absolute path, so a fit folder can be evaluated from anywhere."""
    kind, path = _parse_data_spec(spec)
    return kind if path is None else f"{kind}:{Path(path).resolve()}"


# -- fit -------------------------------------------------------------------------
@dataclass(frozen=True)
class _FitOptions:
    """Everything ``pvae fit`` needs; ``pvae demo`` uses :data:`_DEMO`."""

    data: str
    likelihood: str
    latent_dim: int
    hidden_dims: tuple[int, ...]
    epochs: int
    batch_size: int
    learning_rate: float
    beta: float
    kl_warmup: float
    seed: int
    binarize: bool | None
    limit: int | None = None


# Trains to a good ELBO on binarised digits in well under a minute on 2 CPU cores.
_DEMO = _FitOptions(
    data="digits", likelihood="bernoulli", latent_dim=8, hidden_dims=(256, 128), epochs=200,
    batch_size=64, learning_rate=1e-3, beta=1.0, kl_warmup=10.0, seed=0, binarize=True,
)


@dataclass(frozen=True)
class _Run:
    """A finished fit: the model, its data and split, the result and the metrics."""

    vae: pvae.VAE
    data: _Data
    val_index: torch.Tensor
    result: FitResult
    metrics: dict[str, Any]


def _likelihood_kwargs(likelihood: str, data: _Data) -> dict[str, Any]:
    """Options the likelihood needs from the data: categorical cardinalities."""
    if likelihood != "categorical":
        return {}
    top = torch.nan_to_num(data.x, nan=0.0).amax(0)
    return {"cardinalities": [max(2, int(v) + 1) for v in top.tolist()]}


def _write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


def _previous_run(out: Path) -> list[str]:
    """The names of a previous run's files (:data:`RUN_FILES`) in ``out``."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder. Try another --out.")
    return [name for name in RUN_FILES if (out / name).exists()]


def _is_demo_report(out: Path) -> bool:
    """Whether ``out`` holds a report of ``pvae demo`` (reports written before configs named
    their command are told by their latent map)."""
    try:
        config = json.loads((out / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        return False
    command = config.get("command")
    return command == "demo" or (command is None and (out / "latent_map.png").is_file())


def _check_out(out: Path, command: str, overwrite: bool, resume: bool) -> list[str]:
    """The previous run's files in ``out`` to delete before training; refuses a folder
    holding a run unless asked to overwrite it (``pvae demo``: unless it is a demo report)
    or to resume it."""
    found = _previous_run(out)
    if not found or resume:
        return []
    if overwrite or (command == "demo" and _is_demo_report(out) and not set(found) & set(EFFECT_FILES)):
        return found
    resume_hint = ", or --resume to continue an interrupted fit with the same options" if command == "fit" else ""
    raise FileExistsError(
        f"{out} already holds a previous run ({', '.join(found)}). "
        f"Try another --out, --overwrite to replace that run{resume_hint}."
    )


def _check_resumable(out: Path, config: dict[str, Any]) -> None:
    """``--resume``: the folder's run must be this one (every option but the epochs)."""
    found = _previous_run(out)
    if not found:
        return  # nothing to resume: a fresh fit
    if CONFIG_NAME not in found:
        raise FileNotFoundError(f"--resume: {out} holds {', '.join(found)} but no {CONFIG_NAME} describing the "
                                "run. Try --overwrite to start afresh.")
    saved = _read_config(out)

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix[:-1]: d}
        return {k: v for key, value in d.items() for k, v in flat(value, f"{prefix}{key}.").items()}

    ignore = {"pvae_version", "training.epochs"}
    old, new = flat(saved), flat(json.loads(json.dumps(config)))  # lists for tuples, as on disk
    diff = sorted(k for k in (set(old) | set(new)) - ignore if old.get(k) != new.get(k))
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff[:3])
        raise ValueError(f"--resume: the run in {out} differs from this one ({shown}). "
                         "Try the options of that run (only --epochs may change), or --overwrite.")


def _train(opts: _FitOptions, out: Path, quiet: bool, command: str = "fit", overwrite: bool = False,
           resume: bool = False) -> _Run:
    """Load, split, build, :func:`pvae.fit`, and write config / model / metrics to ``out``.

    ``config.json`` is written before training (after the previous run's files are deleted,
    with ``overwrite``), so the folder always describes the run its checkpoint belongs to.
    """
    if overwrite and resume:
        raise ValueError("--overwrite deletes the run that --resume would continue: give one of them.")
    _parse_data_spec(opts.data)  # a bad --data is reported before the folder is looked at
    stale = _check_out(out, command, overwrite, resume)
    data, binarized = _load_data(opts.data, opts.binarize, opts.likelihood, opts.limit)
    train_index, val_index = _split(len(data.x), opts.seed)
    model_kwargs = {
        "input_dim": data.x.shape[1],
        "latent_dim": opts.latent_dim,
        "hidden_dims": list(opts.hidden_dims),
        "likelihood": opts.likelihood,
        "likelihood_kwargs": _likelihood_kwargs(opts.likelihood, data),
        "beta": opts.beta,
    }
    pyro.set_rng_seed(opts.seed)  # the initial weights, too, follow the seed
    vae = pvae.VAE(**model_kwargs)
    config = {
        "format": CONFIG_FORMAT,
        "pvae_version": pvae.__version__,
        "program": "VAE",
        "command": command,
        "model": model_kwargs,
        "data": {
            "spec": _resolve_spec(opts.data),
            "binarize": binarized,
            "limit": opts.limit,
            "image_shape": data.image_shape,
            "n_rows": len(data.x),
            "sha256": _fingerprint(data.x),
        },
        "split": {"seed": opts.seed, "validation_fraction": VALIDATION_FRACTION},
        "training": {k: getattr(opts, k) for k in ("epochs", "batch_size", "learning_rate", "kl_warmup", "seed")},
    }
    if resume:
        _check_resumable(out, config)
        stale = [name for name in DERIVED_FILES if (out / name).exists()]  # of the weights being replaced
    elif stale:
        print(f"replacing the previous {'run' if overwrite else 'demo report'} in {out}: deleting {', '.join(stale)}")
    for name in stale:
        (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / CONFIG_NAME, config)
    tick = time.perf_counter()
    result = pvae.fit(
        vae,
        data.tensors(train_index),
        validation_data=data.tensors(val_index),
        num_epochs=opts.epochs,
        batch_size=opts.batch_size,
        learning_rate=opts.learning_rate,
        kl_warmup=opts.kl_warmup or None,
        seed=opts.seed,
        checkpoint_dir=out,
        resume=resume,
        progress=False if quiet else None,
    )
    seconds = time.perf_counter() - tick
    last = result.history[-1]
    metrics = {
        "units": _UNITS,
        "train": {k: last[k] for k in ("elbo", "reconstruction", "kl")},
        "validation": {k: last[f"val_{k}"] for k in ("elbo", "reconstruction", "kl")},
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "seconds": seconds,
        "n_train": len(train_index),
        "n_validation": len(val_index),
        "history": [dict(row) for row in result.history],
    }
    torch.save(vae.state_dict(), out / MODEL_NAME)
    _write_json(out / METRICS_NAME, metrics)
    return _Run(vae, data, val_index, result, metrics)


def _report_fit(run: _Run) -> None:
    m = run.metrics
    v = m["validation"]
    print(
        f"trained a VAE (latent_dim {run.vae.latent_dim}, {run.vae.likelihood.name}) on {run.data.name}: "
        f"{m['n_train']} train / {m['n_validation']} validation rows, {m['epochs']} epochs in {m['seconds']:.1f} s"
    )
    print(
        f"  final ELBO: train {m['train']['elbo']:.2f}, validation {v['elbo']:.2f} "
        f"(reconstruction {v['reconstruction']:.2f}, KL {v['kl']:.2f}) {_UNITS}"
    )


def _cmd_fit(args: argparse.Namespace) -> int:
    opts = _FitOptions(**{f.name: getattr(args, f.name) for f in fields(_FitOptions) if f.name != "limit"})
    if args.smoke:
        opts = replace(opts, epochs=min(opts.epochs, SMOKE_EPOCHS), limit=SMOKE_ROWS)
    out = Path(args.out)
    run = _train(opts, out, args.quiet, "fit", args.overwrite, args.resume)
    _report_fit(run)
    written = [str(out / n) for n in (CONFIG_NAME, METRICS_NAME, MODEL_NAME)] + [run.result.checkpoint_path]
    print("wrote " + ", ".join(written))
    return 0


# -- evaluate ----------------------------------------------------------------------
def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}. Try the --out folder of a finished `pvae fit`.")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}). Try re-running `pvae fit`.") from None
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT or config.get("program") != "VAE":
        raise ValueError(f"{path} was not written by `pvae fit` (expected format {CONFIG_FORMAT!r}).")
    return config


def _load_model(folder: Path, config: dict[str, Any]) -> pvae.VAE:
    """Rebuild the VAE from ``config`` and load ``model.pt`` without unpickling code."""
    vae = pvae.VAE(**config["model"])
    path = folder / MODEL_NAME
    if not path.is_file():
        hint = ("its fit did not finish: continue it with `pvae fit` and the same options plus --resume"
                if (folder / CHECKPOINT_NAME).exists() else "Try the --out folder of a finished `pvae fit`")
        raise CheckpointError(f"no {MODEL_NAME} in {folder}: {hint}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        # torch's own message suggests weights_only=False, which would run pickled code: not shown
        raise CheckpointError(
            f"{path} is corrupt or not a pvae model: torch.load(weights_only=True) cannot read it "
            f"({type(err).__name__}). Try re-running `pvae fit`."
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state_dict. Try re-running `pvae fit`.")
    try:
        vae.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path} does not fit the model described by {CONFIG_NAME}: {str(err).splitlines()[0]} "
            "Try re-running `pvae fit`."
        ) from None
    return vae.eval()


@torch.no_grad()
def _elbo_terms(vae: pvae.VAE, tensors: tuple[torch.Tensor, ...], num_particles: int, batch_size: int) -> dict:
    """Per-datum ELBO, reconstruction and KL, averaged over ``num_particles``
    particles (:func:`pvae.infer.site_log_probs`), then mean and standard error
    over the data points."""
    parts: dict[str, list[torch.Tensor]] = {"elbo": [], "reconstruction": [], "kl": []}
    n = tensors[0].shape[0]
    for start in range(0, n, batch_size):
        lp = site_log_probs(vae.model, vae.guide, *(t[start : start + batch_size] for t in tensors),
                            num_particles=num_particles)
        parts["elbo"].append(lp.log_weight.mean(0))
        parts["reconstruction"].append(lp.log_likelihood.mean(0))
        parts["kl"].append((lp.log_guide - lp.log_prior).mean(0))
    out = {}
    for key, chunks in parts.items():
        values = torch.cat(chunks).double()
        stderr = values.std().item() / math.sqrt(n) if n > 1 else None
        out[key] = {"mean": values.mean().item(), "stderr": stderr}
    return out


def _open_fit(folder: Path) -> tuple[dict[str, Any], pvae.VAE]:
    """The config and the fitted VAE of a fit folder (``evaluate`` and ``gap``)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder. Try the --out folder of a finished `pvae fit`.")
    config = _read_config(folder)
    return config, _load_model(folder, config)


@dataclass(frozen=True)
class _Selection:
    """The rows a command reads: ``data`` rows ``index`` (all if None), described by ``where``."""

    data: _Data
    index: torch.Tensor | None
    spec: str
    split: str
    where: str


def _select_data(folder: Path, config: dict[str, Any], spec: str | None, split: str | None,
                 binarize: bool | None, default_split: str) -> _Selection:
    """A fit's own train or validation split (``spec`` None: the fit's data, refused if they
    changed since the fit), or the whole data set ``spec``; checked against the model's width."""
    if spec is not None and split is not None:
        raise ValueError("--split chooses part of the fit's own data; with --data the whole data set is used.")
    likelihood, fitted = config["model"]["likelihood"], config["data"]
    binarize = fitted["binarize"] if binarize is None else binarize
    if spec is None:
        split, spec = split or default_split, fitted["spec"]
        data, _ = _load_data(spec, binarize, likelihood, fitted.get("limit"))
        same = data if binarize == fitted["binarize"] else _load_data(spec, fitted["binarize"], likelihood,
                                                                      fitted.get("limit"))[0]
        _check_same_data(same, fitted, spec, folder)  # else the split would hold rows the fit trained on
        train_index, val_index = _split(len(data.x), config["split"]["seed"])
        index = val_index if split == "validation" else train_index
        where = f"{split} split of {data.name}"
    else:
        split = "all"
        data, _ = _load_data(spec, binarize, likelihood)
        index, where = None, data.name
    expected = config["model"]["input_dim"]
    if data.x.dim() != 2 or data.x.shape[1] != expected:
        got = f"{data.x.shape[1]} columns" if data.x.dim() == 2 else f"shape {tuple(data.x.shape)}"
        raise ValueError(
            f"--data {spec!r} has {got}, the fit in {folder} had {expected}. "
            "Try the data the model was fitted on (or the same columns in the same order)."
        )
    return _Selection(data, index, spec, split, where)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    config, vae = _open_fit(folder)
    chosen = _select_data(folder, config, args.data, args.split, args.binarize, "validation")
    split, spec, where = chosen.split, chosen.spec, chosen.where
    tensors = chosen.data.tensors(chosen.index)
    pyro.set_rng_seed(args.seed)
    terms = _elbo_terms(vae, tensors, args.num_particles, args.batch_size)
    n = tensors[0].shape[0]
    collapse = collapse_diagnostics(vae, *(t[:COLLAPSE_ROWS] for t in tensors), warn=False) if n > 1 else None
    report = {
        "folder": str(folder),
        "data": spec,
        "split": split,
        "n": n,
        "num_particles": args.num_particles,
        "seed": args.seed,
        "units": _UNITS,
        "stderr": "standard error of the mean over data points",
        **terms,
        "collapse": None if collapse is None else collapse.to_dict(),
    }
    _write_json(folder / EVALUATION_NAME, report)
    print(f"{where}: n = {n}, {args.num_particles} particles per datum, {_UNITS}")
    print(f"  {'term':<16}{'mean':>10}{'stderr':>10}")
    for key in ("elbo", "reconstruction", "kl"):
        label = "ELBO" if key == "elbo" else "KL" if key == "kl" else key
        stderr = terms[key]["stderr"]
        print(f"  {label:<16}{terms[key]['mean']:>10.3f}{'-' if stderr is None else f'{stderr:.3f}':>10}")
    if collapse is not None:
        print(f"posterior collapse check (first {collapse.num_data} rows): {collapse.active_units} of "
              f"{collapse.latent_dim} latent units active, mutual information I(x; z) ~ "
              f"{collapse.mutual_information:.3f} nats (at most log n = {collapse.mutual_information_max:.3f})"
              + ("; COLLAPSED: the code carries no information about x" if collapse.collapsed else ""))
    print(f"wrote {folder / EVALUATION_NAME}")
    return 0


# -- gap ---------------------------------------------------------------------------
# GapReport's per-datum fields, in the table's order, with their labels
_GAP_ROWS = (
    ("log_evidence", "log p(x)"),
    ("elbo_optimal", "ELBO of the optimal q*"),
    ("elbo_amortized", "ELBO of the encoder"),
    ("approximation_gap", "approximation gap"),
    ("amortization_gap", "amortisation gap"),
    ("elbo_flexible", "ELBO of the flexible q*"),
    ("approximation_gap_flexible", "approximation gap (flexible)"),
)


def _gap_summary(report: GapReport) -> dict[str, dict[str, float | None]]:
    """:meth:`GapReport.summary` as ``{field: {"mean", "stderr"}}`` (stderr None for one datum)."""
    return {name: {"mean": mean, "stderr": None if math.isnan(se) else se}
            for name, (mean, se) in report.summary().items()}


def _cmd_gap(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    config, vae = _open_fit(folder)
    chosen = _select_data(folder, config, args.data, args.split, args.binarize, "train")
    rows = chosen.index if chosen.index is not None else torch.arange(len(chosen.data.x))
    rows = rows[: args.num_data]
    tensors = chosen.data.tensors(rows)
    n = len(rows)
    options = {
        "num_steps": args.num_steps,
        "learning_rate": args.learning_rate,
        "num_particles": args.num_particles,
        "elbo_particles": args.elbo_particles,
        "evidence_particles": args.evidence_particles,
        "flexible_family": args.flexible_family,
    }
    where = f"first {n} rows of the {chosen.where}"
    if not args.quiet:
        print(f"fitting q* to each of the {where}: {args.num_steps} Adam steps of {args.num_particles} "
              f"particle(s){' (and a ' + args.flexible_family + ' q*)' if args.flexible_family else ''} ...")
    pyro.set_rng_seed(args.seed)
    tick = time.perf_counter()
    report = amortization_gap(vae, *tensors, **options)
    seconds = time.perf_counter() - tick
    summary = _gap_summary(report)
    per_datum = {k: v for k, v in report.to_dict().items() if k != "summary"}
    result = {
        "folder": str(folder),
        "data": chosen.spec,
        "split": chosen.split,
        # row numbers in the data set; for a split, the first rows in the order the fit was given them
        "rows": rows.tolist(),
        "n": n,
        "seed": args.seed,
        **options,
        "seconds": seconds,
        "units": _UNITS,
        "stderr": "standard error of the mean over data points",
        "summary": summary,
        "per_datum": per_datum,
    }
    _write_json(folder / GAP_NAME, result)
    print(f"amortisation gap on the {where} ({seconds:.1f} s), {_UNITS}")
    print(f"  ELBOs from {args.elbo_particles} particles, log p(x) from an IWAE bound of "
          f"{args.evidence_particles} with the tightest q* as proposal")
    print(f"  {'quantity':<30}{'mean':>10}{'stderr':>10}")
    for key, label in _GAP_ROWS:
        if key in summary:
            stderr = summary[key]["stderr"]
            print(f"  {label:<30}{summary[key]['mean']:>10.3f}{'-' if stderr is None else f'{stderr:.3f}':>10}")
    print("  (stderr: standard error of the mean over the data points; "
          "log p(x) - ELBO of the encoder = approximation gap + amortisation gap)")
    print(f"wrote {folder / GAP_NAME}")
    return 0


# -- effect ------------------------------------------------------------------------
def _column(flag: str, name: str, header: Sequence[str] | None, width: int, file: Path) -> int:
    """The 0-based index of the column ``name`` (a header name, else a 1-based number)."""
    if header is not None and name in header:
        if header.count(name) > 1:
            raise ValueError(f"{flag} {name!r}: {file} has {header.count(name)} columns named so. "
                             "Try the column's number (1-based) instead.")
        return header.index(name)
    if name.isdigit() and 1 <= int(name) <= width:
        return int(name) - 1
    shown = ", ".join(repr(h) for h in header) if header is not None else f"1..{width} (it has no header row)"
    raise ValueError(f"{flag} {name!r} is not a column of {file}: its columns are {shown}. "
                     "Try one of those names, or a column number (1-based).")


def _first_row(bad: torch.Tensor) -> int:
    """The 1-based data row (header not counted) of the first True in ``bad``."""
    return int(bad.nonzero()[0]) + 1


@dataclass(frozen=True)
class _EffectData:
    """Covariates, treatment and outcome read from a CSV, with the columns' names."""

    x: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor
    treatment: str
    outcome: str
    covariates: list[str]
    file: Path


def _effect_data(args: argparse.Namespace) -> _EffectData:
    """Read ``--data`` with :func:`pvae.data.load_csv` and pick and check its columns."""
    path = args.data[len("csv:"):] if args.data.startswith("csv:") else args.data
    file = Path(path)
    header = csv_header(file)
    whole = load_csv(file).x if header is None else None  # no header, no text columns: read it once
    width = len(header) if header is not None else whole.shape[1]
    names = header if header is not None else [str(j + 1) for j in range(width)]
    t_col = _column("--treatment", args.treatment, header, width, file)
    y_col = _column("--outcome", args.outcome, header, width, file)
    if t_col == y_col:
        raise ValueError(f"--treatment {args.treatment!r} and --outcome {args.outcome!r} are the same column "
                         f"of {file}. Try two different columns.")
    if args.covariates is None:
        x_cols = [j for j in range(width) if j not in (t_col, y_col)]
    else:
        x_cols = [_column("--covariates", c, header, width, file) for c in args.covariates]
        for j in x_cols:
            if j in (t_col, y_col):
                role = "treatment" if j == t_col else "outcome"
                raise ValueError(f"--covariates lists {names[j]!r}, the {role} column. Try leaving it out.")
        if len(set(x_cols)) != len(x_cols):
            raise ValueError(f"--covariates lists a column twice: {args.covariates}. Try each column once.")
    if not x_cols:
        raise ValueError(f"{file} has no covariate column besides the treatment and the outcome. "
                         "Try a table with covariates (the confounders' proxies) beside them.")
    try:  # only these columns: the others may hold text (identifiers, dates)
        table = (whole[:, [t_col, y_col, *x_cols]] if whole is not None
                 else load_csv(file, columns=[t_col, y_col, *x_cols]).x)
    except DataError as err:
        if args.covariates is not None or "is not a number" not in str(err):
            raise
        raise DataError(f"{err} With a text column, name the covariates: --covariates COL ...") from None
    t, y, x = table[:, 0], table[:, 1], table[:, 2:]
    t_name, y_name = names[t_col], names[y_col]
    if torch.isnan(t).any():
        raise ValueError(f"the treatment column {t_name!r} has {int(torch.isnan(t).sum())} missing value(s) "
                         f"(first in data row {_first_row(torch.isnan(t))}). Try dropping those rows.")
    not_binary = (t != 0) & (t != 1)
    if not_binary.any():
        raise ValueError(f"the treatment column {t_name!r} must be binary (0 or 1), got {t[not_binary][0].item():g} "
                         f"in data row {_first_row(not_binary)}. Try a 0/1 treatment column.")
    if bool((t == t[0]).all()):
        raise ValueError(f"every row of {file} has treatment {t_name!r} = {t[0].item():g}: an effect needs treated "
                         "and untreated rows. Try a table with both.")
    if torch.isnan(y).any():
        raise ValueError(f"the outcome column {y_name!r} has {int(torch.isnan(y).sum())} missing value(s) "
                         f"(first in data row {_first_row(torch.isnan(y))}). Try dropping those rows.")
    missing = torch.isnan(x)
    if missing.any():
        col = int(missing.any(0).nonzero()[0])
        raise ValueError(
            f"the covariate column {names[x_cols[col]]!r} has {int(missing[:, col].sum())} missing value(s) "
            f"(first in data row {_first_row(missing[:, col])}). Try imputing them, dropping those rows, "
            "or --covariates without that column."
        )
    if args.outcome_dist == "bernoulli" and not ((y == 0) | (y == 1)).all():
        bad = (y != 0) & (y != 1)
        raise ValueError(f"--outcome-dist bernoulli needs a 0/1 outcome; column {y_name!r} holds "
                         f"{y[bad][0].item():g} (data row {_first_row(bad)}). Try --outcome-dist normal.")
    return _EffectData(x, t, y, t_name, y_name, [names[j] for j in x_cols], file)


def _write_ite(path: Path, data: _EffectData, ite: torch.Tensor, lower: torch.Tensor,
               upper: torch.Tensor) -> Path:
    """One line per data row (1-based, as in error messages): its treatment, outcome,
    estimated individual effect and that effect's interval."""
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["row", "t", "y", "ite", "ite_lower", "ite_upper"])
        columns = (data.t, data.y, ite, lower, upper)
        for i, values in enumerate(zip(*(c.tolist() for c in columns))):
            out.writerow([i + 1, *(f"{v:.7g}" for v in values)])
    return path


def _cmd_effect(args: argparse.Namespace) -> int:
    data = _effect_data(args)
    out = None if args.out is None else Path(args.out)
    stale = [] if out is None else _check_out(out, "effect", args.overwrite, resume=False)
    outcome_dist = args.outcome_dist
    if outcome_dist is None:
        outcome_dist = "bernoulli" if bool(((data.y == 0) | (data.y == 1)).all()) else "normal"
    n, n_treated = len(data.t), int(data.t.sum())
    model = {"feature_dim": data.x.shape[1], "outcome_dist": outcome_dist, "latent_dim": args.latent_dim,
             "hidden_dim": args.hidden_dim, "num_layers": args.num_layers, "num_samples": args.num_samples}
    training = {"num_epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                "seed": args.seed}
    if not args.quiet:
        print(f"fitting a CEVAE ({outcome_dist} outcome) to {data.file.name}: {n} rows, {n_treated} treated, "
              f"{len(data.covariates)} covariate(s) ...")
    cevae = CEVAE(**model)
    tick = time.perf_counter()
    cevae.fit(data.x, data.t, data.y, **training)  # a diverging fit raises TrainingDivergedError: exit 1
    seconds = time.perf_counter() - tick
    # the queries' posterior draws follow the seed, the same draws for both: the ATE is the ITEs' mean
    pyro.set_rng_seed(args.seed)
    ate = cevae.ate_inference(data.x, alpha=args.alpha)  # ate_interval's interval, with its point estimate
    pyro.set_rng_seed(args.seed)
    ite = cevae.effect_inference(data.x, alpha=args.alpha)
    naive = float(data.y[data.t == 1].mean() - data.y[data.t == 0].mean())
    level = 1 - args.alpha
    summary = {
        "pvae_version": pvae.__version__,
        "data": str(data.file.resolve()),
        "treatment": data.treatment,
        "outcome": data.outcome,
        "covariates": data.covariates,
        "n": n,
        "n_treated": n_treated,
        "n_control": n - n_treated,
        "ate": {"estimate": float(ate.mean), "lower": float(ate.lower), "upper": float(ate.upper),
                "alpha": args.alpha, "level": level,
                "interval": "CEVAE.ate_interval: normal approximation with the posterior spread of the ATE and "
                            "the held-out residual standard error of the arm means"},
        "naive_difference": naive,
        "model": cevae.config(),
        "training": {**training, "epochs_run": len(cevae.training_history), "seconds": seconds,
                     "validation_rows": 0 if cevae.validation_rows is None else len(cevae.validation_rows)},
        "assumptions": "a causal effect only if the covariates are proxies of every confounder (ignorability "
                       "given the latent), both arms occur for every kind of unit (positivity), and units do "
                       "not affect each other (SUTVA)",
    }
    print(f"CEVAE ({outcome_dist} outcome, latent_dim {args.latent_dim}) on {data.file.name}: {n} rows "
          f"({n_treated} treated, {n - n_treated} control), covariates {', '.join(data.covariates)}; "
          f"{summary['training']['epochs_run']} epochs in {seconds:.1f} s")
    print(f"  ATE of {data.treatment!r} on {data.outcome!r}: {float(ate.mean):.4g}, "
          f"{level:.0%} interval [{float(ate.lower):.4g}, {float(ate.upper):.4g}]")
    print(f"  naive difference of means (no adjustment): {naive:.4g}")
    if out is None:
        print("  (pass --out DIR to write the per-row effects and a JSON summary)")
        return 0
    if stale:
        print(f"replacing the previous run in {out}: deleting {', '.join(stale)}")
    for name in stale:
        (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _write_json(out / EFFECT_NAME, summary),
        _write_ite(out / ITE_NAME, data, ite.mean, ite.lower, ite.upper),
        out / CEVAE_NAME,
    ]
    cevae.save(out / CEVAE_NAME)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


# -- demo --------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from pvae.analysis import (  # here, so that fit and evaluate never import matplotlib
        plot_image,
        plot_latent_map,
        plot_reconstructions,
        plot_samples,
        plot_training_curves,
    )

    if args.threads is None:
        # the demo's small networks run as fast on one thread as on two, and a
        # second thread spinning on a busy CPU slows training several-fold
        torch.set_num_threads(1)
    opts = _DEMO
    if args.epochs is not None:
        opts = replace(opts, epochs=args.epochs)
    if args.smoke:
        opts = replace(opts, epochs=SMOKE_EPOCHS)
    out = Path(args.out)
    run = _train(opts, out, args.quiet, "demo", args.overwrite)
    _report_fit(run)
    vae, data, shape = run.vae, run.data, run.data.image_shape
    x_val = data.x[run.val_index]
    with torch.no_grad():
        prototype = vae.decode(torch.zeros(1, vae.latent_dim)).mean
        z_loc, _ = vae.encode(data.x)
    pyro.set_rng_seed(opts.seed)
    written = [
        out / METRICS_NAME,
        plot_training_curves(run.result.history, out / "training_curves.png"),
        plot_reconstructions(x_val[:10], vae.reconstruct(x_val[:10]), shape, out / "reconstructions.png", n=10),
        plot_samples(vae.sample(64, mean=True), shape, out / "samples.png",
                     title="decoder means at z ~ p(z)"),
        plot_image(prototype, shape, out / "prototype.png", title="prototype: decoder mean at z = 0"),
        plot_latent_map(z_loc, data.labels, out / "latent_map.png",
                        title=f"encoder means of {len(z_loc)} digits, coloured by digit"),
    ]
    print(f"wrote the report to {out}:")
    for path in written:
        print(f"  {path}")
    return 0


# -- parsing -----------------------------------------------------------------------
class _UsageError(Exception):
    """A command-line usage error, reported as one line."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise instead of printing and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _checked(parse: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``parse(text)`` when it parses and satisfies ``ok``, else
    the error "expected <expected>, got <text>"."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return convert


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
_warmup_epochs = _checked(float, lambda v: math.isfinite(v) and v >= 0, "a finite number of epochs >= 0")
_alpha = _checked(float, lambda v: 0 < v < 1, "a number in (0, 1) such as 0.05 (a 95% interval)")
_positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def _hidden_dims(text: str) -> tuple[int, ...]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        return tuple(_positive_int(p) for p in parts)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 256,128, got {text!r}"
        ) from None


def _defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """The default of each of ``fn``'s parameters that has one."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def _add_binarize(p: argparse.ArgumentParser, default_text: str) -> None:
    p.add_argument("--binarize", action=argparse.BooleanOptionalAction, default=None,
                   help=f"threshold the data at 0.5 to 0/1. Default: {default_text}")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    common.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    common.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="CPU threads for torch. Default: torch's choice (demo: 1)")
    data_help = "digits (scikit-learn's 8x8 digits), mnist:PATH (the 10k test files t10k-* of a folder of MNIST " \
                "IDX files; mnist-train:PATH reads its 60k train-* files, mnist-test:PATH the test files), or " \
                "csv:PATH (numeric CSV, optional header, empty/NaN cells = missing)"

    parser = _Parser(prog="pvae", description="Variational autoencoders as Pyro programs: fit, evaluate, "
                                              "amortisation gap, causal effect, demo.")
    parser.add_argument("--version", action="version", version=f"pvae {pvae.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{fit,evaluate,gap,effect,demo}")

    fit = sub.add_parser("fit", parents=[common], help="train a VAE and write a fit folder",
                         description="Train a VAE on a 90/10 train/validation split and write DIR/config.json, "
                                     "DIR/model.pt, DIR/metrics.json and DIR/checkpoint.pt. A DIR that holds a previous "
                                     "run is refused without --overwrite or --resume.")
    fit.add_argument("--data", required=True, metavar="SPEC", help=data_help)
    fit.add_argument("--likelihood", default="bernoulli", choices=sorted(LIKELIHOODS), metavar="NAME",
                     help=f"observation family: {', '.join(sorted(LIKELIHOODS))} (categorical takes each "
                          "column's cardinality from the data). Default bernoulli")
    fit.add_argument("--latent-dim", type=_positive_int, default=8, metavar="N", help="dimension of z. Default 8")
    fit.add_argument("--hidden-dims", type=_hidden_dims, default=(256, 128), metavar="W1,W2,...",
                     help="encoder hidden widths, mirrored by the decoder. Default 256,128")
    fit.add_argument("--epochs", type=_positive_int, default=50, metavar="N", help="passes over the data. Default 50")
    fit.add_argument("--batch-size", type=_positive_int, default=128, metavar="N", help="Default 128")
    fit.add_argument("--learning-rate", type=float, default=1e-3, metavar="LR", help="Adam step size. Default 1e-3")
    fit.add_argument("--beta", type=float, default=1.0, help="weight of the KL term (beta-VAE). Default 1")
    fit.add_argument("--kl-warmup", type=_warmup_epochs, default=0.0, metavar="EPOCHS",
                     help="epochs over which the KL weight rises from 0 to 1. Default 0 (none)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the split, the weights and training. Default 0")
    _add_binarize(fit, "on for digits/mnist with the bernoulli likelihood, else off")
    fit.add_argument("--out", required=True, metavar="DIR", help="folder to write the fit to")
    fit.add_argument("--overwrite", action="store_true",
                     help="replace a previous run in DIR (its files are deleted first). Default: refuse")
    fit.add_argument("--resume", action="store_true",
                     help="continue the interrupted (or shorter) run in DIR from its checkpoint.pt; every "
                          "option but --epochs must be that run's")
    fit.add_argument("--smoke", action="store_true",
                     help=f"a quick check: {SMOKE_EPOCHS} epochs on the first {SMOKE_ROWS} rows")
    fit.set_defaults(run=_cmd_fit)

    ev = sub.add_parser("evaluate", parents=[common], help="ELBO, reconstruction and KL of a fit folder",
                        description="Per-datum mean ELBO, reconstruction and KL of a fitted VAE on its validation "
                                    "split (or --data), written to DIR/evaluation.json.")
    ev.add_argument("dir", help="a folder written by `pvae fit` or `pvae demo`")
    ev.add_argument("--data", default=None, metavar="SPEC",
                    help=f"evaluate on this whole data set instead: {data_help}")
    ev.add_argument("--split", choices=("validation", "train"), default=None,
                    help="which part of the fit's own data (without --data). Default validation")
    ev.add_argument("--num-particles", type=_positive_int, default=16, metavar="K",
                    help="samples of z per datum. Default 16")
    ev.add_argument("--batch-size", type=_positive_int, default=512, metavar="N", help="Default 512")
    ev.add_argument("--seed", type=int, default=0, help="Default 0")
    _add_binarize(ev, "as in the fit")
    ev.set_defaults(run=_cmd_evaluate)

    gap = sub.add_parser("gap", parents=[common], help="amortisation gap of a fit folder's encoder",
                         description="Split the inference gap of a fitted VAE's encoder, per data point, into "
                                     "the approximation gap (log p(x) - ELBO of the best q in the encoder's "
                                     "family, q* fitted to each data point) and the amortisation gap (ELBO of "
                                     "q* - ELBO of the encoder), with pvae.infer.amortization_gap (Cremer et "
                                     "al. 2018); print the means and write DIR/gap.json.")
    gap.add_argument("dir", help="a folder written by `pvae fit` or `pvae demo`")
    gap.add_argument("--data", default=None, metavar="SPEC",
                     help=f"use the first rows of this data set instead of the fit's own: {data_help}")
    gap.add_argument("--split", choices=("train", "validation"), default=None,
                     help="which part of the fit's own data (without --data). Default train")
    gap.add_argument("--num-data", type=_positive_int, default=GAP_ROWS, metavar="N",
                     help=f"data points (q* is fitted to each: the cost grows with N). For a split, its first N "
                          f"rows in the order the fit was given them (a seeded shuffle). Default {GAP_ROWS}")
    gap.add_argument("--num-steps", type=_non_negative_int, default=500, metavar="S",
                     help="Adam steps fitting each q* (0: q* is the encoder's q). Default 500")
    gap.add_argument("--learning-rate", type=_positive_float, default=2e-2, metavar="LR",
                     help="Adam's initial step size, decaying to a 20th of it. Default 0.02")
    gap.add_argument("--num-particles", type=_positive_int, default=8, metavar="K",
                     help="particles per optimisation step. Default 8")
    gap.add_argument("--elbo-particles", type=_positive_int, default=1000, metavar="K",
                     help="particles of the final ELBO estimates. Default 1000")
    gap.add_argument("--evidence-particles", type=_positive_int, default=5000, metavar="K",
                     help="particles of the IWAE estimate of log p(x). Default 5000")
    gap.add_argument("--flexible-family", choices=("full_covariance", "planar_flow"), default=None,
                     help="also fit a richer per-datum q* and report its ELBO and approximation gap. Default none")
    gap.add_argument("--seed", type=int, default=0, help="Default 0")
    _add_binarize(gap, "as in the fit")
    gap.set_defaults(run=_cmd_gap)

    effect = sub.add_parser("effect", parents=[common], help="treatment effect in a CSV table, by a CEVAE",
                            description="Fit a causal effect VAE (pvae.causal.CEVAE, Louizos et al. 2017) to a "
                                        "numeric CSV table and print the average treatment effect of a binary "
                                        "treatment column on an outcome column with its interval; with --out, "
                                        "write DIR/effect.json, the per-row effects DIR/ite.csv and the model "
                                        "DIR/cevae.pt. The estimate is causal only if the covariates are proxies "
                                        "of every confounder, both arms occur for every kind of row, and rows "
                                        "do not affect each other.")
    effect.add_argument("--data", required=True, metavar="FILE.csv",
                        help="numeric CSV (optional header row; read by pvae.data.load_csv)")
    col = "a header name, or a column number (1-based)"
    effect.add_argument("--treatment", required=True, metavar="COL", help=f"the 0/1 treatment column: {col}")
    effect.add_argument("--outcome", required=True, metavar="COL", help=f"the outcome column: {col}")
    effect.add_argument("--covariates", nargs="+", default=None, metavar="COL",
                        help="the covariate columns. Default: every other column")
    effect.add_argument("--outcome-dist", choices=get_args(OutcomeDist), default=None, metavar="NAME",
                        help=f"family of the outcome: {', '.join(get_args(OutcomeDist))}. Default bernoulli "
                             "for a 0/1 outcome, else normal")
    effect.add_argument("--alpha", type=_alpha, default=0.05,
                        help="one minus the intervals' coverage. Default 0.05 (95%% intervals)")
    built, fitted = _defaults(CEVAE), _defaults(CEVAE.fit)  # the estimator's own defaults, not copies
    effect.add_argument("--latent-dim", type=_positive_int, default=built["latent_dim"], metavar="N",
                        help=f"dimension of the latent confounder. Default {built['latent_dim']}")
    effect.add_argument("--hidden-dim", type=_positive_int, default=built["hidden_dim"], metavar="N",
                        help=f"width of the hidden layers. Default {built['hidden_dim']}")
    effect.add_argument("--num-layers", type=_positive_int, default=built["num_layers"], metavar="N",
                        help=f"hidden layers of the outcome networks. Default {built['num_layers']}")
    effect.add_argument("--epochs", type=_positive_int, default=None, metavar="N",
                        help="at most this many passes (early stopping on a seeded 30%% validation split keeps "
                             f"the best). Default {PRESETS[built['preset']]['num_epochs']}")
    effect.add_argument("--batch-size", type=_positive_int, default=fitted["batch_size"], metavar="N",
                        help=f"Default {fitted['batch_size']}")
    effect.add_argument("--learning-rate", type=_positive_float, default=fitted["learning_rate"], metavar="LR",
                        help=f"Default {fitted['learning_rate']:g}")
    effect.add_argument("--num-samples", type=_positive_int, default=built["num_samples"], metavar="S",
                        help=f"posterior draws of the latent per row for the effects. Default {built['num_samples']}")
    effect.add_argument("--seed", type=int, default=0,
                        help="seed of the weights, the validation split, training and the draws. Default 0")
    effect.add_argument("--out", default=None, metavar="DIR",
                        help="folder for effect.json, ite.csv and cevae.pt. Default: write nothing")
    effect.add_argument("--overwrite", action="store_true",
                        help="replace a previous run or effect in DIR (its files are deleted first). Default: refuse")
    effect.set_defaults(run=_cmd_effect)

    demo = sub.add_parser("demo", parents=[common], help="train on digits and write a figure report",
                          description="Train a VAE on binarised 8x8 digits and write metrics and figures: "
                                      "training curves, reconstructions, prior samples, the prototype z = 0 "
                                      "and a map of the latent means.")
    demo.add_argument("--out", default="reports/demo", metavar="DIR",
                      help="report folder; a previous demo report there is replaced. Default reports/demo")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace whatever run DIR holds (its files are deleted first). Default: replace a "
                           "previous demo report only")
    demo.add_argument("--epochs", type=_positive_int, default=None, metavar="N", help=f"Default {_DEMO.epochs}")
    demo.add_argument("--smoke", action="store_true", help=f"a quick check: {SMOKE_EPOCHS} epochs")
    demo.set_defaults(run=_cmd_demo)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (Ctrl-C)."
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pvae`` command line.

    :param argv: arguments without the program name; ``sys.argv[1:]`` if None.
    :returns: the exit status: 0 on success, 1 if training diverged, 2 on a
        usage, data or file error (reported as one line on stderr).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        print(f"pvae: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as done:  # --help, --version
        return done.code if isinstance(done.code, int) else 0
    run: Callable[[argparse.Namespace], int] = args.run
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    except TrainingDivergedError as err:  # a RuntimeError: checked before the rest
        if args.debug:
            raise
        failure, status = err, 1
    except (ValueError, TypeError, OSError, KeyboardInterrupt) as err:
        if args.debug:
            raise
        failure, status = err, 2
    print(f"pvae: error: {_one_line(failure)}", file=sys.stderr)
    return status

if __name__ == "__main__":
    raise SystemExit(main())
