"""The README's "Assess your own model" commands, run as written (issue #16).

The commands are read from README.md between ``<!-- own-model-examples -->`` and
``<!-- /own-model-examples -->``: ``python examples/make_own_models.py`` and one
``modelshield assess`` per format. By default (fast) the block is checked for shape (the script,
five formats, every option one that ``assess`` has, every file one the script writes) and the
text-callable command runs in-process on the script's messages. With ``-m slow`` the script and
every command run in a shell from the repository root, exactly as written but for
``examples/own`` pointing into a temporary folder, and each report's sections must match its
model's kind (image: evasion, blackbox, extraction; tabular: tabular, blackbox, extraction,
poisoning; text: poisoning, text-evasion, extraction; sections for every kind may follow).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from modelshield.cli.app import app

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- own-model-examples -->", "<!-- /own-model-examples -->"
SCRIPT = "python examples/make_own_models.py"
OWN = re.compile(r"examples/own(?=/|\s|$)")
SECTIONS = {
    "image": ["evasion", "blackbox", "extraction"],
    "tabular": ["tabular", "blackbox", "extraction", "poisoning"],
    "text": ["poisoning", "text-evasion", "extraction"],
}
# model file suffix (or a module:function callable) -> (kind, model format, data format)
FORMATS = {
    ".pt": ("image", "state_dict", "npz"),
    ".skops": ("tabular", "skops", "csv"),
    ".json": ("tabular", "xgboost", "csv"),
    ".onnx": ("image", "onnx", "image-folder"),
    "callable": ("text", "callable", "text-lines"),
}


def readme_commands() -> list[str]:
    """The shell commands of the README's example block: comments dropped, continuations joined."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "README lost its example markers"
    block = text[text.index(BEGIN) + len(BEGIN): text.index(END)]
    fenced = re.findall(r"```bash\n(.*?)```", block, flags=re.S)
    assert len(fenced) == 1, "the example block must hold one ```bash fence"
    commands, pending = [], ""
    for line in fenced[0].splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            commands.append(pending.strip())
            pending = ""
    assert not pending, f"a command ends with a continuation: {pending!r}"
    return commands


def assess_args(command: str) -> tuple[dict[str, str], list[str]]:
    """(environment assignments, arguments after 'modelshield') of one assess command."""
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[:2] == ["modelshield", "assess"], command
    return env, words[1:]


def option(args: list[str], name: str) -> str:
    assert args.count(name) == 1, (name, args)
    return args[args.index(name) + 1]


def model_format(args: list[str]) -> str:
    model = option(args, "--model")
    return "callable" if ":" in model else Path(model).suffix


ASSESS = [c for c in readme_commands() if c != SCRIPT]


def _id(command: str) -> str:
    return model_format(assess_args(command)[1]).lstrip(".")


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_own_models", REPO / "examples" / "make_own_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_report(out: Path, args: list[str]) -> dict[str, Any]:
    """report.json of a finished command: sections, formats and provenance fit the model."""
    kind, model_fmt, data_fmt = FORMATS[model_format(args)]
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert (out / "report.html").stat().st_size > 0
    ids = [s["id"] for s in report["sections"]]
    by_kind = {sid for kind_ids in SECTIONS.values() for sid in kind_ids}
    # the kind's sections in order, none of another kind's (sections for every kind may follow)
    assert [sid for sid in ids if sid in by_kind] == SECTIONS[kind], ids
    assert report["model"]["format"] == model_fmt and report["model"]["modality"] == kind
    assert report["data"]["format"] == data_fmt and len(report["data"]["sha256"]) == 64
    for section in report["sections"]:
        metrics = section["metrics"]
        if kind == "text" and section["id"] == "extraction" and metrics.get("skipped"):
            assert metrics.get("reason"), section  # a section that cannot run says why
            continue
        assert not metrics.get("skipped"), (section["id"], section["summary"])
    return report


# -- fast: the block's shape, and the text command in-process -------------------------------------

def test_the_block_is_the_script_then_one_assess_command_per_format() -> None:
    commands = readme_commands()
    assert commands[0] == SCRIPT and SCRIPT not in commands[1:]
    assert sorted(_id(c) for c in ASSESS) == sorted(f.lstrip(".") for f in FORMATS)
    outs = [option(assess_args(c)[1], "--out") for c in ASSESS]
    assert len(set(outs)) == len(outs) and all(o.startswith("examples/own/reports/") for o in outs)


def test_every_option_is_an_assess_option_and_every_file_one_the_script_writes() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    assess = group.get_command(group.context_class(group), "assess")  # commands load lazily
    assert assess is not None
    known = {opt for p in assess.params for opt in p.opts}
    script = (REPO / "examples" / "make_own_models.py").read_text(encoding="utf-8")
    for env, args in map(assess_args, ASSESS):
        assert set(env) <= {"PYTHONPATH"} and env.get("PYTHONPATH", "examples") == "examples"
        flags = [a for a in args[1:] if a.startswith("--")]
        assert set(flags) <= known, set(flags) - known
        for name in ("--model", "--data"):
            ref = option(args, name)
            if ":" in ref:  # a callable: in examples/own_models.py, which PYTHONPATH=examples exposes
                module, func = ref.split(":")
                assert env == {"PYTHONPATH": "examples"} and (REPO / "examples" / f"{module}.py").is_file()
                assert f"def {func}(" in (REPO / "examples" / f"{module}.py").read_text(encoding="utf-8")
                continue
            assert ref.startswith("examples/own/") and f'"{Path(ref).name}' in script, ref
        if "--arch" in args:
            assert env == {"PYTHONPATH": "examples"} and option(args, "--arch") == "own_models:make_mlp"


@pytest.fixture
def own_models_on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """PYTHONPATH=examples, in-process; own_models is forgotten afterwards."""
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    yield
    sys.modules.pop("own_models", None)


def test_the_text_command_runs_on_the_built_in_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_models_on_path: None
) -> None:
    monkeypatch.delenv("MODELSHIELD_DATA", raising=False)
    (tmp_path / "own").mkdir()
    assert "96 built-in messages" in load_script().make_text(tmp_path / "own", None)
    [command] = [c for c in ASSESS if _id(c) == "callable"]
    _, args = assess_args(OWN.sub(str(tmp_path / "own"), command))
    result = CliRunner().invoke(app, ["--threads", "1", *args])
    assert result.exit_code == 0, result.output
    report = check_report(Path(option(args, "--out")), args)
    poisoning, evasion = (next(s for s in report["sections"] if s["id"] == sid)
                          for sid in ("poisoning", "text-evasion"))
    assert poisoning["metrics"]["label_issues"] == 0  # the built-in messages are labelled right
    assert evasion["metrics"]["n"] > 0 and 0.0 <= evasion["headline"]["text_evasion_success_rate"] <= 1.0


# -- slow: the script and every command in a shell, as written ------------------------------------

def shell(command: str, *, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """Run command with bash from the repository root, this interpreter's bin/ first on PATH and
    one torch thread (as the README's times; on a shared CI core, more threads only wait)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The script's folder, made by the README's own command (with --out into a temporary folder)."""
    folder = tmp_path_factory.mktemp("readme") / "own"
    done = shell(f"{SCRIPT} --out {shlex.quote(str(folder))}")
    assert done.returncode == 0, done.stderr
    assert "Written to" in done.stdout
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("command", ASSESS, ids=_id)
def test_readme_command_runs_as_written(command: str, own: Path) -> None:
    moved = OWN.sub(str(own), command)
    done = shell(moved)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _, args = assess_args(moved)
    check_report(Path(option(args, "--out")), args)
