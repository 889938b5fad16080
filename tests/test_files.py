"""Atomic writes: a reader sees the old file or folder, or the new one, never half of either."""

from __future__ import annotations

import pytest

from ganserve.files import atomic_write, atomic_write_text, staged_dir


def test_atomic_write_replaces_whole_files_and_keeps_the_old_one_on_failure(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"

    def fail(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary file left


def test_staged_dir_replaces_a_folder_only_when_the_block_succeeds(tmp_path):
    final = tmp_path / "model"
    with staged_dir(final) as tmp:
        (tmp / "x").write_text("1")
    assert (final / "x").read_text() == "1"
    with pytest.raises(RuntimeError, match="boom"), staged_dir(final) as tmp:
        (tmp / "x").write_text("2")
        raise RuntimeError("boom")
    assert (final / "x").read_text() == "1"

    def refuse(existing):
        raise FileExistsError(f"{existing} is there")

    with pytest.raises(FileExistsError), staged_dir(final, before_replace=refuse) as tmp:
        (tmp / "x").write_text("3")
    assert (final / "x").read_text() == "1"
    with staged_dir(final) as tmp:
        (tmp / "y").write_text("4")
    assert sorted(p.name for p in final.iterdir()) == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing left beside it


def test_written_files_and_folders_get_ordinary_permissions(tmp_path):
    """Not the private 0600/0700 of a temporary file: a model or image written here is readable as any file."""
    import os

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with staged_dir(tmp_path / "model") as tmp:
            (tmp / "x").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o750
