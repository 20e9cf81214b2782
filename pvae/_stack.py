"""Where a warning should point: the first stack frame outside pvae."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent)


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called by this function's caller
    that points at the first frame outside the pvae package (the user's call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_ROOT):
        frame, level = frame.f_back, level + 1
    return level
