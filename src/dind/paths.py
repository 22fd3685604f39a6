"""The one place dind keeps what it builds on first use: downloads, corpora, token arrays."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$DIND_CACHE``, else ``~/.cache/dind``; created on demand."""
    path = Path(os.environ.get("DIND_CACHE", Path.home() / ".cache" / "dind"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def pip_download(spec: str, dest: str | Path, sdist: bool = False) -> Path | None:
    """Fetch one distribution file (``spec`` like ``name==1.0``) from the package index with
    pip, so a configured index or mirror is respected; nothing is installed. Returns the
    file, or None when pip could not get it."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(dest)]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    try:
        if subprocess.run(cmd, capture_output=True, text=True).returncode != 0:
            return None
    except OSError:
        return None
    files = sorted(Path(dest).glob("*.tar.gz" if sdist else "*.whl"))
    return files[0] if files else None
