"""Data references (load_data): every reference type, and one clear error for each malformed file."""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modelshield.data import UserData, load_data
from modelshield.data import refs as refs_mod
from modelshield.data._embedded import EMBEDDED_DATA
from modelshield.errors import ConfigError, DataError, MissingDataError


def _blobs(n: int = 40, d: int = 3, classes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return (rng.normal(size=(n, d)) + y[:, None]).astype(np.float32), y


def _csv(path: Path, rows: list[list[object]], header: list[str]) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _table(tmp_path: Path, n: int = 20) -> Path:
    rows: list[list[object]] = [[i, i * 0.5, "fraud" if i % 2 else "ok"] for i in range(n)]
    return _csv(tmp_path / "t.csv", rows, ["amount", "age", "label"])


def _images(root: Path, spec: dict[str, int], *, mode: str = "L", size: tuple[int, int] = (7, 5)) -> Path:
    rng = np.random.default_rng(1)
    for c, n in spec.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode=mode).save(root / c / f"{i}.png")
    return root


def _png_header(width: int, height: int) -> bytes:
    """A PNG with only an IHDR and IEND: declares its size without pixel data (a bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------- npz


def test_npz_image_split_is_stratified_seeded_and_recorded(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 6, 6)).astype(np.float32)
    y = np.arange(40) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_data(tmp_path / "d.npz")
    assert isinstance(data, UserData) and data.kind == "image" and data.input_shape == (1, 6, 6)
    assert data.class_names == ("0", "1", "2", "3") and data.bounds == (0.0, 1.0)
    assert len(data.y_test) == 12 and torch.bincount(data.y_test).tolist() == [3, 3, 3, 3]
    assert isinstance(data.x_train, torch.Tensor) and data.x_train.dtype == torch.float32
    # rows keep their labels through the split
    x_all = torch.cat([data.x_train, data.x_test]).flatten(1)  # type: ignore[list-item]
    y_all = torch.cat([data.y_train, data.y_test])
    for row, lab in zip(x_all[:5], y_all[:5], strict=True):
        i = int(np.flatnonzero(np.all(np.isclose(x.reshape(40, -1), row.numpy()), axis=1))[0])
        assert y[i] == int(lab)
    prov = data.provenance
    assert prov.format == "npz" and prov.split == "seeded stratified"
    assert (prov.test_fraction, prov.seed, prov.bounds_source) == (0.3, 0, "images in [0, 1]")
    assert prov.sha256 == hashlib.sha256((tmp_path / "d.npz").read_bytes()).hexdigest()
    assert torch.equal(load_data(tmp_path / "d.npz").y_train, data.y_train)
    other = load_data(tmp_path / "d.npz", seed=1, test_fraction=0.5)
    assert len(other.y_test) == 20 and other.provenance.seed == 1


def test_npz_uint8_grey_images_scaled_and_given_split(tmp_path: Path) -> None:
    x = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4)
    np.savez(
        tmp_path / "g.npz", x=x, y=np.array([0, 1, 0, 1, 0, 1]), x_test=x[:2], y_test=np.array([1, 0]),
        class_names=np.array(["cat", "dog"]), bounds=np.array([0.0, 1.0]),
    )
    data = load_data(tmp_path / "g.npz")
    assert data.input_shape == (1, 4, 4) and len(data.y_train) == 6 and len(data.y_test) == 2
    assert isinstance(data.x_train, torch.Tensor)
    assert torch.allclose(data.x_train[0, 0], torch.tensor(x[0], dtype=torch.float32) / 255)
    assert data.class_names == ("cat", "dog") and data.provenance.split == "from the file"
    assert data.provenance.bounds_source == "file" and data.provenance.scaling.startswith("/255")
    with pytest.raises(ConfigError, match=r"has one\. Drop test_fraction"):
        load_data(tmp_path / "g.npz", test_fraction=0.2)


def test_npz_tabular_with_string_labels(tmp_path: Path) -> None:
    x, y = _blobs()
    np.savez(tmp_path / "t.npz", x=x, y=np.array(["spam", "ham"])[y])
    data = load_data(tmp_path / "t.npz")
    assert data.kind == "tabular" and data.class_names == ("ham", "spam")
    assert data.provenance.labels == "names, sorted"
    # bounds cover every row (train and test); ranges per column
    assert data.bounds is not None
    assert np.allclose(data.bounds, (x.min(), x.max()))
    assert np.allclose(data.feature_ranges[1], (x[:, 1].min(), x[:, 1].max()))
    ds = data.to_dataset()
    assert ds.n_classes == 2 and ds.sha256 == data.provenance.sha256


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"X": np.zeros((4, 2)), "Y": np.zeros(4)}, r"must hold arrays 'x' and 'y'.*did you mean"),
        ({"x": np.zeros((4, 2))}, r"must hold arrays 'x' and 'y'"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(5, dtype=int)}, r"'y' .* must have shape \(4,\)"),
        ({"x": np.zeros((4, 2)), "y": np.array([0.5, 1, 0, 1])}, r"whole numbers; got 0.5 at row 0"),
        ({"x": np.array([["a", "b"]] * 4), "y": np.arange(4) % 2}, r"'x' .* must hold numbers; got dtype"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4, dtype=int)}, r"at least 2 classes; got only '0'"),
        ({"x": np.zeros((4, 2)), "y": np.array([1, 2, 1, 2])}, r"0..C-1 .*no example of \[0\]"),
        ({"x": np.zeros((4, 2)), "y": np.array([-1, 1, -1, 1])}, r"got -1 at row 0.*Relabel from 0"),
        ({"x": np.zeros((4, 8, 8, 3)), "y": np.arange(4) % 2}, r"channels-first.*transpose\(0, 3, 1, 2\)"),
        ({"x": np.zeros((4, 2)), "y": np.arange(4) % 2, "x_test": np.zeros(2)}, r"'y_test'"),
        (
            {"x": np.zeros((4, 2)), "y": np.arange(4) % 2, "x_test": np.zeros((2, 3)),
             "y_test": np.arange(2)},
            r"'x_test' .* must have the input shape of 'x'",
        ),
        (
            {"x": np.zeros((4, 2)), "y": np.arange(4) % 2, "x_test": np.zeros((2, 2)),
             "y_test": np.array(["a", "b"])},
            r"one encoding; got numbers in y and names in y_test",
        ),
        ({"x": np.zeros((4, 2)), "y": np.arange(4) % 2, "bounds": np.array([1.0, 0.0])}, r"'bounds'.*lo <"),
    ],
)
def test_npz_malformed(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=match):
        load_data(tmp_path / "bad.npz")


def test_npz_nan_is_refused_with_its_row(tmp_path: Path) -> None:
    x, y = _blobs()
    x[3, 1] = np.nan
    np.savez(tmp_path / "n.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"finite numbers; got nan at row 3, position \(1,\)"):
        load_data(tmp_path / "n.npz")


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(Path.cwd() / "PWNED"),))


def test_pickle_named_npz_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.npz").write_bytes(pickle.dumps({"x": _Boom()}, protocol=4))
    with pytest.raises(DataError, match="a Python pickle \\(never loaded"):
        load_data(tmp_path / "evil.npz")
    assert not (tmp_path / "PWNED").exists()
    # an object array inside a real npz is refused from its header, before numpy unpickles it
    np.savez(tmp_path / "obj.npz", x=np.array([_Boom()] * 4, dtype=object), y=np.arange(4) % 2)
    with pytest.raises(DataError, match=r"'x' .* must hold numbers; got Python objects"):
        load_data(tmp_path / "obj.npz")
    assert not (tmp_path / "PWNED").exists()


def test_npz_content_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "one.npy").rename(tmp_path / "fake.npz")
    with pytest.raises(DataError, match=r"got a NumPy \.npy array file"):
        load_data(tmp_path / "fake.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(DataError, match="got an empty file"):
        load_data(tmp_path / "empty.npz")
    x, y = _blobs()
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:300])
    with pytest.raises(DataError, match="must be a readable npz archive"):
        load_data(tmp_path / "cut.npz")
    np.save(tmp_path / "single.npy", x)
    with pytest.raises(DataError, match=r"numpy.savez\('single.npz', x=x, y=y\)"):
        load_data(tmp_path / "single.npy")


def test_npz_declaring_a_huge_array_is_refused_before_reading(tmp_path: Path) -> None:
    # a member whose header declares 10^12 float32 values, with no data behind it (a zip bomb's shape)
    header = io_header(np.dtype(np.float32), (10**6, 10**6))
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as zf:
        zf.writestr("x.npy", header)
        zf.writestr("y.npy", io_header(np.dtype(np.int64), (10**6,)))
    with pytest.raises(DataError, match=r"must fit in memory; it needs about 10.9 TiB"):
        load_data(tmp_path / "huge.npz")


def io_header(dtype: np.dtype[np.generic], shape: tuple[int, ...]) -> bytes:
    """The .npy header (magic included) of an array of ``shape``, without its data."""
    buf = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(dtype)
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------- CSV / Parquet


def test_csv_tabular_with_feature_cols_and_name_labels(tmp_path: Path) -> None:
    path = _table(tmp_path)
    data = load_data(path, label_col="label")
    assert data.kind == "tabular" and data.feature_names == ("amount", "age")
    assert data.class_names == ("fraud", "ok") and data.input_shape == (2,)
    assert data.bounds == (0.0, 19.0) and data.provenance.bounds_source == "data min/max"
    assert data.feature_ranges == ((0.0, 19.0), (0.0, 9.5))
    assert isinstance(data.x_train, torch.Tensor)
    # rows keep their labels: odd amounts are fraud (label 0)
    assert all((int(a) % 2 == 1) == (lab == 0) for a, lab in zip(data.x_train[:, 0], data.y_train.tolist(),
                                                                  strict=True))
    only_age = load_data(path, label_col="label", feature_cols=["age"], class_names=["ok", "fraud"])
    assert only_age.feature_names == ("age",) and only_age.class_names == ("ok", "fraud")
    assert only_age.provenance.labels == "names, given order"
    given = load_data(path, label_col="label", bounds=(-100.0, 100.0))
    assert given.bounds == (-100.0, 100.0) and given.provenance.bounds_source == "given"


def test_csv_quoting_bom_integer_labels_and_tsv_table(tmp_path: Path) -> None:
    lines = ["\ufeffid,\"note, quoted\",y"] + [f"{i},\"{i}.5\",{i % 3}" for i in range(12)]
    (tmp_path / "q.csv").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    data = load_data(tmp_path / "q.csv", label_col="y")
    assert data.feature_names == ("id", "note, quoted") and data.class_names == ("0", "1", "2")
    (tmp_path / "q.tsv").write_text("a\tb\tlab\n" + "".join(f"{i}\t{-i}\t{i % 2}\n" for i in range(10)))
    tsv = load_data(tmp_path / "q.tsv", label_col="lab")
    assert tsv.kind == "tabular" and tsv.provenance.format == "tsv" and tsv.bounds == (-9.0, 9.0)


def test_csv_text_column(tmp_path: Path) -> None:
    rows = [[i % 2, f"\"message, number {i}\""] for i in range(10)]
    path = _csv(tmp_path / "msgs.csv", rows, ["spam", "body"])
    data = load_data(path, label_col="spam", text_col="body")
    assert data.kind == "text" and isinstance(data.x_train, tuple) and data.bounds is None
    assert "message, number 1" in data.x_train + data.x_test  # type: ignore[operator]
    assert data.input_shape == ()
    with pytest.raises(ConfigError, match="'text_col' must name the text column for kind='text'"):
        load_data(path, label_col="spam", kind="text")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("a,b,label\n1,2,x\n3,4\n", r"line 3 of .* must have 3 comma-separated fields"),
        ("a,b,label\n1,,x\n3,4,y\n", r"line 2 of .* value in column 'b'; got an empty field"),
        ("a,b,label\n1,2,x\n3,nan,y\n1,2,x\n3,4,y\n", r"finite numbers; got nan at line 3, column 'b'"),
        ("a,city,name,label\n1,Paris,Al,x\n", r"must be numeric; got text in 'city' \('Paris'\), 'name'"),
        ("a,b,label\n", r"must hold data rows below the header; got none"),
        ("", r"got an empty file"),
        ("a,a,label\n1,2,x\n", r"name every column once; got repeated names \['a'\]"),
        ("a,label\n1,x\n2,x\n3,x\n", r"at least 2 classes; got only 'x'"),
        ("a,label\n1,x\n2,x\n3,y\n", r"at least 2 examples .*got 1 of 'y' at line 4"),
        ("a,label\n1,1\n2,spam\n3,1\n", r"all integers or all names; got both '1' \(line 2\) and 'spam'"),
        ("a,label\n1,0.25\n2,3.5\n", r"class labels .*got the number '0.25' at line 2"),
        ("a,label\n1,\n2,x\n", r"line 2 of .* must have a label; got an empty one"),
    ],
)
def test_csv_malformed(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "bad.csv").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        load_data(tmp_path / "bad.csv", label_col="label")


def test_csv_column_options(tmp_path: Path) -> None:
    path = _table(tmp_path)
    with pytest.raises(ConfigError, match=r"must name a column .*got 'lable'\. Did you mean 'label'"):
        load_data(path, label_col="lable")
    with pytest.raises(ConfigError, match=r"got 'Label'. Did you mean 'label'"):
        load_data(path, label_col="Label")
    with pytest.raises(ConfigError, match=r"'label_col' must name the label .*columns are \[amount, age"):
        load_data(path)
    with pytest.raises(ConfigError, match=r"'feature_cols' must name a column .*got 'agee'"):
        load_data(path, label_col="label", feature_cols=["agee"])
    with pytest.raises(ConfigError, match="must not include the label column"):
        load_data(path, label_col="label", feature_cols=["age", "label"])
    with pytest.raises(ConfigError, match="'feature_cols' must be a list of column names"):
        load_data(path, label_col="label", feature_cols="age")
    with pytest.raises(ConfigError, match=r"kind='image' for .* which holds tabular data"):
        load_data(path, label_col="label", kind="image")
    with pytest.raises(DataError, match=r"every label .* must be one of the class names \['ok', 'frud'\]; "
                       r"got "
                       r"'fraud' \(did you mean 'frud'\?\) at line 3"):
        load_data(path, label_col="label", class_names=["ok", "frud"])
    with pytest.raises(DataError, match=r"within the bounds \[0, 1\] \(given\).*first at line 4"):
        load_data(path, label_col="label", bounds=(0.0, 1.0))


def test_csv_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    body = "a,label\n" + "".join(f"{i},x\n{i},y\n" for i in range(3000))
    (tmp_path / "enc.csv").write_bytes(body.encode() + b"1,caf\xe9\n")
    with pytest.raises(DataError, match=r"line 6002 of .* must be UTF-8 text; got the byte\(s\) b'\\xe9'"):
        load_data(tmp_path / "enc.csv", label_col="label")


def test_binary_files_named_csv_are_refused(tmp_path: Path) -> None:
    x, y = _blobs()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    (tmp_path / "d.npz").rename(tmp_path / "d.csv")
    with pytest.raises(DataError, match=r"must be a text table \(CSV\); got a zip archive"):
        load_data(tmp_path / "d.csv", label_col="label")
    (tmp_path / "p.csv").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataError, match="got a Python pickle"):
        load_data(tmp_path / "p.csv", label_col="label")


def test_ten_gigabyte_csv_is_refused_from_the_estimate(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("wb") as fh:
        fh.write(b"a,b,c,label\n" + b"".join(b"%d,1,2,x\n" % i for i in range(100)))
        fh.truncate(10 * 2**30)  # sparse: 10 GiB on paper, nothing on disk
    with pytest.raises(DataError, match=r"10\.0 GiB, about .* rows x 3 numeric .*must fit in memory"):
        load_data(path, label_col="label")


def test_memory_limit_applies_to_small_files_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSHIELD_MAX_MEMORY", "1K")
    with pytest.raises(DataError, match=r"must fit in memory.*MODELSHIELD_MAX_MEMORY"):
        load_data(_table(tmp_path), label_col="label")


def test_parquet_tables(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 12
    table = pa.table({
        "amount": [float(i) for i in range(n)], "n_items": list(range(n)),
        "label": ["fraud" if i % 3 == 0 else "ok" for i in range(n)], "note": [f"note {i}" for i in range(n)],
    })
    pq.write_table(table, tmp_path / "t.parquet")
    data = load_data(tmp_path / "t.parquet", label_col="label", feature_cols=["amount", "n_items"])
    assert data.kind == "tabular" and data.provenance.format == "parquet"
    assert data.class_names == ("fraud", "ok")
    assert data.feature_names == ("amount", "n_items") and len(data.y_train) + len(data.y_test) == n
    text = load_data(tmp_path / "t.parquet", label_col="label", text_col="note")
    assert text.kind == "text" and set(text.x_train + text.x_test) == {f"note {i}" for i in range(n)}  # type: ignore[operator]
    with pytest.raises(DataError, match=r"must be numeric; got 'note' \(string\)"):
        load_data(tmp_path / "t.parquet", label_col="label")
    pq.write_table(pa.table({"a": [1.0, None, 3.0, 4.0], "label": [0, 1, 0, 1]}), tmp_path / "null.parquet")
    with pytest.raises(DataError, match=r"column 'a' .* no missing values; got 1 \(first at row 1\)"):
        load_data(tmp_path / "null.parquet", label_col="label")
    _table(tmp_path).rename(tmp_path / "fake.parquet")
    with pytest.raises(DataError, match="must be a Parquet file; got no PAR1 magic"):
        load_data(tmp_path / "fake.parquet", label_col="label")
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "t.parquet").read_bytes()[:-30] + b"PAR1")
    with pytest.raises(DataError, match="must be a readable Parquet file"):
        load_data(tmp_path / "cut.parquet", label_col="label")


# ---------------------------------------------------------------------------------------- labelled text


def test_tsv_label_text_lines(tmp_path: Path) -> None:
    lines = [f"{'spam' if i % 4 == 0 else 'ham'}\tmessage {i}\twith a tab" for i in range(20)]
    (tmp_path / "sms.tsv").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    data = load_data(tmp_path / "sms.tsv")
    assert data.kind == "text" and data.class_names == ("ham", "spam") and data.bounds is None
    assert data.provenance.format == "text-lines" and len(data.y_test) == 6
    assert "message 0\twith a tab" in data.x_train + data.x_test  # type: ignore[operator]
    pairs = {(t, "spam" if int(t.split()[1]) % 4 == 0 else "ham") for t in data.x_train}
    assert pairs == {(t, data.class_names[lab]) for t, lab in zip(data.x_train, data.y_train.tolist(),
                                                                    strict=True)}
    assert data.to_dataset().n_classes == 2
    (tmp_path / "SMSCopy").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert load_data(tmp_path / "SMSCopy").kind == "text"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"ham\thi\nham no tab\n", r"line 2 of .* separated by a tab; got no tab"),
        (b"ham\thi\n\nspam\tyo\n", r"line 2 of .* got an empty line"),
        (b"ham\thi\nspam\t  \n", r"line 2 of .* non-empty text"),
        (b"ham\thi\nham\tyo\nspam\tcaf\xe9\n", r"line 3 of .* must be UTF-8 text; got the byte\(s\) b'\\xe9"),
        (b"", r"got an empty file"),
        (b"label\ttext\nham\thi\nham\tyo\nspam\ta\nspam\tb\n", r"of 'label' at line 1 \(if that row is a"),
    ],
)
def test_tsv_malformed(tmp_path: Path, content: bytes, match: str) -> None:
    (tmp_path / "bad.tsv").write_bytes(content)
    with pytest.raises(DataError, match=match):
        load_data(tmp_path / "bad.tsv")


# ---------------------------------------------------------------------------------------- image folders


def test_image_folder_grey(tmp_path: Path) -> None:
    root = _images(tmp_path / "imgs", {"dog": 4, "cat": 6})
    data = load_data(root)
    assert data.kind == "image" and data.class_names == ("cat", "dog") and data.input_shape == (1, 5, 7)
    assert len(data.y_train) + len(data.y_test) == 10 and data.bounds == (0.0, 1.0)
    assert data.provenance.format == "image-folder" and data.provenance.scaling == "/255"
    assert isinstance(data.x_train, torch.Tensor)
    every = torch.cat([data.x_train, data.x_test])  # type: ignore[list-item]
    first = torch.tensor(np.asarray(Image.open(root / "cat" / "0.png")), dtype=torch.float32) / 255
    assert any(torch.equal(img[0], first) for img in every)
    before = data.provenance.sha256
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(root / "cat" / "0.png")
    assert load_data(root).provenance.sha256 != before


def test_image_folder_mixed_colour_jpeg_and_train_test(tmp_path: Path) -> None:
    root = tmp_path / "split"
    _images(root / "train", {"a": 3, "b": 3}, mode="RGB")
    _images(root / "test", {"a": 1, "b": 2})
    Image.fromarray(np.full((5, 7, 3), 200, np.uint8)).save(root / "train" / "a" / "x.jpg")
    (root / "train" / "a" / ".DS_Store").write_bytes(b"\0\0")
    data = load_data(root)
    assert data.input_shape == (3, 5, 7) and len(data.y_train) == 7 and len(data.y_test) == 3
    assert data.provenance.split == "from the file" and data.class_names == ("a", "b")
    assert isinstance(data.x_test, torch.Tensor)
    assert torch.equal(data.x_test[0, 0], data.x_test[0, 2])  # grey replicated to RGB
    assert data.y_test.tolist() == [0, 1, 1]


def test_image_folder_16_bit_grey(tmp_path: Path) -> None:
    for c in ("a", "b"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((3, 3), 65535 * i, np.uint16)).save(tmp_path / "d" / c / f"{i}.png")
    data = load_data(tmp_path / "d")
    assert isinstance(data.x_train, torch.Tensor) and float(data.x_train.max()) == 1.0
    assert data.provenance.scaling == "/65535 (16-bit grey)"


def test_image_folder_malformed(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(flat / "a.png")
    with pytest.raises(DataError, match=r"one sub-folder per class .*got 1 image files at the top level"):
        load_data(flat)
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="got no sub-folders"):
        load_data(tmp_path / "none")
    root = _images(tmp_path / "odd", {"a": 2, "b": 2})
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(root / "b" / "9.png")
    with pytest.raises(DataError, match=r"size of 'a/0.png' \(7x5\); got 6x6 for 'b/9.png'"):
        load_data(root)
    root = _images(tmp_path / "junk", {"a": 2, "b": 2})
    (root / "b" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"must be images .*got 'notes.txt'"):
        load_data(root)
    root = _images(tmp_path / "broken", {"a": 2, "b": 2})
    (root / "a" / "5.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"'a/5.png' in .* must be a readable image"):
        load_data(root)
    root = _images(tmp_path / "trunc", {"a": 2, "b": 2})
    (root / "a" / "0.png").write_bytes((root / "a" / "0.png").read_bytes()[:60])
    with pytest.raises(DataError, match=r"'a/0.png' in .* must be a readable image"):
        load_data(root)
    root = _images(tmp_path / "empty", {"a": 2, "b": 2})
    (root / "c").mkdir()
    with pytest.raises(DataError, match=r"class folder .*c' must hold at least one image"):
        load_data(root)
    root = _images(tmp_path / "one", {"a": 2, "b": 1})
    with pytest.raises(DataError, match=r"got 1 of 'b' at b/0.png"):
        load_data(root)
    root = tmp_path / "tt"
    _images(root / "train", {"a": 2, "b": 2})
    _images(root / "test", {"a": 1, "z": 1})
    with pytest.raises(DataError, match=r"got \['z'\] only in test/"):
        load_data(root)
    _images(root / "val", {"a": 1})
    with pytest.raises(DataError, match=r"must hold no other sub-folder; got \['val'\]"):
        load_data(root)
    with pytest.raises(ConfigError, match=r"apply to tables .*got label_col='y'"):
        load_data(tmp_path / "odd", label_col="y")


@pytest.mark.parametrize(("width", "height"), [(6000, 6000), (100_000, 100_000)])
def test_decompression_bombs_are_refused_undecoded(tmp_path: Path, width: int, height: int) -> None:
    root = _images(tmp_path / "bomb", {"a": 2, "b": 2})
    (root / "a" / "bomb.png").write_bytes(_png_header(width, height))
    with pytest.raises(DataError, match=r"'a/bomb.png' .* must be (1 to |at most )33,554,432 pixels"):
        load_data(root)


def test_image_memory_is_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _images(tmp_path / "m", {"a": 2, "b": 2})
    monkeypatch.setenv("MODELSHIELD_MAX_MEMORY", "100")
    with pytest.raises(DataError, match=r"4 images of 1x5x7 as float32.*must fit in memory"):
        load_data(root)
    monkeypatch.setattr(refs_mod, "MAX_IMAGE_PIXELS", 20)
    monkeypatch.delenv("MODELSHIELD_MAX_MEMORY")
    with pytest.raises(DataError, match=r"must be 1 to 20 pixels; got 7x5"):
        load_data(root)


# ---------------------------------------------------------------------------------------- names and options


def test_builtin_names(tmp_path: Path) -> None:
    digits = load_data("digits")
    assert digits.kind == "image" and digits.n_classes == 10 and digits.provenance.format == "builtin"
    assert digits.input_shape == (1, 8, 8) and digits.provenance.path is None
    named = load_data("digits", class_names=[f"d{i}" for i in range(10)], test_fraction=0.5)
    assert named.class_names[3] == "d3" and len(named.y_test) == 899
    with pytest.raises(ConfigError, match="must name the 10 classes of 'digits'"):
        load_data("digits", class_names=["a", "b"])
    with pytest.raises(ConfigError, match="kind='text' for the built-in data set 'digits'"):
        load_data("digits", kind="text")
    with pytest.raises(ConfigError, match="apply to tables"):
        load_data("digits", label_col="y")
    with pytest.raises(DataError, match=r"within the bounds \[0, 0.5\] \(given\)"):
        load_data("digits", bounds=(0.0, 0.5))
    with pytest.raises(ConfigError, match="'test_fraction' applies only to data without a fixed test split"):
        load_data("mnist", test_fraction=0.2)
    (tmp_path / "SMSSpamCollection").write_bytes(b"ham\thello there\nspam\tWIN cash now\n" * 4)
    spam = load_data("sms-spam", data_root=tmp_path, test_fraction=0.5)
    assert spam.kind == "text" and spam.class_names == ("ham", "spam") and len(spam.y_test) == 4
    with pytest.raises(ConfigError, match="'bounds' apply to image and tabular data"):
        load_data("sms-spam", data_root=tmp_path, bounds=(0.0, 1.0))
    # A folder without the file gives the copy embedded in the package (same digest as the UCI file).
    embedded = load_data("sms-spam", data_root=tmp_path / "nowhere")
    assert embedded.provenance.sha256 == EMBEDDED_DATA["sms-spam"].sha256
    assert len(embedded.y_train) + len(embedded.y_test) == 5574


def test_missing_and_unknown_references(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"'digit', which does not exist\. Did you mean the built-in"):
        load_data("digit")
    with pytest.raises(MissingDataError, match="which does not exist"):
        load_data(tmp_path / "nope.npz")
    if Path("/dev/zero").exists():
        with pytest.raises(DataError, match="must be a regular file or a folder"):
            load_data("/dev/zero")
    (tmp_path / "d.json").write_text("{}")
    with pytest.raises(DataError, match=r"must be .npz, .csv, .parquet, .tsv or a folder; got .*'.json'"):
        load_data(tmp_path / "d.json")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "audio"}, "'kind' must be one of"),
        ({"test_fraction": 1.0}, "'test_fraction' must be a number in"),
        ({"test_fraction": 0.0}, "'test_fraction' must be a number in"),
        ({"seed": -1}, "'seed' must be an int"),
        ({"bounds": (1.0, 0.0)}, "'bounds' must be a pair"),
        ({"class_names": ["a"]}, "'class_names' must be at least 2 distinct"),
        ({"class_names": ["a", "a"]}, "'class_names' must be at least 2 distinct"),
        ({"class_names": "ab"}, "'class_names' must be a list of names"),
        ({"label_col": ""}, "'label_col' must be a column name"),
        ({"feature_cols": ["a", "a"]}, "'feature_cols' must be distinct"),
    ],
)
def test_bad_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_data("digits", **kwargs)  # type: ignore[arg-type]
