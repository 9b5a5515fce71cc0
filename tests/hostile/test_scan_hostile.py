"""Hostile paths for the scanner: missing paths, symlink loops, unreadable files, FIFOs, links out of
the folder and empty files are reported (or refused with one clear error), never a crash or a hang."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelshield.cli.app import app
from modelshield.errors import MissingDataError
from modelshield.secure.scan import scan_bytes, scan_path

runner = CliRunner()
_PAYLOAD = b"\x80\x04\x8c\x02os\x8c\x06system\x93(\x8c\x04truetR."


def test_missing_path_raises_missing_data_error(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="does not exist"):
        scan_path(tmp_path / "nope.pt")
    result = runner.invoke(app, ["scan", str(tmp_path / "nope.pt")])
    assert result.exit_code == 2


def test_symlink_loop_file_is_a_finding(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    report = scan_path(tmp_path / "a")
    assert [f.code for f in report.findings] == ["path.unreadable"]
    assert report.blocked


def test_folder_with_link_loops_terminates(tmp_path: Path) -> None:
    sub = tmp_path / "models"
    sub.mkdir()
    (sub / "up").symlink_to(tmp_path, target_is_directory=True)
    (sub / "self").symlink_to(sub, target_is_directory=True)
    (sub / "a").symlink_to(sub / "b")
    (sub / "b").symlink_to(sub / "a")
    (sub / "ok.pkl").write_bytes(pickle.dumps([1, 2]))
    report = scan_path(tmp_path)
    assert report.files == 1
    codes = sorted(f.code for f in report.findings)
    assert codes.count("path.unreadable") == 2 and codes.count("path.symlink-dir") == 2


def test_link_leaving_the_folder_is_a_finding(tmp_path: Path) -> None:
    outside = tmp_path / "outside.pkl"
    outside.write_bytes(_PAYLOAD)
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "model.pkl").symlink_to(outside)
    report = scan_path(folder)
    assert report.blocked
    assert [f.code for f in report.findings] == ["path.symlink-outside"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_a_finding(tmp_path: Path) -> None:
    path = tmp_path / "secret.pt"
    path.write_bytes(_PAYLOAD)
    path.chmod(0)
    try:
        report = scan_path(path)
    finally:
        path.chmod(0o600)
    assert [f.code for f in report.findings] == ["path.unreadable"] and report.blocked


def test_unreadable_folder_is_a_finding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a folder that cannot be listed (chmod cannot make one when the tests run as root)
    import modelshield.secure.scan as scan_module

    (tmp_path / "sub").mkdir()
    real = scan_module._list

    def deny(folder: Path) -> list[os.DirEntry[str]]:
        if folder.name == "sub":
            raise PermissionError(13, "Permission denied")
        return real(folder)

    monkeypatch.setattr(scan_module, "_list", deny)
    report = scan_path(tmp_path)
    assert [f.code for f in report.findings] == ["path.unreadable"]


@pytest.mark.timeout(20)
def test_fifo_is_never_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    report = scan_path(fifo)  # opening a FIFO with no writer would block forever
    assert [f.code for f in report.findings] == ["path.special-file"]
    folder_report = scan_path(tmp_path)
    assert [f.code for f in folder_report.findings] == ["path.special-file"]


def test_empty_file_is_clean_but_reported(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    report = scan_path(path)
    assert not report.blocked
    assert [f.code for f in report.findings] == ["file.empty"]
    assert not scan_bytes(b"", name="e").blocked


@pytest.mark.parametrize("data", [b"\x80", b"\x80\x05", b"\x80\x06.", b"PK\x03\x04",
                                  b"PK\x05\x06" + b"\x00" * 18,
                                  b"\x93NUMPY\x01\x00", b"\x1f\x8b\x08", b"\xfd7zXZ\x00", b"(" * 10_000,
                                  b"c" * 5000, b"\x00" * 4096, os.urandom(4096)])
def test_garbage_never_raises(data: bytes) -> None:
    report = scan_bytes(data, name="g")
    assert report.files == 1


def test_file_that_cannot_be_opened_is_a_finding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the same path as an unreadable file when the tests run as root (who reads every mode)
    import modelshield.secure.scan as scan_module

    path = tmp_path / "secret.pt"
    path.write_bytes(_PAYLOAD)

    def deny(*args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(scan_module, "open", deny, raising=False)
    report = scan_path(path)
    assert [f.code for f in report.findings] == ["path.unreadable"] and report.blocked
