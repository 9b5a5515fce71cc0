"""The "Model extraction" report section, and the extraction scenario it shares with ``modelshield extract``.

A scenario puts the victim behind a prediction API (optionally hardened), lets an extraction
attack query it from a surrogate pool, measures the copy on held-out points, and replays the
attack's query stream through PRADA, exactly as a gateway monitor would have seen it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure as MplFigure
from torch import Tensor

from modelshield._checks import check_choice, check_inputs, check_range
from modelshield.assess._plots import png_base64
from modelshield.assess._section import (
    ATLAS,
    AssessmentContext,
    Figure,
    Progress,
    Section,
    Severity,
    Table,
    atlas,
    json_float,
)
from modelshield.attacks.extraction import (
    EquationSolving,
    ExtractionResult,
    JacobianAugmentation,
    KnockoffNets,
)
from modelshield.defenses.extraction import HARDENING_METHODS, PRADA, harden, honest_cost
from modelshield.errors import ConfigError, DataError, InputError, ModelCapabilityError
from modelshield.models import CallableModel, ModelLike, TorchModel, as_model

__all__ = [
    "DEFAULT_POOL",
    "DEFENCES",
    "EXTRACTION_ATTACKS",
    "EXTRACTION_SEVERITY_THRESHOLDS",
    "POOLS",
    "ExtractionRun",
    "ExtractionSection",
    "Pool",
    "QueryLog",
    "build_extraction_attack",
    "digits_from_mnist",
    "extraction_severity",
    "load_pool",
    "prada_verdict",
    "run_extraction",
]

# Sections add the ATLAS techniques they cite (see ATLAS's docstring).
ATLAS.setdefault("AML.T0024.002", "Extract ML Model")
ATLAS.setdefault("AML.T0040", "ML Model Inference API Access")

ExtractionAttack: TypeAlias = KnockoffNets | JacobianAugmentation | EquationSolving
Defence: TypeAlias = Literal["none", "top1", "round", "noise", "reverse_sigmoid"]

EXTRACTION_ATTACKS: tuple[str, ...] = ("knockoff", "jacobian", "equation")
"""Attack names of ``build_extraction_attack`` (and of ``modelshield extract --attack``)."""

DEFENCES: tuple[str, ...] = ("none", *HARDENING_METHODS)
"""``"none"`` plus the output-hardening methods of ``modelshield.defenses.extraction.harden``."""

POOLS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "mnist-8x8", "noise")
"""Pool names ``load_pool`` knows (any other value is read as a ``.npy`` / ``.pt`` file path)."""

DEFAULT_POOL: dict[str, str] = {"mnist": "fashion-mnist", "fashion-mnist": "mnist", "digits": "mnist-8x8"}
"""The surrogate pool the section uses for a victim trained on each data set.

The attacker is assumed to hold *other* public data of the same format, not the victim's
training distribution (Orekondy et al.'s setting): Fashion-MNIST for an MNIST model, MNIST
for a Fashion-MNIST model, and for the 8x8 digits model MNIST's training digits re-rendered
in the digits' own format (``digits_from_mnist``): other writers, another scanner and
another preprocessing, but the same task. Other data sets fall back to uniform noise.
"""

EXTRACTION_SEVERITY_THRESHOLDS: tuple[tuple[float, Severity], ...] = (
    (0.90, "critical"),
    (0.70, "high"),
    (0.40, "medium"),
    (0.10, "low"),
)
"""``(minimum gain, severity)`` pairs, checked in order; a lower gain is ``"none"``.

The gain is the copy's fidelity above a constant guess, ``(fidelity - chance) / (1 - chance)``,
where chance is the share of the most frequent victim label on the evaluation points (what a
thief that learned nothing would match). It is read at the section's highest query budget for
the best undefended Knockoff copy (probabilities or labels):

==============  ==========
gain            severity
==============  ==========
>= 0.90         critical
[0.70, 0.90)    high
[0.40, 0.70)    medium
[0.10, 0.40)    low
< 0.10          none
==============  ==========
"""

_RECOMMENDATION = (
    "Give every API client a query budget (modelshield.defenses.extraction.ClientBudget, per "
    "key and per time window) sized to honest use, and monitor each client's query stream with "
    "PRADA-style detection (PRADA) so that synthetic query patterns are flagged and throttled. "
    "Output hardening (top-1 labels only, rounding, noise, reverse sigmoid) only limits how much "
    "each answer leaks about the probabilities: a label-only API is still copied, just with more "
    "queries, so treat it as a secondary measure. Keep the model's weights and training data "
    "private, and watermark the model if you need to prove theft later."
)


def _sha256_tensor(x: Tensor) -> str:
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Pool:
    """The attacker's unlabelled surrogate data (the rows an extraction attack may query).

    Attributes:
        x: ``(N, *input_shape)`` float32 inputs within the victim's bounds.
        groups: ``(N,)`` int64 labels of the pool's own data set (the adaptive Knockoff
            strategy's arms), or None when the pool has none.
        name: the pool spec it was loaded from (data set name, ``"noise"`` or a file path).
        kind: ``"dataset"``, ``"file"``, ``"noise"`` or ``"tensor"``.
        relation: ``"same-distribution"`` (the victim's own data set), ``"other-distribution"``,
            ``"noise"`` or ``"unknown"``.
        sha256: SHA-256 of the source (data set files, file bytes), or of the rows themselves.
        points_sha256: SHA-256 of the rows of ``x`` (what was actually available to query).
        note: how the rows were made, in one sentence.
    """

    x: Tensor
    groups: Tensor | None
    name: str
    kind: str
    relation: str
    sha256: str
    points_sha256: str
    note: str = ""

    def info(self) -> dict[str, Any]:
        """JSON-safe description (no tensors)."""
        return {
            "name": self.name, "kind": self.kind, "relation": self.relation, "n": int(self.x.shape[0]),
            "shape": list(self.x.shape[1:]), "sha256": self.sha256, "points_sha256": self.points_sha256,
            "has_groups": self.groups is not None, "note": self.note,
        }


def digits_from_mnist(x: Tensor, *, threshold: float = 0.35) -> Tensor:
    """MNIST-style images ``(N, 1, H, W)`` in [0, 1] re-rendered as 8x8 digits images ``(N, 1, 8, 8)``.

    Mimics how scikit-learn's digits (UCI optdigits) were made: each digit's ink bounding box
    (square, centred) is scaled to a 32x32 bitmap (bilinear, thresholded at ``threshold``) and
    the bitmap's 4x4 blocks are counted, giving values in [0, 1]. The threshold 0.35 matches the
    digits' mean ink (about 0.30). Vectorised (one ``grid_sample``), no loop over images.

    Reference: Alpaydin and Kaynak, "Optical Recognition of Handwritten Digits" (UCI, 1998).
    """
    img = x.float()
    on = img[:, 0] > 0.2
    n, h, w = on.shape
    rows, cols = on.any(2), on.any(1)
    ar_h = torch.arange(h, dtype=torch.float32, device=x.device)
    ar_w = torch.arange(w, dtype=torch.float32, device=x.device)
    far = float(max(h, w) * 4)
    ymin = torch.where(rows, ar_h, far).amin(1)
    ymax = torch.where(rows, ar_h, -far).amax(1)
    xmin = torch.where(cols, ar_w, far).amin(1)
    xmax = torch.where(cols, ar_w, -far).amax(1)
    empty = ~rows.any(1)
    ymin, ymax = torch.where(empty, 0.0, ymin), torch.where(empty, h - 1.0, ymax)
    xmin, xmax = torch.where(empty, 0.0, xmin), torch.where(empty, w - 1.0, xmax)
    side = torch.maximum(ymax - ymin + 1, xmax - xmin + 1)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = side / w
    theta[:, 0, 2] = (xmin + xmax + 1) / w - 1
    theta[:, 1, 1] = side / h
    theta[:, 1, 2] = (ymin + ymax + 1) / h - 1
    grid = F.affine_grid(theta, [n, 1, 32, 32], align_corners=False)
    bitmap = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d((bitmap > threshold).float(), 4).clamp(0.0, 1.0)


def _read_file(path: Path, owner: str) -> Tensor:
    if not path.is_file():
        raise InputError(
            f"{owner}: 'pool' must be one of {', '.join(POOLS)} or an existing .npy/.pt file; got "
            f"{str(path)!r}. Pass a data set name or the path of a saved tensor."
        )
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{owner}: the pool file {str(path)!r} must be a numpy array saved with "
                             f"np.save; got an unreadable file ({exc}). Re-save it with np.save.") from exc
        return torch.from_numpy(np.ascontiguousarray(arr))
    if path.suffix == ".pt":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"{owner}: the pool file {str(path)!r} must hold one tensor saved with "
                             f"torch.save; got an unreadable file ({exc}). Re-save it with "
                             "torch.save(x, path).") from exc
        if not isinstance(obj, Tensor):
            raise InputError(f"{owner}: the pool file {str(path)!r} must hold one tensor; got "
                             f"{type(obj).__name__}. Save the inputs alone with torch.save(x, path).")
        return obj
    raise InputError(
        f"{owner}: 'pool' must be one of {', '.join(POOLS)} or a .npy/.pt file; got {str(path)!r}. "
        "Save the pool with np.save or torch.save."
    )


def load_pool(
    spec: str,
    *,
    input_shape: Sequence[int],
    bounds: tuple[float, float] = (0.0, 1.0),
    victim_dataset: str | None = None,
    data_root: str | Path | None = None,
    size: int = 10_000,
    seed: int = 0,
) -> Pool:
    """Load the attacker's surrogate pool and check its rows fit the victim.

    Args:
        spec: a data set name (``"digits"``, ``"mnist"``, ``"fashion-mnist"``: its training
            images, with its labels as groups), ``"mnist-8x8"`` (MNIST's training digits in the
            8x8 digits format, see ``digits_from_mnist``), ``"noise"`` (``size`` uniform points
            in bounds) or the path of a ``.npy`` / ``.pt`` tensor ``(N, *input_shape)`` (uint8
            pixels are divided by 255; ``(N, H, W)`` gets a channel axis when the victim wants
            ``(1, H, W)``).
        input_shape: the victim's input shape, e.g. ``(1, 28, 28)``.
        bounds: the victim's input range.
        victim_dataset: the victim's data set name, to label the pool same/other-distribution.
        data_root: the data folder for MNIST / Fashion-MNIST; None means ``$MODELSHIELD_DATA``.
        size: rows of the ``"noise"`` pool.
        seed: seed of the ``"noise"`` pool.

    Raises:
        InputError: the pool's rows do not have ``input_shape``, its values leave ``bounds``, or
            the file is missing or unreadable.
        MissingDataError: the data set's files are not found.
    """
    from modelshield.data import load_dataset

    owner = "load_pool"
    shape = tuple(int(s) for s in input_shape)
    groups: Tensor | None = None
    if spec == "noise":
        check_range("size", size, owner=owner, low=1, integer=True)
        gen = torch.Generator().manual_seed(seed)
        lo, hi = bounds
        x = lo + (hi - lo) * torch.rand((size, *shape), generator=gen)
        digest = _sha256_tensor(x)
        note = f"{size} points drawn uniformly in [{lo:g}, {hi:g}] (seed {seed})."
        return Pool(x=x, groups=None, name="noise", kind="noise", relation="noise", sha256=digest,
                    points_sha256=digest, note=note)
    if spec in ("digits", "mnist", "fashion-mnist", "mnist-8x8"):
        source = "mnist" if spec == "mnist-8x8" else spec
        ds = load_dataset(source, root=data_root)
        x, groups, sha = ds.x_train, ds.y_train, ds.sha256
        note = f"the {source} training images ({int(x.shape[0])} rows); groups are its own labels."
        if spec == "mnist-8x8":
            x = digits_from_mnist(x)
            note = ("MNIST training digits re-rendered in the 8x8 digits format (ink bounding box, "
                    "32x32 bitmap, 4x4 block counts); groups are the MNIST labels.")
        relation = "same-distribution" if victim_dataset == spec else "other-distribution"
        kind = "dataset"
    else:
        path = Path(spec).expanduser()
        x = _read_file(path, owner)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        note, relation, kind = f"rows of {path.name}.", "unknown", "file"
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        x = x.float()
    if x.dim() == len(shape) and len(shape) >= 2 and shape[0] == 1 and tuple(x.shape[1:]) == shape[1:]:
        x = x.unsqueeze(1)
    if x.dim() < 2 or tuple(x.shape[1:]) != shape:
        raise InputError(
            f"{owner}: the pool's rows must have the victim's input shape {shape}; got "
            f"{tuple(x.shape[1:]) if x.dim() >= 2 else tuple(x.shape)} from {spec!r}. Use a pool "
            f"of the victim's format ({', '.join(POOLS)} or a tensor of shape (N, "
            f"{', '.join(map(str, shape))}))."
        )
    x = check_inputs(x, bounds=bounds, owner=owner)
    return Pool(x=x, groups=groups, name=spec, kind=kind, relation=relation, sha256=sha,
                points_sha256=_sha256_tensor(x), note=note)


def build_extraction_attack(
    name: str,
    *,
    budget: int,
    output: str = "proba",
    strategy: str = "random",
    checkpoints: Sequence[int] = (),
    epochs: int | None = None,
    seed: int = 0,
) -> ExtractionAttack:
    """An extraction attack by name (one of ``EXTRACTION_ATTACKS``) with ``budget`` victim queries.

    ``"knockoff"``: KnockoffNets with ``strategy`` and ``checkpoints``. ``"jacobian"``:
    JacobianAugmentation with a seed set of ``min(100, budget)`` pool rows and enough doubling
    rounds to spend ``budget`` (one curve point per round). ``"equation"``: EquationSolving
    (probabilities only; ``budget`` must be at least the number of input features + 1).

    Raises:
        ConfigError: an unknown name, output or strategy, or settings the attack rejects.
    """
    owner = "build_extraction_attack"
    check_choice("name", name, EXTRACTION_ATTACKS, owner=owner)
    check_choice("output", output, ("proba", "labels"), owner=owner)
    check_range("budget", budget, owner=owner, low=1, integer=True)
    out: Literal["proba", "labels"] = "proba" if output == "proba" else "labels"
    if epochs is not None:
        check_range("epochs", epochs, owner=owner, low=1, integer=True)
    attack: ExtractionAttack
    if name == "knockoff":
        check_choice("strategy", strategy, ("random", "adaptive"), owner=owner)
        cps = tuple(c for c in checkpoints if c < budget)
        attack = KnockoffNets(budget=budget, strategy="adaptive" if strategy == "adaptive" else "random",
                              output=out, checkpoints=cps, seed=seed)
        return attack if epochs is None else dataclasses.replace(attack, epochs=epochs)
    if strategy != "random":
        raise ConfigError(
            f"{owner}: 'strategy' must be 'random' for attack {name!r} (only knockoff has an "
            f"adaptive strategy); got {strategy!r}. Drop --strategy or use --attack knockoff."
        )
    if name == "jacobian":
        seed_size = min(100, budget)
        rounds = max(0, math.ceil(math.log2(budget / seed_size)))
        attack = JacobianAugmentation(budget=budget, seed_size=seed_size, rounds=rounds, output=out,
                                      seed=seed)
        return attack if epochs is None else dataclasses.replace(attack, epochs=epochs)
    if output != "proba":
        raise ConfigError(
            f"{owner}: 'output' must be 'proba' for attack 'equation' (equation solving needs the "
            f"probabilities); got {output!r}. Use --attack knockoff or jacobian for a label-only API."
        )
    return EquationSolving(budget=budget, seed=seed)


class QueryLog:
    """The prediction API as the attacker sees it, recording each query and the label it returned.

    A callable ``x (numpy) -> answers (numpy)``: probabilities (a torch victim's softmax, or a
    hardened model's answers) or labels for a label-only API. ``model`` is its black-box view
    for the attack; ``x`` and ``labels`` are the stream in arrival order, which a monitor such as
    PRADA would have seen.
    """

    def __init__(self, api: TorchModel | CallableModel) -> None:
        self.api = api
        self.label_only = isinstance(api, CallableModel) and api.output == "labels"
        self._x: list[Tensor] = []
        self._labels: list[Tensor] = []
        try:
            n_classes: int | None = api.n_classes
        except ModelCapabilityError:
            n_classes = None
        self.model = CallableModel(self, bounds=api.bounds, output="labels" if self.label_only else "proba",
                                   n_classes=n_classes)

    def __call__(self, x_np: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(x_np)
        device = self.api.device if isinstance(self.api, TorchModel) else None
        xd = x.to(device) if device is not None else x
        with torch.no_grad():
            if self.label_only:
                labels = self.api.predict(xd).cpu()
                answer: np.ndarray = labels.numpy().astype(np.int64)
            else:
                scores = self.api.scores(xd)
                proba = scores.softmax(1) if isinstance(self.api, TorchModel) else scores
                labels = proba.argmax(1).cpu()
                answer = proba.cpu().numpy()
        self._x.append(x.detach().clone())
        self._labels.append(labels.long())
        return answer

    @property
    def queries(self) -> int:
        """Rows asked so far."""
        return sum(int(t.shape[0]) for t in self._x)

    @property
    def x(self) -> Tensor:
        """``(N, *input_shape)`` every query in arrival order."""
        return torch.cat(self._x) if self._x else torch.empty(0)

    @property
    def labels(self) -> Tensor:
        """``(N,)`` the top-1 label the API returned for each query."""
        return torch.cat(self._labels) if self._labels else torch.empty(0, dtype=torch.long)


def prada_verdict(
    x: Tensor, labels: Tensor, *, monitor: PRADA | None = None, client: str = "client", chunk: int = 256
) -> dict[str, Any]:
    """Replay a query stream through a fresh PRADA (``monitor``'s settings) and report its verdict.

    Returns a JSON-safe dict: ``flagged``, ``queries_to_detection`` (the client's query count at
    the first alert, or None), ``final_w`` (the last Shapiro-Wilk W), ``delta``, ``queries``.
    """
    template = monitor if monitor is not None else PRADA()
    mon = dataclasses.replace(template)  # same settings, fresh per-client state
    if x.shape[0]:
        for xb, lb in zip(torch.split(x, chunk), torch.split(labels, chunk), strict=True):
            mon.update(client, xb, lb)
    return {
        "detector": "PRADA",
        "delta": mon.delta,
        "min_queries": mon.min_queries,
        "queries": int(x.shape[0]),
        "flagged": client in mon.flagged_,
        "queries_to_detection": mon.queries_to_detection_.get(client),
        "final_w": json_float(mon.shapiro_.get(client)),
    }


@dataclass(frozen=True, kw_only=True, slots=True)
class ExtractionRun:
    """One extraction scenario's outcome.

    Attributes:
        result: the attack's ExtractionResult (copy, queries, curve).
        defence: the output hardening in front of the victim (``"none"`` or a ``harden`` method).
        honest_cost: ``honest_cost`` of the hardening on the evaluation points (None without one).
        prada: ``prada_verdict`` of the attack's query stream (None when not asked for).
        stream_queries: rows the API answered (the attack's queries as the API counted them).
        stream: ``(x, labels)``, the query stream in arrival order (``keep_stream=True`` only).
    """

    result: ExtractionResult
    defence: str
    honest_cost: dict[str, Any] | None
    prada: dict[str, Any] | None
    stream_queries: int
    stream: tuple[Tensor, Tensor] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"defence": self.defence, "honest_cost": self.honest_cost, "prada": self.prada,
                "stream_queries": self.stream_queries, "result": self.result.to_dict()}


def run_extraction(
    victim: ModelLike,
    x_pool: Pool | Tensor,
    attack: ExtractionAttack,
    *,
    eval_data: tuple[Tensor, Tensor],
    defence: str = "none",
    prada: PRADA | None = None,
    seed: int = 0,
    keep_stream: bool = False,
) -> ExtractionRun:
    """Steal ``victim`` through its (optionally hardened) prediction API and measure the copy.

    The victim's labels on the evaluation points are taken once from the victim itself, so
    fidelity is agreement with the real model, whatever the API answers. When ``prada`` is
    given, the attack's query stream (inputs and returned top-1 labels) is replayed through a
    fresh PRADA with its settings.

    Args:
        victim: anything ``as_model`` accepts.
        x_pool: the attacker's pool (a ``Pool``, whose groups feed the adaptive strategy, or rows).
        attack: from ``build_extraction_attack`` or built directly.
        eval_data: ``(x_test, y_test)`` held-out points to measure the copy on.
        defence: ``"none"`` or a method of ``harden`` (``"top1"``, ``"round"``, ``"noise"``,
            ``"reverse_sigmoid"``), applied with its defaults and ``seed``.
        prada: PRADA settings for the stream verdict, or None for no verdict.
        seed: seed of the noise defence.
        keep_stream: keep the query stream in the result (e.g. to replay it through other
            monitors).

    Raises:
        ConfigError: an unknown defence. ModelCapabilityError: a probability attack against a
        label-only API (e.g. ``defence="top1"``). InputError: pool rows the victim rejects.

    Example:
        run = run_extraction(net, load_pool("fashion-mnist", input_shape=(1, 28, 28)),
                             build_extraction_attack("knockoff", budget=2000),
                             eval_data=(x_test, y_test), defence="round", prada=PRADA())
    """
    check_choice("defence", defence, DEFENCES, owner="run_extraction")
    m = as_model(victim)
    api = m if defence == "none" else harden(m, method=defence, seed=seed)  # type: ignore[arg-type]  # checked above
    x_eval, y_eval = eval_data
    with torch.no_grad():
        victim_labels = m.predict(check_inputs(x_eval, bounds=m.bounds, owner="run_extraction"))
    log = QueryLog(api)
    pool_x, groups = (x_pool.x, x_pool.groups) if isinstance(x_pool, Pool) else (x_pool, None)
    result = attack(log.model, pool_x, groups, eval_data=eval_data, victim_labels=victim_labels)
    cost = None if defence == "none" else honest_cost(m, api, x_eval, y_eval)
    verdict = None if prada is None else prada_verdict(log.x, log.labels, monitor=prada, client="attacker")
    return ExtractionRun(result=result, defence=defence, honest_cost=cost, prada=verdict,
                         stream_queries=log.queries, stream=(log.x, log.labels) if keep_stream else None)


def extraction_severity(fidelity: float, chance: float) -> Severity:
    """Severity from the copy's fidelity gain over a constant guess (see the thresholds table).

    nan fidelity (nothing measured) gives ``"none"``.
    """
    if math.isnan(fidelity):
        return "none"
    gain = 0.0 if chance >= 1.0 else (fidelity - chance) / (1.0 - chance)
    for minimum, severity in EXTRACTION_SEVERITY_THRESHOLDS:
        if gain >= minimum:
            return severity
    return "none"


_LABELS = {"none": "probabilities (no defence)", "top1": "labels only (top1)", "round": "rounded (2 dp)",
           "noise": "noisy (std 0.05)", "reverse_sigmoid": "reverse sigmoid"}
_COLORS = ("#d1242f", "#1f6feb", "#2da44e", "#8250df", "#bf8700", "#0a7d8c")


def _curve_figure(runs: Mapping[str, ExtractionRun], chance: float) -> str:
    """Fidelity and accuracy against queries, one line per API answer type; base64 PNG."""
    fig = MplFigure(figsize=(8.4, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    for i, (key, run) in enumerate(runs.items()):
        qs = [p.queries for p in run.result.curve]
        for ax, metric in zip(axes, ("fidelity", "accuracy"), strict=True):
            ax.plot(qs, [getattr(p, metric) for p in run.result.curve], marker="o", ms=4, lw=1.8,
                    color=_COLORS[i % len(_COLORS)], label=_LABELS.get(key, key),
                    ls="-" if key in ("none", "top1") else "--")
    axes[0].axhline(chance, color="#57606a", ls=":", lw=1, label="constant guess")
    for ax, metric in zip(axes, ("fidelity to the victim", "copy's test accuracy"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("victim queries")
        ax.set_ylabel(metric)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False, loc="best")
    return png_base64(fig)


def _runs_plan(label_only: bool, defences: Sequence[str]) -> list[tuple[str, Literal["proba", "labels"]]]:
    """(defence, output) of each Knockoff run: probabilities and labels, then each defence."""
    if label_only:
        return [("top1", "labels")]
    plan: list[tuple[str, Literal["proba", "labels"]]] = [("none", "proba"), ("top1", "labels")]
    plan += [(d, "proba") for d in defences if d not in ("none", "top1")]
    return plan


@dataclass(frozen=True, kw_only=True, slots=True)
class ExtractionSection:
    """Section runner for model extraction (MITRE ATLAS AML.T0024.002 via AML.T0040).

    Runs Knockoff Nets (random strategy) against the model's prediction API from a surrogate
    pool at each query budget, with probabilities, with labels only (= the ``top1`` hardening),
    and behind each other hardening defence; measures each copy's fidelity and accuracy on the
    assessment points; reports each defence's cost to honest users (``honest_cost`` on the same
    points); replays the undefended Knockoff stream, a Jacobian-augmentation stream and the
    assessment points (an honest client) through PRADA. Severity: ``extraction_severity`` of the
    best undefended copy at the highest budget.

    The pool: ``pool`` if given (see ``load_pool``), else ``DEFAULT_POOL`` for the model's data
    set (noise for unknown data sets); when the default pool's files are missing, the model's own
    training split is used (a same-distribution attacker) and the section says so.

    Cost on the digits-cnn zoo model with the defaults: about 15-30 s on two CPU cores (thieves
    are small CNNs trained for ``epochs`` on at most ``max(budgets)`` answers); on MNIST-sized
    inputs roughly ten times more. Enable it with ``AssessmentPlan(sections=(..., "extraction"))``;
    change its settings with ``register_section(ExtractionSection(...), replace=True)``.

    Args:
        budgets: query budgets (curve checkpoints); the highest drives the severity.
        epochs: thief training epochs at each checkpoint.
        pool: a pool spec for ``load_pool``, or None for the default by data set.
        data_root: the data folder for MNIST / Fashion-MNIST pools; None: ``$MODELSHIELD_DATA``.
        defences: the hardening methods to compare (``"top1"`` is always the labels-only run).
        jacobian: also run Jacobian augmentation (labels) at the highest budget for PRADA.
        prada_delta: PRADA's threshold on the Shapiro-Wilk W.

    Reference: Orekondy, Schiele and Fritz, "Knockoff Nets", CVPR 2019; Juuti et al., "PRADA",
    EuroS&P 2019; Tramer et al., "Stealing Machine Learning Models via Prediction APIs", USENIX
    Security 2016.
    """

    id: str = "extraction"
    budgets: tuple[int, ...] = (100, 300, 1000)
    epochs: int = 20
    pool: str | None = None
    data_root: str | None = None
    defences: tuple[str, ...] = HARDENING_METHODS
    jacobian: bool = True
    prada_delta: float = 0.95

    def __post_init__(self) -> None:
        owner = "ExtractionSection"
        budgets = tuple(self.budgets)
        if not budgets:
            raise ConfigError(f"{owner}: 'budgets' must hold at least one query budget; got (). "
                              "Use e.g. budgets=(100, 300, 1000).")
        for b in budgets:
            check_range("budgets", b, owner=owner, low=1, integer=True)
        check_range("epochs", self.epochs, owner=owner, low=1, integer=True)
        for d in self.defences:
            check_choice("defences", d, HARDENING_METHODS, owner=owner)
        check_range("prada_delta", self.prada_delta, owner=owner, low=0.0, high=1.0)
        object.__setattr__(self, "budgets", tuple(sorted(set(budgets))))
        object.__setattr__(self, "defences", tuple(self.defences))

    def settings(self) -> dict[str, Any]:
        """The section's configuration as a JSON-safe dict."""
        return {"budgets": list(self.budgets), "epochs": self.epochs, "pool": self.pool,
                "defences": list(self.defences), "jacobian": self.jacobian, "prada_delta": self.prada_delta}

    def _pool(self, ctx: AssessmentContext, warnings: list[str]) -> Pool:
        from modelshield.errors import MissingDataError

        dataset = ctx.data_info.get("name")
        shape = tuple(ctx.x.shape[1:])
        need = max(self.budgets)
        spec = self.pool or DEFAULT_POOL.get(str(dataset), "noise")
        common: dict[str, Any] = {"input_shape": shape, "bounds": ctx.bounds, "victim_dataset": dataset,
                                  "data_root": self.data_root, "size": max(need, 1000), "seed": ctx.seed}
        try:
            pool = load_pool(spec, **common)
        except MissingDataError as exc:
            if self.pool is not None or dataset not in POOLS:
                raise
            why = " ".join(str(exc).split()[:12])
            warnings.append(f"The default pool {spec!r} is not available ({why}...); "
                            f"the model's own {dataset} training split is used instead, i.e. an attacker "
                            "holding same-distribution data (an upper bound on the threat).")
            pool = load_pool(str(dataset), **common)
        if pool.x.shape[0] < need:
            raise DataError(
                f"ExtractionSection: the pool must hold at least max(budgets)={need} rows; got "
                f"{pool.x.shape[0]} from {pool.name!r}. Lower the budgets or give a larger pool."
            )
        return pool

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        warnings: list[str] = []
        pool = self._pool(ctx, warnings)
        m = ctx.model
        label_only = isinstance(m, CallableModel) and m.output == "labels"
        plan = _runs_plan(label_only, self.defences)
        top = max(self.budgets)
        total = len(plan) + int(self.jacobian) + 1
        done = 0

        def tick(text: str) -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total, text)

        eval_data = (ctx.x, ctx.y)
        runs: dict[str, ExtractionRun] = {}
        monitor = PRADA(delta=self.prada_delta)
        streams: dict[str, dict[str, Any]] = {}
        for i, (defence, output) in enumerate(plan):
            attack = KnockoffNets(budget=top, checkpoints=tuple(b for b in self.budgets if b < top),
                                  output=output, epochs=self.epochs, seed=ctx.seed)
            # A label-only model already is the top1 API: no wrapper in front of it.
            api_defence = "none" if label_only else defence
            run = run_extraction(m, pool, attack, eval_data=eval_data, defence=api_defence,
                                 prada=monitor if i == 0 else None, seed=ctx.seed)
            runs[defence] = run
            if run.prada is not None:
                streams[f"knockoff, {_LABELS.get(defence, defence)}"] = run.prada
            tick(f"extraction: knockoff {_LABELS.get(defence, defence)}")
        jac: ExtractionRun | None = None
        if self.jacobian:
            jattack = build_extraction_attack("jacobian", budget=top, output="labels", epochs=self.epochs,
                                              seed=ctx.seed)
            jac = run_extraction(m, pool, jattack, eval_data=eval_data, prada=monitor, seed=ctx.seed)
            if jac.prada is not None:
                streams["jacobian augmentation (labels)"] = jac.prada
            tick("extraction: jacobian augmentation")
        with torch.no_grad():
            honest_labels = m.predict(ctx.x)
        streams["honest client (assessment points)"] = prada_verdict(ctx.x, honest_labels, monitor=monitor,
                                                                     client="honest")
        tick("extraction: PRADA")
        n = int(ctx.x.shape[0])
        chance = float(torch.bincount(honest_labels.cpu()).max()) / max(n, 1)
        return self._section(ctx, pool, runs, jac, streams, warnings, chance)

    def _section(self, ctx: AssessmentContext, pool: Pool, runs: Mapping[str, ExtractionRun],
                 jac: ExtractionRun | None, streams: Mapping[str, dict[str, Any]],
                 warnings: list[str], chance: float) -> Section:
        top = max(self.budgets)
        n = int(ctx.x.shape[0])
        undefended = {k: runs[k] for k in ("none", "top1") if k in runs}
        best_key = max(undefended, key=lambda k: undefended[k].result.fidelity)
        best = undefended[best_key].result
        fid, acc = best.fidelity, best.accuracy
        severity = extraction_severity(fid, chance)
        base_fid = runs["none"].result.fidelity if "none" in runs else math.nan
        cost_rows = []
        for key, run in runs.items():
            if key == "none":
                continue
            c = run.honest_cost or {}
            cost_rows.append((_LABELS.get(key, key), c.get("accuracy_before"), c.get("accuracy_after"),
                              c.get("label_agreement"), c.get("mean_l1_change"),
                              json_float(run.result.fidelity, 4),
                              json_float(run.result.fidelity - base_fid, 4)))
        tables = [
            Table(title="Knockoff copy fidelity by query budget (agreement with the model on the "
                        "assessment points)",
                  columns=("API answers", *(f"fidelity at {b}" for b in self.budgets), f"accuracy at {top}"),
                  rows=tuple((_LABELS.get(k, k),
                              *(json_float(r.result.at(b).fidelity, 4) for b in self.budgets),
                              json_float(r.result.accuracy, 4)) for k, r in runs.items())),
            Table(title=f"Output hardening: honest users' cost and the thief's fidelity at {top} queries",
                  columns=("defence", "accuracy before", "accuracy after", "label agreement",
                           "mean L1 change", f"thief fidelity at {top}", "fidelity change vs probabilities"),
                  rows=tuple(cost_rows)),
            Table(title=f"PRADA (delta={self.prada_delta:g}) on each query stream",
                  columns=("stream", "queries", "flagged", "queries to detection", "final W"),
                  rows=tuple((name, v["queries"], v["flagged"], v["queries_to_detection"], v["final_w"])
                             for name, v in streams.items())),
        ]
        figures = [Figure(
            title="Copy quality against query budget",
            caption=(f"Knockoff Nets copies trained on answers to surrogate queries ({pool.name}, "
                     f"{pool.relation}); fidelity is agreement with the model on {n} assessment points. "
                     "Solid: undefended API (probabilities, labels only); dashed: hardened outputs. "
                     "Higher is worse for the model owner."),
            png_base64=_curve_figure(runs, chance),
        )]
        findings = [
            f"With {top} queries of {pool.name} data ({pool.relation}), a Knockoff copy agrees with "
            f"the model on {100 * fid:.1f}% of {n} assessment points ({_LABELS.get(best_key, best_key)}); "
            f"its own test accuracy is {100 * acc:.1f}% (a constant guess matches {100 * chance:.1f}%): "
            f"severity {severity}.",
        ]
        if "top1" in runs and "none" in runs:
            findings.append(
                f"Answering labels only lowers the copy's fidelity at {top} queries from "
                f"{100 * base_fid:.1f}% to {100 * runs['top1'].result.fidelity:.1f}%: hardening "
                "the outputs slows extraction but does not stop it.")
        for key, run in runs.items():
            if key in ("none", "top1") or run.honest_cost is None:
                continue
            findings.append(
                f"{_LABELS.get(key, key)}: thief fidelity {100 * run.result.fidelity:.1f}% at {top} queries; "
                f"honest users keep {100 * run.honest_cost['label_agreement']:.1f}% of their top-1 labels.")
        for name, v in streams.items():
            verdict = (f"flagged after {v['queries_to_detection']} queries" if v["flagged"]
                       else f"not flagged in {v['queries']} queries")
            findings.append(f"PRADA on the {name} stream: {verdict} (final W={v['final_w']}).")
        headline = {"extraction_fidelity": json_float(fid), "extraction_copy_accuracy": json_float(acc)}
        attacks: dict[str, Any] = {f"extraction:knockoff-{k}": r.result.params for k, r in runs.items()}
        if jac is not None:
            attacks["extraction:jacobian"] = jac.result.params
        metrics = {
            **headline,
            "budget": top,
            "chance_fidelity": json_float(chance),
            "best_api": best_key,
            "n": n,
            "pool": pool.info(),
            "runs": {k: {"defence": r.defence, "curve": [p.to_dict() for p in r.result.curve],
                         "queries": r.result.queries, "honest_cost": r.honest_cost,
                         "time_s": round(r.result.time_s, 3)} for k, r in runs.items()},
            "jacobian": None if jac is None else {"curve": [p.to_dict() for p in jac.result.curve],
                                                  "queries": jac.result.queries},
            "prada": dict(streams),
        }
        summary = (f"{top} API queries with surrogate data give a copy that agrees with the model on "
                   f"{100 * fid:.1f}% of inputs; output hardening only slows this down.")
        return Section(
            id=self.id,
            title="Model extraction",
            summary=summary,
            severity=severity,
            atlas=atlas("AML.T0024.002", "AML.T0040"),
            recommendation=_RECOMMENDATION,
            metrics=metrics,
            headline=headline,
            findings=tuple(findings),
            figures=tuple(figures),
            tables=tuple(tables),
            warnings=tuple(warnings),
            provenance={"settings": self.settings(), "pool": pool.info(), "attacks": attacks},
        )
