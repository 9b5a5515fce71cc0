"""``modelshield poison`` and ``modelshield validate-data``: poison a text training set, or validate one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from modelshield._checks import check_range
from modelshield.assess import check_new_files, write_json
from modelshield.cli import _render as render
from modelshield.errors import ConfigError

__all__ = ["SMS_SPAM", "load_text_data", "poison", "validate_data"]

SMS_SPAM = "sms-spam"
"""The ``--data`` name of the SMS Spam Collection (found under --data-dir or $MODELSHIELD_DATA)."""

_DATA_HELP = (
    f"'{SMS_SPAM}' (the SMS Spam Collection) or a path to a '<label>\\t<text>' file "
    "(labels ham/spam, UTF-8, one message a line)."
)
_DATA_DIR_HELP = ("Folder holding sms-spam/ (default: $MODELSHIELD_DATA; without one, the copy inside "
                  "modelshield).")


def load_text_data(data: str, data_dir: Path | None, *, seed: int = 0) -> Any:
    """The TextDataset named by ``--data``: the SMS split, or a stratified split of a TSV file."""
    from modelshield.data import load_sms_spam
    from modelshield.experiments.poisoning import text_dataset_from_file

    if data == SMS_SPAM:
        return load_sms_spam(data_dir)
    path = Path(data).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"modelshield: '--data' must be {SMS_SPAM!r} or an existing '<label>\\t<text>' file; got "
            f"{data!r}. Check the path."
        )
    return text_dataset_from_file(path, seed=seed)


def _spam_kind(model: str) -> str:
    from modelshield import zoo

    if not zoo.is_text(model):
        raise ConfigError(
            f"modelshield poison: '--model' must be a text zoo model (spam-nb, spam-logreg); got "
            f"{model!r}. Use --model spam-nb or --model spam-logreg."
        )
    return zoo.spec(model).arch


def poison(
    out: Annotated[Path, typer.Option("--out", help="Folder for poisoned_train.tsv and poison.json.")],
    data: Annotated[str, typer.Option(help=_DATA_HELP)] = SMS_SPAM,
    attack: Annotated[
        str,
        typer.Option(
            help="label-flip (random spam->ham flips), targeted-flip (largest-margin spam rows) or "
            "trigger-phrase (spam rows get a trigger phrase and the ham label)."
        ),
    ] = "label-flip",
    rate: Annotated[
        float,
        typer.Option(help="Share of the SPAM training rows poisoned, in [0, 1] (0.2: a fifth of them)."),
    ] = 0.1,
    model: Annotated[
        str, typer.Option(help="Spam filter trained on the sets: spam-nb or spam-logreg.")
    ] = "spam-nb",
    validate: Annotated[
        bool,
        typer.Option(
            "--validate",
            help="Run validate_dataset on the poisoned set: detection precision/recall of "
            "the poisoned rows, and the test metrics after training on the cleaned set.",
        ),
    ] = False,
    phrase: Annotated[str, typer.Option(help="trigger-phrase: the phrase planted.")] = "blue quokka",
    seed: Annotated[int, typer.Option(help="Seed of the attack and the validator.")] = 0,
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")] = False,
) -> None:
    """Poison a spam training set, train on it and compare clean vs poisoned test metrics.

    Writes the poisoned training set as a '<label>\\t<text>' file (the SMS format) and poison.json
    (rows changed, clean and poisoned spam precision/recall/F1, and with --validate the
    validator's detection precision/recall and the F1 after cleaning).
    """
    from modelshield.data.sms_spam import write_labelled_texts
    from modelshield.experiments.poisoning import build_poison_attack, poison_text_dataset

    owner = "modelshield poison"
    tsv, js = out / "poisoned_train.tsv", out / "poison.json"
    check_new_files([tsv, js], overwrite=force, owner=owner)
    check_range(
        "--rate",
        rate,
        owner=owner,
        low=0.0,
        high=1.0,
        fix="Give the share of the spam training rows to poison, e.g. --rate 0.2.",
    )
    build_poison_attack(attack, rate=rate, phrase=phrase)  # validate the settings before loading data
    kind = _spam_kind(model)
    with render.progress_bar("poisoning") as progress, render.show_warnings():
        progress(0, 1, f"{attack} rate={rate:g}")
        ds = load_text_data(data, data_dir, seed=seed)
        run = poison_text_dataset(
            ds, attack=attack, rate=rate, model=kind, validate=validate, phrase=phrase, seed=seed
        )
        progress(1, 1, f"{attack} rate={rate:g}")
    write_labelled_texts(tsv, run.result.x_poisoned, run.result.y_poisoned, overwrite=force)
    payload = {**run.summary, "model": model, "poisoned_train_file": str(tsv), "data_source": ds.source}
    write_json(js, payload, overwrite=force)
    table = Table(title=f"{attack} ({100 * rate:g}% of spam training rows) on {model}", header_style="bold")
    for col in ("test metric", "clean", "poisoned", "after cleaning"):
        table.add_column(col, justify="left" if col == "test metric" else "right")
    after = run.summary.get("validation", {}).get("after_cleaning", {})
    for key in ("precision", "recall", "f1", "accuracy"):
        table.add_row(
            f"spam {key}" if key != "accuracy" else key,
            f"{run.summary['clean'][key]:.4f}",
            f"{run.summary['poisoned'][key]:.4f}",
            f"{after[key]:.4f}" if key in after else "-",
        )
    render.out().print(table)
    if validate:
        det = run.summary["validation"]["detection"]
        recall = "n/a" if det["recall"] is None else f"{det['recall']:.3f}"
        render.say(
            f"validator flagged {det['flagged']} rows: precision {det['precision']:.3f}, "
            f"recall {recall} of the {det['poisoned']} poisoned rows"
        )
    render.say(f"Poisoned set written to {escape(str(tsv))}; metrics to {escape(str(js))}")


def validate_data(
    json_out: Annotated[Path, typer.Option("--json", help="Write the validation report here.")],
    data: Annotated[
        str, typer.Option(help=_DATA_HELP + f" '{SMS_SPAM}' validates its training split.")
    ] = SMS_SPAM,
    reference: Annotated[
        Path | None, typer.Option(help="A trusted '<label>\\t<text>' file to test drift against.")
    ] = None,
    top: Annotated[int, typer.Option(help="Suspicious rows listed (most suspicious first).")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the cross-validation split.")] = 0,
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --json file.")] = False,
) -> None:
    """Validate a labelled text training set: label issues, duplicates, outliers and drift.

    Ranks the suspicious rows with their reasons (row numbers are file line numbers for a file)
    and writes them with a summary to --json.
    """
    from modelshield.data import load_sms_spam
    from modelshield.data.sms_spam import read_labelled_texts
    from modelshield.defenses.data import validate_dataset

    owner = "modelshield validate-data"
    check_new_files([json_out], overwrite=force, owner=owner)
    if top < 1:
        raise ConfigError(f"{owner}: '--top' must be an int >= 1; got {top!r}. Use e.g. --top 100.")
    with render.progress_bar("validating") as progress, render.show_warnings():
        progress(0, 1, "reading")
        if data == SMS_SPAM:
            ds = load_sms_spam(data_dir)
            texts, y, source, lines = ds.texts_train, ds.y_train, ds.source, None
        else:
            path = Path(data).expanduser()
            texts, y = read_labelled_texts(path)
            source, lines = str(path), True
        ref = None
        if reference is not None:
            ref_texts, ref_y = read_labelled_texts(reference)
            ref = (list(ref_texts), ref_y)
        progress(0, 1, f"validating {len(texts)} rows")
        report = validate_dataset(list(texts), y, reference=ref, seed=seed)
        progress(1, 1, "done")
    payload = report.to_dict(top=top)
    for row in payload["rows"]:
        row["text"] = texts[row["index"]]
        if lines:
            row["line"] = row["index"] + 1
    payload = {
        **payload,
        "data": data,
        "source": source,
        "reference": None if reference is None else str(reference),
        "row_numbers": "file line numbers in 'line'" if lines else "indices into the training split",
    }
    write_json(json_out, payload, overwrite=force)
    table = Table(title=f"Most suspicious of {report.n} rows", header_style="bold")
    for col in ("row", "score", "label", "reasons", "text"):
        table.add_column(col)
    for row in payload["rows"][:10]:
        table.add_row(
            str(row.get("line", row["index"])),
            f"{row['score']:.2f}",
            str(row["label"]),
            escape("; ".join(row["codes"])),
            escape(row["text"][:60]),
        )
    render.out().print(table)
    render.say(
        f"{len(report.rows)} rows flagged, {int(report.removed.sum())} would be removed; "
        f"report written to {escape(str(json_out))}"
    )
