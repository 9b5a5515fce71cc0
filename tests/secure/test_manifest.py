"""Dataset manifests: digests, rows, the RFC 6962 Merkle root, and every change kind named by verify."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import modelshield.secure.manifest as manifest_module
from modelshield.errors import ConfigError, DataError, MissingDataError
from modelshield.secure.manifest import Manifest, create_manifest, merkle_root, verify_manifest


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written recursively exactly as the RFC states it."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _rows_csv(n: int) -> list[str]:
    return ["id,name,value"] + [f"{i},name{i},{i * 7 % 13}" for i in range(1, n)]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "train.csv").write_text("\n".join(_rows_csv(20)) + "\n")
    (root / "sub" / "labels.tsv").write_text("".join(f"{i}\tlabel {i}\n" for i in range(15)))
    (root / "notes.txt").write_text("first\nsecond\nthird\n")
    (root / "weights.bin").write_bytes(bytes(range(256)) * 10)
    return root


def test_merkle_root_is_rfc6962() -> None:
    assert merkle_root([]).hex() == hashlib.sha256(b"").hexdigest()
    # the Certificate Transparency test vector: the hash of one empty leaf
    assert merkle_root([b""]).hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    for n in range(1, 21):
        leaves = [bytes([i]) * (i + 1) for i in range(n)]
        assert merkle_root(leaves) == _mth(leaves), n
    # order matters and leaves cannot pose as nodes (0x00/0x01 domain separation)
    a, b = b"a", b"b"
    assert merkle_root([a, b]) != merkle_root([b, a])
    node = hashlib.sha256(b"\x00" + a).digest() + hashlib.sha256(b"\x00" + b).digest()
    assert merkle_root([node]) != merkle_root([a, b])


def test_create_records_every_file_with_digest_size_and_rows(tree: Path) -> None:
    m = create_manifest(tree)
    paths = [f.path for f in m.files]
    assert paths == sorted(paths) == ["notes.txt", "sub/labels.tsv", "train.csv", "weights.bin"]
    for entry in m.files:
        data = (tree / entry.path).read_bytes()
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
        assert entry.size == len(data)
    rows = {f.path: f.rows.count if f.rows else None for f in m.files}
    assert rows == {"notes.txt": 3, "sub/labels.tsv": 15, "train.csv": 20, "weights.bin": None}
    assert m.root == merkle_root([f.leaf() for f in m.files]).hex()
    assert m.refused == ()


def test_csv_rows_are_records_not_lines(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text('a,b\n1,"two\nlines"\n3,x\n')
    (entry,) = create_manifest(tmp_path).files
    assert entry.rows is not None and entry.rows.kind == "csv" and entry.rows.count == 3


def test_json_round_trip_and_no_overwrite(tree: Path, tmp_path: Path) -> None:
    m = create_manifest(tree)
    out = tmp_path / "m.json"
    m.save(out)
    assert Manifest.load(out) == m
    assert json.loads(out.read_text())["schema"] == "modelshield.manifest/1"
    with pytest.raises(ConfigError, match="must not exist yet"):
        m.save(out)
    m.save(out, force=True)


def test_unchanged_tree_verifies(tree: Path) -> None:
    diff = verify_manifest(create_manifest(tree), tree)
    assert diff.ok and diff.problems() == []
    assert diff.root_actual == diff.root_expected


def test_file_added_removed_changed_are_named(tree: Path) -> None:
    m = create_manifest(tree)
    (tree / "sub" / "new.bin").write_bytes(b"new")
    (tree / "notes.txt").unlink()
    (tree / "weights.bin").write_bytes(b"\x00" * 10)
    diff = verify_manifest(m, tree)
    assert not diff.ok
    assert diff.added == ("sub/new.bin",)
    assert diff.removed == ("notes.txt",)
    assert [c.path for c in diff.changed] == ["weights.bin"]
    assert diff.changed[0].rows is None and diff.changed[0].new_size == 10
    assert diff.root_actual != diff.root_expected
    text = "\n".join(diff.problems())
    assert "sub/new.bin: added" in text and "notes.txt: removed" in text and "weights.bin: changed" in text


def _write(path: Path, rows: list[str], sep: str) -> None:
    path.write_text("".join(r.replace(",", sep) + "\n" for r in rows))


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_row_edit_insert_delete_are_named(tmp_path: Path, suffix: str) -> None:
    sep = "," if suffix == ".csv" else "\t"
    path = tmp_path / f"table{suffix}"
    rows = _rows_csv(30)
    _write(path, rows, sep)
    m = create_manifest(tmp_path)

    edited = list(rows)
    edited[9] = "9,EDITED,0"  # row 10 (the header is row 1)
    _write(path, edited, sep)
    (change,) = verify_manifest(m, tmp_path).changed
    assert change.rows is not None and change.rows.granularity == "row"
    assert change.rows.changed_rows == {10} and not change.rows.added_rows and not change.rows.removed_rows

    inserted = [*rows[:5], "new,row,1", "another,row,2", *rows[5:]]
    _write(path, inserted, sep)
    (change,) = verify_manifest(m, tmp_path).changed
    assert change.rows is not None
    assert change.rows.added_rows == {6, 7} and not change.rows.changed_rows and not change.rows.removed_rows
    assert "rows 6-7 added" in change.describe()

    deleted = rows[:20] + rows[21:]
    _write(path, deleted, sep)
    (change,) = verify_manifest(m, tmp_path).changed
    assert change.rows is not None
    assert change.rows.removed_rows == {21} and not change.rows.added_rows and not change.rows.changed_rows
    assert (change.rows.old_rows, change.rows.new_rows) == (30, 29)

    appended = [*rows, "30,tail,1"]
    _write(path, appended, sep)
    (change,) = verify_manifest(m, tmp_path).changed
    assert change.rows is not None and change.rows.added_rows == {31}


def test_line_endings_only_change_names_no_row(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"a\nb\nc\n")
    m = create_manifest(tmp_path)
    path.write_bytes(b"a\r\nb\r\nc\r\n")
    (change,) = verify_manifest(m, tmp_path).changed
    assert change.rows is not None and change.rows.hunks == ()
    assert "only formatting" in change.describe()


def test_line_digests_do_not_depend_on_chunking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"".join(bytes([b"ab\r\n"[(i * 7 + i // 3) % 4]]) for i in range(2000)) + b"\r"
    (tmp_path / "r.txt").write_bytes(data)
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    expected = b"".join(hashlib.sha256(ln[:-1] if ln.endswith(b"\r") else ln).digest()[:8] for ln in lines)
    for chunk in (1, 2, 3, 5, 64, 1 << 20):
        monkeypatch.setattr(manifest_module, "_CHUNK", chunk)
        (entry,) = create_manifest(tmp_path).files
        assert entry.rows is not None and entry.rows.digests == expected, chunk
        assert entry.sha256 == hashlib.sha256(data).hexdigest()


def test_edited_manifest_is_caught(tree: Path, tmp_path: Path) -> None:
    out = create_manifest(tree).save(tmp_path / "m.json")
    data = json.loads(out.read_text())
    data["files"][0]["sha256"] = "0" * 64  # hide a change: the entry no longer matches the root
    diff = verify_manifest(Manifest.from_dict(data), tree)
    assert not diff.manifest_intact and not diff.ok
    assert "the manifest was edited" in diff.problems()[0]


def test_big_files_use_content_defined_blocks_and_localise_inserts(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    rows = [f"row {i} value {i * i % 97}" for i in range(3000)]
    path.write_text("\n".join(rows) + "\n")
    m = create_manifest(tmp_path, row_limit=100, block_rows=16)
    (entry,) = m.files
    assert entry.rows is not None and entry.rows.granularity == "block" and entry.rows.count == 3000
    assert len(entry.rows.digests) < 3000 * 8 // 4  # far fewer than one digest per row
    path.write_text("\n".join([*rows[:1500], "INSERTED", *rows[1500:]]) + "\n")
    (change,) = verify_manifest(m, tmp_path).changed
    assert change.rows is not None and change.rows.granularity == "block"
    touched = change.rows.changed_rows | change.rows.added_rows
    assert 1501 in touched
    assert len(touched) <= 8 * 16 * 2  # only the blocks around the insert, not the 1,500 rows after it


def test_row_limit_crossed_between_create_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    rows = [f"r{i}" for i in range(200)]
    path.write_text("\n".join(rows) + "\n")
    m = create_manifest(tmp_path, row_limit=200, block_rows=8)
    assert m.files[0].rows is not None and m.files[0].rows.granularity == "row"
    path.write_text("\n".join([*rows[:50], "x", *rows[50:]]) + "\n")  # 201 rows: blocks now
    (change,) = verify_manifest(m, tmp_path).changed
    assert change.rows is not None and change.rows.granularity == "block"
    assert 51 in change.rows.changed_rows | change.rows.added_rows


def test_parquet_rows_are_named(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"x": list(range(50)), "y": [f"v{i}" for i in range(50)]})
    pq.write_table(table, tmp_path / "t.parquet")
    m = create_manifest(tmp_path)
    assert m.files[0].rows is not None and m.files[0].rows.count == 50
    ys = [f"v{i}" for i in range(50)]
    ys[33] = "edited"
    pq.write_table(pa.table({"x": list(range(50)), "y": ys}), tmp_path / "t.parquet")
    (change,) = verify_manifest(m, tmp_path).changed
    assert change.rows is not None and change.rows.changed_rows == {34}


def test_exclude_is_recorded_and_reused(tree: Path) -> None:
    m = create_manifest(tree, exclude=("sub", "*.bin"))
    assert [f.path for f in m.files] == ["notes.txt", "train.csv"]
    (tree / "sub" / "more.tsv").write_text("x\n")
    (tree / "other.bin").write_bytes(b"1")
    assert verify_manifest(Manifest.from_dict(json.loads(m.to_json())), tree).ok


def test_single_file_root(tree: Path) -> None:
    m = create_manifest(tree / "train.csv")
    assert [f.path for f in m.files] == ["train.csv"]
    assert verify_manifest(m, tree / "train.csv").ok
    (tree / "train.csv").write_text("\n".join(_rows_csv(20)[:-1]) + "\n")
    (change,) = verify_manifest(m, tree / "train.csv").changed
    assert change.rows is not None and change.rows.removed_rows == {20}


def test_bad_roots_and_settings_raise_one_line(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="does not exist"):
        create_manifest(tmp_path / "missing")
    with pytest.raises(ConfigError, match="'row_limit' must be an int >= 1"):
        create_manifest(tmp_path, row_limit=0)
    with pytest.raises(ConfigError, match="'exclude' must be a sequence"):
        create_manifest(tmp_path, exclude="x")  # a str is a Sequence[str], but not a list of paths
    with pytest.raises(ConfigError, match="must be a Manifest"):
        verify_manifest({"files": []}, tmp_path)  # type: ignore[arg-type]  # deliberately wrong type


@pytest.mark.parametrize(("text", "message"), [
    ("not json", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ('{"schema": "other/9"}', "'schema' must be"),
    ('{"schema": "modelshield.manifest/1", "root": "x", "files": [{"path": "a", "size": -1, '
     '"sha256": "zz"}], "row_limit": 1, "block_rows": 1}', "sha256 must be 64 hex"),
    ('{"schema": "modelshield.manifest/1", "root": "x", "files": [], "row_limit": true, "block_rows": 1}',
     "'row_limit' must be a int"),
])
def test_malformed_manifest_is_a_data_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        Manifest.load(path)
