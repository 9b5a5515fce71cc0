"""`modelshield assess --model M --data D` on models and data the tests create (issue #16).

Each case writes a model in a user format and data in a user format, runs the one command, and
checks that the report's sections match the model's kind (image: evasion, blackbox, extraction;
tabular: tabular, blackbox, extraction, poisoning; text: poisoning, text-evasion, extraction; plus
supply-chain for a model file), that
each either ran on the user's model and data or says why not, that the numbers are the model's own
(clean accuracy recomputed here on the same points) and that the provenance names the files.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from modelshield.cli.app import app

runner = CliRunner()
N = 40
FAST = ["--n", str(N), "--attacks", "fgsm,pgd", "--eps", "0,0.1", "--steps", "5", "--blackbox-n", "20",
        "--query-budgets", "100", "--hsj-budgets", "100", "--max-changes", "1,3",
        "--extraction-budgets", "100,300", "--extraction-epochs", "5"]


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for the user's own modules (removed from sys.modules afterwards)."""
    root = tmp_path / "user"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = set(sys.modules)
    yield root
    for name in set(sys.modules) - before:
        if name.startswith("userbits"):
            sys.modules.pop(name, None)


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    tr, te = perm[:1300], perm[1300:]
    return x[tr], y[tr], x[te], y[te]


def _train_mlp(x: np.ndarray, y: np.ndarray) -> nn.Sequential:
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if p.dim() > 1 else 0.0))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        for idx in torch.randperm(len(yt), generator=gen).split(100):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval()


def _assess(args: list[str], out: Path) -> dict[str, Any]:
    result = runner.invoke(app, ["--threads", "1", "assess", *args, "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert (out / "report.html").is_file()
    return report


def _section(report: dict[str, Any], sid: str) -> dict[str, Any]:
    found = [s for s in report["sections"] if s["id"] == sid]
    assert found, [s["id"] for s in report["sections"]]
    return found[0]


def _extraction_on_training_split(report: dict[str, Any]) -> dict[str, Any]:
    """The extraction section ran, with the thief's pool drawn from the user's training split."""
    ext = _section(report, "extraction")
    assert not ext["metrics"].get("skipped"), ext["summary"]
    pool = ext["metrics"]["pool"]
    assert pool["kind"] == "train-split" and pool["relation"] == "same-distribution"
    assert pool["sha256"] == report["data"]["sha256"]
    assert 0.0 <= ext["metrics"]["extraction_fidelity"] <= 1.0 and ext["metrics"]["n"] == N
    return ext


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    cols = [f"f{j}" for j in range(x.shape[1])]
    lines = [",".join([*cols, "label"])]
    for row, label in zip(x, y, strict=True):
        lines.append(",".join([*(f"{v:.6g}" for v in row), str(int(label))]))
    path.write_text("\n".join(lines) + "\n")


def test_pytorch_state_dict_with_user_arch_on_npz(tmp_path: Path, user_dir: Path) -> None:
    xtr, ytr, xte, yte = _digits()
    net = _train_mlp(xtr, ytr)
    (user_dir / "userbits_nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def make_model():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    """))
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    np.savez(tmp_path / "digits.npz", x=xtr.reshape(-1, 1, 8, 8), y=ytr,
             x_test=xte.reshape(-1, 1, 8, 8), y_test=yte)
    report = _assess(["--model", str(tmp_path / "weights.pt"), "--arch", "userbits_nets:make_model",
                      "--data", str(tmp_path / "digits.npz")], tmp_path / "out")
    assert [s["id"] for s in report["sections"]] == ["evasion", "blackbox", "extraction", "supply-chain"]
    evasion = _section(report, "evasion")
    with torch.no_grad():
        clean = float((net(torch.from_numpy(xte[:N])).argmax(1).numpy() == yte[:N]).mean())
    assert evasion["metrics"]["clean_accuracy"] == pytest.approx(clean, abs=1e-6)
    assert evasion["metrics"]["robust_accuracy"] < clean  # a plain MLP breaks at eps 0.1
    blackbox = _section(report, "blackbox")
    assert blackbox["metrics"]["clean_accuracy"] == pytest.approx(
        float((net(torch.from_numpy(xte[:20])).argmax(1).numpy() == yte[:20]).mean()), abs=1e-6)
    ext = _extraction_on_training_split(report)
    assert ext["metrics"]["pool"]["n"] == len(ytr)  # the npz's own training rows
    assert report["model"]["format"] == "state_dict" and report["model"]["access"] == "white-box"
    assert report["data"]["format"] == "npz" and len(report["data"]["sha256"]) == 64


def test_sklearn_pipeline_saved_with_skops_on_csv(tmp_path: Path) -> None:
    skops_io = pytest.importorskip("skops.io")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, ytr, xte, yte = _digits()
    binary_tr, binary_te = (ytr >= 5).astype(np.int64), (yte >= 5).astype(np.int64)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(xtr, binary_tr)
    skops_io.dump(pipe, tmp_path / "pipe.skops")
    _write_csv(tmp_path / "rows.csv", np.concatenate([xtr, xte]), np.concatenate([binary_tr, binary_te]))
    report = _assess(["--model", str(tmp_path / "pipe.skops"), "--data", str(tmp_path / "rows.csv"),
                      "--label-col", "label"], tmp_path / "out")
    assert [s["id"] for s in report["sections"]] == ["tabular", "blackbox", "extraction", "poisoning",
                                                     "supply-chain"]
    tab = _section(report, "tabular")
    assert not tab["metrics"].get("skipped")
    assert any("Tabular rows" in w for w in _section(report, "blackbox")["warnings"])
    _extraction_on_training_split(report)
    poisoning = _section(report, "poisoning")  # the pipeline refitted on the CSV's training split
    assert not poisoning["metrics"].get("skipped") and not poisoning["warnings"]
    m = poisoning["metrics"]
    assert [row["rate"] for row in m["curve"]] == [0.0, 0.05, 0.1, 0.2] and m["refit_agreement"] >= 0.9
    assert m["curve"][2]["flipped"] > 0 and m["poisoned_malicious_recall"] == m["curve"][2]["recall"]
    assert len(yte) < m["training_data"]["n_train"] < len(ytr) + len(yte)  # the CSV's training split
    assert 0.0 <= poisoning["headline"]["training_label_issue_share"] < 0.1
    assert report["model"]["format"] == "skops" and report["model"]["access"] == "black-box"
    assert report["data"]["format"] == "csv"


def test_xgboost_model_on_csv(tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    from modelshield.data import load_data

    xtr, ytr, xte, yte = _digits()
    binary_tr, binary_te = (ytr >= 5).astype(np.int64), (yte >= 5).astype(np.int64)
    _write_csv(tmp_path / "rows.csv", np.concatenate([xtr, xte]), np.concatenate([binary_tr, binary_te]))
    ud = load_data(str(tmp_path / "rows.csv"), kind="tabular", label_col="label")  # the split assess uses
    # trained on the CSV's own training split, with parameters the JSON file does not keep (eta, depth)
    clf = xgb.XGBClassifier(n_estimators=20, max_depth=3, learning_rate=0.2, n_jobs=1)
    clf.fit(ud.x_train.numpy(), ud.y_train.numpy())
    clf.save_model(tmp_path / "fraud.json")
    report = _assess(["--model", str(tmp_path / "fraud.json"), "--data", str(tmp_path / "rows.csv"),
                      "--label-col", "label"], tmp_path / "out")
    assert [s["id"] for s in report["sections"]] == ["tabular", "blackbox", "extraction", "poisoning",
                                                     "supply-chain"]
    _extraction_on_training_split(report)
    poisoning = _section(report, "poisoning")  # the booster's recipe rebuilt and refitted: a real sweep
    m = poisoning["metrics"]
    assert not m.get("skipped") and "not measured" not in " ".join(poisoning["findings"])
    assert [row["rate"] for row in m["curve"]] == [0.0, 0.05, 0.1, 0.2]
    assert m["curve"][2]["flipped"] > 0 and m["curve"][3]["flipped"] > m["curve"][2]["flipped"]
    recipe = m["recipe"]
    assert recipe["library"] == "xgboost" and recipe["rounds"] == 20
    assert recipe["params"]["max_depth"] == 3 and recipe["params"]["eta"] == pytest.approx(0.2)
    assert any("Training recipe rebuilt: xgboost" in f for f in poisoning["findings"])
    # the refit on the clean training split reproduces the model: its accuracy on the same points
    x_pts, y_pts = ud.x_test[:N].numpy(), ud.y_test[:N].numpy()
    original = float((clf.predict(x_pts) == y_pts).mean())
    assert m["curve"][0]["accuracy"] == pytest.approx(original, abs=0.03)
    assert m["refit_agreement"] >= 0.97 and recipe["reproduction"]["label_agreement"] >= 0.99
    assert m["curve"][3]["recall"] < m["curve"][0]["recall"]  # 20% of malicious labels flipped hurts
    assert report["model"]["format"] == "xgboost"
    assert report["model"]["modality"] == "tabular"


def _onnx_image_mlp(net: nn.Sequential) -> Any:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w1, b1, w2, b2 = (p.detach().numpy() for p in net.parameters())
    inits = [numpy_helper.from_array(a, name) for a, name in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "digits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_onnx_model_on_an_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    xtr, ytr, xte, yte = _digits()
    # PNG pixels hold x * 255 rounded; train on the same grid the folder gives back
    net = _train_mlp(np.round(xtr * 255) / 255, ytr)
    model = _onnx_image_mlp(net)
    import onnx

    onnx.save(model, tmp_path / "digits.onnx")
    folder = tmp_path / "images"
    for i, (row, label) in enumerate(zip(xte[:200], yte[:200], strict=True)):
        (folder / f"digit{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(row.reshape(8, 8) * 255).astype(np.uint8), mode="L").save(
            folder / f"digit{label}" / f"{i:04d}.png")
    report = _assess(["--model", str(tmp_path / "digits.onnx"), "--data", str(folder)], tmp_path / "out")
    assert report["model"]["format"] == "onnx"
    assert report["data"]["format"] == "image-folder"
    ids = [s["id"] for s in report["sections"]]
    assert ids == ["evasion", "blackbox", "extraction", "supply-chain"]
    if report["model"]["access"] == "white-box":  # converted and checked against onnxruntime
        assert 0.0 <= _section(report, "evasion")["metrics"]["robust_accuracy"] <= 1.0
    else:
        assert _section(report, "evasion")["metrics"]["skipped"]
    assert not _section(report, "blackbox")["metrics"].get("skipped")
    _extraction_on_training_split(report)
    assert report["data"]["classes"] == [f"digit{k}" for k in range(10)]


def test_text_callable_on_tsv(tmp_path: Path, user_dir: Path) -> None:
    (user_dir / "userbits_spam.py").write_text(textwrap.dedent("""
        import numpy as np

        SPAMMY = ("free", "win", "prize", "claim", "cash")

        def predict(texts):
            score = np.array([sum(w in t.lower().split() for w in SPAMMY) for t in texts], dtype=float)
            p = 1.0 / (1.0 + np.exp(-(2.0 * score - 1.0)))
            return np.stack([1.0 - p, p], axis=1)
    """))
    rng = np.random.default_rng(0)
    ham = ["see you at lunch tomorrow", "the meeting moved to noon", "call me when you land",
           "thanks for the notes", "dinner is at seven"]
    spam = ["win a free prize now", "claim your cash prize today", "free entry win cash",
            "you win claim now", "free cash for you"]
    lines = [f"ham\t{ham[rng.integers(5)]} {k}" for k in range(60)]
    lines += [f"spam\t{spam[rng.integers(5)]} {k}" for k in range(60)]
    lines += [f"ham\t{spam[k % 5]} {100 + k}" for k in range(8)]  # planted flips: spam labelled ham
    (tmp_path / "messages.tsv").write_text("\n".join(lines) + "\n")
    report = _assess(["--model", "userbits_spam:predict", "--data", str(tmp_path / "messages.tsv")],
                     tmp_path / "out")
    assert [s["id"] for s in report["sections"]] == ["poisoning", "text-evasion", "extraction"]
    poisoning = _section(report, "poisoning")  # retraining needs the user's recipe: the file is validated
    assert not poisoning["metrics"].get("skipped") and "not measured" in " ".join(poisoning["findings"])
    shown = [row[5] for row in poisoning["tables"][0]["rows"]]  # the rows cleaning would drop
    assert len(shown) >= 3 and all(int(text.split()[-1]) >= 100 for text in shown), shown
    assert poisoning["metrics"]["label_issues"] == len(shown) and poisoning["severity"] != "none"
    extraction = _section(report, "extraction")  # a TF-IDF copy from the TSV's training texts
    assert not extraction["metrics"].get("skipped"), extraction["summary"]
    pool = extraction["metrics"]["pool"]
    assert pool["kind"] == "train-split" and pool["sha256"] == report["data"]["sha256"]
    for run in extraction["metrics"]["runs"].values():  # budgets capped at the training split's size
        assert run["queries"] == pool["n"] == extraction["metrics"]["budget"]
        assert run["eval_queries"] == extraction["metrics"]["n"]
    assert extraction["metrics"]["extraction_fidelity"] > extraction["metrics"]["chance_fidelity"]
    evasion = _section(report, "text-evasion")
    assert not evasion["metrics"].get("skipped")
    assert report["model"]["format"] == "callable" and report["model"]["modality"] == "text"


def test_a_model_file_without_data_asks_for_data(tmp_path: Path) -> None:
    skops_io = pytest.importorskip("skops.io")
    from sklearn.linear_model import LogisticRegression

    xtr, ytr, _, _ = _digits()
    skops_io.dump(LogisticRegression(max_iter=200).fit(xtr, ytr >= 5), tmp_path / "pipe.skops")
    out = tmp_path / "o"
    result = runner.invoke(app, ["assess", "--model", str(tmp_path / "pipe.skops"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "'--data' must name the data" in result.output and "Traceback" not in result.output
    assert not out.exists()
