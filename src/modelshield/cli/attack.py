"""``modelshield attack ...``: run one attack and print or save its verified metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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

__all__ = [
    "DEVICE_HELP", "TABULAR_ATTACK", "TEXT_ATTACK", "DeviceOption", "TrustTorchScriptOption", "attack_app",
    "load_constraints", "text_evasion_summary",
]

attack_app = typer.Typer(help="Run a single attack against a model.", no_args_is_help=True)

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
DATA_DIR_HELP = "Folder holding mnist/, fashion-mnist/ and phishing-websites/ (default: $MODELSHIELD_DATA)."
ARCH_HELP = ("Architecture of a bare state-dict model file: a zoo architecture (e.g. cnn-8x8) or your own "
             "package.module:function that builds the untrained nn.Module.")
TRUST_TORCHSCRIPT_HELP = (
    "Load a TorchScript model file. Refused by default: TorchScript runs code from the file while "
    "loading, so pass this only for files from a source you trust."
)
TrustTorchScriptOption = Annotated[bool, typer.Option("--trust-torchscript", help=TRUST_TORCHSCRIPT_HELP)]
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
    data: Annotated[str | None, typer.Option(help=DATA_HELP)] = None,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    arch: Annotated[str | None, typer.Option(help=ARCH_HELP)] = None,
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
