"""Assessments split into jobs (issue #20): the report's numbers are those of ``assess.run`` in one
process, bit for bit, on every backend, worker count and shard size; a crashed worker is retried;
a section whose job always crashes is reported failed while the others complete; killing the
driver and rerunning recomputes no finished job; workers refuse a changed target."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import testkit.assess_sections  # noqa: F401  (registers the test-* sections)
import torch
from testkit.cli import invoke, one_error_line
from testkit.driver import kill_after_checkpoints

from modelshield.assess import AssessmentPlan, BlackBoxPlan, EvasionPlan, ExtractionPlan, run
from modelshield.assess.report import report_numbers
from modelshield.assess.suite import target_inputs
from modelshield.errors import IntegrityError
from modelshield.runner import InlineExecutor, Job, ProcessExecutor, run_jobs
from modelshield.runner.assess import assess_section, plan_spec, run_assessment
from modelshield.targets import TargetRef, target_digests

pytestmark = pytest.mark.filterwarnings("ignore::modelshield.errors.EvaluationWarning")  # small plans

TESTS = Path(__file__).resolve().parents[1]
REF = TargetRef(model="digits-cnn", n=60)
PLAN = AssessmentPlan(sections=("evasion", "blackbox", "extraction"), n=60, batch_size=20, seed=3,
                      evasion=EvasionPlan(attacks=("fgsm", "pgd", "square"), eps=(0.0, 0.1), steps=4),
                      blackbox=BlackBoxPlan(n=10, budgets=(30,), hsj_budgets=(30,)),
                      extraction=ExtractionPlan(budgets=(50,), epochs=2))


@pytest.fixture(scope="module")
def reference() -> Iterator[dict[str, Any]]:
    """The plan run by ``assess.run`` in this process, one torch thread (the runner's default)."""
    from modelshield.cli._target import torch_threads

    with torch_threads(1):
        target = REF.load()  # trains digits-cnn on a cold session cache (a few seconds)
        yield report_numbers(run(plan=PLAN, **target_inputs(target)).to_dict())


def test_inline_jobs_give_the_in_process_report(reference: dict[str, Any], tmp_path: Path) -> None:
    done = run_assessment(REF, PLAN, InlineExecutor(threads=1), checkpoint=tmp_path / "ckpt", shard_size=40)
    report = done.assessment.to_dict()
    assert report_numbers(report) == reference
    # 3 attacks x 2 eps x 2 shards + blackbox + extraction
    assert done.counts == {"done": 14, "cached": 0, "failed": 0}
    assert report["provenance"]["runner"]["executor"] == "inline"
    again = run_assessment(REF, PLAN, InlineExecutor(threads=1), checkpoint=tmp_path / "ckpt", shard_size=40)
    assert again.counts == {"done": 0, "cached": 14, "failed": 0}
    assert report_numbers(again.assessment.to_dict()) == reference


@pytest.mark.parametrize(("workers", "shard_size"), [(1, 60), (2, 20), (3, 40)])
def test_process_pool_gives_the_in_process_report(reference: dict[str, Any], workers: int,
                                                  shard_size: int) -> None:
    done = run_assessment(REF, PLAN, ProcessExecutor(workers=workers), shard_size=shard_size)
    assert done.counts["failed"] == 0
    assert report_numbers(done.assessment.to_dict()) == reference


def test_a_crashed_worker_is_retried_and_an_always_crashing_section_is_reported_failed(
        reference: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSHIELD_TEST_MARKER", str(tmp_path / "marker"))  # workers inherit it
    plan = AssessmentPlan(sections=(*PLAN.sections, "test-crash-always", "test-crash-once"), n=PLAN.n,
                          batch_size=PLAN.batch_size, seed=PLAN.seed, evasion=PLAN.evasion,
                          blackbox=PLAN.blackbox, extraction=PLAN.extraction)
    done = run_assessment(REF, plan, ProcessExecutor(workers=2), retries=1, shard_size=60)
    report = done.assessment.to_dict()
    by_id = {s["id"]: s for s in report["sections"]}
    crashed = by_id["test-crash-always"]
    assert crashed["metrics"]["failed"] is True and "WorkerCrashed" in crashed["summary"]
    assert crashed["warnings"] and "not assessed" in crashed["warnings"][0]
    assert (tmp_path / "marker").exists()  # the other section crashed once, then ran again
    assert by_id["test-crash-once"]["metrics"]["mean_label"] == pytest.approx(float(
        REF.load().y.double().mean()))
    failed = report["provenance"]["runner"]["failed_jobs"]
    assert [j["section"] for j in failed] == ["test-crash-always"], [j["error"] for j in failed]
    # The other sections are complete and carry the in-process numbers.
    numbers = report_numbers(report)
    assert [s for s in numbers["sections"] if not s["id"].startswith("test-")] == reference["sections"]


def test_a_section_that_reads_earlier_ones_runs_after_them(tmp_path: Path) -> None:
    plan = AssessmentPlan(sections=("evasion", "blackbox", "test-reads-earlier"), n=20, batch_size=20,
                          evasion=EvasionPlan(attacks=("fgsm",), eps=(0.1,)),
                          blackbox=BlackBoxPlan(n=5, budgets=(10,), hsj_budgets=()))
    done = run_assessment(REF, plan, InlineExecutor(threads=1))
    seen = done.assessment.sections[-1].metrics["seen"]
    assert set(seen) == {"blackbox"}  # the evasion section is assembled by the driver, after the jobs
    assert len(done.runs) == 2


def test_a_worker_refuses_a_target_whose_digests_differ() -> None:
    target = REF.load()
    digests = {**target_digests(target), "points_sha256": "0" * 64}
    params = {"target": REF.to_dict(), "digests": digests, "plan": plan_spec(PLAN), "section": "blackbox",
              "plugins": [], "earlier": {}}
    with pytest.raises(IntegrityError, match="points_sha256 must equal the driver's"):
        assess_section(params)
    run = run_jobs([Job("assess-section", params)], InlineExecutor(), retries=2)
    assert run.reports[0].error_type == "IntegrityError" and run.reports[0].attempts == 1  # not retried


def test_shard_size_must_be_a_multiple_of_the_batch_size() -> None:
    from modelshield.errors import ConfigError

    with pytest.raises(ConfigError, match="'shard_size' must be a multiple of the batch size 20"):
        run_assessment(REF, PLAN, InlineExecutor(), shard_size=30)


def _assess_cmd(out: Path, *extra: str) -> list[str]:
    return ["--model", "digits-cnn", "--out", str(out), "--n", "60", "--batch-size", "10", "--sections",
            "evasion", "--attacks", "pgd,fgsm", "--eps", "0,0.05,0.1", "--steps", "20", "--seed", "1", *extra]


def test_cli_backends_give_the_in_process_report(tmp_path: Path) -> None:
    plain = invoke("assess", *_assess_cmd(tmp_path / "plain"))
    assert plain.exit_code == 0, plain.output
    jobs = invoke("assess", *_assess_cmd(tmp_path / "jobs", "--backend", "processes", "--workers", "2",
                                         "--shard-size", "20"))
    assert jobs.exit_code == 0, jobs.output
    assert "18 run, 0 from" in jobs.output
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("plain", "jobs"))
    assert report_numbers(a) == report_numbers(b)
    assert b["provenance"]["runner"]["counts"] == {"done": 18, "cached": 0, "failed": 0}
    assert (tmp_path / "jobs" / "checkpoints").is_dir()


@pytest.mark.parametrize(("args", "word"), [
    (("--backend", "cluster"), "'--backend' must be one of inline, processes, ray"),
    (("--shard-size", "20"), "'--shard-size' is used with --backend"),
    (("--backend", "inline", "--shard-size", "15"), "multiple of --batch-size 10"),
    (("--backend", "inline", "--workers", "0"), "'--workers' must be an int >= 1"),
    (("--backend", "processes", "--ray-address", "auto"), "'--ray-address' is used by --backend ray"),
    (("--backend", "inline", "--retries", "-1"), "'--retries' must be an int >= 0"),
])
def test_bad_runner_options_exit_2_with_one_line(tmp_path: Path, args: tuple[str, ...], word: str) -> None:
    line = one_error_line(invoke("assess", *_assess_cmd(tmp_path / "out", *args)))
    assert word in line
    assert not (tmp_path / "out").exists()


def test_killing_the_driver_then_rerunning_recomputes_no_finished_job(tmp_path: Path) -> None:
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    cmd = [sys.executable, "-c", "from modelshield.cli.app import main; main()", "--threads", "1", "assess",
           *_assess_cmd(out, "--backend", "inline", "--shard-size", "20", "--checkpoint", str(ckpt))]
    finished = kill_after_checkpoints(cmd, ckpt, 5)
    assert 5 <= finished < 18 and not (out / "report.json").exists()
    again = invoke("assess", *_assess_cmd(out, "--backend", "inline", "--shard-size", "20",
                                          "--checkpoint", ckpt))
    assert again.exit_code == 0, again.output
    counts = json.loads((out / "report.json").read_text())["provenance"]["runner"]["counts"]
    assert counts == {"done": 18 - finished, "cached": finished, "failed": 0}
    whole = invoke("assess", *_assess_cmd(tmp_path / "whole"))
    assert whole.exit_code == 0, whole.output
    assert report_numbers(json.loads((out / "report.json").read_text())) == report_numbers(
        json.loads((tmp_path / "whole" / "report.json").read_text()))


def _readme_assess_commands() -> list[list[str]]:
    import re
    import shlex

    text = (TESTS.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("## Beyond one machine", 1)[1].split("\n## ", 1)[0]
    joined = section.replace("\\\n", " ")
    return [shlex.split(c) for c in re.findall(r"^(modelshield [^\n]*assess [^\n]*)$", joined, flags=re.M)]


def test_readme_assess_commands_use_existing_options() -> None:
    from typer.main import get_command

    from modelshield.cli.app import app

    commands = _readme_assess_commands()
    assert {c[c.index("--backend") + 1] for c in commands} == {"processes", "ray"}
    cmd: Any = get_command(app).get_command(None, "assess")  # type: ignore[attr-defined]
    known = {o for p in cmd.params for o in p.opts}
    for args in commands:
        assert all(a in known for a in args if a.startswith("--") and a != "--threads"), args


@pytest.mark.slow
def test_readme_processes_command_runs(tmp_path: Path) -> None:
    args = next(c for c in _readme_assess_commands() if "processes" in c)
    args[args.index("--out") + 1] = str(tmp_path / "out")
    done = invoke(*args[3:]) if args[1] == "--threads" else invoke(*args[1:])
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["provenance"]["runner"]["counts"]["failed"] == 0


def test_relative_model_and_data_paths_reach_workers_as_absolute_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelshield import zoo
    from modelshield.data import load_dataset

    module = zoo.load("digits-cnn").module
    torch.save(module.state_dict(), tmp_path / "model.pt")
    ds = load_dataset("digits")
    np.savez(tmp_path / "digits.npz", x=ds.x_train.numpy(), y=ds.y_train.numpy(),
             x_test=ds.x_test.numpy(), y_test=ds.y_test.numpy())
    monkeypatch.chdir(tmp_path)
    done = invoke("assess", "--model", "model.pt", "--arch", "cnn-8x8", "--data", "digits.npz", "--out",
                  "out", "--n", "20", "--batch-size", "10", "--sections", "evasion", "--attacks", "fgsm",
                  "--eps", "0.1", "--backend", "inline", "--shard-size", "10")
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert Path(report["model"]["path"]).is_absolute() and report["model"]["path"].endswith("model.pt")
    assert report["provenance"]["runner"]["counts"]["done"] == 2


def test_a_defended_model_file_reaches_workers_by_reference(tmp_path: Path) -> None:
    from modelshield import zoo
    from modelshield.assess.plan import DefensesPlan, defended_from_ref
    from modelshield.cli._target import torch_threads

    defended = zoo.build("cnn-8x8", seed=1)  # any white-box model of the same inputs and classes
    torch.save(defended.state_dict(), tmp_path / "defended.pt")
    module, name = defended_from_ref(str(tmp_path / "defended.pt"), arch="cnn-8x8")
    plan = AssessmentPlan(sections=("defenses",), n=20, batch_size=10, seed=2,
                          defenses=DefensesPlan(defended=module, name=name, eps=0.1, steps=3,
                                                square_queries=20, seeds=1, curve_factors=(1.0,), n=20))
    with torch_threads(1):
        reference = report_numbers(run(plan=plan, **target_inputs(REF.load())).to_dict())
    ref = {"ref": str(tmp_path / "defended.pt"), "arch": "cnn-8x8", "trust_torchscript": False}
    done = run_assessment(REF, plan, InlineExecutor(threads=1), defended_ref=ref)
    assert done.counts == {"done": 1, "cached": 0, "failed": 0}  # a job, not the driver
    assert report_numbers(done.assessment.to_dict()) == reference
    torch.save(zoo.build("cnn-8x8", seed=5).state_dict(), tmp_path / "defended.pt")  # changed under the run
    with pytest.raises(IntegrityError, match="defenses"):
        run_assessment(REF, plan, InlineExecutor(threads=1), defended_ref=ref)
