"""Threshold parsing and checking against report summary metrics."""

from __future__ import annotations

import pytest

from modelshield.assess import Threshold, check_thresholds, parse_threshold
from modelshield.errors import ConfigError

REPORT = {"summary": {"metrics": {"clean_accuracy": 0.97, "robust_accuracy": 0.42,
                                  "attack_success_rate": 0.55, "missing": None}}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("robust_accuracy=0.6", Threshold(metric="robust_accuracy", op=">=", value=0.6)),
        (" robust_accuracy >= 0.6 ", Threshold(metric="robust_accuracy", op=">=", value=0.6)),
        ("attack_success_rate<=0.5", Threshold(metric="attack_success_rate", op="<=", value=0.5)),
        ("evasion.robust_to_clean_ratio=1e-1", Threshold(metric="evasion.robust_to_clean_ratio", op=">=",
                                                         value=0.1)),
    ],
)
def test_parse_threshold(text: str, expected: Threshold) -> None:
    assert parse_threshold(text) == expected


@pytest.mark.parametrize("text", ["robust_accuracy", "robust_accuracy 0.6", "=0.6", "robust accuracy=0.6",
                                  "robust_accuracy=", "robust_accuracy>0.6"])
def test_parse_threshold_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ConfigError, match="METRIC=VALUE"):
        parse_threshold(text)


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "0.6.1"])
def test_parse_threshold_rejects_non_finite_values(value: str) -> None:
    with pytest.raises(ConfigError, match=f"robust_accuracy.*finite number; got '{value}'"):
        parse_threshold(f"robust_accuracy={value}")


def test_check_thresholds_reports_each_miss() -> None:
    failures = check_thresholds(REPORT, [parse_threshold("robust_accuracy=0.6"),
                                         parse_threshold("clean_accuracy=0.9"),
                                         parse_threshold("attack_success_rate<=0.5")])
    assert len(failures) == 2
    assert "robust_accuracy is 0.42" in failures[0] and "at least 0.6" in failures[0]
    assert "attack_success_rate is 0.55" in failures[1] and "at most 0.5" in failures[1]


def test_check_thresholds_passes_on_the_boundary() -> None:
    assert check_thresholds(REPORT, [parse_threshold("robust_accuracy=0.42")]) == []
    assert check_thresholds(REPORT, [parse_threshold("attack_success_rate<=0.55")]) == []


def test_missing_value_never_meets_a_threshold() -> None:
    (msg,) = check_thresholds(REPORT, [parse_threshold("missing=0")])
    assert "missing is nan" in msg


def test_unknown_metric_lists_available_names() -> None:
    with pytest.raises(ConfigError, match=r"one of the summary metrics attack_success_rate, clean_accuracy"
                                          r".*got 'robust_acc'"):
        check_thresholds(REPORT, [parse_threshold("robust_acc=0.5")])
