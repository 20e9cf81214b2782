"""The README's code runs as printed, at smoke sizes.

Every ``python`` block of ``README.md`` belongs to one group below; a group's
blocks run in order in one namespace (later blocks use names earlier ones
define, as a reader pasting them would). Sizes shrink by plain text
substitutions (epochs, particles, rows); each substitution must match, so a
README edit that a substitution no longer fits fails here instead of silently
running the full-size example. Paths to ``../shared/data`` point at the
shared data folder, and each group runs in a temporary working directory (the
examples write ``runs/...`` folders). Names the README leaves to the reader
(``adata``, the user's AnnData) come from the group's preamble.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S) if lang == "python"]


EPOCHS = (re.compile(r"num_epochs=\d+"), "num_epochs=1")


@dataclass(frozen=True)
class Group:
    """README blocks run together: each block's opening, the size substitutions
    (a compiled pattern is a regular expression, a string is literal), code run
    before the blocks, and the optional modules the group needs."""

    openings: tuple[str, ...]
    substitutions: tuple[tuple[re.Pattern | str, str], ...]
    preamble: str = ""
    needs: tuple[str, ...] = ()


GROUPS: dict[str, Group] = {
    "digits": Group(
        ("import torch, pyro, pyro.distributions as dist",
         "from pvae.infer import elbo_terms, iwae_bound, log_evidence",
         "from pvae.infer import amortization_gap"),
        (EPOCHS, ("num_particles=5000", "num_particles=20"),
         ("log_evidence(vae.model, vae.guide, x)", "log_evidence(vae.model, vae.guide, x, num_particles=20)"),
         ("x[:100]", "x[:4]")),
    ),
    "causal": Group(
        ("from pvae.causal import CEVAE, ate, ite, refute",),
        (("fit(x, t, y)", "fit(x, t, y, num_epochs=1)"), ("num_simulations=10", "num_simulations=2")),
    ),
    "proteins": Group(
        ("from pvae.data import load_msa, msa_split",),
        (EPOCHS, ("num_particles=500", "num_particles=4"), ("vae.sample(1000)", "vae.sample(20)")),
        preamble="import pvae\n",
    ),
    "molecules": Group(
        ("import pvae\nfrom pvae.models import SequenceVAE\nfrom pvae.analysis import fit_latent_predictor",),
        (("limit=50_000", "limit=300"), EPOCHS, ("sample(10_000)", "sample(100)"),
         ("num_starts=200, steps=100", "num_starts=4, steps=3")),
        needs=("rdkit", "selfies"),
    ),
    "single_cell": Group(
        ("import pvae\nfrom pvae.analysis import encode_mean",),
        (("simulate_counts(20_000, 2000", "simulate_counts(300, 100"), ("CountVAE(2000", "CountVAE(100"), EPOCHS,
         ("data = from_anndata(adata", "adata = _anndata(sim)\ndata = from_anndata(adata")),
        preamble=(
            "def _anndata(sim):\n"
            "    import anndata, numpy as np, pandas as pd\n"
            "    obs = pd.DataFrame({'batch': [f'b{i}' for i in sim.batch.tolist()],\n"
            "                        'cell_type': [f'c{i}' for i in sim.cell_type.tolist()]})\n"
            "    obs.index = obs.index.astype(str)\n"
            "    a = anndata.AnnData(np.zeros(tuple(sim.counts.shape), dtype=np.float32), obs=obs)\n"
            "    a.layers['counts'] = sim.counts.numpy()\n"
            "    return a\n"
        ),
        needs=("anndata",),
    ),
    "neural": Group(
        ("import pvae\nfrom pvae.analysis import disentanglement",),
        (("fmri_blocks(2000", "fmri_blocks(40"), ("sprites(12000", "sprites(200"), EPOCHS),
    ),
    "geometry": Group(
        ("import pvae\nfrom pvae.data import CRYSTAL_SPECIES",),
        (("crystals(3000", "crystals(40"), ("chains(2000", "chains(40"), EPOCHS, ("vae.sample(1000)", "vae.sample(20)")),
    ),
    "distributed": Group(
        ("# train_ddp.py: spawned processes need the __main__ guard",),
        (EPOCHS, ("num_particles=8", "num_particles=2")),
        needs=("lightning",),
    ),
}


def _group_source(name: str) -> str:
    group = GROUPS[name]
    chosen = [b for b in _python_blocks() if b.startswith(group.openings)]
    assert len(chosen) == len(group.openings), f"README blocks of group {name!r} not found (README edited?)"
    source = group.preamble + "\n".join(chosen)
    for pattern, replacement in group.substitutions:
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        source, count = regex.subn(lambda _: replacement, source)
        assert count, f"README group {name!r}: the substitution {regex.pattern!r} no longer matches"
    return source.replace("../shared/data", str(DATA))


def _require(name: str) -> str:
    for module in GROUPS[name].needs:
        pytest.importorskip(module)
    source = _group_source(name)
    if str(DATA) in source and not DATA.exists():
        pytest.skip(f"the shared data folder {DATA} is absent")
    return source


def test_every_readme_block_belongs_to_a_group() -> None:
    openings = tuple(o for group in GROUPS.values() for o in group.openings)
    orphans = [b.splitlines()[0] for b in _python_blocks() if not b.startswith(openings)]
    assert not orphans, f"README python blocks no test runs: {orphans}; add them to GROUPS"


@pytest.mark.parametrize("name", [g for g in GROUPS if g != "distributed"])
def test_readme_group_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _require(name)
    monkeypatch.chdir(tmp_path)
    exec(compile(source, f"README[{name}]", "exec"), {"__name__": "readme"})


def test_readme_distributed_script_runs(tmp_path: Path) -> None:
    """The ``ddp_spawn`` example as the file it says it is: spawned processes re-import it."""
    script = tmp_path / "train_ddp.py"
    script.write_text(_require("distributed"))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
