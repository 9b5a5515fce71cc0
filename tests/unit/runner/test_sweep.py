"""Sweep plans (issue #20, item 1): YAML parsing and one-line errors for hostile plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelshield.errors import ConfigError, MissingDataError
from modelshield.runner.sweep import SweepPlan, check_models_cached

GOOD = """
models: [digits-cnn, {model: own.pt, data: sklearn:digits, arch: mlp}]
attacks:
  - {name: pgd, eps: [0.1, 0.2], steps: 5}
  - {name: FGSM, eps: 0.3, norm: "2"}
n: 40
seed: 3
shard_size: 20
batch_size: 10
"""


def _plan(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "plan.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def _error(tmp_path: Path, text: str) -> str:
    path = _plan(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        SweepPlan.from_yaml(path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg  # names the file
    return msg


def test_good_plan_parses_into_cells(tmp_path: Path) -> None:
    plan = SweepPlan.from_yaml(_plan(tmp_path, GOOD))
    assert [m.model for m in plan.models] == ["digits-cnn", "own.pt"]
    assert plan.models[1].data == "sklearn:digits" and plan.models[1].arch == "mlp"
    assert plan.attacks[0].eps == (0.1, 0.2) and plan.attacks[0].steps == 5
    assert plan.attacks[1].name == "fgsm" and plan.attacks[1].eps == (0.3,) and plan.attacks[1].norm == "2"
    assert (plan.n, plan.seed, plan.shard_size, plan.batch_size) == (40, 3, 20, 10)
    cells = plan.cells
    assert len(cells) == 2 * 3
    assert [(m.model, a.name, e) for m, a, e in cells[:3]] == [
        ("digits-cnn", "pgd", 0.1), ("digits-cnn", "pgd", 0.2), ("digits-cnn", "fgsm", 0.3)]
    again = SweepPlan.from_dict(plan.to_dict() | {"models": [m.model if m.data is None else m.to_dict()
                                                              for m in plan.models]})
    assert again == plan


def test_defaults(tmp_path: Path) -> None:
    plan = SweepPlan.from_yaml(_plan(tmp_path, "models: [digits-cnn]\nattacks: [{name: pgd, eps: 0.1}]\n"))
    assert (plan.n, plan.seed, plan.shard_size, plan.batch_size) == (100, 0, 50, 25)
    assert plan.attacks[0].norm == "inf" and plan.attacks[0].steps is None


@pytest.mark.parametrize(("text", "words"), [
    ("models: [digits-cnn]\nattacks: [{name: pgdd, eps: 0.1}]\n", ["attacks[0].name", "'pgdd'", "'pgd'"]),
    ("models: [digits-cnn]\nattacks: [{name: pgd, eps: 0}]\n", ["attacks[0].eps", "> 0", "got 0"]),
    ("models: [digits-cnn]\nattacks: [{name: pgd, eps: [0.1, -0.2]}]\n", ["attacks[0].eps", "-0.2"]),
    ("models: [digits-cnn]\nattacks: [{name: pgd, eps: .nan}]\n", ["attacks[0].eps", "nan"]),
    ("models: [digits-cnn]\nattacks: [{name: pgd, eps: yes}]\n", ["attacks[0].eps", "True"]),
    ("models: [digits-cnn]\nattacks: [{name: pgd}]\n", ["attacks[0].eps", "must be given"]),
    ("models: [digits-cnn]\nattacks: [{name: pgd, eps: []}]\n", ["attacks[0].eps", "[]"]),
    ("attacks: [{name: pgd, eps: 0.1}]\n", ["'models'", "must be given"]),
    ("models: []\nattacks: [{name: pgd, eps: 0.1}]\n", ["'models'", "non-empty"]),
    ("models: [digits-cnn]\nattacks: [{name: pgd, eps: 0.1}]\nmodel: x\n", ["'model'", "'models'"]),
    ("models: [digits-cnn]\nattacks: [{name: pgd, epsilon: 0.1}]\n", ["attacks[0]", "'epsilon'", "'eps'"]),
    ("models: [digits-cnn]\nattacks: [{name: pgd, eps: 0.1, setps: 3}]\n", ["'setps'", "'steps'"]),
    ("models: [{modle: x.pt}]\nattacks: [{name: pgd, eps: 0.1}]\n", ["models[0]", "'modle'", "'model'"]),
    ("models: [digits-cnn]\nattacks: [{name: pgd, eps: 0.1, norm: 3}]\n", ["attacks[0].norm", "3"]),
    ("models: [digits-cnn]\nattacks: [{name: pgd, eps: 0.1, steps: 0}]\n", ["attacks[0].steps", ">= 1"]),
    ("models: [digits-cnn]\nattacks: [{name: pgd, eps: 0.1}]\nn: -5\n", ["'n'", "-5"]),
    ("models: [digits-cnn]\nattacks: [{name: pgd, eps: 0.1}]\nshard_size: 30\n",
     ["'shard_size'", "30", "25"]),
    ("models: [digits-cnn, digits-cnn]\nattacks: [{name: pgd, eps: 0.1}]\n", ["repeat", "digits-cnn"]),
    ("models: [digits-cnn]\nattacks: [{name: pgd, eps: [0.1, 0.1]}]\n", ["repeat", "0.1"]),
    ("- digits-cnn\n", ["mapping", "list"]),
    ("models: [digits-cnn\n", ["valid YAML", "line"]),
    ("models: [digits-cnn]\nattacks: !!python/object:os.system {}\n", ["valid YAML"]),
])
def test_hostile_plans_fail_with_one_line(tmp_path: Path, text: str, words: list[str]) -> None:
    msg = _error(tmp_path, text)
    for w in words:
        assert w in msg, (w, msg)


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="readable") as info:
        SweepPlan.from_yaml(tmp_path / "nope.yaml")
    assert "\n" not in str(info.value)


def test_uncached_zoo_model_names_the_train_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSHIELD_CACHE", str(tmp_path / "empty-cache"))
    plan = SweepPlan.from_dict({"models": ["digits-cnn", "digits-cnn-at"],
                                "attacks": [{"name": "fgsm", "eps": 0.1}]}, source="p.yaml")
    with pytest.raises(MissingDataError) as info:
        check_models_cached(plan)
    msg = str(info.value)
    assert "`modelshield zoo train digits-cnn`" in msg and "`modelshield zoo train digits-cnn-at`" in msg
    assert "\n" not in msg
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").rglob("*.pt"))


def test_a_failing_cell_is_reported_while_the_others_complete(tmp_path: Path) -> None:
    from modelshield import zoo
    from modelshield.runner import InlineExecutor
    from modelshield.runner.sweep import run_sweep

    zoo.load("digits-cnn")  # trained once on a cold session cache (a few seconds)
    gone = {"model": str(tmp_path / "gone.pt"), "data": "digits"}
    plan = SweepPlan.from_dict({"models": ["digits-cnn", gone],
                                "attacks": [{"name": "fgsm", "eps": [0.1, 0.3]}],
                                "n": 20, "shard_size": 10, "batch_size": 10}, source="p.yaml")
    result = run_sweep(plan, InlineExecutor(threads=1), checkpoint=tmp_path / "ckpt", retries=1)
    ok, bad = result.rows[:2], result.rows[2:]
    assert [r.status for r in ok] == ["ok", "ok"] and [r.status for r in bad] == ["failed", "failed"]
    assert ok[1].robust_accuracy is not None and ok[0].robust_accuracy is not None
    assert ok[1].robust_accuracy <= ok[0].robust_accuracy  # a larger budget breaks more
    assert all(r.failed == 2 and r.error and r.clean_accuracy is None for r in bad)
    assert result.counts == {"done": 4, "cached": 0, "failed": 4} and not result.ok
    assert len(result.failed_jobs) == 4 and all(j["error"] for j in result.failed_jobs)
    d = result.to_dict()
    assert d["counts"]["failed"] == 4 and len(d["rows"]) == 4
    again = run_sweep(plan, InlineExecutor(threads=1), checkpoint=tmp_path / "ckpt", retries=0)
    assert again.counts == {"done": 0, "cached": 4, "failed": 4}  # finished jobs are not recomputed
    assert again.numbers()[:2] == result.numbers()[:2]
