"""The non-pickle format scanners (issue #17): safetensors, Keras (.keras and .h5) and ONNX.

Benign files written by real tools where they run offline (skl2onnx, torch.onnx, numpy) or by hand
per the format's spec must give no blocking finding; targeted malformed inputs must give the
named finding. The full hostile corpus is in tests/hostile/test_scan_formats_hostile.py.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from modelshield.secure.scan.findings import Finding, Location, ScanLimits
from modelshield.secure.scan.keras import (
    scan_hdf5,
    scan_keras,
    scan_keras_config,
    sniff_hdf5,
    sniff_keras_zip,
)
from modelshield.secure.scan.onnx import scan_onnx, sniff_onnx
from modelshield.secure.scan.safetensors import scan_safetensors, sniff_safetensors


def _load_corpus() -> ModuleType:
    """format_corpus.py beside this file (pytest runs with --import-mode=importlib: no sys.path)."""
    if "format_corpus" in sys.modules:
        return sys.modules["format_corpus"]
    path = Path(__file__).with_name("format_corpus.py")
    spec = importlib.util.spec_from_file_location("format_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["format_corpus"] = module
    spec.loader.exec_module(module)
    return module


corpus = _load_corpus()
LIMITS = ScanLimits()
HERE = Location(path="model")


def codes(findings: list[Finding]) -> set[str]:
    return {f.code for f in findings}


def blocking(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.blocking]


# ------------------------------------------------------------------------------------ safetensors

def test_safetensors_by_hand_is_clean() -> None:
    data = corpus.safetensors_bytes(corpus.benign_tensors(), {"format": "pt"})
    assert sniff_safetensors(data[:256], len(data))
    assert scan_safetensors(data, where=HERE, limits=LIMITS) == []


def test_safetensors_from_the_library_is_clean(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "w.safetensors"
    st.save_file(corpus.benign_tensors(), str(path), metadata={"format": "np"})
    assert scan_safetensors(path.read_bytes(), where=HERE, limits=LIMITS) == []


def test_safetensors_torch_state_dict_is_clean(tmp_path: Path) -> None:
    """safetensors.torch with the dtypes numpy lacks (bfloat16) and a 0-d tensor."""
    st = pytest.importorskip("safetensors.torch")
    import torch

    tensors = {"w": torch.randn(3, 5, dtype=torch.bfloat16), "b": torch.zeros(5, dtype=torch.float16),
               "step": torch.tensor(3, dtype=torch.int64), "flag": torch.tensor([True, False])}
    path = tmp_path / "sd.safetensors"
    st.save_file(tensors, str(path))
    data = path.read_bytes()
    assert sniff_safetensors(data[:64], len(data))
    assert scan_safetensors(data, where=HERE, limits=LIMITS) == []


def test_safetensors_head_only_with_size() -> None:
    """The dispatcher may pass the header and the true size; offsets are judged against the size."""
    data = corpus.safetensors_bytes(corpus.benign_tensors())
    (n,) = struct.unpack_from("<Q", data)
    head = data[:8 + n]
    assert scan_safetensors(head, where=HERE, limits=LIMITS, size=len(data)) == []
    short = scan_safetensors(head, where=HERE, limits=LIMITS, size=len(data) - 4)
    assert {"safetensors.offsets.out-of-range", "safetensors.truncated"} & codes(short)


def test_safetensors_memoryview_is_accepted() -> None:
    data = corpus.safetensors_bytes(corpus.benign_tensors())
    assert scan_safetensors(memoryview(bytearray(data)), where=HERE, limits=LIMITS) == []


@pytest.mark.parametrize(("header", "code"), [
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, "safetensors.shape.invalid"),
    ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, "safetensors.shape.invalid"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4]}}, "safetensors.offsets.invalid"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": {"k": {"x": 1}}},
     "safetensors.metadata.invalid"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1],
                                                                    "data_offsets": [8, 12]}},
     "safetensors.data.hole"),
    ([1, 2, 3], "safetensors.header.invalid"),
])
def test_safetensors_header_rules(header: object, code: str) -> None:
    data = corpus.safetensors_raw(json.dumps(header), b"\0" * 12)
    found = scan_safetensors(data, where=HERE, limits=LIMITS)
    assert code in codes(found) and blocking(found)


def test_safetensors_f4_sub_byte_sizes() -> None:
    """F4 packs two elements a byte: 6 elements need 3 bytes; 5 elements are misaligned."""
    ok = corpus.safetensors_raw({"a": {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]}}, b"\0" * 3)
    assert scan_safetensors(ok, where=HERE, limits=LIMITS) == []
    odd = corpus.safetensors_raw({"a": {"dtype": "F4", "shape": [5], "data_offsets": [0, 3]}}, b"\0" * 3)
    assert "safetensors.offsets.size-mismatch" in codes(scan_safetensors(odd, where=HERE, limits=LIMITS))


def test_safetensors_not_utf8_and_nan() -> None:
    bad = corpus.safetensors_raw(b'{"\xff":1}', b"")
    assert "safetensors.header.not-utf8" in codes(scan_safetensors(bad, where=HERE, limits=LIMITS))
    nan = corpus.safetensors_raw(b'{"a":NaN}', b"")
    assert "safetensors.header.not-json" in codes(scan_safetensors(nan, where=HERE, limits=LIMITS))


def test_sniff_safetensors_rejects_other_formats() -> None:
    assert not sniff_safetensors(corpus.PICKLE_OS_SYSTEM, len(corpus.PICKLE_OS_SYSTEM))
    zipped = corpus.keras_zip(corpus.keras_sequential())
    assert not sniff_safetensors(zipped[:64], len(zipped))
    assert not sniff_safetensors(struct.pack("<Q", 10**9) + b"{", 10**9)


# ------------------------------------------------------------------------------------------ Keras

@pytest.mark.parametrize("config", ["sequential", "functional"])
def test_keras_zip_benign(config: str) -> None:
    cfg = corpus.keras_sequential() if config == "sequential" else corpus.keras_functional()
    data = corpus.keras_zip(cfg)
    assert scan_keras(data, where=HERE, limits=LIMITS) == []
    assert scan_keras_config(cfg, where=HERE, limits=LIMITS) == []
    assert scan_keras_config(json.dumps(cfg), where=HERE, limits=LIMITS) == []


def test_sniff_keras_zip() -> None:
    assert sniff_keras_zip(["metadata.json", "config.json", "model.weights.h5"])
    assert not sniff_keras_zip(["archive/data.pkl", "archive/version", "archive/data/0"])
    assert not sniff_keras_zip(["config.json"])


def test_keras_lambda_reports_the_names_in_its_code() -> None:
    found = scan_keras_config(corpus.keras_sequential([corpus.keras_lambda_layer()]), where=HERE,
                              limits=LIMITS)
    (lam,) = [f for f in found if f.code == "keras.lambda"]
    assert lam.severity == "critical" and "CVE-2024-3660" in lam.message
    assert "system" in lam.message and "os" in lam.message


def test_keras_findings_carry_the_member_location() -> None:
    data = corpus.keras_zip(corpus.keras_sequential([corpus.keras_lambda_layer()]))
    found = scan_keras(data, where=Location(path="m.keras"), limits=LIMITS)
    assert any(f.location.members == ("config.json",) for f in found if f.code == "keras.lambda")


@pytest.mark.parametrize(("module", "name", "severity"), [
    ("keras.activations", "relu", None),
    ("keras.losses", "mean_squared_error", None),
    ("builtins", "categorical_crossentropy", None),  # how Keras 3.15 writes its own loss functions
    ("builtins", "eval", "critical"),
    ("builtins", "exec", "critical"),
    ("keras.utils", "get_file", "high"),
    ("keras.config", "enable_unsafe_deserialization", "critical"),
])
def test_keras_function_allow_list(module: str, name: str, severity: str | None) -> None:
    layer = corpus.keras_dense_layer()
    layer["config"]["activation"] = {"module": module, "class_name": "function", "config": name,
                                     "registered_name": None}
    found = blocking(scan_keras_config(corpus.keras_sequential([layer]), where=HERE, limits=LIMITS))
    if severity is None:
        assert found == []
    else:
        assert max(found, key=lambda f: f.severity == "critical").severity == severity


def test_keras_safe_mode_false_and_unknown_layer() -> None:
    cfg = corpus.keras_sequential([{"module": "keras.layers", "class_name": "MysteryLayer",
                                    "config": {"safe_mode": False}, "registered_name": None}])
    assert {"keras.safe-mode-off", "keras.layer.unknown"} <= codes(
        scan_keras_config(cfg, where=HERE, limits=LIMITS))


@pytest.mark.parametrize("cls", ["__builtins__", "os.system", "__import__"])
def test_keras_dunder_or_dotted_class_names(cls: str) -> None:
    """Keras looks a class up with vars(module).get(name): a dunder reaches the module's internals."""
    cfg = corpus.keras_sequential([corpus.keras_dense_layer()])
    cfg["compile_config"]["optimizer"] = {"module": "keras.optimizers", "class_name": cls, "config": {},
                                          "registered_name": None}
    assert "keras.class.invalid" in codes(scan_keras_config(cfg, where=HERE, limits=LIMITS))


def test_keras_zip_without_config_is_unverifiable() -> None:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("metadata.json", "{}")
        zf.writestr("model.weights.h5", b"")
    assert "keras.zip.no-config" in codes(scan_keras(buf.getvalue(), where=HERE, limits=LIMITS))


def test_keras_config_bomb_is_refused_by_ratio() -> None:
    big = " " * (8 << 20)
    data = corpus.keras_zip('{"class_name": "Sequential", "config": {}}' + big)
    assert "keras.zip.ratio" in codes(scan_keras(data, where=HERE, limits=LIMITS))


# ------------------------------------------------------------------------------------------ HDF5

@pytest.mark.parametrize("user_block", [0, 512, 2048])
def test_hdf5_keras2_benign(tmp_path: Path, user_block: int) -> None:
    path = tmp_path / "m.h5"
    path.write_bytes(corpus.hdf5_bytes(corpus.keras2_model_config(),
                                       training_config=corpus.KERAS2_TRAINING_CONFIG, user_block=user_block))
    assert sniff_hdf5(path.read_bytes()[:4096])
    found = scan_hdf5(str(path), where=HERE, limits=LIMITS)
    assert blocking(found) == [], found


def test_hdf5_from_bytes_matches_from_path(tmp_path: Path) -> None:
    """The dispatcher may hand over the bytes instead of a path; the answer is the same."""
    lam = {"class_name": "Lambda", "config": {"name": "l", "function": [corpus.lambda_code(), None, None]}}
    data = corpus.hdf5_bytes(corpus.keras2_model_config([lam]))
    path = tmp_path / "m.h5"
    path.write_bytes(data)
    from_path = scan_hdf5(str(path), where=HERE, limits=LIMITS)
    assert codes(from_path) == {"keras.lambda"}
    assert scan_hdf5(data, where=HERE, limits=LIMITS) == from_path
    assert scan_hdf5(memoryview(data), where=HERE, limits=LIMITS) == from_path
    assert scan_hdf5(path, where=HERE, limits=LIMITS) == from_path


def test_hdf5_weights_only_is_info(tmp_path: Path) -> None:
    path = tmp_path / "w.h5"
    path.write_bytes(corpus.hdf5_bytes(None))
    assert codes(scan_hdf5(str(path), where=HERE, limits=LIMITS)) == {"hdf5.no-model-config"}


def test_hdf5_lambda_is_found_by_the_byte_search(tmp_path: Path) -> None:
    lam = {"class_name": "Lambda", "config": {"name": "l", "function": [corpus.lambda_code(), None, None],
                                              "function_type": "lambda", "module": "__main__"}}
    path = tmp_path / "m.h5"
    path.write_bytes(corpus.hdf5_bytes(corpus.keras2_model_config([lam]), weights=(9 << 20)))
    found = scan_hdf5(str(path), where=HERE, limits=LIMITS)
    assert [f.severity for f in found if f.code == "keras.lambda"] == ["critical"]


@pytest.mark.parametrize("shift", [-60, -40, -22, -16, -4, 8])
def test_hdf5_config_across_the_read_chunk_boundary(tmp_path: Path, shift: int) -> None:
    """The file is searched in 8 MiB chunks; an attribute name or JSON cut by a chunk boundary is
    still found, once."""
    lam = {"class_name": "Lambda", "config": {"name": "l", "function": [corpus.lambda_code(), None, None],
                                              "function_type": "lambda"}}
    sb_and_header = 128 - 16  # "model_config" sits at byte 128 + lead; shift 0 puts it 16 bytes past 8 MiB
    path = tmp_path / "m.h5"
    lead = (8 << 20) - sb_and_header + shift
    path.write_bytes(corpus.hdf5_bytes(corpus.keras2_model_config([lam]), lead=lead))
    found = scan_hdf5(str(path), where=HERE, limits=LIMITS)
    assert [f.code for f in blocking(found)] == ["keras.lambda"], found


@pytest.mark.parametrize("libver", ["earliest", "latest"])
def test_hdf5_real_file_written_by_h5py(tmp_path: Path, libver: str) -> None:
    """Where h5py is installed: the attribute layouts h5py writes (bytes and str, which h5py 3
    stores as variable-length strings in the global heap, and a config over 64 KiB, which goes to
    dense attribute storage) are all read; a Lambda is found in each, a benign config passes."""
    h5py = pytest.importorskip("h5py")
    lam = {"class_name": "Lambda", "config": {"name": "l", "function": [corpus.lambda_code(), None, None],
                                              "function_type": "lambda"}}
    big = [{"class_name": "Dense", "config": {"name": f"d{i}", "units": 3, "pad": "x" * 200}}
           for i in range(400)]
    for variant, layers in (("plain", None), ("lambda", [lam]), ("big", big), ("big-lambda", [*big, lam])):
        for as_bytes in (False, True):
            text = json.dumps(corpus.keras2_model_config(layers))
            path = tmp_path / f"{variant}-{as_bytes}.h5"
            with h5py.File(path, "w", libver=libver) as fh:
                fh.create_dataset("w", data=np.zeros((128, 128), np.float32))
                fh.attrs["model_config"] = text.encode() if as_bytes else text
                fh.attrs["training_config"] = json.dumps(corpus.KERAS2_TRAINING_CONFIG).encode()
            found = scan_hdf5(str(path), where=HERE, limits=LIMITS)
            if "lambda" in variant:
                assert [f.code for f in blocking(found)] == ["keras.lambda"], (variant, found)
            else:
                assert blocking(found) == [], (variant, found)


def test_hdf5_unreadable_and_not_hdf5(tmp_path: Path) -> None:
    assert "hdf5.unreadable" in codes(scan_hdf5(str(tmp_path / "missing.h5"), where=HERE, limits=LIMITS))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file" * 100)
    assert not sniff_hdf5(junk.read_bytes())
    assert "hdf5.malformed" in codes(scan_hdf5(str(junk), where=HERE, limits=LIMITS))


# ------------------------------------------------------------------------------------------- ONNX

@pytest.mark.parametrize("kind", ["logreg", "forest"])
def test_onnx_skl2onnx_is_clean(kind: str) -> None:
    pytest.importorskip("skl2onnx")
    data = corpus.onnx_sklearn(kind)
    assert sniff_onnx(data[:64])
    assert blocking(scan_onnx(data, where=HERE, limits=LIMITS)) == []


def test_onnx_torch_export_is_clean() -> None:
    pytest.importorskip("onnx")
    data = corpus.onnx_torch()
    assert sniff_onnx(data[:64])
    assert scan_onnx(data, where=HERE, limits=LIMITS) == []


def test_onnx_external_data_inside_the_folder_is_fine(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    (tmp_path / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    path = tmp_path / "m.onnx"
    path.write_bytes(corpus.onnx_external("weights.bin"))
    assert blocking(scan_onnx(path.read_bytes(), where=Location(path=str(path)), limits=LIMITS)) == []


def test_onnx_saved_by_onnx_with_external_data_is_clean(tmp_path: Path) -> None:
    """onnx.save_model(..., save_as_external_data=True) writes locations relative to the folder."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(corpus.onnx_torch())
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=0)
    data = path.read_bytes()
    assert b"m.onnx.data" in data  # the tensors really are external
    assert scan_onnx(data, where=Location(path=str(path)), limits=LIMITS) == []


def test_onnx_custom_domain_is_named_with_its_ops() -> None:
    helper = pytest.importorskip("onnx.helper")
    nodes = [helper.make_node("Evil", ["X"], ["T"], domain="evil.ops"),
             helper.make_node("Worse", ["T"], ["Y"], domain="evil.ops")]
    found = scan_onnx(corpus.onnx_model(nodes, opsets={"": 17, "evil.ops": 1}), where=HERE, limits=LIMITS)
    (custom,) = [f for f in found if f.code == "onnx.domain.custom"]
    assert "'evil.ops'" in custom.message and "Evil, Worse" in custom.message
    assert "2 node(s)" in custom.message


def test_onnx_local_function_in_own_domain_is_not_custom_op() -> None:
    helper = pytest.importorskip("onnx.helper")
    body = [helper.make_node("Add", ["x", "x"], ["y"])]
    fn = helper.make_function("local.fns", "Twice", ["x"], ["y"], body, [helper.make_opsetid("", 17)])
    data = corpus.onnx_model([helper.make_node("Twice", ["X"], ["Y"], domain="local.fns")],
                             opsets={"": 17, "local.fns": 1}, functions=[fn])
    assert blocking(scan_onnx(data, where=HERE, limits=LIMITS)) == []


def test_onnx_node_domain_not_imported() -> None:
    helper = pytest.importorskip("onnx.helper")
    data = corpus.onnx_model([helper.make_node("LinearClassifier", ["X"], ["Y"], domain="ai.onnx.ml")])
    assert "onnx.domain.not-imported" in codes(scan_onnx(data, where=HERE, limits=LIMITS))


def test_sniff_onnx_rejects_other_formats() -> None:
    assert not sniff_onnx(b"")
    assert not sniff_onnx(corpus.PICKLE_OS_SYSTEM)
    assert not sniff_onnx(corpus.safetensors_bytes(corpus.benign_tensors())[:64])
    assert not sniff_onnx(corpus.keras_zip(corpus.keras_sequential())[:64])
    assert not sniff_onnx(b'{"class_name": "Sequential"}')


def test_scanners_import_no_framework() -> None:
    """The scanners are static and light: importing them (without modelshield/__init__.py, which
    loads torch for the attack side) pulls in no ML framework."""
    import subprocess

    src = Path(__file__).resolve().parents[2] / "src" / "modelshield"
    code = (
        "import sys, types; pkg = types.ModuleType('modelshield'); "
        f"pkg.__path__ = [{str(src)!r}]; sys.modules['modelshield'] = pkg; "
        "import modelshield.secure.scan.safetensors, modelshield.secure.scan.onnx, "
        "modelshield.secure.scan.keras; print(sorted(m for m in ('onnx', 'keras', 'h5py', "
        "'tensorflow', 'safetensors', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
