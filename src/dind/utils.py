"""Small shared utilities: crash-safe files and folders.

Every file dind writes goes through ``atomic_write``: the bytes go to a temporary file with a
unique name in the destination's folder, are flushed to disk (``fsync``), and the file is then
renamed over the destination. A reader therefore sees the old file or the new one, never a
mixture; a kill at any instant leaves at most a stray ``.NAME.*.part`` temporary (never a file
that looks whole and is not); and two concurrent writers never share a temporary name, so the
last rename wins with one writer's complete output. Files are created with mode 0644 (what
``open`` gives under the usual umask), not the owner-only mode of ``mkstemp``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

FILE_MODE = 0o644


def _umask_mode(mode: int = FILE_MODE) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a unique temporary sibling of ``path`` for writing (``mode`` "w" or "wb"); when the
    block ends without an exception it is fsynced and renamed over ``path``; otherwise it is
    removed and ``path`` is untouched."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.chmod(tmp, _umask_mode())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (bytes, or text as UTF-8) as the whole file ``path``, atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
