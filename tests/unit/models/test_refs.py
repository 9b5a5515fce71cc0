"""Model references: every format loads and predicts like the original; hostile files are refused."""

from __future__ import annotations

import pickle
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelshield.errors import ConfigError, DataError, MissingDataError, ModelCapabilityError
from modelshield.models import CallableModel, ModelRef, TorchModel, load_model_ref
from modelshield.models.load import UnsafeModelFileError, file_sha256, save_model
from modelshield.zoo import build

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def blobs(n: int = 60, d: int = 4, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable Gaussian blobs in [0, 1]^d."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.uniform(0.2, 0.8, size=(classes, d))
    x = np.clip(centres[y] + rng.normal(0, 0.05, size=(n, d)), 0, 1).astype(np.float32)
    return x, y


@pytest.fixture
def user_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """Write a user module under tmp_path (importable, removed from sys.modules afterwards)."""
    made: list[str] = []
    root = tmp_path / "userpkgs"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))

    def write(name: str, source: str) -> str:
        (root / f"{name}.py").write_text(textwrap.dedent(source))
        made.append(name)
        return name

    yield write
    for name in made:
        sys.modules.pop(name, None)


NETS = """
    from torch import nn

    def make_model():
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def make_wrong():
        return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))

    def not_a_module():
        return 42

    CONSTANT = 3
"""


# --- PyTorch --------------------------------------------------------------------------------------


def test_state_dict_with_user_arch(tmp_path: Path, user_pkg: Callable[[str, str], str]) -> None:
    mod = user_pkg("refs_nets_a", NETS)
    net = sys.modules.get(mod) or __import__(mod)
    original = net.make_model()
    path = tmp_path / "weights.bin"  # the extension says nothing; the content decides
    torch.save(original.state_dict(), path)
    ref = load_model_ref(path, arch=f"{mod}:make_model")
    assert ref.access == "white-box" and ref.format == "state_dict" and ref.n_classes == 3
    assert ref.provenance.sha256 == file_sha256(path) and "torch" in ref.provenance.runtime
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(0))
    model = ref.as_model()
    assert isinstance(model, TorchModel)
    assert torch.allclose(model.logits(x), original(x))


@pytest.mark.parametrize(
    ("arch", "match"),
    [
        ("refs_missing_pkg.nets:make_model", "refs_missing_pkg.*was not found"),
        ("{mod}:no_such_fn", "has no 'no_such_fn'"),
        ("{mod}:CONSTANT", "must name a callable"),
        ("{mod}:not_a_module", "must return a torch.nn.Module.*got int"),
        ("{mod}:make_wrong", "must match architecture"),
    ],
)
def test_bad_arch_import_paths(
    tmp_path: Path, user_pkg: Callable[[str, str], str], arch: str, match: str
) -> None:
    mod = user_pkg("refs_nets_b", NETS)
    path = tmp_path / "w.pt"
    torch.save(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).state_dict(), path)
    error = DataError if "make_wrong" in arch else ConfigError
    with pytest.raises(error, match=match):
        load_model_ref(path, arch=arch.format(mod=mod))


def test_modelshield_v1_and_arch_conflict(tmp_path: Path, user_pkg: Callable[[str, str], str]) -> None:
    net = build("cnn-8x8", seed=1)
    path = tmp_path / "net.pt"
    save_model(net, path, arch="cnn-8x8")
    ref = load_model_ref(path)
    assert ref.format == "modelshield-v1" and ref.access == "white-box"
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ref.model(x), net.eval()(x))
    mod = user_pkg("refs_nets_c", NETS)
    with pytest.raises(ConfigError, match="Omit arch= for modelshield-v1"):
        load_model_ref(path, arch=f"{mod}:make_model")


def test_torch_export_needs_opt_in_and_then_works(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    program = torch.export.export(net, (torch.rand(2, 4),), dynamic_shapes=({0: torch.export.Dim("b")},))
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    with pytest.raises(UnsafeModelFileError, match="trust_export=True"):
        load_model_ref(path)
    ref = load_model_ref(path, trust_export=True)
    assert ref.format == "torch.export" and ref.access == "white-box"
    model = ref.as_model()
    assert isinstance(model, TorchModel)
    x = torch.rand(6, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model.logits(x), net(x), atol=1e-6)
    assert torch.equal(model.predict(x), net(x).argmax(1))  # eval_mode works on the exported module


def test_torchscript_refused_without_trust(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.9 deprecates TorchScript
        torch.jit.script(nn.Linear(4, 3)).save(str(path))  # type: ignore[no-untyped-call]
    with pytest.raises(UnsafeModelFileError, match="trust_torchscript=True"):
        load_model_ref(path)


# --- pickle and joblib: refused unless trusted, never executed ------------------------------------


class _Hostile:
    """Unpickling this writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save", "joblib", "joblib-compressed"])
def test_hostile_pickles_are_refused_and_never_run(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.skops"  # a misleading name: the content decides
    payload = {"model": _Hostile(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    elif writer == "torch.save":
        torch.save(payload, path)
    else:
        import joblib

        joblib.dump(payload, path, compress=3 if writer == "joblib-compressed" else 0)
    with pytest.raises(UnsafeModelFileError, match="trust_pickle=True"):
        load_model_ref(path)
    assert not marker.exists()


def test_trusted_joblib_loads_with_a_warning(tmp_path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    x, y = blobs()
    clf = LogisticRegression().fit(x, y)
    path = tmp_path / "clf.joblib"
    joblib.dump(clf, path)
    with pytest.warns(UserWarning, match="trust_pickle=True"):
        ref = load_model_ref(path, trust_pickle=True)
    assert ref.format == "pickle" and ref.access == "black-box" and ref.n_classes == 3
    scores = ref.as_model().scores(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(scores, clf.predict_proba(x), atol=1e-6)


# --- skops ----------------------------------------------------------------------------------------


def test_skops_pipeline(tmp_path: Path) -> None:
    skops_io = pytest.importorskip("skops.io")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = blobs()
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    path = tmp_path / "pipe.skops"
    skops_io.dump(pipe, path)
    ref = load_model_ref(path)
    assert (ref.format, ref.access, ref.n_classes, ref.input_shape, ref.modality) == (
        "skops", "black-box", 3, (4,), None)
    assert "skops" in ref.provenance.runtime and "scikit-learn" in ref.provenance.runtime
    model = ref.as_model()
    assert isinstance(model, CallableModel)
    np.testing.assert_allclose(model.scores(torch.as_tensor(x)).numpy(), pipe.predict_proba(x), atol=1e-6)


def test_skops_text_pipeline_is_text(tmp_path: Path) -> None:
    skops_io = pytest.importorskip("skops.io")
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = ["win cash now", "free prize claim", "see you at lunch", "meeting moved to noon"] * 3
    labels = [1, 1, 0, 0] * 3
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, labels)
    path = tmp_path / "spam.skops"
    skops_io.dump(pipe, path)
    ref = load_model_ref(path)
    assert ref.modality == "text" and ref.n_classes == 2
    np.testing.assert_allclose(ref.model.predict_proba(["free cash"]), pipe.predict_proba(["free cash"]))
    with pytest.raises(ModelCapabilityError, match="as_text_model"):
        ref.as_model()


def test_skops_untrusted_custom_type_refused(tmp_path: Path, user_pkg: Callable[[str, str], str]) -> None:
    skops_io = pytest.importorskip("skops.io")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    mod = user_pkg("refs_custom_tf", """
        from sklearn.base import BaseEstimator, TransformerMixin

        class Doubler(TransformerMixin, BaseEstimator):
            def fit(self, x, y=None):
                return self

            def transform(self, x):
                return x * 2
    """)
    doubler = __import__(mod).Doubler
    x, y = blobs()
    pipe = make_pipeline(doubler(), LogisticRegression()).fit(x, y)
    path = tmp_path / "custom.skops"
    skops_io.dump(pipe, path)
    with pytest.raises(UnsafeModelFileError, match=rf"static scan.*'{mod}.Doubler'.*skops_trusted="):
        load_model_ref(path)
    ref = load_model_ref(path, skops_trusted=[f"{mod}.Doubler"])
    np.testing.assert_allclose(ref.model.predict_proba(x), pipe.predict_proba(x))


# --- tree models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("ext", ["json", "ubj"])
def test_xgboost_model_files(tmp_path: Path, classes: int, ext: str) -> None:
    xgboost = pytest.importorskip("xgboost")
    x, y = blobs(classes=classes)
    clf = xgboost.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(x, y)
    path = tmp_path / f"model.{ext}"
    clf.save_model(path)
    ref = load_model_ref(path)
    assert (ref.format, ref.access, ref.modality, ref.n_classes, ref.input_shape) == (
        "xgboost", "black-box", "tabular", classes, (4,))
    scores = ref.as_model().scores(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(scores, clf.predict_proba(x), atol=1e-5)


def test_xgboost_regressor_refused(tmp_path: Path) -> None:
    xgboost = pytest.importorskip("xgboost")
    x, y = blobs()
    path = tmp_path / "reg.json"
    xgboost.XGBRegressor(n_estimators=2, n_jobs=1).fit(x, y.astype(float)).save_model(path)
    with pytest.raises(ConfigError, match=r"must be a classifier.*reg:squarederror"):
        load_model_ref(path)


@pytest.mark.parametrize("classes", [2, 3])
def test_lightgbm_text_model(tmp_path: Path, classes: int) -> None:
    lightgbm = pytest.importorskip("lightgbm")
    x, y = blobs(classes=classes)
    clf = lightgbm.LGBMClassifier(n_estimators=5, num_leaves=4, min_child_samples=2, verbose=-1,
                                  n_jobs=1).fit(x, y)
    path = tmp_path / "model.txt"
    clf.booster_.save_model(str(path))
    ref = load_model_ref(path)
    assert (ref.format, ref.access, ref.modality, ref.n_classes) == (
        "lightgbm", "black-box", "tabular", classes)
    scores = ref.as_model().scores(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(scores, clf.predict_proba(x), atol=1e-5)


# --- ONNX -----------------------------------------------------------------------------------------


def _onnx_mlp(net: nn.Sequential, *, softmax: bool, domain: str = "") -> onnx.ModelProto:
    """net = Linear, ReLU, Linear as an ONNX graph (Gemm, Relu, Gemm[, Softmax])."""
    w1, b1, w2, b2 = (p.detach().numpy() for p in net.parameters())
    inits = [numpy_helper.from_array(a, name) for a, name in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu" if not domain else "FancyRelu", ["h"], ["r"], domain=domain),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1),
    ]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        out = "probs"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 3])], initializer=inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def _mlp() -> nn.Sequential:
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return net.eval()


@pytest.mark.parametrize("softmax", [True, False])
def test_onnx_mlp_is_white_box_after_checking(tmp_path: Path, softmax: bool) -> None:
    net = _mlp()
    path = tmp_path / "mlp.onnx"
    onnx.save(_onnx_mlp(net, softmax=softmax), path)
    ref = load_model_ref(path)
    assert (ref.format, ref.access, ref.n_classes, ref.input_shape) == ("onnx", "white-box", 3, (4,))
    assert ref.oracle is not None and "matches onnxruntime" in ref.notes[0]
    x = torch.rand(7, 4, generator=torch.Generator().manual_seed(1))
    model = ref.as_model()
    assert isinstance(model, TorchModel)
    expected = torch.softmax(net(x), 1)
    assert torch.allclose(torch.softmax(model.logits(x), 1), expected, atol=1e-5)
    np.testing.assert_allclose(ref.oracle(x.numpy()), expected.detach().numpy(), atol=1e-5)
    xg = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(model.logits(xg)[:, 0].sum(), xg)
    ref_grad, = torch.autograd.grad(net(xg)[:, 0].sum(), xg)
    assert torch.allclose(grad, ref_grad, atol=1e-5)


def test_onnx_cnn_reads_flat_rows(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    conv_w = torch.randn(4, 1, 3, 3, generator=gen)
    conv_b = torch.randn(4, generator=gen)
    fc_w = torch.randn(3, 4 * 4 * 4, generator=gen)
    fc_b = torch.randn(3, generator=gen)
    inits = [numpy_helper.from_array(t.numpy(), n) for t, n in
             ((conv_w, "cw"), (conv_b, "cb"), (fc_w, "fw"), (fc_b, "fb"))]
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "cnn.onnx"
    onnx.save(model, path)
    ref = load_model_ref(path)
    assert ref.access == "white-box" and ref.input_shape == (1, 8, 8)
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    fn = torch.nn.functional
    pooled = fn.max_pool2d(torch.relu(fn.conv2d(x, conv_w, conv_b, padding=1)), 2)
    torch_logits = fn.linear(pooled.flatten(1), fc_w, fc_b)
    assert torch.allclose(ref.as_model().logits(x), torch_logits, atol=1e-4)
    flat = ref.oracle(x.reshape(5, 64).numpy())  # the runtime reshapes flat rows to (1, 8, 8)
    np.testing.assert_allclose(flat, torch.softmax(torch_logits, 1).numpy(), atol=1e-5)


def test_onnx_from_torch_exporter_with_batch_norm(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(64, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        net[1].running_mean.copy_(torch.randn(4, generator=gen))  # type: ignore[operator]
    net.eval()
    path = tmp_path / "exported.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated in torch >= 2.9
        try:
            torch.onnx.export(net, (torch.rand(2, 1, 8, 8),), str(path), dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "N"}})
        except (RuntimeError, ImportError, TypeError) as exc:  # exporter removed or needs onnxscript
            pytest.skip(f"torch.onnx.export(dynamo=False) unavailable: {exc}")
    ref = load_model_ref(path)
    assert ref.access == "white-box", ref.notes
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(ref.as_model().logits(x), net(x), atol=1e-4)


def test_onnx_sklearn_zipmap_is_black_box(tmp_path: Path) -> None:
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    x, y = blobs()
    clf = LogisticRegression().fit(x, y)
    model = skl2onnx.convert_sklearn(clf, initial_types=[("X", FloatTensorType([None, 4]))], target_opset=17)
    path = tmp_path / "lr.onnx"
    path.write_bytes(model.SerializeToString())
    ref = load_model_ref(path)
    assert ref.access == "black-box" and ref.n_classes == 3 and ref.oracle is None
    assert "kept black-box" in ref.notes[0]
    scores = ref.as_model().scores(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(scores, clf.predict_proba(x), atol=1e-5)


def test_onnx_custom_op_domain_refused(tmp_path: Path) -> None:
    path = tmp_path / "custom.onnx"
    onnx.save(_onnx_mlp(_mlp(), softmax=True, domain="com.evil"), path)
    with pytest.raises(UnsafeModelFileError, match=r"static scan.*custom operator domain 'com.evil'"):
        load_model_ref(path)


def test_onnx_external_data_outside_folder_refused(tmp_path: Path) -> None:
    model = _onnx_mlp(_mlp(), softmax=True)
    w1 = model.graph.initializer[0]
    w1.ClearField("raw_data")
    w1.ClearField("float_data")
    w1.data_location = TensorProto.EXTERNAL
    w1.external_data.add(key="location", value="../../etc/passwd")
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UnsafeModelFileError, match=r"static scan.*'\.\./\.\./etc/passwd' climbs out"):
        load_model_ref(path)


# --- callables and bad references -----------------------------------------------------------------

CALLABLES = """
    import numpy as np

    def proba(x):
        z = np.asarray(x, dtype=np.float64)[:, :2]
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    class Client:
        classes_ = np.array([0, 1])

        def predict_proba(self, x):
            return proba(x)

    client = Client()

    class TextClient:
        modality = "text"

        def predict_proba(self, texts):
            return np.array([[0.2, 0.8] if "free" in t else [0.9, 0.1] for t in texts])

    text_client = TextClient()
    NUMBER = 3
"""


def test_callable_refs(user_pkg: Callable[[str, str], str]) -> None:
    mod = user_pkg("refs_callables", CALLABLES)
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(0))
    fn_ref = load_model_ref(f"{mod}:proba")
    assert (fn_ref.format, fn_ref.access, fn_ref.provenance.sha256) == ("callable", "black-box", None)
    scores = fn_ref.as_model().scores(x)
    assert scores.shape == (5, 2) and torch.allclose(scores.sum(1), torch.ones(5))
    obj_ref = load_model_ref(f"{mod}:client")
    assert obj_ref.n_classes == 2 and torch.allclose(obj_ref.as_model().scores(x), scores)
    text_ref = load_model_ref(f"{mod}:text_client")
    assert text_ref.modality == "text"
    assert text_ref.model.predict_proba(["free money"]).tolist() == [[0.2, 0.8]]
    with pytest.raises(ConfigError, match="must name a callable"):
        load_model_ref(f"{mod}:NUMBER")
    with pytest.raises(ConfigError, match=r"the class Client"):
        load_model_ref(f"{mod}:Client")
    with pytest.raises(ConfigError, match=r"refs_nowhere.*was not found"):
        load_model_ref("refs_nowhere.mod:fn")


def test_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="must be an existing file"):
        load_model_ref(tmp_path / "nope.onnx")
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"GIF89a not a model")
    with pytest.raises(DataError, match=r"static scan.*matches no format"):  # named as a model: blocked
        load_model_ref(junk)
    other = tmp_path / "model.dat"
    other.write_bytes(b"GIF89a not a model")
    with pytest.raises(DataError, match="must be a supported model file"):
        load_model_ref(other)
    with pytest.raises(ConfigError, match="skops_trusted"):
        load_model_ref(junk, skops_trusted="mypkg.Type")


def test_model_ref_is_frozen(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    save_model(build("cnn-8x8", seed=0), path, arch="cnn-8x8")
    ref = load_model_ref(path, bounds=(0.0, 1.0))
    assert isinstance(ref, ModelRef) and ref.provenance.to_dict()["format"] == "modelshield-v1"
    with pytest.raises(AttributeError):
        ref.access = "black-box"  # type: ignore[misc]
