"""Output folders: what every command checks before it starts, and atomic outputs."""

from __future__ import annotations

import os
import tempfile

import pytest

from MetaRegistrationLib import files
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.files import check_output_folder, staged_outputs


def one_line_error(folder, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        check_output_folder(folder, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(folder))
    return message


def test_a_new_or_empty_folder_is_accepted_and_nothing_is_created(tmp_path):
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_an_existing_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    assert "exists and is not a folder" in one_line_error(tmp_path / "out")
    assert "is not a folder, so" in one_line_error(tmp_path / "out" / "inside")


def test_a_folder_that_is_not_empty_needs_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.csv").write_text("x")
    assert "exists and is not empty; give --overwrite" in one_line_error(tmp_path / "out")
    check_output_folder(tmp_path / "out", overwrite=True)


@pytest.mark.parametrize("relative", [".", "moving_images", "sub/folder"])
def test_the_data_folder_and_folders_inside_it_are_refused(tmp_path, relative):
    data = tmp_path / "data"
    (data / "moving_images").mkdir(parents=True)
    message = one_line_error(data / relative, overwrite=True, protected=(None, data))
    assert f"the data folder {data.resolve()}" in message
    # Also when named through a symbolic link.
    (tmp_path / "link").symlink_to(data)
    one_line_error(tmp_path / "link" / relative, overwrite=True, protected=(data,))


def test_a_place_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    blocked = tmp_path / "read-only"
    blocked.mkdir()
    real = tempfile.mkdtemp

    def mkdtemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.samefile(dir, blocked):
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkdtemp", mkdtemp)
    assert "cannot write there (Permission denied)" in one_line_error(blocked)
    assert f"cannot write in {blocked.resolve()} (Permission denied)" in one_line_error(blocked / "out" / "deeper")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    blocked = tmp_path / "read-only"
    blocked.mkdir()
    blocked.chmod(0o555)
    try:
        assert "cannot write" in one_line_error(blocked / "out")
    finally:
        blocked.chmod(0o755)


def test_staged_outputs_leave_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_outputs(tmp_path / "out") as staging:
            (staging / "a.txt").write_text("a")
            raise RuntimeError("midway")
    assert list(tmp_path.iterdir()) == []
