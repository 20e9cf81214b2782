"""Molecules on MOSES: SMILES and SELFIES sequence VAEs, the MOSES metrics, and latent design of QED and penalized logP (issue 15).

Data: ``shared/data/moses`` (MOSES train, 1,584,663 RDKit-canonical SMILES;
test; the MCF and PAINS SMARTS filters). Protocol, in one run:

* a random subset of ``--train-size`` training molecules (seed 0, the same for
  both models), tokenised as SMILES and as SELFIES
  (:class:`pvae.chem.MoleculeTokenizer`, codes end-padded to the longest);
* per coding, :class:`pvae.models.SequenceVAE` with the GRU decoder
  (``decoder="gru"``): an MLP encoder on the one-hot codes (512, 256), a
  64-dimensional latent, a one-layer GRU of 256 units reading ``z`` and the
  previous token (the MOSES VAE has a bidirectional-GRU encoder, a 3 x 512 GRU
  decoder and a 128-dimensional latent: too slow for 2 cores), ``beta``
  ``--beta`` with the KL weight warmed up over the first epoch, Adam 2e-3,
  batch 256, trained until ``--minutes`` of training time have passed (whole
  epochs; the count depends on the machine, so ``--epochs N`` trains exactly
  N epochs instead, for a rerun that repeats a result). The two models train side by side in two processes, one thread each;
* MOSES metrics (:func:`pvae.chem.metrics`) of ``--samples`` molecules from
  the prior, ``z ~ N(0, I)``, decoded two ways: *ancestral* (each token drawn,
  as MOSES samples) and *greedy* (the most likely token at each step). Novelty
  against the full MOSES train set, filters MCF + PAINS + MOSES's atom, charge
  and ring rules, property distances the Wasserstein-1 distance to 10,000 random
  MOSES test molecules;
* design, per property (QED; penalized logP standardised as in JT-VAE, with
  the raw logP - SA - ring penalty beside it): a
  :class:`pvae.analysis.LatentPredictor` fitted on the encoder means of the
  training subset, :func:`pvae.analysis.latent_optimize` from ``--starts``
  codes (half from the prior, half the encoder means of the best training
  molecules), ``--steps`` steps, prior weight ``--prior-weight``, the path
  decoded greedily every 10 steps; a candidate counts only if valid, not in
  the MOSES train set and passing the filters. Against: the training subset's
  own best molecules, and as many random prior codes decoded the same way.

The model's size, batch, learning rate and device are options: the defaults
are the 2-core run above. Training and evaluation can run apart, on different
machines: ``--train-only --models DIR`` trains and saves the weights (only torch
and Pyro needed: RDKit and SELFIES are not, when ``--codes-cache`` already holds
the tokenised subset), ``--evaluate-only --models DIR`` measures them on the CPU.

Usage::

    python benchmarks/molecules_moses.py                     # the table (~40 min on 2 cores)
    python benchmarks/molecules_moses.py --train-size 3000 --minutes 0.5 --samples 500 --starts 20 --steps 20  # smoke
    # the MOSES VAE's decoder (3 x 512 GRU, latent 128) trained on a GPU, measured here:
    python benchmarks/molecules_moses.py --train-size 250000 --codes-cache codes --tokenize-only  # CPU, ~4 min
    python benchmarks/molecules_moses.py --train-size 250000 --codes-cache codes --train-only --models models \\
        --device cuda --gru 512 512 512 --latent 128 --batch-size 512 --learning-rate 1e-3 --clip-norm 50 --minutes 6
    python benchmarks/molecules_moses.py --train-size 250000 --codes-cache codes --train-only --models models2 \\
        --init-models models --kinds selfies --device cuda --batch-size 512 --learning-rate 5e-4 --clip-norm 50 \\
        --minutes 5                                          # a second leg for one model, from the first's weights
    python benchmarks/molecules_moses.py --train-size 250000 --codes-cache codes --evaluate-only --models models
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import pvae
from pvae.chem import MoleculeTokenizer, canonical_smiles, load_filters, load_smiles, metrics, penalized_logp, qed
from pvae.infer import Callback
from pvae.models import SequenceVAE

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "moses"
PROPERTIES = {"qed": qed, "plogp_std": lambda s: penalized_logp(s, standardize=True)}


class TimeBudget(Callback):
    """Stop after the first epoch that ends past ``seconds`` of training."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_fit_start(self, state) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, state) -> None:
        if time.perf_counter() - self.start > self.seconds:
            state.stop = True


def _in_chunks(function, z: torch.Tensor, size: int = 2000) -> list:
    return [item for chunk in z.split(size) for item in function(chunk)]


def _top(values: np.ndarray, smiles: list[str], k: int = 3) -> list[tuple[str, float]]:
    order = np.argsort(-np.nan_to_num(values, nan=-np.inf))[:k]
    return [(smiles[i], float(values[i])) for i in order]


def _molecules(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """All MOSES train molecules, the random training subset, and 10,000 random test molecules."""
    rng = np.random.default_rng(0)
    everything = load_smiles(args.data_dir / "train.csv.gz")
    subset = [everything[i] for i in rng.choice(len(everything), args.train_size, replace=False)]
    test_all = load_smiles(args.data_dir / "test.csv.gz")
    test = [test_all[i] for i in rng.choice(len(test_all), min(10000, len(test_all)), replace=False)]
    return everything, subset, test


def _codes(kind: str, subset: Callable[[], list[str]], args: argparse.Namespace
           ) -> tuple[MoleculeTokenizer, torch.Tensor]:
    """The subset's tokenizer and codes; read from, or written to, ``--codes-cache`` when given
    (SELFIES translation is pure Python: ~0.35 ms a molecule, twice). ``subset`` is called
    only when the codes are not cached."""
    path = args.codes_cache / f"{kind}-{args.train_size}.pt" if args.codes_cache else None
    if path is not None and path.exists():
        cached = torch.load(path, weights_only=True)
        return MoleculeTokenizer(**cached["tokenizer"]), cached["codes"].long()
    molecules = subset()
    tokens = MoleculeTokenizer.fit(molecules, kind=kind)
    codes = tokens.encode(molecules)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"tokenizer": tokens.to_dict(), "codes": codes.to(torch.uint8)}, path)
    return tokens, codes


def _make_vae(tokens: MoleculeTokenizer, latent: int, gru: list[int], beta: float) -> SequenceVAE:
    return SequenceVAE(tokens.length, alphabet_size=tokens.vocab_size, latent_dim=latent, hidden_dims=(512, 256),
                       decoder="gru", decoder_hidden_dims=tuple(gru), beta=beta)


def train_coding(kind: str, args: argparse.Namespace, tokens: MoleculeTokenizer, codes: torch.Tensor
                 ) -> tuple[SequenceVAE, dict]:
    """One coding's model, trained for ``--epochs`` or ``--minutes`` on ``--device``; saved to ``--models`` when given."""
    torch.manual_seed(0)
    if args.init_models:  # a second leg: the saved model's weights, a fresh Adam, no KL warm-up
        vae, before = _saved_coding(kind, args.init_models)
        legs = before.get("legs", [before])
    else:
        vae, legs = _make_vae(tokens, args.latent, args.gru, args.beta), []
    start = time.perf_counter()
    fitted = pvae.fit(vae, codes, num_epochs=args.epochs or 1000, batch_size=args.batch_size,
                      learning_rate=args.learning_rate, kl_warmup=None if args.init_models else 1, seed=len(legs),
                      callbacks=[] if args.epochs else [TimeBudget(args.minutes * 60)], diagnostics_every=None,
                      progress=False,
                      clip_norm=args.clip_norm, device=args.device)
    last = fitted.history[-1]
    leg = {"epochs": len(fitted.history), "train_seconds": time.perf_counter() - start, "device": str(args.device),
           "batch_size": args.batch_size, "learning_rate": args.learning_rate, "clip_norm": args.clip_norm}
    legs = [{k: old[k] for k in leg} for old in legs] + [leg]
    record = {"kind": kind, "vocab": tokens.vocab_size, "length": tokens.length, "train_size": args.train_size,
              "latent": vae.latent_dim, "gru": [vae.decoder.hidden_size] * vae.decoder.num_layers, "beta": vae.beta,
              "elbo": last["elbo"], "kl": last["kl"], "legs": legs,
              **{key: sum(old[key] for old in legs) for key in ("epochs", "train_seconds")}}
    vae.cpu()
    if args.models:
        _save(vae.state_dict(), {"tokenizer": tokens.to_dict(), "record": record}, args.models, kind)
    return vae, record


# a file of at most this size comes back from a lent GPU machine (its README): larger
# models are saved in parts
PART_BYTES = 12 * 2**20


def _save(state: dict[str, torch.Tensor], meta: dict, folder: Path, kind: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    parts: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if parts[-1] and size + nbytes > PART_BYTES:
            parts.append({})
            size = 0
        parts[-1][name] = tensor
        size += nbytes
    for i, part in enumerate(parts):
        torch.save(part, folder / f"{kind}.part{i}.pt")
    torch.save({**meta, "parts": len(parts)}, folder / f"{kind}.pt")


def _saved_coding(kind: str, folder: Path) -> tuple[SequenceVAE, dict]:
    saved = torch.load(folder / f"{kind}.pt", weights_only=True)
    record = saved["record"]
    vae = _make_vae(MoleculeTokenizer(**saved["tokenizer"]), record["latent"], record["gru"], record["beta"])
    state = {}
    for i in range(saved["parts"]):
        state.update(torch.load(folder / f"{kind}.part{i}.pt", weights_only=True))
    vae.load_state_dict(state)
    return vae, dict(record)


def train_only(kind: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    tokens, codes = _codes(kind, lambda: _molecules(args)[1], args)
    return train_coding(kind, args, tokens, codes)[1]


def run_coding(kind: str, args: argparse.Namespace) -> dict:
    # imported here: --train-only needs torch and Pyro alone (a GPU machine may have nothing else)
    from pvae.analysis import fit_latent_predictor, latent_optimize

    torch.set_num_threads(1)
    everything, subset, test = _molecules(args)
    train_set = set(everything)
    filters = load_filters(args.data_dir / "mcf.csv", args.data_dir / "wehi_pains.csv")
    tokens, codes = _codes(kind, lambda: subset, args)
    vae, out = _saved_coding(kind, args.models) if args.evaluate_only else train_coding(kind, args, tokens, codes)
    if vae.length != tokens.length or vae.alphabet_size != tokens.vocab_size:
        raise SystemExit(f"{kind}: the saved model does not fit the codes of --train-size {args.train_size}")
    latent = vae.latent_dim

    vae.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        z = torch.randn(args.samples, latent)
        for decoding in ("ancestral", "greedy"):
            start = time.perf_counter()
            draw = (lambda c: vae.decode(c).sample()) if decoding == "ancestral" else (lambda c: vae.decode(c).mode)
            strings = _in_chunks(lambda c: tokens.decode(draw(c)), z)
            out[f"sample_seconds_{decoding}"] = time.perf_counter() - start
            out[f"metrics_{decoding}"] = metrics(strings, everything, test=test, filters=filters, train_canonical=True,
                                                 unique_at=(1000, args.samples)).to_dict()

    def decode(c: torch.Tensor) -> list[str]:
        return [canonical_smiles(s) or s for s in tokens.decode(vae.decode(c).mode)]

    def accept(s: str) -> bool:
        return s not in train_set and filters.passes(s)  # passes() is False for an invalid string

    num_decodes = args.starts * (args.steps // 10)
    for name, oracle in PROPERTIES.items():
        values = np.array([oracle(s) for s in subset])
        predictor = fit_latent_predictor(vae, codes, values, num_epochs=args.predictor_epochs, seed=0)
        best = np.argsort(-np.nan_to_num(values, nan=-np.inf))[: args.starts // 2]
        with torch.no_grad():
            best_codes = vae.encode(codes[torch.as_tensor(best)])[0]
        starts = torch.cat([torch.randn(args.starts - len(best), latent, generator=torch.Generator().manual_seed(2)),
                            best_codes])
        start = time.perf_counter()
        design = latent_optimize(vae, predictor, starts=starts, steps=args.steps, learning_rate=0.05,
                                 prior_weight=args.prior_weight, record_every=10, decode=decode, oracle=oracle,
                                 accept=accept)
        design_seconds = time.perf_counter() - start
        prior_codes = torch.randn(num_decodes, latent, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            prior_strings = _in_chunks(decode, prior_codes)
        prior_ok = [s for s in dict.fromkeys(prior_strings) if accept(s)]
        prior_scores = np.array([oracle(s) for s in prior_ok])
        top = design.top(3)
        out[f"design_{name}"] = {
            "predictor_r2": predictor.r2,
            "optimised": design.summary(),
            "optimised_top3": [(s, v, penalized_logp(s)) for s, v in top],
            "train_top3": [(s, v, penalized_logp(s)) for s, v in _top(values, subset)],
            "train_mean_top50": float(np.sort(values[~np.isnan(values)])[-50:].mean()),
            "prior_top3": [(s, v, penalized_logp(s)) for s, v in _top(prior_scores, prior_ok)],
            "prior_mean_top50": float(np.sort(prior_scores)[-50:].mean()) if len(prior_scores) >= 50 else math.nan,
            "prior_accepted": len(prior_ok),
            "num_decodes": num_decodes,
            "seconds": design_seconds,
        }
    return out


def _print_tables(results: list[dict]) -> None:
    kinds = [r["kind"] for r in results]
    print("\n| measure | " + " | ".join(f"{k} {d}" for k in kinds for d in ("ancestral", "greedy")) + " |")
    print("|---" * (1 + 2 * len(kinds)) + "|")
    measured = [r[f"metrics_{d}"] for r in results for d in ("ancestral", "greedy")]
    for key in dict.fromkeys(k for m in measured for k in m):  # a set without valid molecules has no distances
        cells = [m.get(key, math.nan) for m in measured]
        print(f"| {key} | " + " | ".join(f"{c:.4g}" if isinstance(c, float) else str(c) for c in cells) + " |")
    print("\n| model | vocab | length | epochs | train s | final ELBO | KL | sample s (10k, ancestral) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['kind']} | {r['vocab']} | {r['length']} | {r['epochs']} | {r['train_seconds']:.0f} | "
              f"{r['elbo']:.2f} | {r['kl']:.2f} | {r['sample_seconds_ancestral']:.1f} |")
    for name in PROPERTIES:
        print(f"\nDesign of {name} (top-3: score [raw penalized logP]; every optimised molecule valid, novel, passing the filters)")
        print("| model | predictor R2 | source | top-1 | top-2 | top-3 | mean top-50 | molecules |")
        print("|---|---|---|---|---|---|---|---|")
        for r in results:
            d = r[f"design_{name}"]
            rows = [("latent ascent", d["optimised_top3"], d["optimised"]["mean_top50"]),
                    ("training subset", d["train_top3"], d["train_mean_top50"]),
                    (f"prior ({d['num_decodes']} codes)", d["prior_top3"], d["prior_mean_top50"])]
            for source, top, mean in rows:
                scores = [f"{v:.3f} [{p:.2f}]" for _, v, p in top] + ["-"] * (3 - len(top))
                print(f"| {r['kind']} | {d['predictor_r2']:.3f} | {source} | " + " | ".join(scores)
                      + f" | {mean:.3f} | {' '.join(s for s, _, _ in top)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=28.0, help="training time per model")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train exactly this many epochs per model instead of --minutes (reproducible)")
    parser.add_argument("--beta", type=float, default=0.2)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--starts", type=int, default=400)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--prior-weight", type=float, default=0.1)
    parser.add_argument("--predictor-epochs", type=int, default=20)
    parser.add_argument("--kinds", nargs="+", default=["smiles", "selfies"])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="the MOSES files (README there)")
    parser.add_argument("--device", default="cpu", help="where the models train (evaluation runs on the CPU)")
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--gru", type=int, nargs="+", default=[256], help="decoder GRU layers (one width)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--clip-norm", type=float, default=None, help="clip the gradient norm (MOSES's VAE: 50)")
    parser.add_argument("--codes-cache", type=Path, default=None, help="tokenised subsets are kept here")
    parser.add_argument("--models", type=Path, default=None, help="trained models are saved here")
    parser.add_argument("--init-models", type=Path, default=None,
                        help="train on from the models saved here (their sizes; a fresh Adam, no KL warm-up)")
    stage = parser.add_mutually_exclusive_group()
    stage.add_argument("--tokenize-only", action="store_true", help="fill --codes-cache, nothing else")
    stage.add_argument("--train-only", action="store_true", help="train and save to --models, nothing else")
    stage.add_argument("--evaluate-only", action="store_true", help="evaluate the models saved in --models")
    args = parser.parse_args()
    if (args.train_only or args.evaluate_only) and args.models is None:
        parser.error("--train-only and --evaluate-only need --models")
    if args.tokenize_only:
        if args.codes_cache is None:
            parser.error("--tokenize-only needs --codes-cache")
        subset = _molecules(args)[1]
        for kind in args.kinds:
            _codes(kind, lambda: subset, args)
        return
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=len(args.kinds), mp_context=get_context("spawn")) as pool:
        results = list(pool.map(train_only if args.train_only else run_coding, args.kinds, [args] * len(args.kinds)))
    if args.train_only:
        print(json.dumps(results, indent=1))
        return
    _print_tables(results)
    trained = ("models read from --models" if args.evaluate_only
               else f"{args.epochs} epochs per model" if args.epochs else f"{args.minutes} min per model")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; train subset {args.train_size}, {trained}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
