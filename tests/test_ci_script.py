"""``.ci/run``, the CI entry point: its exit status is the test command's failure or success."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / ".ci" / "run"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("status", [0, 1, 2, 5])
def test_ci_run_passes_on_success_only(tmp_path: Path, status: int) -> None:
    """A stand-in ``make`` exits with ``status`` (5: pytest collected no tests): the script
    must fail whenever it does. It used to turn 5 into success."""
    fake = tmp_path / "make"
    fake.write_text(f"#!/bin/sh\necho \"make $*\" > '{tmp_path / 'called'}'\nexit {status}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", str(RUN)], capture_output=True, text=True, env=env, timeout=60)
    assert (tmp_path / "called").read_text().strip() == "make test"
    assert done.returncode == status, (done.returncode, done.stderr)
