"""Optional features live behind pip extras (pyproject.toml); require() imports one or says how to get it.

A feature calls require() before any slow work: without its extra, densa ends in one line that names the
missing module and the `pip install 'densa[EXTRA]'` that installs it, never a ModuleNotFoundError traceback.
"""

from __future__ import annotations

import importlib

from .errors import DensaError


def require(module: str, extra: str, feature: str):
    """Import `module` and return it, or raise a one-line DensaError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        why = f"{e.name} is not installed" if e.name else " ".join(str(e).split())
        raise DensaError(f"{feature} needs the {extra} extra ({why}): pip install 'densa[{extra}]'") from None
