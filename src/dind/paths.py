"""The one place dind keeps what it builds on first use: downloads, corpora, token arrays."""

from __future__ import annotations

import os
import shutil
import tempfile
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


def write_folder(dest: str | Path, files: dict[str, str]) -> None:
    """Write ``files`` (name -> UTF-8 text) as the folder ``dest``, all at once: they are staged
    in a unique sibling folder that is then renamed, so a crash (or a concurrent rank) never
    leaves a half-written folder that looks complete. A ``dest`` that appears meanwhile wins."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=dest.name + "."))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; a cache may be shared
    try:
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        try:
            os.replace(staging, dest)
        except OSError:
            if not dest.exists():  # someone else finishing first is fine; nothing else
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
