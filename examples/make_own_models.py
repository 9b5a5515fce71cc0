"""Create the models and data files that the README's "Assess your own model" commands use.

Writes into ``--out`` (default ``examples/own``), in a few seconds on the CPU, one model and its
data per format, each trained here on data bundled with scikit-learn:

- ``digits_mlp.pt`` + ``digits.npz``: a PyTorch *state dict* (weights only; the architecture is
  ``own_models:make_mlp``) trained on scikit-learn's 8x8 digits, stored as 1x8x8 images with
  their train/test split (arrays ``x``, ``y``, ``x_test``, ``y_test``).
- ``tumours_pipe.skops`` + ``tumours.csv``: a scikit-learn pipeline (scaler + logistic regression)
  saved with skops, on scikit-learn's breast-cancer rows (30 numeric columns and ``label``,
  1 = malignant).
- ``tumours_xgb.json``: an XGBoost model on four of the same CSV's columns (``--feature-cols``).
- ``digits_cnn.onnx`` + ``digit_images/``: a small CNN exported with ``torch.onnx``, and the
  digits as PNG files in ``train/<class>/`` and ``test/<class>/`` folders.
- ``messages.tsv``: ``<label>\\t<text>`` lines for the text callable ``own_models:spam_filter``:
  the first 1,000 lines of the SMS Spam Collection when ``--data-dir`` (default
  ``$MODELSHIELD_DATA``) holds ``sms-spam/SMSSpamCollection``, else 96 messages built in here.

The tabular models are fitted on the training split that ``modelshield assess`` itself makes of
the CSV (``modelshield.data.load_data``, seed 0), so its test points are unseen by them.
Formats other than PyTorch need the ``formats`` extra: ``pip install -c constraints.txt -e '.[formats]'``.

Usage: python examples/make_own_models.py [--out examples/own] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

SEED = 0
N_TRAIN = 1300  # of scikit-learn's 1,797 digits; the other 497 are the test split
XGB_FEATURES = ("worst_radius", "worst_concave_points", "mean_texture", "worst_area")
SMS_LINES = 1000
HAM = (
    "are we still on for lunch tomorrow", "the meeting moved to noon", "call me when you land",
    "thanks for the notes from class", "dinner is at seven tonight", "can you pick up some milk",
    "see you at the station at six", "running ten minutes late sorry", "happy birthday hope it is a good one",
    "did you get home ok", "the train is delayed again", "i left my keys at your place",
    "what time does the film start", "good luck with the interview today", "mum says hi",
    "just finished work heading home now", "let me know when you are free", "shall we meet at the cafe",
    "the report is on your desk", "i will bring the charger tomorrow", "how was the trip",
    "sorry i missed your call earlier", "can we move our chat to friday", "the kids are asleep finally",
    "do you want anything from the shop", "that was a great game last night", "ok see you soon",
    "remember to water the plants", "i am at the library until five", "the bus is packed today",
    "nice to see you yesterday", "text me the address please", "we need more coffee at the office",
    "is the meeting room free at three", "my phone battery is almost dead", "thanks again for dinner",
    "leaving now be there in twenty", "the weather is lovely today", "can you send me the photos",
    "i will call you back in a bit", "have a safe flight", "lunch was great thanks",
    "where did you park the car", "the plumber is coming at nine", "good night sleep well",
    "did you finish the homework", "i am so tired today", "let us catch up next week",
)
SPAM = (
    "win a free prize now call 09061701461", "claim your cash prize today reply yes",
    "urgent you have won a guaranteed award call now", "free entry to win a new mobile txt win to 87121",
    "congratulations you are a winner claim your prize", "free ringtone text tone to 85023 now",
    "you have been selected for a free holiday call 08000930705",
    "cash bonus waiting claim now at www.prizes.com",
    "urgent your mobile number has won 2000 pounds call 09050000327", "txt stop to end free offer service",
    "win cash every week reply win to 80086", "free msg your account has an award waiting call now",
    "last chance claim your free camera phone now",
    "customer service your prize is guaranteed call 09066364589",
    "you won a free trip claim at http://win.example", "free entry weekly competition text now",
    "private your 2003 account statement shows an unclaimed prize call 08718738001",
    "get a free mobile upgrade reply yes now", "guaranteed cash or prize call 09058095107 now",
    "winner you have been selected to receive a reward claim today",
    "free tones for your mobile txt tone now",
    "urgent please call 09066612661 to claim your award", "you are awarded a free gift call now",
    "double your mins and txts free upgrade reply now", "claim a free entry into our weekly draw txt now",
    "hot offer free phone and cash back call 08002986906", "reply win now for your chance of a free prize",
    "our records show you won a guaranteed prize call 09064012160", "free sms service reply stop to opt out",
    "you have 1 new award waiting claim at www.awards.example", "congrats a free trip is yours call now",
    "final notice claim your cash prize reply claim now", "free video phone offer txt yes to 85069",
    "win a brand new car text win now", "your number was selected for a free prize draw call now",
    "urgent claim your free reward before midnight", "free 1 week entry txt now to 87575",
    "cash prize guaranteed reply claim to 61610", "you are a winner free award call 09061790121",
    "free holiday offer claim today www.holidays.example", "txt win to 80082 for a free prize now",
    "special offer free mobile reply yes to claim", "you have won a free ringtone reply tone now",
    "urgent free award for our customer call 09050001808", "claim your free gift card now reply yes",
    "free cash draw this week text win to 88039", "winner claim your guaranteed prize now",
    "reply now to claim your free entry",
)


def _own_models() -> ModuleType:
    """examples/own_models.py, the module the README's --arch and callable --model import."""
    path = Path(__file__).resolve().with_name("own_models.py")
    spec = importlib.util.spec_from_file_location("own_models", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as (N, 1, 8, 8) float32 in [0, 1], split 1,300 / 497 (seeded)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    # On the grid of 8-bit PNG pixels, so that the image folder gives back the same values.
    x = (np.round(d.data / 16.0 * 255) / 255).astype(np.float32).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(SEED).permutation(len(y))
    tr, te = perm[:N_TRAIN], perm[N_TRAIN:]
    return x[tr], y[tr], x[te], y[te]


def _train(net: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int) -> nn.Module:
    """Adam, cross-entropy, mini-batches of 100 in a seeded order; returns net in eval mode."""
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(epochs):
        for idx in torch.split(torch.randperm(len(yt), generator=gen), 100):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is untyped in torch
            opt.step()
    return net.eval()


def _accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def make_torch(out: Path) -> str:
    """digits_mlp.pt (a state dict for own_models:make_mlp) and digits.npz."""
    xtr, ytr, xte, yte = _digits()
    torch.manual_seed(SEED)  # the initial weights (a script of its own: the global RNG is ours)
    net = _train(_own_models().make_mlp(), xtr, ytr, epochs=30)
    torch.save(net.state_dict(), out / "digits_mlp.pt")
    np.savez(out / "digits.npz", x=xtr, y=ytr, x_test=xte, y_test=yte)
    return f"digits_mlp.pt + digits.npz (test accuracy {_accuracy(net, xte, yte):.3f})"


def _write_tumours_csv(path: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    names = [str(n).replace(" ", "_") for n in d.feature_names]
    malignant = (d.target == 0).astype(np.int64)  # scikit-learn's 0 is malignant; make it the positive class
    lines = [",".join([*names, "label"])]
    lines += [",".join([*(f"{v:.6g}" for v in row), str(label)]) for row, label in zip(d.data, malignant,
                                                                                          strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_sklearn(out: Path) -> str:
    """tumours.csv and tumours_pipe.skops, fitted on the split modelshield makes of the CSV."""
    import skops.io
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from modelshield.data import load_data

    _write_tumours_csv(out / "tumours.csv")
    data = load_data(out / "tumours.csv", label_col="label", seed=SEED)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    pipe.fit(np.asarray(data.x_train), np.asarray(data.y_train))
    skops.io.dump(pipe, out / "tumours_pipe.skops")
    acc = float((pipe.predict(np.asarray(data.x_test)) == np.asarray(data.y_test)).mean())
    return f"tumours_pipe.skops + tumours.csv (test accuracy {acc:.3f})"


def make_xgboost(out: Path) -> str:
    """tumours_xgb.json on four of tumours.csv's columns (written by make_sklearn)."""
    import xgboost

    from modelshield.data import load_data

    data = load_data(out / "tumours.csv", label_col="label", feature_cols=list(XGB_FEATURES), seed=SEED)
    clf = xgboost.XGBClassifier(n_estimators=30, max_depth=3, n_jobs=1, random_state=SEED)
    clf.fit(np.asarray(data.x_train), np.asarray(data.y_train))
    clf.save_model(out / "tumours_xgb.json")
    acc = float((clf.predict(np.asarray(data.x_test)) == np.asarray(data.y_test)).mean())
    return f"tumours_xgb.json (test accuracy {acc:.3f})"


def make_onnx(out: Path) -> str:
    """digits_cnn.onnx (a CNN exported by torch.onnx) and digit_images/{train,test}/<class>/*.png."""
    from PIL import Image

    xtr, ytr, xte, yte = _digits()
    torch.manual_seed(SEED)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, 10))
    _train(net, xtr, ytr, epochs=20)
    with warnings.catch_warnings():
        # The TorchScript-based exporter needs no onnxscript (not installed by the formats extra);
        # torch >= 2.9 marks it deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(out / "digits_cnn.onnx"), dynamo=False,
                          input_names=["image"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    folder = out / "digit_images"
    for split, xs, ys in (("train", xtr, ytr), ("test", xte, yte)):
        for i, (img, label) in enumerate(zip(xs, ys, strict=True)):
            cls = folder / split / f"digit{label}"
            cls.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(img[0] * 255).astype(np.uint8), mode="L").save(cls / f"{i:04d}.png")
    return f"digits_cnn.onnx + digit_images/ (test accuracy {_accuracy(net, xte, yte):.3f})"


def _sms_spam_file(data_dir: str | None) -> Path | None:
    base = data_dir or os.environ.get("MODELSHIELD_DATA", "").strip()
    if not base:
        return None
    for path in (Path(base) / "sms-spam" / "SMSSpamCollection", Path(base) / "SMSSpamCollection"):
        if path.is_file():
            return path
    return None


def make_text(out: Path, data_dir: str | None) -> str:
    """messages.tsv: the SMS Spam Collection's first lines when found, else the built-in messages."""
    source = _sms_spam_file(data_dir)
    if source is not None:
        with source.open(encoding="utf-8") as fh:
            lines = [line.rstrip("\n") for _, line in zip(range(SMS_LINES), fh, strict=False)]
        origin = f"the first {len(lines)} lines of {source}"
    else:
        lines = [f"ham\t{t}" for t in HAM] + [f"spam\t{t}" for t in SPAM]
        origin = f"{len(lines)} built-in messages (no SMS Spam Collection in --data-dir / $MODELSHIELD_DATA)"
    (out / "messages.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f"messages.tsv: {origin}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=Path("examples/own"),
                    help="Folder to write (default: %(default)s).")
    ap.add_argument("--data-dir", default=None,
                    help="Folder holding sms-spam/SMSSpamCollection (default: $MODELSHIELD_DATA).")
    args = ap.parse_args(argv)
    missing = [m for m in ("skops", "xgboost", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: make_own_models.py needs {', '.join(missing)}; install the formats extra: "
              "pip install -c constraints.txt -e '.[formats]'", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # small models: one thread is the fastest, and the same on every machine
    for step in (make_torch, make_sklearn, make_xgboost, make_onnx):
        start = time.perf_counter()
        print(f"{step(out)} [{time.perf_counter() - start:.1f} s]")
    print(make_text(out, args.data_dir))
    print(f"Written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
