"""``modelshield defend`` (adversarial training, defensive distillation) and ``modelshield certify``.

Each command trains or loads a model, then evaluates it honestly: robust accuracy under
``Ensemble.standard`` (APGD-CE + APGD-T) and ``check_gradient_masking``, whose flags decide
whether a robustness claim may be made at all. ``certify`` reports randomized-smoothing
certified accuracy (Cohen et al., 2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.markup import escape
from rich.table import Table
from torch import Tensor, nn

from modelshield._checks import check_choice, check_range
from modelshield.assess import check_new_files, provenance, write_json
from modelshield.assess.masking import MaskingReport, check_gradient_masking
from modelshield.assess.plan import parse_floats
from modelshield.assess.suite import jsonable
from modelshield.attacks.evasion.ensemble import Ensemble
from modelshield.attacks.evasion.pgd import PGD
from modelshield.cli import _render as render
from modelshield.cli._target import load_target
from modelshield.cli.attack import (
    ARCH_HELP,
    MODEL_HELP,
    ArchOption,
    DataDirOption,
    DataOption,
    DeviceOption,
    TrustTorchScriptOption,
)
from modelshield.defenses.certification.smoothing import RandomizedSmoothing
from modelshield.defenses.training import METHODS, AdversarialTrainer, DefensiveDistillation
from modelshield.errors import ConfigError
from modelshield.models import TorchModel, eval_mode, resolve_device

__all__ = ["certify", "defend_app"]

OWNER = "modelshield defend"
defend_app = typer.Typer(help="Train a hardened model and evaluate it honestly (masking checks).",
                         no_args_is_help=True)


@dataclass(frozen=True, slots=True)
class _Start:
    """The model to train (fresh zoo architecture or a file's weights) and its data."""

    module: nn.Module
    arch: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    bounds: tuple[float, float]
    model_info: dict[str, Any]
    data_info: dict[str, Any]


def _start(model: str, *, data: str | None, data_dir: Path | None, arch: str | None, n: int,
           seed: int, owner: str, fresh: bool = True, trust_torchscript: bool = False,
           device: str = "cpu") -> _Start:
    """A fresh copy of a zoo architecture (seeded) or the weights of a model file, plus data, all on
    ``device`` (the training and the evaluation follow the module's device)."""
    from modelshield import zoo
    from modelshield.data import DATASETS, load_dataset
    from modelshield.models.load import load_model, weights_sha256

    check_range("--n", n, owner=owner, low=1, integer=True, fix="Use e.g. --n 200.")
    dev = resolve_device(device, owner=owner)
    if model in zoo.names():
        s = zoo.spec(model)
        if s.kind != "torch":
            torch_names = [m for m in zoo.names() if zoo.spec(m).kind == "torch"]
            raise ConfigError(f"{owner}: '--model' must be a neural-network zoo model "
                              f"({', '.join(torch_names)}) or a model file; got {model!r}, a "
                              f"{s.kind} model. Pick e.g. --model digits-cnn.")
        arch_name, dataset = (arch or s.arch), s.dataset
        if arch is not None:
            if not fresh:
                raise ConfigError(f"{owner}: '--arch' must not be given with a trained zoo model; got "
                                  f"{arch!r} with --model {model}. Drop --arch to use {model}'s weights.")
            _check_arch_input(arch, s.input_shape, owner)
        module = zoo.build(arch_name, seed=seed) if fresh else zoo.load(model, data_root=data_dir).module
        model_info: dict[str, Any] = {"name": model, "source": "zoo-architecture", "arch": arch_name}
    else:
        path = Path(model).expanduser()
        if not path.is_file():
            raise ConfigError(f"{owner}: '--model' must be a zoo name ({', '.join(zoo.names())}) or "
                              f"an existing model file; got {model!r}. Run 'modelshield zoo list'.")
        module, meta = load_model(path, arch=arch, trust_torchscript=trust_torchscript)
        found_arch = meta.get("arch") or arch
        if not isinstance(found_arch, str):
            raise ConfigError(f"{owner}: the architecture of {str(path)!r} must be known to save the "
                              "result; got none. Pass --arch, e.g. --arch cnn-8x8.")
        arch_name = found_arch
        name = data or meta.get("dataset")
        if not isinstance(name, str):
            raise ConfigError(f"{owner}: '--data' must name the data set of {str(path)!r} (one of "
                              f"{', '.join(DATASETS)}); got nothing. Pass e.g. --data digits.")
        dataset = name
        model_info = {"name": path.name, "source": "file", "path": str(path.resolve()),
                      "arch": arch_name, "initial_weights_sha256": weights_sha256(module)}
    ds = load_dataset(dataset, root=data_dir)
    model_info["device"] = str(dev)
    return _Start(module=module.to(dev), arch=arch_name, x_train=ds.x_train.float().to(dev),
                  y_train=ds.y_train.long().to(dev), x_test=ds.x_test[:n].float().to(dev),
                  y_test=ds.y_test[:n].long().to(dev), bounds=ds.bounds, model_info=model_info,
                  data_info={"name": ds.name, "sha256": ds.sha256, "split": "test",
                             "n": min(n, len(ds.y_test)), "n_train": int(ds.x_train.shape[0])})


def _check_arch_input(arch: str, input_shape: tuple[int, ...], owner: str) -> None:
    """ConfigError unless the zoo architecture arch takes inputs of input_shape."""
    from modelshield import zoo

    probe = torch.zeros((1, *input_shape))
    try:
        with torch.no_grad():
            zoo.build(arch)(probe)
    except RuntimeError as exc:
        raise ConfigError(f"{owner}: '--arch' must take inputs of shape {input_shape}; got {arch!r}, "
                          f"which does not ({str(exc).splitlines()[0][:120]}). Pick an architecture "
                          "made for this data, e.g. lenet-28-wide for MNIST.") from exc


def _check_eps(eps: float, bounds: tuple[float, float], owner: str) -> None:
    check_range("--eps", eps, owner=owner, low=0.0, high=bounds[1] - bounds[0], low_open=True,
                fix="Give an L-inf budget in input units, e.g. --eps 0.3 for MNIST, 0.1 for digits.")


def _masking(module: nn.Module, s: _Start, *, eps: float, steps: int, square_queries: int,
             seed: int) -> MaskingReport:
    with eval_mode(TorchModel(module, bounds=s.bounds)):
        return check_gradient_masking(
            module, s.x_test, s.y_test, eps=eps,
            attack=PGD(eps=eps, steps=steps, loss="ce", seed=seed),
            ensemble=Ensemble.standard(eps, seed=seed, steps=steps),
            square_queries=square_queries, seed=seed)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _verdict(report: MaskingReport) -> None:
    if report.robust_claim_allowed:
        render.say("robust claim allowed: [green]yes[/] (no sign of gradient masking)")
        return
    why = [] if report.usability is None or report.usability.usable else [
        f"not usable: {escape(report.usability.reason)}"]
    if report.flags:
        why.append(f"flags: {', '.join(report.flag_names)}")
    render.say(f"robust claim allowed: [red]no[/] ({'; '.join(why)})")


def _save(module: nn.Module, out: Path, s: _Start, *, meta: dict[str, Any], force: bool,
          announce: bool = True) -> str:
    from modelshield.models.load import save_model, weights_sha256

    meta = {**meta, "dataset": s.data_info["name"], "arch": s.arch, "weights_sha256": weights_sha256(module)}
    digest = save_model(module, out, arch=s.arch, meta=jsonable(meta), overwrite=force)
    if announce:
        render.say(f"Model written to {escape(str(out))} (sha256 {digest[:12]}...)")
    return digest


def _prov(s: _Start, module: nn.Module, seed: int, settings: dict[str, Any]) -> dict[str, Any]:
    from modelshield.models.load import weights_sha256

    info = {**s.model_info, "weights_sha256": weights_sha256(module)}
    return provenance(model_info=info, data_info=s.data_info, seed=seed, attacks=settings)


@defend_app.command("adversarial-training")
def adversarial_training(
    model: Annotated[str, typer.Option(help="Zoo name (a fresh copy of its architecture, or of "
                                             "--arch, is trained on its data) or a model file whose "
                                             "weights are the starting point.")],
    out: Annotated[Path, typer.Option("--out", help="Where to save the trained model (.pt, safe format).")],
    eps: Annotated[float, typer.Option(help="L-inf training and evaluation budget.")] = 0.3,
    eps_warmup_epochs: Annotated[int, typer.Option(help="Grow the training eps linearly from 0 over "
                                                        "this many epochs (0: off).")] = 0,
    method: Annotated[str, typer.Option(help=f"One of: {', '.join(METHODS)}.")] = "pgd",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    steps: Annotated[int, typer.Option(help="Inner attack steps (pgd, trades).")] = 10,
    batch_size: Annotated[int, typer.Option(help="Rows per batch.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cyclic schedule).")] = 1e-3,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="Write a checkpoint here after every "
                                                        "epoch.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from --checkpoint-dir.")] = False,
    n: Annotated[int, typer.Option(help="Test points for the evaluation (first n).")] = 200,
    eval_steps: Annotated[int, typer.Option(help="Iterations of the evaluation attacks.")] = 100,
    square_queries: Annotated[int, typer.Option(help="Square queries per point (masking check).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, shuffling and attacks.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out file.")] = False,
    data: DataOption = None,
    data_dir: DataDirOption = None,
    arch: Annotated[str | None, typer.Option(help=ARCH_HELP + " With a zoo name: the architecture to "
                                              "train instead of the zoo model's, e.g. lenet-28-wide "
                                              "(Madry et al.'s MNIST model) for MNIST at eps 0.3.")] = None,
    trust_torchscript: TrustTorchScriptOption = False,
    device: DeviceOption = "cpu",
    nproc: Annotated[int, typer.Option(help="Train on this many local processes with "
                                            "DistributedDataParallel (gloo on the CPU, NCCL with one GPU "
                                            "each); the batch is split between them. Under torchrun "
                                            "the launcher's processes are used instead.")] = 1,
    oversubscribe: Annotated[bool, typer.Option("--oversubscribe", help="Allow --nproc above the "
                                                "number of CPU cores.")] = False,
) -> None:
    """Adversarially train (PGD, TRADES or fast FGSM), save, then evaluate under Ensemble.standard
    and the gradient-masking checks (the model is saved before the evaluation, so an interrupt
    there keeps it; the evaluation is added to its metadata at the end); exits 2 on bad input.
    With --nproc N (or under torchrun) training is data-parallel; rank 0 saves and evaluates."""
    from modelshield.defenses.training.launch import (
        Backend,
        check_nproc,
        fit_distributed,
        init_from_env,
        torchrun_env,
    )

    owner = f"{OWNER} adversarial-training"
    check_range("--nproc", nproc, owner=owner, low=1, integer=True,
                fix="Use --nproc 2 for two processes (1: no distributed training).")
    launched = torchrun_env(owner=owner)
    if launched is not None:
        if nproc not in (1, launched.world_size):
            raise ConfigError(f"{owner}: '--nproc' must be 1 or WORLD_SIZE ({launched.world_size}) "
                              f"under torchrun; got {nproc}. Set the process count with torchrun's "
                              "--nproc-per-node and drop --nproc.")
        if resolve_device(device, owner=owner).type == "cuda":
            device = f"cuda:{launched.local_rank}"
    check_new_files([out], overwrite=force, owner=owner)
    if checkpoint_dir is not None:  # a folder we may write into (its files are replaced each epoch)
        check_new_files([checkpoint_dir / "checkpoint"], overwrite=True, owner=owner)
    check_choice("--method", method, METHODS, owner=owner)
    if resume and checkpoint_dir is None:
        raise ConfigError(f"{owner}: '--resume' needs '--checkpoint-dir'; got none. Pass the folder "
                          "of the interrupted run, e.g. --checkpoint-dir ckpt/.")
    s = _start(model, data=data, data_dir=data_dir, arch=arch, n=n, seed=seed, owner=owner,
               trust_torchscript=trust_torchscript, device=device)
    _check_eps(eps, s.bounds, owner)
    trainer = AdversarialTrainer(method=method, eps=eps, steps=steps, epochs=epochs,  # type: ignore[arg-type]
                                 batch_size=batch_size, lr=lr, bounds=s.bounds, seed=seed,
                                 eps_warmup_epochs=eps_warmup_epochs,
                                 checkpoint_dir=checkpoint_dir, eval_steps=min(eval_steps, 20))
    n_val = min(256, int(s.x_test.shape[0]))
    backend: Backend = "nccl" if s.x_train.device.type == "cuda" else "gloo"
    if launched is None:
        check_nproc(nproc, backend=backend, oversubscribe=oversubscribe, owner=owner)
    else:
        init_from_env(launched, backend=backend, owner=owner)
    with render.progress_bar(f"{method} adversarial training") as progress, render.show_warnings():
        if launched is not None:  # one rank of a torchrun launch
            report = trainer.fit(s.module, (s.x_train, s.y_train), resume=resume, progress=progress,
                                 val_data=(s.x_test[:n_val], s.y_test[:n_val]), distributed=True)
            torch.distributed.destroy_process_group()
            if launched.rank != 0:
                return  # rank 0 saves and evaluates
        elif nproc > 1:
            report = fit_distributed(trainer, s.module, (s.x_train, s.y_train), nproc=nproc,
                                     resume=resume, progress=progress, oversubscribe=oversubscribe,
                                     val_data=(s.x_test[:n_val], s.y_test[:n_val]))
        else:
            report = trainer.fit(s.module, (s.x_train, s.y_train), resume=resume, progress=progress,
                                 val_data=(s.x_test[:n_val], s.y_test[:n_val]))
        s.module.eval()
        settings = {"method": method, "eps": eps, "epochs": epochs, "steps": steps,
                    "batch_size": batch_size, "lr": lr, "eps_warmup_epochs": eps_warmup_epochs, "seed": seed,
                    "eval_steps": eval_steps, "square_queries": square_queries,
                    "world_size": launched.world_size if launched is not None else nproc}
        meta = {"defence": "adversarial-training", "training": report.to_dict(), "evaluation": None,
                "provenance": _prov(s, s.module, seed, {"training": settings})}
        # Saved before the (long) evaluation, so an interrupt there keeps the trained model;
        # rewritten (atomically) with the evaluation once it is done.
        _save(s.module, out, s, force=force, meta=meta)
        progress(0, 1, "evaluating: Ensemble.standard and masking checks")
        masking = _masking(s.module, s, eps=eps, steps=eval_steps, square_queries=square_queries, seed=seed)
    _save(s.module, out, s, force=True, announce=False, meta={**meta, "evaluation": masking.to_dict()})
    table = Table(title=f"{method} adversarial training of {s.arch} on {s.data_info['name']} (eps {eps:g}, "
                  f"{masking.n} test points)", header_style="bold")
    for col in ("epochs", "train time", "clean acc", "robust acc (Ensemble.standard)",
                "robust acc (worst case)", "masking flags"):
        table.add_column(col, justify="right")
    table.add_row(f"{len(report.epochs)}",
                  f"{report.train_time_s:.1f} s", _pct(masking.clean_accuracy),
                  _pct(masking.ensemble_robust_accuracy), _pct(masking.robust_accuracy),
                  ", ".join(masking.flag_names) or "none")
    render.out().print(table)
    if report.resumed_from:
        render.say(f"resumed at epoch {report.resumed_from} from {escape(str(report.checkpoint))}")
    if report.catastrophic_overfitting:
        render.say(f"[yellow]catastrophic overfitting at epoch {report.overfitting_epoch}[/]")
    _verdict(masking)


_DISTILL = DefensiveDistillation()  # the library's defaults are the CLI's


@defend_app.command("distill")
def distill(
    model: Annotated[str, typer.Option(help="Zoo name (fresh teacher and student of its architecture) "
                                             "or a model file (the student starts from its weights).")],
    out: Annotated[Path, typer.Option("--out", help="Where to save the student (.pt, safe format).")],
    temperature: Annotated[float, typer.Option(help="Distillation temperature T.")] = (
        _DISTILL.temperature),
    epochs: Annotated[int, typer.Option(help="Epochs for each of teacher and student.")] = _DISTILL.epochs,
    lr: Annotated[float, typer.Option(help="Peak learning rate (Adam, cyclic schedule). Networks "
                                           "trained at T need logits about T times larger than "
                                           "usual: too small a rate leaves the student at "
                                           "chance.")] = _DISTILL.lr,
    eps: Annotated[float, typer.Option(help="L-inf evaluation budget.")] = 0.3,
    batch_size: Annotated[int, typer.Option(help="Rows per batch.")] = _DISTILL.batch_size,
    n: Annotated[int, typer.Option(help="Test points for the evaluation (first n).")] = 200,
    eval_steps: Annotated[int, typer.Option(help="Iterations of the evaluation attacks.")] = 100,
    square_queries: Annotated[int, typer.Option(help="Square queries per point (masking check).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, shuffling and attacks.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out file.")] = False,
    data: DataOption = None,
    data_dir: DataDirOption = None,
    arch: ArchOption = None,
    trust_torchscript: TrustTorchScriptOption = False,
    device: DeviceOption = "cpu",
) -> None:
    """Defensive distillation (a baseline known to mask gradients): train, save, and compare
    plain cross-entropy PGD with margin-loss PGD. A student at chance accuracy (or far below its
    teacher) is a failed defence: it is still written to --out, with "usable": false in its
    metadata, and reported in red as failed, never as holding; the exit code stays 0 (a finding,
    not bad input). Exits 2 on bad input."""
    from modelshield import zoo

    owner = f"{OWNER} distill"
    check_new_files([out], overwrite=force, owner=owner)
    s = _start(model, data=data, data_dir=data_dir, arch=arch, n=n, seed=seed, owner=owner,
               trust_torchscript=trust_torchscript, device=device)
    _check_eps(eps, s.bounds, owner)
    trainer = DefensiveDistillation(temperature=temperature, epochs=epochs, lr=lr, batch_size=batch_size,
                                    bounds=s.bounds, seed=seed)
    teacher = zoo.build(s.arch, seed=seed + 1).to(s.x_train.device)
    with render.progress_bar("defensive distillation") as progress, render.show_warnings():
        result = trainer.fit(teacher, s.module, (s.x_train, s.y_train), val_data=(s.x_test, s.y_test),
                             progress=progress)
        student = result.model.eval()
        settings = {"temperature": temperature, "epochs": epochs, "lr": lr, "eps": eps,
                    "batch_size": batch_size, "seed": seed, "eval_steps": eval_steps,
                    "square_queries": square_queries}
        meta = {"defence": "defensive-distillation", "usable": result.usable,
                "usability": result.usability.to_dict(), "training": result.to_dict(), "evaluation": None,
                "provenance": _prov(s, student, seed, {"distillation": settings})}
        _save(student, out, s, force=force, meta=meta)  # before the evaluation: an interrupt keeps it
        progress(0, 1, "evaluating: PGD (CE, margin), Ensemble.standard and masking checks")
        masking = _masking(student, s, eps=eps, steps=eval_steps, square_queries=square_queries, seed=seed)
        margin = PGD(eps=eps, steps=eval_steps, loss="margin", seed=seed)(student, s.x_test, s.y_test)
    ce_acc = masking.attack_robust_accuracy
    evaluation = {**masking.to_dict(), "pgd_ce_robust_accuracy": ce_acc,
                  "pgd_margin_robust_accuracy": margin.robust_accuracy}
    meta["usable"] = result.usable and masking.usable
    _save(student, out, s, force=True, announce=False, meta={**meta, "evaluation": evaluation})
    table = Table(title=f"defensive distillation (T={temperature:g}) of {s.arch} on {s.data_info['name']} "
                  f"(eps {eps:g}, {masking.n} test points)", header_style="bold")
    for col in ("clean acc", "PGD-CE robust acc", "PGD-margin robust acc", "Ensemble.standard",
                "masking flags"):
        table.add_column(col, justify="right")
    table.add_row(_pct(masking.clean_accuracy), _pct(ce_acc), _pct(margin.robust_accuracy),
                  _pct(masking.ensemble_robust_accuracy), ", ".join(masking.flag_names) or "none")
    render.out().print(table)
    usable = result.usable and masking.usable
    reason = result.usability.reason if not result.usable else (
        masking.usability.reason if masking.usability is not None else "")
    if usable:
        render.say(f"distilled model usable: [green]yes[/] ({escape(result.usability.reason)})")
    else:
        render.say(f"[bold red]defence FAILED[/]: the distilled model is not usable: {escape(reason)}. "
                   f"It was written to {escape(str(out))} (\"usable\": false in its metadata) but is "
                   "not a working classifier; train longer (--epochs) or with a larger --lr "
                   f"(defaults: --epochs {_DISTILL.epochs} --lr {_DISTILL.lr:g} --batch-size "
                   f"{_DISTILL.batch_size}).")
    holds = usable and masking.robust_claim_allowed and margin.robust_accuracy >= ce_acc - 0.05
    if holds:
        render.say("distillation holds: [green]yes[/] (margin-loss PGD does no better than CE PGD "
                   "and no masking flag)")
    elif not usable:
        render.say("distillation holds: [red]no[/] (failed: the distilled model is not usable)")
    else:
        render.say(f"distillation holds: [red]no[/] (margin-loss PGD {_pct(margin.robust_accuracy)} vs "
                   f"CE PGD {_pct(ce_acc)}; the CE robustness is gradient masking)")
    _verdict(masking)


def certify(
    model: Annotated[str, typer.Option(help=MODEL_HELP)],
    sigma: Annotated[float, typer.Option(help="Gaussian noise std in input units.")] = 0.25,
    n: Annotated[int, typer.Option(help="Estimation samples per point (Cohen et al.: 100000).")] = 1000,
    n0: Annotated[int, typer.Option(help="Selection samples per point.")] = 100,
    alpha: Annotated[float, typer.Option(help="Failure probability of the certificate.")] = 0.001,
    points: Annotated[int, typer.Option(help="Test points to certify (first ones).")] = 100,
    radii: Annotated[str, typer.Option(help="Comma-separated L2 radii.")] = "0.5,1.0,1.5",
    batch_size: Annotated[int, typer.Option(help="Noisy copies per forward pass.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results + provenance here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --json file.")] = False,
    data: DataOption = None,
    data_dir: DataDirOption = None,
    arch: ArchOption = None,
    trust_torchscript: TrustTorchScriptOption = False,
    device: DeviceOption = "cpu",
) -> None:
    """Randomized-smoothing certificates (Cohen et al., 2019): certified accuracy at each L2
    radius and the abstention rate; exits 2 on bad input."""
    owner = "modelshield certify"
    resolve_device(device, owner=owner)  # a bad --device fails before any work
    if json_out is not None:
        check_new_files([json_out], overwrite=force, owner=owner)
    smoother = RandomizedSmoothing(sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed)
    rs = parse_floats(radii, name="--radii", owner=owner)
    if any(r < 0 for r in rs):
        raise ConfigError(f"{owner}: '--radii' must be non-negative L2 radii; got {radii!r}. "
                          "Write e.g. --radii 0.5,1.0,1.5.")
    with render.progress_bar("loading model") as progress, render.show_warnings():
        target = load_target(model, data=data, data_dir=data_dir, arch=arch, n=points, progress=progress,
                             trust_torchscript=trust_torchscript, device=device)
        if target.kind != "torch":
            raise ConfigError(f"{owner}: '--model' must be a neural-network model; got {model!r}, a "
                              f"{target.kind} model. Pick e.g. --model digits-cnn.")
        lo, hi = target.bounds
        check_range("--sigma", sigma, owner=owner, low=0.0, high=hi - lo, low_open=True,
                    fix="Give the noise std in input units, e.g. --sigma 0.25 for images in [0, 1].")
        progress(0, 1, f"certifying {int(target.x.shape[0])} points ({n0}+{n} samples each)")
        module: nn.Module = target.module
        with torch.no_grad(), eval_mode(TorchModel(module, bounds=target.bounds)):
            result = smoother.certify(module, target.x, target.y)
    accs = result.certified_accuracy(rs)
    abstain = float(result.abstain.double().mean())
    clean = float(result.correct.double().mean())
    table = Table(title=f"randomized smoothing of {target.model_info['name']} (sigma {sigma:g}, n {n}, "
                  f"alpha {alpha:g}, {int(target.x.shape[0])} points)", header_style="bold")
    table.add_column("L2 radius", justify="right")
    table.add_column("certified accuracy", justify="right")
    for r, a in zip(rs, accs, strict=True):
        table.add_row(f"{r:g}", _pct(a))
    render.out().print(table)
    render.say(f"smoothed accuracy (radius 0): {_pct(clean)}; abstention rate: {_pct(abstain)}; "
               f"time {result.time_s:.1f} s")
    if json_out is not None:
        eval_info = {**target.data_info, "n": int(target.x.shape[0])}
        settings = {"sigma": sigma, "n": n, "n0": n0, "alpha": alpha, "points": points,
                    "radii": list(rs), "batch_size": batch_size, "seed": seed}
        payload = {**result.to_dict(rs), "smoothed_accuracy": clean,
                   "certified_accuracy": {f"{r:g}": a for r, a in zip(rs, accs, strict=True)},
                   "abstain_rate": abstain, "settings": settings, "model": target.model_info,
                   "eval_data": eval_info,
                   "provenance": provenance(model_info=target.model_info, data_info=eval_info, seed=seed,
                                            attacks={"randomized-smoothing": settings})}
        write_json(json_out, jsonable(payload), overwrite=force)
        render.say(f"Results written to {escape(str(json_out))}")
