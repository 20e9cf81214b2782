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
  epochs). The two models train side by side in two processes, one thread each;
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

Usage::

    python benchmarks/molecules_moses.py                     # the table (~40 min on 2 cores)
    python benchmarks/molecules_moses.py --train-size 3000 --minutes 0.5 --samples 500 --starts 20 --steps 20  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

import pvae
from pvae.analysis import fit_latent_predictor, latent_optimize
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


def run_coding(kind: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    everything = load_smiles(DATA / "train.csv.gz")
    train_set = set(everything)
    subset = [everything[i] for i in rng.choice(len(everything), args.train_size, replace=False)]
    test_all = load_smiles(DATA / "test.csv.gz")
    test = [test_all[i] for i in rng.choice(len(test_all), min(10000, len(test_all)), replace=False)]
    filters = load_filters(DATA / "mcf.csv", DATA / "wehi_pains.csv")

    tokens = MoleculeTokenizer.fit(subset, kind=kind)
    codes = tokens.encode(subset)
    vae = SequenceVAE(tokens.length, alphabet_size=tokens.vocab_size, latent_dim=64, hidden_dims=(512, 256),
                      decoder="gru", decoder_hidden_dims=(256,), beta=args.beta)
    start = time.perf_counter()
    fitted = pvae.fit(vae, codes, num_epochs=1000, batch_size=256, learning_rate=2e-3, kl_warmup=1, seed=0,
                      callbacks=[TimeBudget(args.minutes * 60)], diagnostics_every=None, progress=False)
    train_seconds = time.perf_counter() - start
    last = fitted.history[-1]
    out: dict = {"kind": kind, "vocab": tokens.vocab_size, "length": tokens.length, "epochs": len(fitted.history),
                 "train_seconds": train_seconds, "elbo": last["elbo"], "kl": last["kl"]}

    vae.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        z = torch.randn(args.samples, 64)
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
        starts = torch.cat([torch.randn(args.starts - len(best), 64, generator=torch.Generator().manual_seed(2)),
                            best_codes])
        start = time.perf_counter()
        design = latent_optimize(vae, predictor, starts=starts, steps=args.steps, learning_rate=0.05,
                                 prior_weight=args.prior_weight, record_every=10, decode=decode, oracle=oracle,
                                 accept=accept)
        design_seconds = time.perf_counter() - start
        prior_codes = torch.randn(num_decodes, 64, generator=torch.Generator().manual_seed(3))
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
    keys = list(results[0]["metrics_ancestral"])
    for key in keys:
        cells = [r[f"metrics_{d}"][key] for r in results for d in ("ancestral", "greedy")]
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
    parser.add_argument("--beta", type=float, default=0.2)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--starts", type=int, default=400)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--prior-weight", type=float, default=0.1)
    parser.add_argument("--predictor-epochs", type=int, default=20)
    parser.add_argument("--kinds", nargs="+", default=["smiles", "selfies"])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=len(args.kinds), mp_context=get_context("spawn")) as pool:
        results = list(pool.map(run_coding, args.kinds, [args] * len(args.kinds)))
    _print_tables(results)
    print(f"\ntotal {time.perf_counter() - start:.0f} s; train subset {args.train_size}, {args.minutes} min per model")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
