"""Every tutorial runs end to end in its smoke mode and saves its figures.

Tutorials are jupytext percent scripts ``tutorials/NN_name.py`` (they open as
notebooks with ``jupytext --to notebook``). Each reads three environment
variables: ``PVAE_SMOKE=1`` (tiny sizes), ``PVAE_FIGURES`` (where to save
PNGs) and ``PVAE_DATA`` (the shared data folder; parts that need it are
skipped with a message when it is absent).

The identities a tutorial's text states (an ELBO equal to reconstruction - KL,
a gap equal to a KL, a bound below the exact log-evidence, a Monte Carlo
estimate within a few standard errors of its closed form, ...) are plain
``assert``s in the tutorial itself, with tolerances that hold in smoke mode,
so a tutorial that prints a broken identity exits non-zero and fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted(ROOT.glob("tutorials/[0-9][0-9]_*.py"))


@pytest.mark.parametrize("script", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_in_smoke_mode(script: Path, tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(
        PVAE_SMOKE="1",
        PVAE_FIGURES=str(tmp_path),
        PVAE_DATA=str(ROOT.parent / "shared" / "data"),
        MPLBACKEND="Agg",
        PYTHONWARNINGS="ignore",
    )
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    figures = list(tmp_path.glob("*.png"))
    assert figures, f"{script.name} saved no figure in {tmp_path}"
    assert all(f.stat().st_size > 1000 for f in figures), [(f.name, f.stat().st_size) for f in figures]
