"""Atomic writes leave files with the permissions a plain write would give them."""
from __future__ import annotations

import os

import pytest

from peftc.io.atomic import write_bytes_atomic


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_new_file_gets_the_mode_a_plain_open_gives(tmp_path, umask_027):
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    atomic = tmp_path / "atomic.bin"
    write_bytes_atomic(atomic, b"y")
    assert atomic.read_bytes() == b"y"
    assert os.stat(atomic).st_mode & 0o7777 == os.stat(plain).st_mode & 0o7777 == 0o640


def test_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "kept.bin"
    path.write_bytes(b"old")
    os.chmod(path, 0o604)
    write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert os.stat(path).st_mode & 0o7777 == 0o604


def test_no_temporary_file_is_left_behind(tmp_path):
    write_bytes_atomic(tmp_path / "a.bin", b"1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
