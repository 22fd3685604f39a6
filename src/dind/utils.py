"""Small shared utilities: crash-safe files and folders, output checks, registry fetches.

Design choices:
- Every file dind writes goes through ``atomic_open``/``atomic_write``: the bytes go to a
  temporary file with a unique name in the destination's folder, are flushed to disk
  (``fsync``), and the file is then renamed over the destination. A reader therefore sees the
  old file or the new one, never a mixture; a kill at any instant leaves at most a stray
  ``.NAME.*.part`` temporary (never a file that looks whole and is not); and two concurrent
  writers never share a temporary name, so the last rename wins with one writer's complete
  output. Files are created with mode 0644 (what ``open`` gives under the usual umask), not
  the owner-only mode of ``mkstemp``.
- A folder is written the same way (``staged_folder``): built in a unique hidden sibling,
  its files fsynced, then renamed into place. (Checkpoints, which replace an older copy,
  add a recovery protocol on top: ``dind.checkpoint``.)
- Metrics are strict JSON (``json_text``): a non-finite float becomes ``null``, never the bare
  ``NaN``/``Infinity`` that strict parsers reject.
- An output path is checked before the work that fills it (``check_writable_file``,
  ``check_writable_dir``), so a typo costs a one-line error, not an hour of compute.
- Registry packages are fetched with their registry's own client (``fetch_package``: pip,
  npm, apt), so a configured index or mirror is respected; nothing is installed.
- The device choice has its own home, ``dind.devices.default_device``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from dind.errors import DindError

FILE_MODE = 0o644
DIR_MODE = 0o755


def _umask_mode(mode: int = FILE_MODE) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


# ----------------------------------------------------------------------------- files


def set_file_mode(path: str | Path) -> None:
    """Give ``path`` mode 0644 under the umask (what ``open`` gives), for a file a library
    wrote owner-only."""
    os.chmod(path, _umask_mode())


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


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf), at any depth, replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON of ``obj``: non-finite floats become ``null`` (``json.dumps`` would write a
    bare ``NaN``, which strict parsers reject); otherwise exactly ``json.dumps``'s text."""
    return json.dumps(finite_or_none(obj), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """``json_text(obj)`` as the whole file ``path``, atomically."""
    atomic_write(path, json_text(obj, indent))


def fsync_tree(folder: str | Path) -> None:
    """Flush every file under ``folder``, and the folders themselves, to disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (a no-op where folders cannot be
    opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_staging(dest: Path, tag: str = "tmp") -> Path:
    """A new empty hidden folder beside ``dest`` (``.NAME.TAG-XXXXXXXX``), mode 0755."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.{tag}-"))
    staging.chmod(_umask_mode(DIR_MODE))  # mkdtemp makes it owner-only; a cache may be shared
    return staging


@contextlib.contextmanager
def staged_folder(dest: str | Path, exist_ok: bool = False) -> Iterator[Path]:
    """Yield a new empty folder beside ``dest`` to fill; when the block ends without an
    exception its files are fsynced and it is renamed to ``dest`` (which may be an empty
    folder), so a crash never leaves a half-written folder that looks complete. With
    ``exist_ok``, a ``dest`` another writer completed meanwhile wins and this copy is dropped.
    The staging folder is removed in every case."""
    dest = Path(dest)
    staging = make_staging(dest)
    try:
        yield staging
        fsync_tree(staging)
        try:
            os.replace(staging, dest)
        except OSError:
            if not (exist_ok and dest.is_dir() and any(dest.iterdir())):
                raise
        fsync_dir(dest.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_folder(dest: str | Path, files: dict[str, str]) -> None:
    """Write ``files`` (name -> UTF-8 text) as the folder ``dest``, all at once
    (``staged_folder``); a ``dest`` that another writer (a concurrent rank) completed
    meanwhile wins."""
    with staged_folder(dest, exist_ok=True) as staging:
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------- output checks


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_can_create_in(path: Path, flag: str) -> None:
    """``path`` does not exist: its nearest existing ancestor must be a writable folder."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise DindError(f"{flag} {path}: {base} is a file, not a folder")
    if base == path.parent:
        _probe(base, path, flag)
    elif not os.access(base, os.W_OK | os.X_OK):
        raise DindError(f"{flag} {path}: cannot create folders in {base} (permission denied)")


def _probe(folder: Path, path: Path, flag: str) -> None:
    """Create and remove a file in ``folder``: the one test that read-only file systems,
    ACLs and permissions all answer truthfully."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise DindError(f"{flag} {path}: cannot write in {folder} ({e.strerror})") from None


def check_writable_file(path: str | Path, flag: str = "--out") -> Path:
    """Fail now, with a one-line error, if ``path`` cannot become a file: it is a folder, or
    lies under a file, or its folder cannot be written. Creates nothing."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise DindError(f"{flag} {path} is a folder; give a file name")
    if path.exists():
        _probe(path.parent, path, flag)
    else:
        _check_can_create_in(path, flag)
    return path


def check_writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """Fail now, with a one-line error, if ``path`` cannot be (or become) a folder dind
    writes in: it is a file, lies under a file, or cannot be written. Creates nothing."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DindError(f"{flag} {path} is a file, not a folder")
        _probe(path, path / "x", flag)
    else:
        _check_can_create_in(path, flag)
    return path


# ----------------------------------------------------------------------------- registries


class FetchError(Exception):
    """A registry client could not get a package; the message says why (one line)."""


class PackageError(FetchError):
    """The package came, but not with the member expected (missing, or a wrong sha256)."""


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fetch_package(client: str, package: str, dest: str | Path, sdist: bool = False) -> Path:
    """One package file in ``dest``, downloaded with its registry's own client: ``"pip"``
    (``package`` like ``name==1.0``: its wheel, or with ``sdist`` its source archive),
    ``"npm"`` (the ``.tgz``) or ``"apt"`` (the ``.deb``). Raises FetchError (one line)."""
    dest = Path(dest)
    if client == "pip":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", package, "-d", "."]
        if sdist:
            cmd[5:5] = ["--no-binary", ":all:"]
        pattern, timeout = ("*.tar.gz" if sdist else "*.whl"), None
    elif client in ("npm", "apt"):
        cmd = (["npm", "pack", "--ignore-scripts", package] if client == "npm"
               else ["apt-get", "download", package])  # fmt: skip
        pattern, timeout = ("*.tgz" if client == "npm" else "*.deb"), 600
        if shutil.which(cmd[0]) is None:
            raise FetchError(f"{cmd[0]} not found")
    else:
        raise ValueError(f"unknown registry client {client!r}")
    try:
        done = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(one_line(str(e))) from None
    files = sorted(dest.glob(pattern))
    if done.returncode != 0 or not files:
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        raise FetchError(one_line(lines[-1] if lines else f"{cmd[0]} exited {done.returncode}"))
    return files[0]


@contextlib.contextmanager
def open_member(archive: str | Path, member: str) -> Iterator[IO[bytes]]:
    """The member of a package file (a wheel or other zip, or a tar archive: sdist, npm
    tarball) whose path is ``member`` or ends with ``/member``, open for reading. Raises
    PackageError when there is none or the archive is unreadable."""
    archive = Path(archive)

    def matches(name: str) -> bool:
        return name == member or name.endswith("/" + member)

    with contextlib.ExitStack() as stack:
        try:
            if zipfile.is_zipfile(archive):
                z = stack.enter_context(zipfile.ZipFile(archive))
                name = next((n for n in z.namelist() if matches(n)), None)
                f = z.open(name) if name is not None else None
            else:
                tar = stack.enter_context(tarfile.open(archive))
                m = next((m for m in tar.getmembers() if m.isfile() and matches(m.name)), None)
                f = tar.extractfile(m) if m is not None else None
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as e:
            raise PackageError(f"{archive.name} is unreadable: {one_line(str(e))}") from None
        if f is None:
            raise PackageError(f"{archive.name} has no {member}")
        stack.enter_context(f)
        yield f


def _chunks(src: IO[bytes], name: str, size: int = 1 << 20) -> Iterator[bytes]:
    while True:
        try:
            chunk = src.read(size)
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError) as e:
            raise PackageError(f"{name} is corrupt: {one_line(str(e))}") from None
        if not chunk:
            return
        yield chunk


def fetch_member(
    client: str,
    package: str,
    member: str,
    dest: str | Path,
    sdist: bool = False,
    sha256: str | None = None,
) -> None:
    """Fetch ``package`` (``fetch_package``) and write its ``member`` as the file ``dest``,
    atomically, streamed (a member may be hundreds of MB); with ``sha256`` the bytes must
    match it, or nothing is written. Raises FetchError (PackageError: the package came
    without a usable member)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.fetch-") as tmp:
        file = fetch_package(client, package, tmp, sdist)
        digest = hashlib.sha256()
        with open_member(file, member) as src, atomic_open(dest, "wb") as out:
            for chunk in _chunks(src, file.name):
                digest.update(chunk)
                out.write(chunk)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise PackageError(f"{member} in {file.name} has an unexpected sha256")
