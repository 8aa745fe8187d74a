"""piwsl.io.atomic: a write either lands whole or leaves the old file (and no temporary) behind."""

from __future__ import annotations

import json
import os
import stat

import pytest

from piwsl.io.atomic import atomic_path, write_json, write_text


def test_write_json_replaces_whole_file_and_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "summary.json"
    write_json(path, {"steps": 1})
    write_json(path, {"steps": 2, "x": float("nan")}, indent=None, sort_keys=True)
    assert json.loads(path.read_text()) == {
        "steps": 2,
        "x": pytest.approx(float("nan"), nan_ok=True),
    }
    assert path.read_text().endswith("\n")
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]  # no temporaries


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path):
    path = tmp_path / "frames.extxyz"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError, match="writer failed"), atomic_path(path) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("writer failed")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["frames.extxyz"]


def test_unserialisable_json_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, [1])
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_new_files_are_readable_and_existing_modes_kept(tmp_path):
    """mkstemp makes private files; the written file gets 0644, or keeps the mode it had."""
    new = write_text(tmp_path / "new.md", "x")
    assert stat.S_IMODE(new.stat().st_mode) == 0o644
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o755)
    write_text(script, "#!/bin/sh\necho hi\n")
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
