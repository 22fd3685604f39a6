"""``dind.utils``: files written whole or not at all."""

import os
import stat
import threading

import pytest

from dind.utils import atomic_open, atomic_write


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
