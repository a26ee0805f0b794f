"""Where a Ray runner with no shared disk keeps its checkpoints: a folder, or an fsspec URI."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import storage

fsspec = pytest.importorskip("fsspec")


@pytest.mark.parametrize("scheme", ["folder", "local://", "memory://"])
def test_files_go_up_come_back_are_listed_and_removed(tmp_path: Path, scheme: str) -> None:
    base = {"folder": str(tmp_path / "store"), "local://": f"local://{tmp_path}/store", "memory://": "memory://store"}
    target = storage.join(base[scheme], "3f2a", "checkpoints", "epoch-1.params")
    source = tmp_path / "epoch-1.params"
    source.write_bytes(b"\x00weights" * 100)
    assert storage.is_uri(target) == (scheme != "folder")
    assert storage.listdir(storage.join(base[scheme], "3f2a", "checkpoints")) == []
    storage.upload(source, target)
    back = tmp_path / "fetched" / "epoch-1.params"
    storage.download(target, back)
    assert back.read_bytes() == source.read_bytes()
    assert storage.listdir(storage.join(base[scheme], "3f2a", "checkpoints")) == ["epoch-1.params"]
    storage.remove(target)
    assert storage.listdir(storage.join(base[scheme], "3f2a", "checkpoints")) == []
    storage.remove(target)  # gone already: no error
