"""Likelihoods that respect geometry: periodic crystals and chains in internal coordinates.

**Crystals.** :func:`pvae.data.crystals` (strained rock-salt, CsCl and perovskite
cells, thermal motion that scatters the atoms on the cell's faces to both sides of
them) train :class:`pvae.models.CrystalVAE` twice, the same networks with
``coordinates="von_mises"`` (periodic) and ``"normal"`` (Euclidean) on the
fractional coordinates. On held-out cells, the reconstruction error of each atom is
the minimum-image distance (Å, under the true cell) between the reconstructed and
the true position, split into atoms on a face of the cell (an ideal coordinate 0)
and inside it; thermal motion alone puts the ideal site 0.08 E|chi_3| = 0.128 Å from
the atom, the floor. Generated structures (z from the prior, point decoding, and
draws from every likelihood): the fraction with a valid cell (metric positive
definite, every length > 0.5 Å, V / (abc) > 0.1, i.e. no collapsed angle) and the
fraction with no two atoms (images included) closer than ``--cutoff`` Å (default
1.0; the closest pair in the prototypes is Ti-O at 1.95 Å).

**Chains.** :func:`pvae.data.chains` (10 atoms, bonds 1.53 +- 0.02 Å, angles 111 +-
2.3 degrees, rotamer dihedrals) train a VAE with ``likelihood="internal_coordinates"``
and a VAE with a Normal on the Cartesian coordinates, the same networks. Generated
chains (draws and decoder means) against the data: bond lengths and angles (mean +- sd),
their Wasserstein-1 distances to the data's, and the fraction of generated bonds
within the data's mean +- 3 sd.

    .venv/bin/python benchmarks/geometry.py
    .venv/bin/python benchmarks/geometry.py --seeds 0 --epochs 30 --chain-epochs 20   # quick
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.stats import wasserstein_distance

import pvae
from pvae.data import CRYSTAL_SPECIES, chains, crystals
from pvae.models import VAE, CrystalVAE, closest_contact, internal_coordinates, lattice_parameters
from pvae.models import minimum_image_distance


def valid_cells(lattice: torch.Tensor) -> torch.Tensor:
    """Cells with a positive-definite metric, lengths > 0.5 Å and V / (abc) > 0.1."""
    metric = lattice @ lattice.transpose(-1, -2)
    lengths = lattice_parameters(lattice)[:, :3]
    volume = torch.linalg.det(lattice).abs()
    return ((torch.linalg.eigvalsh(metric)[:, 0] > 0) & (lengths > 0.5).all(-1)
            & (volume / lengths.prod(-1) > 0.1) & torch.isfinite(lattice).flatten(1).all(-1))


def crystal_run(coordinates: str, seed: int, args) -> dict[str, float]:
    train, test = crystals(args.cells, seed=1000 + seed), crystals(args.held_out, seed=2000 + seed)
    torch.manual_seed(seed)
    vae = CrystalVAE(train.frac.shape[1], len(CRYSTAL_SPECIES), coordinates=coordinates, latent_dim=args.latent,
                     hidden_dims=(args.hidden, args.hidden))
    pvae.fit(vae, (train.lattice, train.frac, train.species), num_epochs=args.epochs, batch_size=100,
             learning_rate=args.lr, seed=seed, progress=False, diagnostics_every=None)
    lattice, frac, species = vae.reconstruct(test.lattice, test.frac, test.species)
    error = minimum_image_distance(frac, test.frac, test.lattice.unsqueeze(1))
    out = {
        "face": float(error[test.present & test.boundary].mean()),
        "inside": float(error[test.present & ~test.boundary].mean()),
        "species": float((species == test.species).float().mean()),
        "length": float((lattice_parameters(lattice) - lattice_parameters(test.lattice))[:, :3].abs().mean()),
    }
    for mean, tag in ((True, "point"), (False, "draw")):
        torch.manual_seed(seed)
        cell, gen_frac, gen_species = vae.sample(args.generated, mean=mean)
        out[f"valid_{tag}"] = float(valid_cells(cell).float().mean())
        out[f"clear_{tag}"] = float((closest_contact(gen_frac, cell, gen_species > 0) > args.cutoff).float().mean())
    return out


def chain_run(model: str, seed: int, args) -> dict[str, float]:
    data = chains(args.chains, args.atoms, seed=3000 + seed)
    torch.manual_seed(seed)
    if model == "internal":
        vae = VAE(3 * args.atoms - 6, latent_dim=4, hidden_dims=(64,), likelihood="internal_coordinates")
        x = data.internal
    else:
        vae = VAE(3 * args.atoms, latent_dim=4, hidden_dims=(64,), likelihood="normal")
        x = data.xyz.flatten(1)
    pvae.fit(vae, x, num_epochs=args.chain_epochs, learning_rate=1e-2, seed=seed, progress=False,
             diagnostics_every=None)
    true_bonds, true_angles, _ = internal_coordinates(data.xyz)
    true_bonds, true_angles = true_bonds.flatten().numpy(), np.degrees(true_angles.flatten().numpy())
    lo, hi = true_bonds.mean() - 3 * true_bonds.std(), true_bonds.mean() + 3 * true_bonds.std()
    out = {}
    for mean, tag in ((False, "draw"), (True, "mean")):
        torch.manual_seed(seed)
        gen = vae.sample(args.generated, mean=mean)
        if model == "internal":
            bonds, angles = gen[:, : args.atoms - 1], gen[:, args.atoms - 1: 2 * args.atoms - 3]
        else:
            bonds, angles, _ = internal_coordinates(gen.reshape(-1, args.atoms, 3))
        bonds, angles = bonds.flatten().numpy(), np.degrees(angles.flatten().numpy())
        out |= {f"bond_{tag}": bonds.mean(), f"bond_sd_{tag}": bonds.std(), f"angle_{tag}": angles.mean(),
                f"angle_sd_{tag}": angles.std(), f"w_bond_{tag}": wasserstein_distance(bonds, true_bonds),
                f"w_angle_{tag}": wasserstein_distance(angles, true_angles),
                f"within_{tag}": float(((bonds > lo) & (bonds < hi)).mean())}
    out |= {"data_bond": true_bonds.mean(), "data_bond_sd": true_bonds.std(), "data_angle": true_angles.mean(),
            "data_angle_sd": true_angles.std()}
    return out


def _summary(rows: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    keys = rows[0].keys()
    return ({k: float(np.mean([r[k] for r in rows])) for k in keys},
            {k: float(np.std([r[k] for r in rows])) for k in keys})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cells", type=int, default=3000)
    p.add_argument("--held-out", type=int, default=1000)
    p.add_argument("--generated", type=int, default=2000)
    p.add_argument("--latent", type=int, default=8)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--cutoff", type=float, default=1.0)
    p.add_argument("--chains", type=int, default=2000)
    p.add_argument("--atoms", type=int, default=10)
    p.add_argument("--chain-epochs", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    print(f"crystals: {args.cells} train / {args.held_out} held-out cells (rock salt, CsCl, perovskite; strain 0.03, "
          f"thermal 0.08 A), latent {args.latent}, hidden ({args.hidden}, {args.hidden}), {args.epochs} epochs, "
          f"seeds {args.seeds}; mean +- sd over seeds")
    print("\n| coordinates | error on faces (A) | error inside (A) | species acc. | cell length error (A) "
          f"| valid cells (point / draw) | no contact < {args.cutoff} A (point / draw) |")
    print("|---|---|---|---|---|---|---|")
    for coordinates in ("von_mises", "normal"):
        m, s = _summary([crystal_run(coordinates, seed, args) for seed in args.seeds])
        print(f"| {coordinates} | {m['face']:.3f} +- {s['face']:.3f} | {m['inside']:.3f} +- {s['inside']:.3f} "
              f"| {m['species']:.4f} | {m['length']:.3f} | {m['valid_point']:.3f} / {m['valid_draw']:.3f} "
              f"| {m['clear_point']:.3f} +- {s['clear_point']:.3f} / {m['clear_draw']:.3f} +- {s['clear_draw']:.3f} |",
              flush=True)

    print(f"\nchains: {args.chains} chains of {args.atoms} atoms, latent 4, hidden (64,), {args.chain_epochs} epochs, "
          f"{args.generated} generated; mean over seeds")
    print("\n| model | generated | bond (A) mean +- sd | W1 bond (A) | bonds within data +- 3 sd "
          "| angle (deg) mean +- sd | W1 angle (deg) |")
    print("|---|---|---|---|---|---|---|")
    data_row = None
    for model in ("internal", "cartesian"):
        m, _ = _summary([chain_run(model, seed, args) for seed in args.seeds])
        data_row = m
        name = "internal coordinates" if model == "internal" else "Normal on xyz"
        for tag in ("draw", "mean"):
            print(f"| {name} | {tag} | {m[f'bond_{tag}']:.3f} +- {m[f'bond_sd_{tag}']:.3f} | {m[f'w_bond_{tag}']:.3f} "
                  f"| {m[f'within_{tag}']:.3f} | {m[f'angle_{tag}']:.1f} +- {m[f'angle_sd_{tag}']:.1f} "
                  f"| {m[f'w_angle_{tag}']:.1f} |", flush=True)
    print(f"| data | | {data_row['data_bond']:.3f} +- {data_row['data_bond_sd']:.3f} | 0 | 1 "
          f"| {data_row['data_angle']:.1f} +- {data_row['data_angle_sd']:.1f} | 0 |")


if __name__ == "__main__":
    main()
