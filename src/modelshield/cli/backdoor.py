"""``modelshield backdoor plant`` / ``scan``: plant a backdoor by data poisoning, then look for one.

``plant`` poisons the training set (BadNets, blend, clean-label or WaNet), trains the data set's zoo
architecture on it and writes ``model.pt`` (safe format), ``poison.json`` (poisoned rows, trigger,
clean accuracy, attack success rate, provenance), ``poison_rows.npz`` (the changed rows, so that
``scan --train-set`` can rebuild the poisoned set) and ``trigger.png``.

``scan`` inspects a model with Neural Cleanse (Wang et al., 2019), calibrates STRIP (Gao et al.,
2019) at 5% false rejection and, given a ``plant`` folder, runs activation clustering (Chen et al.,
2019) and spectral signatures (Tran et al., 2018) on its poisoned training set.

Both take ``--device``: ``plant`` trains there (poisoning and the test metrics stay on the CPU, and
the saved model is a CPU state dict); ``scan`` moves the model, its clean images and the poisoned
training set there.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.markup import escape
from rich.table import Table
from torch import Tensor, nn

from modelshield._checks import check_choice, check_range
from modelshield._io import write_atomic
from modelshield.assess import check_new_files, provenance, write_json
from modelshield.assess.suite import jsonable
from modelshield.attacks.backdoor import BackdoorResult, BadNets, attack_success_rate, make_train_fn
from modelshield.cli import _render as render
from modelshield.cli._target import load_target
from modelshield.cli.attack import (
    MODEL_HELP,
    ArchOption,
    DataDirOption,
    DeviceOption,
    TrustTorchScriptOption,
)
from modelshield.errors import ConfigError, DataError
from modelshield.experiments.backdoor import IMAGE_BACKDOOR_ATTACKS, build_backdoor_attack, plant_backdoor
from modelshield.models import resolve_device

__all__ = ["backdoor_app", "plant", "scan"]

OWNER_PLANT = "modelshield backdoor plant"
OWNER_SCAN = "modelshield backdoor scan"
ATTACKS: tuple[str, ...] = IMAGE_BACKDOOR_ATTACKS
#: data set -> (zoo architecture, default epochs, batch size), as in the zoo recipes.
RECIPES: dict[str, tuple[str, int, int]] = {
    "digits": ("cnn-8x8", 30, 32),
    "mnist": ("lenet-28", 3, 128),
    "fashion-mnist": ("lenet-28", 5, 128),
}
MIN_CLEAN = 20

backdoor_app = typer.Typer(help="Plant a backdoor by poisoning training data, or scan a model for one.",
                           no_args_is_help=True)


def sha256_tensor(t: Tensor) -> str:
    """SHA-256 of a tensor's contiguous CPU bytes."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def save_png(image: Tensor, path: Path, *, force: bool = False) -> None:
    """Write a (C, H, W) or (H, W) image as a grayscale (C=1) or RGB PNG scaled to its own range,
    atomically; an existing file is replaced only with force (else ConfigError)."""
    import matplotlib.image

    img = image.detach().cpu().float()
    if img.dim() == 3:
        img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
    lo, hi = float(img.min()), float(img.max())
    arr = ((img - lo) / (hi - lo) if hi > lo else torch.zeros_like(img)).numpy()
    buf = io.BytesIO()
    if arr.ndim == 2:
        matplotlib.image.imsave(buf, arr, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    else:
        matplotlib.image.imsave(buf, arr, format="png")
    write_atomic(path, buf.getvalue(), force=force)


def _load_data(name: str, data_dir: Path | None, owner: str) -> Any:
    from modelshield.data import load_dataset

    check_choice("--data", name, tuple(RECIPES), owner=owner)
    return load_dataset(name, root=data_dir)


def _train_on(device: torch.device, arch: str, *, epochs: int, batch_size: int,
              seed: int) -> Callable[[Tensor, Tensor], nn.Module]:
    """``make_train_fn(arch, ...)`` training on ``device``: the module is built from ``seed`` on the
    CPU as the zoo builds it, moved with its training rows to ``device``, trained there and handed
    back on the CPU (where plant poisons, measures and saves)."""
    from modelshield.models.archs import build

    fit = make_train_fn(lambda: build(arch, seed=seed).to(device), epochs=epochs, batch_size=batch_size,
                        seed=seed)

    def train(x: Tensor, y: Tensor) -> nn.Module:
        return fit(x.to(device), y.to(device)).cpu()

    return train


def _build_attack(name: str, *, target: int, rate: float, patch_size: int, alpha: float,
                  bounds: tuple[float, float], seed: int) -> Any:
    check_choice("--attack", name, ATTACKS, owner=OWNER_PLANT)
    return build_backdoor_attack(name, target=target, rate=rate, patch_size=patch_size, alpha=alpha,
                                 bounds=bounds, seed=seed)


@backdoor_app.command("plant")
def plant(
    out: Annotated[Path, typer.Option("--out", help="Folder for model.pt, poison.json, trigger.png.")],
    data: Annotated[str, typer.Option(help=f"Data set: {', '.join(RECIPES)}.")] = "digits",
    attack: Annotated[str, typer.Option(help=f"One of: {', '.join(ATTACKS)}.")] = "badnets",
    rate: Annotated[float, typer.Option(help="Share of the training set to poison, in (0, 1).")] = 0.05,
    target: Annotated[int, typer.Option(help="Class the trigger should send inputs to.")] = 0,
    patch_size: Annotated[int, typer.Option(help="Patch side in pixels (badnets, clean-label).")] = 3,
    alpha: Annotated[float, typer.Option(help="Blend opacity (blend).")] = 0.2,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default: the zoo recipe's).")] = None,
    train_size: Annotated[int | None, typer.Option(help="Train on the first N training rows.")] = None,
    seed: Annotated[int, typer.Option(help="Seed (poisoned rows, trigger, training).")] = 0,
    data_dir: DataDirOption = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")] = False,
    device: DeviceOption = "cpu",
) -> None:
    """Poison a training set, train the zoo architecture on it (on --device) and save the backdoored
    model; prints clean accuracy and attack success rate; exits 2 on bad input."""
    from modelshield.models.load import save_model, weights_sha256

    dev = resolve_device(device, owner=OWNER_PLANT)  # a bad --device fails before any work
    files = [out / "model.pt", out / "poison.json", out / "poison_rows.npz", out / "trigger.png"]
    check_new_files(files, overwrite=force, owner=OWNER_PLANT)
    ds = _load_data(data, data_dir, OWNER_PLANT)
    arch, default_epochs, batch_size = RECIPES[data]
    n_classes = len(ds.classes)
    check_range("--target", target, owner=OWNER_PLANT, low=0, high=n_classes - 1, integer=True,
                fix=f"Pick a class of {data} (0..{n_classes - 1}).")
    n_epochs = default_epochs if epochs is None else epochs
    check_range("--epochs", n_epochs, owner=OWNER_PLANT, low=1, integer=True, fix="Use e.g. --epochs 3.")
    n_train = int(ds.x_train.shape[0])
    size = n_train if train_size is None else train_size
    check_range("--train-size", size, owner=OWNER_PLANT, low=MIN_CLEAN, high=n_train, integer=True,
                fix=f"Use at most the {n_train} training rows of {data}.")
    atk = _build_attack(attack, target=target, rate=rate, patch_size=patch_size, alpha=alpha,
                        bounds=ds.bounds, seed=seed)
    x, y = ds.x_train[:size].float(), ds.y_train[:size].long()
    train = _train_on(dev, arch, epochs=n_epochs, batch_size=batch_size, seed=seed)
    x_test, y_test = ds.x_test.float(), ds.y_test.long()
    with render.progress_bar("poisoning") as progress, render.show_warnings():
        planted = plant_backdoor(atk, train, x, y, x_test, y_test, progress=progress)
    res, model, changed = planted.poison, planted.model, planted.changed_indices
    acc, asr = planted.clean_accuracy, planted.attack_success_rate
    settings = {"data": data, "attack": attack, "rate": rate, "target": target, "patch_size": patch_size,
                "alpha": alpha, "epochs": n_epochs, "batch_size": batch_size, "train_size": size,
                "seed": seed, "arch": arch, "device": str(dev)}
    data_info = {"name": ds.name, "sha256": ds.sha256, "split": "train", "n_train": size,
                 "n_test": int(y_test.numel())}
    model_info = {"name": "model.pt", "source": "modelshield backdoor plant", "arch": arch,
                  "weights_sha256": weights_sha256(model)}
    meta = {"dataset": data, "arch": arch, "backdoor": {"attack": attack, "target": target},
            "test_accuracy": round(acc, 6)}
    digest = save_model(model, out / "model.pt", arch=arch, meta=jsonable(meta), overwrite=force)
    rows_buf = io.BytesIO()
    np.savez(rows_buf, indices=changed.numpy(), rows=res.x_poisoned[changed].numpy())
    write_atomic(out / "poison_rows.npz", rows_buf.getvalue(), force=force)
    image = res.trigger.image
    if image is not None:
        save_png(image, out / "trigger.png", force=force)
    payload = {
        **planted.summary,
        "settings": settings,
        "x_poisoned_sha256": sha256_tensor(res.x_poisoned),
        "model_sha256": digest,
        "provenance": provenance(model_info=model_info, data_info=data_info, seed=seed,
                                 attacks={attack: res.params}),
    }
    write_json(out / "poison.json", jsonable(payload), overwrite=force)
    render.say(f"{res.attack}: poisoned {res.n_poisoned} of {res.n} rows -> class {target}")
    render.say(f"clean accuracy {100 * acc:.1f}%, attack success rate [red]{100 * asr:.1f}%[/] "
               f"({y_test.numel()} test images)")
    render.say(f"Backdoored model and poison record written to {escape(str(out))}")


def _bad_folder(folder: Path, what: str) -> DataError:
    return DataError(f"{OWNER_SCAN}: '--train-set' must be an untouched 'modelshield backdoor plant' folder; "
                     f"got {str(folder)!r}, whose {what}. Re-run plant, or pass its --out folder unchanged.")


def _record(folder: Path) -> dict[str, Any]:
    """poison.json of a plant folder, with the fields scan uses checked for presence and type.

    Raises:
        DataError: the file is unreadable, not JSON, or a field is missing or of the wrong type.
    """
    path = folder / "poison.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise _bad_folder(folder, f"poison.json cannot be read as JSON ({why})") from exc
    if not isinstance(info, dict) or not isinstance(info.get("settings"), dict):
        raise _bad_folder(folder, "poison.json has no 'settings' object")
    fields: dict[str, tuple[type, ...]] = {"data": (str,), "attack": (str,), "train_size": (int,),
                                           "target": (int,), "rate": (int, float), "patch_size": (int,),
                                           "alpha": (int, float), "seed": (int,)}
    s = info["settings"]
    for key, kinds in fields.items():
        value = s.get(key)
        if not isinstance(value, kinds) or isinstance(value, bool):
            got = f"is {value!r}, not" if key in s else "is missing; plant writes"
            raise _bad_folder(folder, f"poison.json 'settings.{key}' {got} "
                              f"{' or '.join(k.__name__ for k in kinds)}")
    if s["data"] not in RECIPES or s["attack"] not in ATTACKS:
        raise _bad_folder(folder, f"poison.json names data {s['data']!r} / attack {s['attack']!r} (plant "
                          f"writes one of {', '.join(RECIPES)} / {', '.join(ATTACKS)})")
    if not isinstance(info.get("attack"), dict):
        raise _bad_folder(folder, "poison.json has no 'attack' object")
    idx = info.get("indices")
    if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
        raise _bad_folder(folder, "poison.json 'indices' is not a list of row numbers")
    if not isinstance(info.get("x_poisoned_sha256"), str):
        raise _bad_folder(folder, "poison.json has no 'x_poisoned_sha256' digest")
    return info


def load_poisoned_set(
    folder: Path, *, data_dir: Path | None
) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """(x_poisoned, y_poisoned, poisoned indices, poison.json) rebuilt from a ``plant`` folder.

    Every field read from the folder is checked first (types, row numbers in range, matching
    lengths), so a tampered folder is a one-line error, never a crash.

    Raises:
        ConfigError: the folder is not a plant output, or the rebuilt set does not match its hash.
        DataError: poison.json or poison_rows.npz is unreadable, incomplete or inconsistent.
    """
    record, rows = folder / "poison.json", folder / "poison_rows.npz"
    if not record.is_file() or not rows.is_file():
        raise ConfigError(f"{OWNER_SCAN}: '--train-set' must be a folder written by 'modelshield backdoor "
                          f"plant' (with poison.json and poison_rows.npz); got {str(folder)!r}. Pass the "
                          "--out folder of plant.")
    info = _record(folder)
    s = info["settings"]
    ds = _load_data(str(s["data"]), data_dir, OWNER_SCAN)
    n_train, n_classes = int(ds.x_train.shape[0]), len(ds.classes)
    size, target = int(s["train_size"]), int(s["target"])
    if not 1 <= size <= n_train or not 0 <= target < n_classes:
        raise _bad_folder(folder, f"poison.json settings (train_size {size}, target {target}) do not fit "
                          f"{s['data']} ({n_train} training rows, {n_classes} classes)")
    try:  # the settings must rebuild the planted attack (scan re-runs it to recover the trigger)
        _build_attack(s["attack"], target=target, rate=float(s["rate"]), patch_size=int(s["patch_size"]),
                      alpha=float(s["alpha"]), bounds=ds.bounds, seed=int(s["seed"]))
    except ConfigError as exc:
        raise _bad_folder(folder, f"poison.json settings are not valid plant settings ({exc})") from exc
    x = ds.x_train[:size].float().clone()
    y = ds.y_train[:size].long().clone()
    # The file is untrusted: whatever the npz reader raises on it means "not what plant wrote".
    try:
        # Opened here, not by np.load, which leaks the handle when the zip is broken.
        with rows.open("rb") as fh, np.load(fh, allow_pickle=False) as z:
            changed_np, rows_np = np.asarray(z["indices"]), np.asarray(z["rows"])
    except Exception as exc:
        raise _bad_folder(folder, f"poison_rows.npz cannot be read ({type(exc).__name__}: {exc})") from exc
    if (changed_np.ndim != 1 or changed_np.dtype.kind not in "iu" or rows_np.dtype.kind not in "biuf"
            or rows_np.shape != (changed_np.shape[0], *x.shape[1:])):
        raise _bad_folder(folder, f"poison_rows.npz holds indices {changed_np.dtype}{list(changed_np.shape)} "
                          f"and rows {rows_np.dtype}{list(rows_np.shape)}, not n row numbers and n rows of "
                          f"shape {tuple(x.shape[1:])}")
    idx_list: list[int] = info["indices"]
    for name, values in (("poison_rows.npz indices", changed_np.tolist()), ("poison.json indices", idx_list)):
        if values and not 0 <= min(values) <= max(values) < size:
            raise _bad_folder(folder, f"{name} reach outside the {size} training rows "
                              f"(min {min(values)}, max {max(values)})")
    x[torch.as_tensor(changed_np, dtype=torch.long)] = torch.as_tensor(rows_np).to(x.dtype)
    idx = torch.as_tensor(idx_list, dtype=torch.long)
    y[idx] = target
    if sha256_tensor(x) != info["x_poisoned_sha256"]:
        raise ConfigError(f"{OWNER_SCAN}: '--train-set' must rebuild the poisoned set it records; got "
                          f"{str(folder)!r}, whose rows do not match (different data files?). Pass the "
                          "--data-dir used by plant.")
    return x, y, idx, info


def _r(v: float | None) -> float | None:
    return None if v is None or v != v else round(float(v), 6)


@backdoor_app.command("scan")
def scan(
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)],
    data: Annotated[str | None, typer.Option(help=f"Data set of a model file: {', '.join(RECIPES)}.")] = None,
    clean_n: Annotated[int, typer.Option(help="Clean test images for Neural Cleanse and STRIP.")] = 1000,
    train_set: Annotated[Path | None, typer.Option(help="A 'backdoor plant' folder: also scan its "
                                                   "poisoned training set (activation clustering, "
                                                   "spectral signatures).")] = None,
    nc_steps: Annotated[int, typer.Option(help="Neural Cleanse optimisation steps per class.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed (mini-batches, STRIP overlays).")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results (and the recovered "
                                                  "trigger PNGs next to it).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --json file.")] = False,
    data_dir: DataDirOption = None,
    arch: ArchOption = None,
    trust_torchscript: TrustTorchScriptOption = False,
    device: DeviceOption = "cpu",
) -> None:
    """Scan a model for a backdoor (Neural Cleanse, STRIP calibration, and training-set detectors
    with --train-set) on --device and print a verdict per class; exits 2 on bad input."""
    from modelshield.defenses.backdoor import STRIP, NeuralCleanse, scan_model

    resolve_device(device, owner=OWNER_SCAN)  # a bad --device fails before any work
    if json_out is not None:
        check_new_files([json_out, *_trigger_pngs(json_out)], overwrite=force, owner=OWNER_SCAN)
    check_range("--clean-n", clean_n, owner=OWNER_SCAN, low=MIN_CLEAN, integer=True,
                fix=f"The clean set is too small: use at least {MIN_CLEAN} images, e.g. --clean-n 500.")
    check_range("--nc-steps", nc_steps, owner=OWNER_SCAN, low=1, integer=True, fix="Use e.g. --nc-steps 300.")
    if data is not None:
        check_choice("--data", data, tuple(RECIPES), owner=OWNER_SCAN)
    # A tampered --train-set folder fails here, before the model is loaded or scanned.
    poisoned = load_poisoned_set(train_set, data_dir=data_dir) if train_set is not None else None
    with render.progress_bar("loading model") as progress, render.show_warnings():
        tgt = load_target(model, data=data, data_dir=data_dir, arch=arch, n=None, progress=progress,
                          trust_torchscript=trust_torchscript, device=device)
        if tgt.tabular or tgt.text or not isinstance(tgt.module, nn.Module):
            raise ConfigError(f"{OWNER_SCAN}: '--model' must be an image classifier (a torch model); got "
                              f"{model!r}. Pick e.g. --model digits-cnn or a plant folder's model.pt.")
        module: nn.Module = tgt.module  # on --device, with tgt.x and tgt.y
        xc, yc, x_rest, y_rest = tgt.x[:clean_n], tgt.y[:clean_n], tgt.x[clean_n:], tgt.y[clean_n:]
        report = scan_model(
            module, xc, yc, x_train=None if poisoned is None else poisoned[0].to(tgt.x.device),
            y_train=None if poisoned is None else poisoned[1].to(tgt.x.device),
            poisoned_indices=None if poisoned is None else poisoned[2],
            neural_cleanse=NeuralCleanse(steps=nc_steps, bounds=tgt.bounds, seed=seed),
            strip=STRIP(frr=0.05, bounds=tgt.bounds, seed=seed), bounds=tgt.bounds, progress=progress)
    nc = report.neural_cleanse
    per_class = report.per_class()
    for i, row in enumerate(per_class):
        row["trigger_png"] = None
        if json_out is not None:
            path = _trigger_png(json_out, row["class"])
            save_png(nc.triggers[i].image, path, force=force)
            row["trigger_png"] = path.name
    strip_info = report.strip_summary()
    training = report.training_summary()
    planted: dict[str, Any] | None = None
    if poisoned is not None and train_set is not None:
        info = poisoned[3]
        planted = {"attack": info["attack"].get("attack"), "target": info["settings"]["target"]}
        xp_eval = x_rest[y_rest != int(planted["target"])]
        if int(x_rest.shape[0]) >= MIN_CLEAN and int(xp_eval.shape[0]) > 0:
            res_trigger = _planted_trigger(info, data_dir=data_dir)
            missed = 1 - report.strip_catch_rate(res_trigger.apply_trigger(xp_eval))
            strip_info["false_acceptance_planted_trigger"] = _r(missed)
            planted["attack_success_rate"] = _r(attack_success_rate(module, res_trigger, x_rest, y_rest))
    payload = {
        "model": tgt.model_info, "data": {**tgt.data_info, "n_clean": int(xc.shape[0])},
        "verdict": report.verdict, "flagged_classes": list(report.flagged_classes), "classes": per_class,
        "neural_cleanse": nc.to_dict(), "strip": strip_info, "training_set": training, "planted": planted,
        "provenance": provenance(model_info=tgt.model_info, data_info=tgt.data_info, seed=seed,
                                 attacks={"NeuralCleanse": nc.params}),
    }
    _render_scan(per_class, strip_info, training, model)
    if json_out is not None:
        write_json(json_out, jsonable(payload), overwrite=force)
        render.say(f"Results written to {escape(str(json_out))}")


def _trigger_png(json_out: Path, cls: object) -> Path:
    """Where scan writes the Neural Cleanse trigger of class cls, next to its --json file."""
    return json_out.with_name(f"{json_out.stem}-nc-class{cls}.png")


def _trigger_pngs(json_out: Path) -> list[Path]:
    """The trigger PNGs an earlier scan with this --json left (checked before the work)."""
    folder = json_out.parent
    if not folder.is_dir():
        return []
    prefix = f"{json_out.stem}-nc-class"
    return sorted(p for p in folder.iterdir()
                  if p.name.startswith(prefix) and p.suffix == ".png" and p.name[len(prefix):-4].isdigit())


def _planted_trigger(info: dict[str, Any], *, data_dir: Path | None) -> BackdoorResult:
    """The planted attack re-run on a few rows to recover its trigger (deterministic given seed);
    info is the poison.json that load_poisoned_set checked."""
    s = info["settings"]
    if s["attack"] == "clean-label":
        ds = _load_data(str(s["data"]), data_dir, OWNER_SCAN)
        atk: Any = BadNets(target=int(s["target"]), rate=0.5, patch_size=int(s["patch_size"]),
                           bounds=ds.bounds, seed=0)
    else:
        ds = _load_data(str(s["data"]), data_dir, OWNER_SCAN)
        atk = _build_attack(str(s["attack"]), target=int(s["target"]), rate=float(s["rate"]),
                            patch_size=int(s["patch_size"]), alpha=float(s["alpha"]), bounds=ds.bounds,
                            seed=int(s["seed"]))
    n = int(s["train_size"])
    res: BackdoorResult = atk(None, ds.x_train[:n].float(), ds.y_train[:n].long())
    return res


def _render_scan(per_class: list[dict[str, Any]], strip_info: dict[str, Any],
                 training: dict[str, Any] | None, model: str) -> None:
    table = Table(title=f"Backdoor scan of {model}", header_style="bold")
    for col in ("class", "NC norm", "anomaly index", "flagged by", "verdict"):
        table.add_column(col, justify="right" if col not in ("flagged by", "verdict") else "left")
    for row in per_class:
        verdict = "[red]backdoor[/]" if row["verdict"] == "backdoor" else "[green]clean[/]"
        table.add_row(str(row["class"]), f"{row['norm']:.2f}", f"{row['anomaly_index']:.2f}",
                      ", ".join(row["flagged_by"]) or "-", verdict)
    render.out().print(table)
    render.say(f"STRIP: entropy threshold {strip_info['threshold']:.4f} at 5% false rejection "
               f"({strip_info['n_clean']} clean images)")
    if "false_acceptance_planted_trigger" in strip_info:
        render.say(f"STRIP misses {100 * strip_info['false_acceptance_planted_trigger']:.1f}% of inputs "
                   "carrying the planted trigger")
    if training is not None:
        for key in ("activation_clustering", "spectral_signatures"):
            d = training[key]
            render.say(f"{key.replace('_', ' ')}: classes {d['flagged_classes'] or 'none'}, precision "
                       f"{100 * (d['precision'] or 0):.1f}%, recall {100 * (d['recall'] or 0):.1f}%")
