"""atomic_write: a reader never sees half a file, and a finished write survives a power loss."""

import os
import stat

from normlab.engine import files


def test_the_data_is_synced_before_the_rename_and_the_folder_after_it(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        size = os.fstat(fd).st_size
        events.append(("fsync", kind, size))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    path = files.atomic_write_text(tmp_path / "claims.csv", "claim_id,verdict\nK1,supported\n")
    assert path.read_text() == "claim_id,verdict\nK1,supported\n"
    # the file's bytes (all 30 of them) are on disk before its name changes, then the name itself
    assert [e[:2] for e in events] == [("fsync", "file"), ("replace", "claims.csv"), ("fsync", "folder")]
    assert events[0][2] == 30
    assert [p.name for p in tmp_path.iterdir()] == ["claims.csv"]  # no temp file left


def test_a_folder_that_refuses_fsync_is_not_an_error(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")  # as some network filesystems answer
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    assert files.atomic_write_text(tmp_path / "a.txt", "x").read_text() == "x"
