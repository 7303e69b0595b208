"""Atomic writes: a failure leaves the old file intact and no temporary file behind."""

import os

import pytest

from lvod.io import atomic_write, save_json


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    save_json({"ap": 1}, path)
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as fh:
            fh.write('{"ap": 0, "trunc')
            raise RuntimeError("killed mid-write")
    assert path.read_text().strip().replace(" ", "").replace("\n", "") == '{"ap":1}'
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]


def test_written_file_has_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        save_json({}, tmp_path / "a.json")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
