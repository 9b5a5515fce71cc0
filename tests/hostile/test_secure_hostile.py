"""Hostile trees and files for manifests and signing: links out of the root, link loops, FIFOs,
unreadable files, huge lines, deep nesting, odd names, corrupt tabular files, hostile manifests.
Each is named in the result, never followed, never a crash or a hang."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import pytest

from modelshield.errors import DataError
from modelshield.secure.manifest import Manifest, create_manifest, verify_manifest


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    r = tmp_path / "data"
    r.mkdir()
    (r / "a.csv").write_text("x,y\n1,2\n")
    return r


def _refused(m: Manifest) -> dict[str, str]:
    return {r.path: r.reason for r in m.refused}


def test_symlinks_out_of_root_and_loops_are_refused_not_followed(root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the root")
    (root / "escape.txt").symlink_to(secret)
    (root / "dir_escape").symlink_to(tmp_path)
    (root / "self").symlink_to(root / "self")  # a loop onto itself
    (root / "ping").symlink_to(root / "pong")
    (root / "pong").symlink_to(root / "ping")
    (root / "up").symlink_to(root)  # a folder link back up: a walk that followed it would never end
    m = create_manifest(root)
    assert [f.path for f in m.files] == ["a.csv"]
    refused = _refused(m)
    assert set(refused) == {"escape.txt", "dir_escape", "self", "ping", "pong", "up"}
    assert all("symbolic link" in why and "not followed" in why for why in refused.values())
    clean = create_manifest(root, exclude=tuple(refused))
    (root / "late_link").symlink_to(secret)
    diff = verify_manifest(clean, root)
    assert not diff.ok and [r.path for r in diff.refused] == ["late_link"]
    assert diff.added == ()  # the link's target is never hashed as a file


def test_symlinked_root_is_refused(root: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(root)
    with pytest.raises(DataError, match="must not be a symbolic link"):
        create_manifest(link)


@pytest.mark.timeout(30)
def test_fifo_is_named_and_never_opened(root: Path) -> None:
    os.mkfifo(root / "pipe.csv")  # opening it for reading would block forever
    m = create_manifest(root)
    assert _refused(m) == {"pipe.csv": "a FIFO (named pipe), not read"}


def test_unreadable_files_are_named(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "locked.bin").write_bytes(b"secret")
    real_open = os.open

    def deny(path: str, flags: int, *args: int) -> int:
        if str(path).endswith("locked.bin"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", deny)
    m = create_manifest(root)
    assert [f.path for f in m.files] == ["a.csv"]
    assert _refused(m) == {"locked.bin": "cannot be read (Permission denied)"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_by_mode(root: Path) -> None:
    locked = root / "locked"
    locked.mkdir()
    (locked / "x.bin").write_bytes(b"1")
    locked.chmod(0)
    try:
        m = create_manifest(root)
    finally:
        locked.chmod(0o755)
    assert "locked" in _refused(m)


def test_huge_line_is_hashed_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "one_line.txt"
    size = 48 << 20
    with open(path, "wb") as fh:
        block = b"z" * (1 << 20)
        for _ in range(size >> 20):
            fh.write(block)  # 48 MiB and no newline: one row
    tracemalloc.start()
    try:
        m = create_manifest(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (entry,) = m.files
    assert entry.size == size and entry.rows is not None and entry.rows.count == 1
    assert peak < 12 << 20, f"peak {peak / 2**20:.1f} MiB for a {size >> 20} MiB line"


def test_csv_with_a_giant_field_or_binary_falls_back_to_lines(tmp_path: Path) -> None:
    (tmp_path / "giant.csv").write_text('a,b\n1,"' + "x" * 300_000 + '"\n2,3\n')
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00garbage\n\x80\x81\n")
    m = create_manifest(tmp_path)
    by_path = {f.path: f for f in m.files}
    for name in ("giant.csv", "binary.csv"):
        entry = by_path[name]
        assert entry.rows is not None and entry.rows.kind == "lines"
        assert entry.note.startswith("rows are lines: not read as CSV")
    assert by_path["giant.csv"].rows.count == 3  # type: ignore[union-attr]  # checked above
    assert verify_manifest(m, tmp_path).ok


def test_corrupt_parquet_is_hashed_with_a_note(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    (tmp_path / "t.parquet").write_bytes(b"PAR1" + os.urandom(64) + b"PAR1")
    (entry,) = create_manifest(tmp_path).files
    assert entry.rows is None and entry.note.startswith("rows not read: not a readable Parquet file")
    assert len(entry.sha256) == 64


def test_deep_nesting_and_odd_names(tmp_path: Path) -> None:
    root = tmp_path / "deep"
    root.mkdir()
    try:
        deep = root
        for _ in range(1200):  # deeper than Python's recursion limit (made level by level:
            deep = deep / "d"  # mkdir(parents=True) itself recurses)
            deep.mkdir()
        (deep / "leaf.txt").write_text("bottom\n")
        odd = os.fsdecode(b"bad-\xff-name\nwith newline.txt")
        (root / odd).write_text("odd\n")
        m = create_manifest(root)
        assert len(m.files) == 2
        again = Manifest.from_dict(json.loads(m.to_json()))
        assert again == m and verify_manifest(again, root).ok
        (root / odd).write_text("changed\n")
        assert [c.path for c in verify_manifest(again, root).changed] == [odd]
    finally:
        _remove_deep(root)


def _remove_deep(root: Path) -> None:
    """Delete a tree deeper than the recursion limit, iteratively (os.walk and shutil.rmtree
    recurse once per level: pytest's cleanup of old temp folders would fail on it later, leaving
    scandir iterators open)."""
    stack, order = [root], []
    while stack:
        folder = stack.pop()
        order.append(folder)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    os.unlink(entry.path)
    for folder in reversed(order):
        os.rmdir(folder)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"schema": "modelshield.manifest/1"}',
                                  '{"schema": "modelshield.manifest/1", "root": "r", "files": [7], '
                                  '"row_limit": 1, "block_rows": 1}'])
def test_hostile_manifest_json_is_a_data_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(DataError, match="Manifest"):
        Manifest.load(path)


def test_signing_refuses_links_and_hostile_bundles(tmp_path: Path) -> None:
    pytest.importorskip("model_signing")
    from modelshield.secure.signing import generate_keypair, sign_model, verify_model

    keys = generate_keypair(tmp_path / "k")
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"w")
    (model / "loop").symlink_to(model / "loop")
    with pytest.raises(DataError, match="'loop' is a symbolic link"):
        sign_model(model, private_key=keys.private_key, bundle=tmp_path / "m.sig")
    (model / "loop").unlink()
    sign_model(model, private_key=keys.private_key, bundle=tmp_path / "m.sig")
    link = tmp_path / "model-link"
    link.symlink_to(model)
    with pytest.raises(DataError, match="must not be a symbolic link"):
        verify_model(link, bundle=tmp_path / "m.sig", public_key=keys.public_key)
    for blob in (b"{}", b'{"dsseEnvelope": {"payload": "!!!"}}', b"[" * 50_000, os.urandom(512)):
        (tmp_path / "h.sig").write_bytes(blob)
        r = verify_model(model, bundle=tmp_path / "h.sig", public_key=keys.public_key)
        assert not r.ok and r.reason
    os.mkfifo(model / "pipe")
    r = verify_model(model, bundle=tmp_path / "m.sig", public_key=keys.public_key)
    assert not r.ok and any(p.startswith("pipe (a FIFO") for p in r.refused)


@pytest.mark.timeout(60)
def test_fifo_manifest_bundle_and_policy_do_not_hang(tmp_path: Path) -> None:
    from modelshield.errors import ConfigError
    from modelshield.secure.policy import TrustPolicy

    for name in ("m.json", "b.sig", "p.yaml"):
        os.mkfifo(tmp_path / name)  # opening one for reading would wait for a writer forever
    with pytest.raises(DataError, match="not a regular file"):
        Manifest.load(tmp_path / "m.json")
    with pytest.raises(ConfigError, match="not a regular file"):
        TrustPolicy.load(tmp_path / "p.yaml")
    pytest.importorskip("model_signing")
    from modelshield.secure.signing import generate_keypair, verify_model

    keys = generate_keypair(tmp_path / "k")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"w")
    with pytest.raises(DataError, match="not a regular file"):
        verify_model(tmp_path / "model", bundle=tmp_path / "b.sig", public_key=keys.public_key)
