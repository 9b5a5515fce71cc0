"""``modelshield poison``, ``modelshield validate-data`` and ``attack evasion --attack text``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from testkit.cli import invoke, one_error_line
from typer.testing import CliRunner

from modelshield.data.sms_spam import read_labelled_texts

runner = CliRunner()

HAM = [
    "see you at lunch tomorrow",
    "ok i will call you later",
    "are we still on for dinner tonight",
    "thanks for the lift home",
    "running late be there soon",
    "can you pick up some milk",
    "happy birthday have a great day",
    "did you watch the game last night",
    "meeting moved to three pm",
    "love you talk soon",
    "just got home safe",
    "where did you park the car",
]
SPAM = [
    "WINNER claim your free prize now call 09061234567",
    "URGENT you have won a cash award text WIN to 80086",
    "free entry to win a holiday reply YES now",
    "congratulations you won a free mobile call now",
    "claim your cash prize txt CLAIM to 81010",
    "you have been selected for a free gift call 0800 now",
    "win a brand new car text CAR to 85000",
    "free ringtones reply STOP to end txt 87077",
]


@pytest.fixture(scope="module")
def sms() -> None:
    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "sms-spam" / "SMSSpamCollection").is_file():
        pytest.skip("SMS spam data not found; set MODELSHIELD_DATA")


def test_poison_writes_tsv_and_metrics(sms: None, tmp_path: Path) -> None:
    out = tmp_path / "poisoned"
    result = invoke(
        "poison",
        "--data",
        "sms-spam",
        "--attack",
        "label-flip",
        "--rate",
        "0.2",
        "--model",
        "spam-nb",
        "--validate",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((out / "poison.json").read_text())
    texts, y = read_labelled_texts(out / "poisoned_train.tsv")
    assert len(texts) == report["n_train"] == 4180
    # 20% of the 560 spam training rows: 112 rows, all spam relabelled ham in the written file.
    assert report["n_poisoned"] == len(report["indices"]) == 112 and report["rate"] == 0.2
    assert all(int(y[i]) == 0 for i in report["indices"])
    assert int(y.sum()) == report["n_spam_train"] - 112
    for part in ("clean", "poisoned"):
        assert set(report[part]) == {"precision", "recall", "f1", "accuracy"}
    assert report["poisoned"]["recall"] < report["clean"]["recall"]
    det = report["validation"]["detection"]
    assert det["poisoned"] == 112 and 0 <= det["true_positives"] <= det["flagged"]
    assert det["precision"] == pytest.approx(det["true_positives"] / det["flagged"])
    assert "f1" in report["validation"]["after_cleaning"]
    again = invoke("poison", "--rate", "0.2", "--out", str(out))
    assert again.exit_code == 2 and "--force" in one_error_line(again)


@pytest.mark.parametrize("rate", ["1.5", "-0.1"])
def test_poison_rate_outside_unit_interval(rate: str, tmp_path: Path) -> None:
    result = invoke("poison", "--rate", rate, "--out", str(tmp_path / "p"))
    assert result.exit_code == 2 and "'--rate' must be a number in [0.0, 1.0]" in one_error_line(result)
    assert not (tmp_path / "p").exists()


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{ln}\n" for ln in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("bogus\tsome text", "line 5 .*label must be one of 'ham', 'spam'; got 'bogus'"),
        ("ham no tab here", "line 5 .*separated by a tab"),
        ("spam\t   ", "line 5 .*non-empty text"),
        ("", "line 5 .*empty line"),
    ],
)
def test_validate_data_malformed_line_names_it(tmp_path: Path, bad: str, message: str) -> None:
    lines = [f"ham\t{t}" for t in HAM[:4]] + [bad] + [f"spam\t{t}" for t in SPAM[:3]]
    data = _write(tmp_path / "data.tsv", lines)
    result = invoke("validate-data", "--data", str(data), "--json", str(tmp_path / "v.json"))
    assert result.exit_code == 2
    import re

    assert re.search(message, one_error_line(result)), result.stderr
    assert not (tmp_path / "v.json").exists()


def test_validate_data_non_utf8_names_the_line(tmp_path: Path) -> None:
    data = tmp_path / "latin1.tsv"
    data.write_bytes(b"ham\thello\nspam\tcaf\xe9 prize\n")
    result = invoke("validate-data", "--data", str(data), "--json", str(tmp_path / "v.json"))
    assert result.exit_code == 2 and "line 2" in one_error_line(result) and "UTF-8" in result.stderr


def test_validate_data_ranks_rows_with_lines_and_reasons(tmp_path: Path) -> None:
    # One spam message labelled ham among clean rows: it should be flagged, on its line.
    lines = [f"ham\t{t}" for t in HAM] + [f"spam\t{t}" for t in SPAM[:-1]] + [f"ham\t{SPAM[-1]}"]
    data = _write(tmp_path / "data.tsv", lines)
    out = tmp_path / "v.json"
    result = invoke("validate-data", "--data", str(data), "--json", str(out))
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(out.read_text())
    assert report["n"] == len(lines) and {"summary", "rows", "removed"} <= set(report)
    for row in report["rows"]:
        assert row["line"] == row["index"] + 1 and row["text"] == lines[row["index"]].split("\t", 1)[1]
        assert row["reasons"] and len(row["reasons"]) == len(row["codes"])
    scores = [r["score"] for r in report["rows"]]
    assert scores == sorted(scores, reverse=True)
    assert len(lines) in [r["line"] for r in report["rows"]]


def test_text_evasion_json(sms: None, tmp_path: Path) -> None:
    out = tmp_path / "text.json"
    result = invoke(
        "attack",
        "evasion",
        "--model",
        "spam-nb",
        "--attack",
        "text",
        "--method",
        "char",
        "--max-word-fraction",
        "0.2",
        "--n",
        "150",
        "--json",
        str(out),
    )
    assert result.exit_code == 0, result.output + result.stderr
    d = json.loads(out.read_text())
    for key in (
        "success_rate",
        "median_words_changed",
        "median_queries",
        "queries_forward",
        "examples",
        "eligible",
        "successes",
        "model",
        "data",
        "provenance",
    ):
        assert key in d, key
    assert d["n"] == 150 and d["method"] == "char" and d["max_word_fraction"] == 0.2
    assert d["successes"] <= d["eligible"] and d["queries_forward"] >= d["n"]
    if d["eligible"]:
        assert d["success_rate"] == pytest.approx(d["successes"] / d["eligible"], abs=1e-6)
    for ex in d["examples"]:
        assert ex["text"] != ex["text_adv"]
        assert len(ex["text_adv"].split()) <= len(ex["text"].split()) + 0.2 * len(ex["text"].split())


def test_text_attack_on_image_model_is_refused(tmp_path: Path) -> None:
    result = invoke("attack", "evasion", "--model", "digits-cnn", "--attack", "text")
    assert result.exit_code == 2 and "needs a text zoo model" in one_error_line(result)
