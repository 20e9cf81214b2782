"""Virtual environments for the peers a benchmark compares against.

A peer (scvi-tools, NumPyro, ...) is never a dependency of pvae: each gets its
own environment under ``.bench-venv/<name>``, created on first use with the
pinned CPU build of torch installed first (an unpinned torch would pull a
multi-GB CUDA build), then the peer's pinned packages. The benchmark then runs
a worker script with that environment's Python and exchanges files with it.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN = "torch==2.13.0"


def peer_python(name: str, packages: Sequence[str], root: Path | None = None) -> Path:
    """The Python of the peer environment ``name``, created with ``packages`` if absent.

    :param str name: folder under ``.bench-venv``.
    :param packages: pinned requirements, e.g. ``["scvi-tools==1.4.2"]``.
    :returns: the path of the environment's ``python``.
    """
    env = (root or ROOT / ".bench-venv") / name
    python = env / "bin" / "python"
    stamp = env / ".installed"
    wanted = "\n".join([TORCH_PIN, *packages])
    if stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"creating the peer environment {env} ({', '.join(packages)}) ...", file=sys.stderr, flush=True)
    venv.create(env, with_pip=True, clear=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, TORCH_PIN], check=True)
    subprocess.run([*pip, *packages], check=True)
    stamp.write_text(wanted)
    return python
