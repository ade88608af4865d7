"""The code version stamped on every result row."""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

__all__ = ["code_version"]

_PACKAGES = ("sparsity_core", "orchestrator")


@functools.cache
def code_version() -> str:
    """`<package version>+<hash of the sources>`: stable without git (a Ray job's working dir has
    none) and different whenever any line of the trainer or orchestrator changes."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in _PACKAGES:
        for source in sorted((root / package).rglob("*.py")):
            digest.update(source.relative_to(root).as_posix().encode())
            digest.update(source.read_bytes())
    try:
        version = metadata.version("filter-sparsity")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"{version}+{digest.hexdigest()[:10]}"
