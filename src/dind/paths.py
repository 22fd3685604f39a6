"""The one place dind keeps what it builds on first use: downloads, corpora, token arrays.
(How those files are written, and how packages are fetched: ``dind.utils``.)"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$DIND_CACHE``, else ``~/.cache/dind``; created on demand."""
    path = Path(os.environ.get("DIND_CACHE", Path.home() / ".cache" / "dind"))
    path.mkdir(parents=True, exist_ok=True)
    return path
