"""``modelshield attack ...``: run one attack and print or save its verified metrics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelshield.assess import check_new_files, provenance, run_in_batches, write_json
from modelshield.attacks.evasion.registry import (
    BLACK_BOX_ATTACKS,
    DEFAULT_MAX_QUERIES,
    EVASION_ATTACKS,
    build_attack,
)
from modelshield.cli import _render as render
from modelshield.cli._target import Target, as_query_model, load_target, parse_norm
from modelshield.errors import ConfigError
from modelshield.models import resolve_device

if TYPE_CHECKING:
    from modelshield.experiments.physical import PhysicalRun

__all__ = [
    "DEVICE_HELP", "PHYSICAL_KINDS", "TABULAR_ATTACK", "TEXT_ATTACK", "DeviceOption",
    "TrustTorchScriptOption", "attack_app", "load_constraints", "text_evasion_summary",
]

attack_app = typer.Typer(
    help="Run a single attack against a model: evasion (one input at a time) or physical (a printable "
         "patch or sticker, or a universal perturbation).",
    no_args_is_help=True,
)

TABULAR_ATTACK = "tabular"
"""CLI name of the constraint-respecting tabular attack (TabularSearch)."""

TEXT_ATTACK = "text"
"""CLI name of the black-box text evasion attack (TextEvasion) on text models (spam-*)."""

MODEL_HELP = ("Zoo name (see 'modelshield zoo list'), a model file (modelshield/PyTorch state dict with "
              "--arch, skops, XGBoost JSON/UBJ, LightGBM text, ONNX, torch.export with --trust-export) or "
              "a package.module:function callable returning probabilities or labels.")
DATA_HELP = ("Data of a model file or callable: a built-in name (digits, mnist, fashion-mnist, "
             "phishing-websites, sms-spam), an .npz (x, y), a CSV/Parquet file with --label-col, an image "
             "folder (one sub-folder per class) or a label<TAB>text file. Zoo models know theirs.")
LABEL_COL_HELP = "CSV/Parquet data: the label column."
FEATURE_COLS_HELP = "CSV/Parquet data: comma-separated feature columns (default: every other column)."
TEXT_COL_HELP = "CSV data: the text column (makes the data text)."
TRUST_PICKLE_HELP = ("Load pickle/joblib model files. Refused by default: unpickling runs code from the "
                     "file, so pass this only for files from a source you trust.")
TRUST_EXPORT_HELP = ("Load torch.export (.pt2) archives, which may unpickle code from the file; only for "
                     "files from a source you trust.")
SKOPS_TRUST_HELP = "skops model files: comma-separated type names to trust beyond skops' defaults."
DEVICE_HELP = ("Where a torch model runs: cpu (default), cuda, cuda:N, mps, or auto (cuda if present, else "
               "mps, else cpu). Black-box models (callables, estimators) stay where they are.")
DeviceOption = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
"""The shared ``--device`` option of every command that runs a model (default ``"cpu"``)."""


def target_options(*, label_col: str | None, feature_cols: str | None, text_col: str | None,
                   trust_pickle: bool, trust_export: bool, skops_trust: str | None) -> Any:
    """The --label-col / --trust-pickle / ... options as a ``modelshield.targets.TargetOptions``."""
    from modelshield.targets import TargetOptions

    def split(text: str | None) -> tuple[str, ...] | None:
        return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())

    return TargetOptions(label_col=label_col, feature_cols=split(feature_cols), text_col=text_col,
                         trust_pickle=trust_pickle, trust_export=trust_export,
                         skops_trusted=split(skops_trust) or ())
DATA_DIR_HELP = ("Folder holding mnist/ and fashion-mnist/ (default: $MODELSHIELD_DATA); phishing-websites "
                 "and sms-spam are read from it when there, else from the copies inside modelshield.")
ARCH_HELP = ("Architecture of a bare state-dict model file: a zoo architecture (e.g. cnn-8x8) or your own "
             "package.module:function that builds the untrained nn.Module.")
TRUST_TORCHSCRIPT_HELP = (
    "Load a TorchScript model file. Refused by default: TorchScript runs code from the file while "
    "loading, so pass this only for files from a source you trust."
)
TrustTorchScriptOption = Annotated[bool, typer.Option("--trust-torchscript", help=TRUST_TORCHSCRIPT_HELP)]
DataOption = Annotated[str | None, typer.Option(help=DATA_HELP)]
DataDirOption = Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)]
ArchOption = Annotated[str | None, typer.Option(help=ARCH_HELP)]
ATTACK_HELP = (
    f"One of: {', '.join(EVASION_ATTACKS)}, {TABULAR_ATTACK}. "
    f"Black-box ({', '.join(sorted(BLACK_BOX_ATTACKS))}): "
    "the model is wrapped as a query-only function returning softmax probabilities (labels only "
    "with --labels-only), so the attack never sees gradients or logits. 'tabular': "
    "constraint-respecting search on a tabular model (phishing-*). 'text': word-budgeted "
    "black-box evasion of a text model (spam-*; see --method)."
)


def load_constraints(path: Path | None, feature_names: tuple[str, ...]) -> Any:
    """The ConstraintSpec at path (YAML or JSON by suffix), or the shipped phishing spec.

    Raises:
        ConfigError: unknown suffix, missing file, unknown feature names or bad fields.
    """
    from modelshield.attacks.evasion.tabular import ConstraintSpec
    from modelshield.data.phishing import PHISHING_CONSTRAINTS

    if path is None:
        return ConstraintSpec.from_yaml(PHISHING_CONSTRAINTS, feature_names=feature_names)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return ConstraintSpec.from_json(path, feature_names=feature_names)
    if suffix in (".yaml", ".yml"):
        return ConstraintSpec.from_yaml(path, feature_names=feature_names)
    raise ConfigError(
        f"modelshield attack evasion: '--constraints' must be a .yaml, .yml or .json file; got "
        f"{str(path)!r}. Start from the shipped spec (modelshield/data/phishing_constraints.yaml)."
    )


def _tabular(target: Target, *, constraints: Path | None, max_changes: int, beam_width: int,
             max_queries: int | None, seed: int, labels_only: bool, progress: Any) -> dict[str, Any]:
    from modelshield.attacks.evasion.tabular import TabularSearch, count_changes

    if not target.tabular or target.feature_names is None:
        raise ConfigError(
            f"modelshield attack evasion: '--attack {TABULAR_ATTACK}' needs a tabular model; got "
            f"{target.model_info['name']!r}. Use a tabular zoo model, e.g. --model phishing-gbm."
        )
    spec = load_constraints(constraints, target.feature_names)
    atk = TabularSearch(max_changes=max_changes, beam_width=beam_width, max_queries=max_queries,
                        seed=seed)
    model = as_query_model(target, labels_only=labels_only)
    progress(0, 1, f"{TABULAR_ATTACK} max_changes={max_changes}")
    result = atk(model, target.x, target.y, constraints=spec)
    progress(1, 1, f"{TABULAR_ATTACK} max_changes={max_changes}")
    l0 = count_changes(target.x, result.x_adv)
    invalid = ~spec.check(target.x, result.x_adv) | (l0 > max_changes)
    d = result.to_dict()
    return {
        **d,
        "attack": TABULAR_ATTACK,
        "attack_class": result.attack,
        "constraints_file": str(constraints) if constraints is not None else "shipped phishing spec",
        "success_rate": d.get("success_rate_malicious"),
        "malicious_recall_before": d.get("recall_before"),
        "malicious_recall_after": d.get("recall_after"),
        "invalid_rows": int(invalid.sum()),
        "access": "scores (predict_proba), query-only",
    }


def text_evasion_summary(model: str, *, method: str, max_word_fraction: float, n: int,
                         max_queries: int | None, seed: int, data_dir: Path | None,
                         examples: int = 10) -> dict[str, Any]:
    """Run TextEvasion on the first n test messages of a text zoo model; the JSON-safe summary."""
    from modelshield import zoo
    from modelshield.attacks.evasion.text import TextEvasion

    atk = TextEvasion(method=method, max_word_fraction=max_word_fraction,  # type: ignore[arg-type]
                      max_queries=max_queries, seed=seed)  # (method is validated by TextEvasion)
    if model not in zoo.names() or not zoo.is_text(model):
        raise ConfigError(
            f"modelshield attack evasion: '--attack {TEXT_ATTACK}' needs a text zoo model "
            f"(spam-nb, spam-logreg); got {model!r}. Use e.g. --model spam-logreg."
        )
    if n < 1:
        raise ConfigError(f"modelshield: '--n' must be an int >= 1; got {n!r}. Use e.g. --n 500.")
    zm = zoo.load(model, data_root=data_dir)
    texts, y = zoo.text_split(model, n=n, data_root=data_dir)
    result = atk(zm.module, texts, y)
    d = result.to_dict(examples=examples)
    meta = zm.meta
    return {
        **d,
        "attack": TEXT_ATTACK,
        "attack_class": result.attack,
        "method": method,
        "max_word_fraction": max_word_fraction,
        "access": "scores (predict_proba), query-only",
        "model": {"name": model, "source": "zoo", "kind": "sklearn", "modality": "text",
                  "arch": zm.spec.arch, "fingerprint": meta.get("spam_fingerprint"),
                  "sklearn_version": meta.get("sklearn_version"), "test_accuracy": meta.get("test_accuracy"),
                  "spam_f1": meta.get("spam_f1"), "spam_recall": meta.get("spam_recall")},
        "data": {"name": zm.spec.dataset, "sha256": meta.get("data_sha256"), "split": "test", "n": len(texts),
                 "classes": ["ham", "spam"]},
    }


def _check_not_text(model: str, attack: str) -> None:
    """Refuse a tensor attack on a text zoo model before loading it (its inputs are strings)."""
    from modelshield import zoo

    if model in zoo.names() and zoo.is_text(model):
        raise ConfigError(
            f"modelshield attack evasion: '--attack' must be {TEXT_ATTACK!r} for the text model {model!r} "
            f"(its inputs are messages, not tensors); got {attack!r}. Use --attack {TEXT_ATTACK} "
            f"(see --method); {', '.join(EVASION_ATTACKS)} and {TABULAR_ATTACK} need image or tabular models."
        )


@attack_app.command("evasion")
def evasion(
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)],
    attack: Annotated[str, typer.Option(help=ATTACK_HELP)] = "pgd",
    eps: Annotated[float, typer.Option(help="Perturbation budget in input units (inputs in [0, 1]).")] = 0.1,
    steps: Annotated[int | None, typer.Option(
        help="Iterations (default: the attack's own; HopSkipJump: gradient-estimation rounds; "
             "unused by square and simba).")] = None,
    norm: Annotated[str, typer.Option(help="Threat-model norm: 'inf' or '2'.")] = "inf",
    n: Annotated[int, typer.Option(help="Number of test points (the first n of the test split).")] = 500,
    seed: Annotated[int, typer.Option(help="Seed for random starts (results are reproducible).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Points per attack call.")] = 250,
    max_queries: Annotated[int | None, typer.Option(
        help=f"Black-box and tabular attacks: forward queries per point (default {DEFAULT_MAX_QUERIES} "
             "for square/simba/hsj, unlimited for tabular).")] = None,
    labels_only: Annotated[bool, typer.Option(
        "--labels-only", help="Expose only predicted labels (a label-only API): hsj works, "
                              "score-based attacks (square, simba, tabular) refuse.")] = False,
    max_changes: Annotated[int, typer.Option(
        help="Tabular: most features changed per row (L0 budget).")] = 3,
    constraints: Annotated[Path | None, typer.Option(
        help="Tabular: constraint spec (YAML or JSON; default: the shipped phishing spec).")] = None,
    beam_width: Annotated[int, typer.Option(help="Tabular: rows kept per search round (1 = greedy).")] = 1,
    method: Annotated[str, typer.Option(
        help="Text: char (DeepWordBug edits), word (lexicon synonyms), goodword (appended ham "
             "words) or combined.")] = "char",
    max_word_fraction: Annotated[float, typer.Option(
        help="Text: most words changed, as a share of each message's words.")] = 0.2,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics + provenance here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --json file.")] = False,
    data: DataOption = None,
    data_dir: DataDirOption = None,
    arch: ArchOption = None,
    trust_torchscript: TrustTorchScriptOption = False,
    device: DeviceOption = "cpu",
) -> None:
    """Run one evasion attack on the first n test points and print its verified metrics."""
    owner = "modelshield attack evasion"
    resolve_device(device, owner=owner)  # a bad --device fails before any work
    if json_out is not None:
        check_new_files([json_out], overwrite=force, owner=owner)
    key = attack.strip().lower()
    if key == TEXT_ATTACK:
        with render.progress_bar("loading model") as progress, render.show_warnings():
            progress(0, 1, f"{TEXT_ATTACK} ({method}, {max_word_fraction:g} of words)")
            summary = text_evasion_summary(model, method=method, max_word_fraction=max_word_fraction, n=n,
                                           max_queries=max_queries, seed=seed, data_dir=data_dir)
        render.metrics_table(summary, title=f"{TEXT_ATTACK} ({method}) on {model}")
        if json_out is not None:
            payload = {**summary, "provenance": provenance(
                model_info=summary["model"], data_info=summary["data"], seed=seed,
                attacks={key: summary["params"]})}
            write_json(json_out, payload, overwrite=force)
            render.say(f"Metrics written to {json_out}")
        return
    _check_not_text(model, attack)
    tabular = key == TABULAR_ATTACK
    if constraints is not None and not tabular:
        raise ConfigError(
            f"{owner}: '--constraints' must be used with '--attack {TABULAR_ATTACK}'; got --attack "
            f"{attack!r}. Drop --constraints or use --attack {TABULAR_ATTACK}."
        )
    if tabular:
        from modelshield.attacks.evasion.tabular import TabularSearch

        # Validate the settings before loading anything.
        TabularSearch(max_changes=max_changes, beam_width=beam_width, max_queries=max_queries)
        atk = None
    else:
        atk = build_attack(attack, eps=eps, norm=parse_norm(norm), steps=steps, seed=seed,
                           max_queries=max_queries if key in BLACK_BOX_ATTACKS else None)
        if max_queries is not None and key not in BLACK_BOX_ATTACKS:
            raise ConfigError(
                f"{owner}: '--max-queries' must be used with a black-box attack "
                f"({', '.join(sorted(BLACK_BOX_ATTACKS))}) or {TABULAR_ATTACK}; got --attack {attack!r}. "
                "Use --steps for white-box attacks."
            )
    with render.progress_bar("loading model") as progress, render.show_warnings():
        target = load_target(model, data=data, data_dir=data_dir, arch=arch, n=n, progress=progress,
                             trust_torchscript=trust_torchscript, device=device)
        if atk is None:
            summary = _tabular(target, constraints=constraints, max_changes=max_changes,
                               beam_width=beam_width, max_queries=max_queries, seed=seed,
                               labels_only=labels_only, progress=progress)
            params = summary.get("params", {})
            title = f"{TABULAR_ATTACK} (max {max_changes} changes) on {target.model_info['name']}"
        else:
            if key in BLACK_BOX_ATTACKS:
                victim: Any = as_query_model(target, labels_only=labels_only)
            elif target.tabular:
                victim = target.adapted()
            else:
                victim = target.module
            label = f"{attack} eps={eps:g}"
            if batch_size >= 1:  # name the attack before its first batch, which may be long
                progress(0, -(-int(target.x.shape[0]) // batch_size), label)
            result = run_in_batches(atk, victim, target.x, target.y, batch_size=batch_size,
                                    progress=progress, label=label)
            summary = {**result.to_dict(), "attack": attack, "attack_class": result.attack}
            if key in BLACK_BOX_ATTACKS:
                summary["access"] = ("labels only" if labels_only else "probabilities") + ", query-only"
            params = result.params
            title = f"{attack} on {target.model_info['name']}"
    render.metrics_table(summary, title=title)
    if json_out is not None:
        payload = {**summary,
                   "model": target.model_info, "data": {**target.data_info, "n": int(target.x.shape[0])},
                   "provenance": provenance(model_info=target.model_info, data_info=target.data_info,
                                            seed=seed, attacks={key: params})}
        write_json(json_out, payload, overwrite=force)
        render.say(f"Metrics written to {json_out}")


PHYSICAL_OWNER = "modelshield attack physical"
PHYSICAL_KINDS = ("patch", "sticker", "universal")
"""``--kind`` of ``modelshield attack physical``: AdversarialPatch, Sticker, UniversalPerturbation."""
MAX_PRINT_PX = 10_000  # a side of the printable PNG (850 mm at 300 dpi): 400 MB per RGBA copy

# option -> the kind that uses it (any other kind refuses it)
_KIND_OPTIONS = {"--size": "patch", "--mask": "sticker", "--palette": "sticker", "--eps": "universal",
                 "--norm": "universal", "--method": "universal"}
_IMAGE_MODELS = "Use an image model, e.g. --model digits-cnn or mnist-cnn."


def _physical_files(out: Path, kind: str) -> list[Path]:
    """The files ``attack physical`` writes into --out, the printable PNG first."""
    return [out / f"{kind}.png", out / "pattern.pt", out / "examples.png", out / "summary.json"]


def _check_physical(kind: str, given: dict[str, Any], *, target_class: int | None, n_train: int,
                    n_test: int, draws: int, print_mm: float, dpi: int) -> None:
    """Refuse, before any work, settings that cannot work together (the attacks check their own)."""
    from modelshield._checks import check_choice, check_range

    owner = PHYSICAL_OWNER
    check_choice("--kind", kind, PHYSICAL_KINDS, owner=owner, fix="Use e.g. --kind patch.")
    for option, value in given.items():
        user = _KIND_OPTIONS[option]
        if value is not None and user != kind:
            raise ConfigError(f"{owner}: '{option}' is used by --kind {user}; got --kind {kind}. "
                              f"Drop {option} or use --kind {user}.")
    if kind == "sticker" and given["--mask"] is None:
        raise ConfigError(f"{owner}: '--mask' must be given with --kind sticker; got none. Pass a PNG at "
                          "the images' size, white where the sticker goes and black elsewhere.")
    if kind == "universal" and target_class is not None:
        raise ConfigError(f"{owner}: '--target' must be omitted with --kind universal (a universal "
                          f"perturbation is untargeted); got {target_class!r}. Drop --target, or use "
                          "--kind patch.")
    size = given["--size"]
    if size is not None and not 0.0 < size < 1.0:
        raise ConfigError(f"{owner}: '--size' must be a share of the image in (0, 1); got {size!r}. Use "
                          "e.g. --size 0.05 for a patch covering 5% of the image.")
    check_range("--n-train", n_train, owner=owner, low=1, integer=True, fix="Use e.g. --n-train 2000.")
    check_range("--n-test", n_test, owner=owner, low=1, integer=True, fix="Use e.g. --n-test 500.")
    check_range("--draws", draws, owner=owner, low=1, high=1000, integer=True, fix="Use e.g. --draws 4.")
    check_range("--print-mm", print_mm, owner=owner, low=0.0, low_open=True, fix="Use e.g. --print-mm 50.")
    check_range("--dpi", dpi, owner=owner, low=1, integer=True, fix="Use e.g. --dpi 300.")
    side = print_mm / 25.4 * dpi
    if side > MAX_PRINT_PX:
        raise ConfigError(f"{owner}: '--print-mm' at '--dpi' must give a PNG of at most {MAX_PRINT_PX:,} "
                          f"pixels a side; got {print_mm:g} mm at {dpi} dpi ({side:,.0f} px). Lower --dpi "
                          "or --print-mm.")


def _check_physical_model(model: str) -> None:
    """Refuse a zoo model that is not an image classifier before loading (or retraining) it."""
    from modelshield import zoo

    if model in zoo.names() and (zoo.is_text(model) or len(zoo.spec(model).input_shape) != 3):
        what = "text" if zoo.is_text(model) else "tabular"
        raise ConfigError(f"{PHYSICAL_OWNER}: '--model' must be an image model (a physical pattern is "
                          f"printed onto images); got {model!r}, a {what} model. {_IMAGE_MODELS}")


def _check_physical_target(target: Target) -> None:
    """Refuse a loaded model that is not a white-box image classifier (a user's file or callable)."""
    name = target.model_info.get("name")
    if not target.image or target.x.dim() != 4:
        kind = ("text" if target.text else "tabular" if target.tabular
                else f"shape {tuple(target.x.shape[1:])}")
        raise ConfigError(f"{PHYSICAL_OWNER}: '--model' must be an image model on image data (N, C, H, W); "
                          f"got {name!r} on {kind} data. {_IMAGE_MODELS}")
    if not target.white_box:
        raise ConfigError(f"{PHYSICAL_OWNER}: '--model' must be a PyTorch model whose gradients the attack "
                          f"can use; got {name!r}, which is query-only. Pass a PyTorch model file (e.g. a "
                          "state dict with --arch) or a zoo image model.")


def _physical_attack(kind: str, target: Target, given: dict[str, Any], *, steps: int | None,
                     seed: int) -> Any:
    """The attack for --kind, built from the options (mask and palette read at the images' size)."""
    from dataclasses import replace

    from modelshield.attacks import physical

    c, h, w = (int(v) for v in target.x.shape[1:])
    atk: Any
    if kind == "universal":
        norm = parse_norm(given["--norm"] or "inf")
        eps = given["--eps"] if given["--eps"] is not None else (0.1 if norm == "inf" else 1.0)
        atk = physical.UniversalPerturbation(eps=eps, norm=norm, method=given["--method"] or "sgd", seed=seed)
        return atk if steps is None else replace(atk, max_passes=steps)
    if kind == "sticker":
        mask = physical.load_mask(given["--mask"], height=h, width=w)
        palette = (None if given["--palette"] is None
                   else physical.load_palette(given["--palette"], channels=c, bounds=target.bounds))
        atk = physical.Sticker(mask=mask, palette=palette, seed=seed)
    else:
        size = given["--size"] if given["--size"] is not None else 0.05
        side = physical.patch_side(size, h, w)
        if side > physical.largest_patch_side(h, w):
            raise ConfigError(f"{PHYSICAL_OWNER}: '--size' must leave part of the image visible; got "
                              f"{size!r}, a patch of {side}x{side} pixels on {h}x{w} images. Use a smaller "
                              f"--size (at most {physical.max_patch_share(h, w)}).")
        atk = physical.AdversarialPatch(size=size, seed=seed)
    return atk if steps is None else replace(atk, steps=steps)


@attack_app.command("physical")
def physical(
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)],
    out: Annotated[Path, typer.Option("--out", help=(
        "Folder for KIND.png (to print), pattern.pt, examples.png and summary.json."))],
    kind: Annotated[str, typer.Option(help=(
        "patch (Brown et al.: a square anywhere on the image), sticker (RP2: the pixels of --mask, in "
        "printable colours) or universal (one small perturbation within --eps, Moosavi-Dezfooli et "
        "al.)."))] = "patch",
    size: Annotated[float | None, typer.Option(
        help="Patch: share of the image it covers, in (0, 1) (default 0.05).")] = None,
    mask: Annotated[Path | None, typer.Option(help=(
        "Sticker (required): a PNG at the images' size, white (brighter than mid-grey) where the sticker "
        "goes, black elsewhere."))] = None,
    palette: Annotated[Path | None, typer.Option(help=(
        "Sticker: printable colours, a JSON list of colours (r, g, b triples, or grey values) or a text "
        "file with one colour per line, values in 0..255 or 0..1 (default: 27 RGB or 9 grey levels an "
        "office printer reproduces)."))] = None,
    eps: Annotated[float | None, typer.Option(
        help="Universal: budget in input units (default 0.1 for --norm inf, 1.0 for 2).")] = None,
    norm: Annotated[str | None, typer.Option(help="Universal: 'inf' (default) or '2'.")] = None,
    method: Annotated[str | None, typer.Option(help=(
        "Universal: sgd (default; Shafahi et al., mini-batches) or deepfool (Moosavi-Dezfooli et al.'s "
        "Algorithm 1; slower)."))] = None,
    target_class: Annotated[int | None, typer.Option(
        "--target", help="Patch, sticker: the class to send every input to (default: untargeted).")] = None,
    steps: Annotated[int | None, typer.Option(help=(
        "Patch, sticker: optimisation steps (default 300); universal: passes over the training images "
        "(default 10)."))] = None,
    n_train: Annotated[int, typer.Option(help="Training images (the first n of the train split).")] = 2000,
    n_test: Annotated[int, typer.Option(help="Held-out images (the first n of the test split).")] = 500,
    draws: Annotated[int, typer.Option(help="Fresh conditions drawn per held-out image.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the attack (the evaluation draws have their own).")] = 0,
    print_mm: Annotated[float, typer.Option(help="Width of the printed pattern in millimetres.")] = 50.0,
    dpi: Annotated[int, typer.Option(help="Printer resolution of the PNG, dots per inch.")] = 300,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")] = False,
    data: DataOption = None,
    data_dir: DataDirOption = None,
    arch: ArchOption = None,
    trust_torchscript: TrustTorchScriptOption = False,
    device: DeviceOption = "cpu",
) -> None:
    """Learn a printable patch, sticker or universal perturbation; test it on held-out images.

    The pattern is learned on the first --n-train images of the training split, tested on the first
    --n-test images of the test split under freshly drawn conditions (re-verified on the model), and
    written as a PNG to print; exits 2 on bad input."""
    from modelshield.experiments.physical import learn_and_evaluate, train_split

    resolve_device(device, owner=PHYSICAL_OWNER)  # a bad --device fails before any work
    given = {"--size": size, "--mask": mask, "--palette": palette, "--eps": eps, "--norm": norm,
             "--method": method}
    _check_physical(kind, given, target_class=target_class, n_train=n_train, n_test=n_test, draws=draws,
                    print_mm=print_mm, dpi=dpi)
    files = _physical_files(out, kind)
    check_new_files(files, overwrite=force, owner=PHYSICAL_OWNER)
    _check_physical_model(model)
    with render.progress_bar("loading model") as progress, render.show_warnings():
        target = load_target(model, data=data, data_dir=data_dir, arch=arch, n=n_test, progress=progress,
                             trust_torchscript=trust_torchscript, device=device)
        _check_physical_target(target)
        atk = _physical_attack(kind, target, given, steps=steps, seed=seed)
        train = train_split(target, n_train, data_dir=data_dir, owner=PHYSICAL_OWNER)
        result = learn_and_evaluate(atk, target, train, target_class=target_class, draws=draws,
                                    progress=progress)
    summary = _write_physical(files, result, target, seed=seed, print_mm=print_mm, dpi=dpi, force=force)
    _say_physical(summary, out)


def _write_physical(files: list[Path], result: PhysicalRun, target: Target, *, seed: int, print_mm: float,
                    dpi: int, force: bool) -> dict[str, Any]:
    """Write the PNG to print, pattern.pt (plain tensors), examples.png and summary.json; the summary."""
    from modelshield.experiments.physical import save_pattern_files

    png, pt, sheet, js = files
    saved = save_pattern_files(result, png=png, tensors=pt, sheet=sheet, bounds=target.bounds,
                               class_names=target.data_info.get("classes"), print_mm=print_mm, dpi=dpi,
                               force=force)
    pattern, curve, n_train = result.pattern, result.curve, result.n_train
    clean, _, clean_pred, adv_pred = result.examples
    n_test = int(target.x.shape[0])
    data_info = {**target.data_info, "n": n_test, "n_test": n_test, "n_train": n_train,
                 "train_split": "train (its first n_train rows)", "test_split": "test (held out)"}
    ev = result.evaluation.to_dict()
    views = {"patch": "one draw of the patch's conditions", "sticker": "stamped as printed",
             "universal": "added"}
    summary = {
        "kind": pattern.kind, "attack": pattern.attack,
        "success_rate": ev["success_rate"], "fooling_rate": ev["fooling_rate"],
        "pattern": pattern.to_dict(), "evaluation": ev,
        "strength_curve": [{k: e.to_dict()[k] for k in ("strength", "success_rate", "fooling_rate")}
                           for e in curve],
        "png": {**saved["png"], "path": png.name},
        "files": {"png": png.name, "tensors": pt.name, "examples": sheet.name, "summary": js.name},
        "tensors": saved["tensors"],
        "examples": {"n": int(clean.shape[0]), "clean_pred": clean_pred.tolist(),
                     "adv_pred": adv_pred.tolist(), "views": views[pattern.kind]},
        "model": target.model_info, "data": data_info,
        "provenance": provenance(model_info=target.model_info, data_info=data_info, seed=seed,
                                 attacks={pattern.kind: pattern.params}),
    }
    if not curve:
        summary["strength_curve_note"] = "a universal perturbation is added digitally: no physical conditions"
    write_json(js, summary, overwrite=force)
    return summary


def _rate(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _say_physical(summary: dict[str, Any], out: Path) -> None:
    """The short human summary: what was learned, how it fared on held-out images, the files."""
    from rich.markup import escape

    p, e, d = summary["pattern"], summary["evaluation"], summary["data"]
    if p["kind"] == "universal":
        what = f"eps={p['eps']:g} ({p['norm']})"
    elif p["kind"] == "sticker":
        what = f"a sticker of {p['mask_pixels']} pixels"
    else:
        what = f"a patch covering {100 * p['share']:.1f}% of the image"
    aim = "untargeted" if e["target"] is None else f"target class {e['target']}"
    render.say(f"{p['attack']}: {what}, {aim}, learned on {d['n_train']} training images")
    render.say(f"held-out success rate [red]{_rate(e['success_rate'])}[/], fooling rate "
               f"{_rate(e['fooling_rate'])} ({d['n_test']} test images x {e['draws']} fresh draw(s); clean "
               f"accuracy {_rate(e['clean_accuracy'])})")
    if summary["strength_curve"]:
        render.say("success by strength of the conditions: " + ", ".join(
            f"{c['strength']:g}: {_rate(c['success_rate'])}" for c in summary["strength_curve"]))
    png = summary["png"]
    render.say(f"{png['path']}: {png['pixels'][0]}x{png['pixels'][1]} px, {png['print_mm']} mm wide at "
               f"{png['dpi']} dpi")
    render.say(f"{', '.join(summary['files'].values())} written to {escape(str(out))}")
