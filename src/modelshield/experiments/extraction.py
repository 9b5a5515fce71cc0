"""Extraction experiments: the attacker's pool, the logged prediction API, and one scenario run.

``run_extraction`` puts a victim behind a prediction API (optionally hardened with
``modelshield.defenses.extraction.harden``), lets an extraction attack query it from a surrogate
pool (``load_pool``), measures the copy on held-out points, and replays the attack's query
stream through PRADA, exactly as a gateway monitor would have seen it. ``QueryLog`` is the
API as the attacker sees it, recording every query. The ``modelshield extract`` command, the
"Model extraction" report section and ``benchmarks/extraction.py`` are built on these.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from modelshield._checks import check_choice, check_inputs, check_range
from modelshield._resources import check_memory, tensor_bytes
from modelshield.attacks.extraction.equation_solving import EquationSolving
from modelshield.attacks.extraction.jacobian import JacobianAugmentation
from modelshield.attacks.extraction.knockoff import KnockoffNets
from modelshield.attacks.extraction.results import ExtractionResult
from modelshield.defenses.extraction import HARDENING_METHODS, PRADA, harden, honest_cost
from modelshield.errors import ConfigError, DataError, InputError
from modelshield.models import (
    BlackBoxOutput,
    CallableModel,
    ModelLike,
    TorchModel,
    as_model,
    black_box_answers,
)

__all__ = [
    "DEFAULT_POOL",
    "DEFENCES",
    "EXTRACTION_ATTACKS",
    "POOLS",
    "ExtractionAttack",
    "ExtractionRun",
    "Pool",
    "QueryLog",
    "build_extraction_attack",
    "check_budget_memory",
    "digits_from_mnist",
    "load_pool",
    "prada_verdict",
    "run_extraction",
]

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


def _json_float(v: float | None, digits: int = 6) -> float | None:
    """Round v for JSON; nan and None become None."""
    return None if v is None or math.isnan(v) else round(float(v), digits)


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
    """The tensor in a .npy / .npz / .pt pool file, read without unpickling anything.

    Raises InputError for a missing file or an unknown suffix, DataError for a file that is not
    the format its suffix names (a pickle, a truncated or foreign file, a non-numeric array).
    """
    if not path.is_file():
        raise InputError(
            f"{owner}: 'pool' must be one of {', '.join(POOLS)} or an existing .npy/.npz/.pt file; got "
            f"{str(path)!r}. Pass a data set name or the path of a saved tensor."
        )
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".pt"):
        raise InputError(
            f"{owner}: 'pool' must be one of {', '.join(POOLS)} or a .npy/.npz/.pt file; got "
            f"{str(path)!r}. Save the pool with np.save or torch.save."
        )
    expected = {".npy": "a numeric array saved with np.save",
                ".npz": "one numeric array saved with np.savez (key 'x' when it holds several)",
                ".pt": "one tensor saved with torch.save(x, path)"}[suffix]
    fix = {".npy": "Re-save it with np.save(path, x)", ".npz": "Re-save it with np.savez(path, x=x)",
           ".pt": "Re-save it with torch.save(x, path)"}[suffix]
    obj: object
    # The file is untrusted input: whatever a parser raises on it (pickle refusals, truncated zips,
    # bad headers, KeyError from a malformed archive, ...) means "not the expected format".
    try:
        if suffix == ".npy":
            obj = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            # Opened here, not by np.load, which leaks the handle when the zip is broken.
            with path.open("rb") as fh, np.load(fh, allow_pickle=False) as archive:
                keys = list(archive.keys())
                key = "x" if "x" in keys else keys[0] if len(keys) == 1 else None
                if key is None:
                    raise DataError(
                        f"{owner}: the pool file {str(path)!r} must hold {expected}; got the arrays "
                        f"{keys[:5]!r}. {fix}."
                    )
                obj = archive[key]
        else:
            with warnings.catch_warnings():  # torch warns about foreign pickle protocols, then refuses
                warnings.simplefilter("ignore", UserWarning)
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except DataError:
        raise
    except Exception as exc:
        first = " ".join(str(exc).split()).split(". ")[0][:200]  # torch's messages run to paragraphs
        reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise DataError(f"{owner}: the pool file {str(path)!r} must hold {expected}; got a file that "
                        f"cannot be read that way ({reason}). {fix}.") from exc
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise DataError(f"{owner}: the pool file {str(path)!r} must hold {expected}; got an array of "
                            f"dtype {obj.dtype}. {fix}.")
        return torch.from_numpy(np.ascontiguousarray(obj))
    if not isinstance(obj, Tensor):
        raise DataError(f"{owner}: the pool file {str(path)!r} must hold {expected}; got "
                        f"{type(obj).__name__}. Save the inputs alone with torch.save(x, path).")
    return obj


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
            in bounds) or the path of a ``.npy`` / ``.npz`` / ``.pt`` tensor ``(N, *input_shape)``
            (read without unpickling: ``allow_pickle=False``, ``weights_only=True``; uint8
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
            the file is missing or has an unknown suffix.
        DataError: the file is not the format its suffix names (e.g. a pickle).
        MissingDataError: the data set's files are not found.
    """
    from modelshield.data import load_dataset

    owner = "load_pool"
    shape = tuple(int(s) for s in input_shape)
    groups: Tensor | None = None
    if spec == "noise":
        check_range("size", size, owner=owner, low=1, integer=True)
        check_memory(owner, f"'size' ({size} noise rows of shape {shape}, float32, 2 copies while drawn)",
                     tensor_bytes(size, shape, copies=2),
                     fix="Ask for fewer noise rows (CLI: lower --queries, the noise pool has one row per "
                         "query).")
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
    min_steps: int = 0,
    seed: int = 0,
) -> ExtractionAttack:
    """An extraction attack by name (one of ``EXTRACTION_ATTACKS``) with ``budget`` victim queries.

    ``"knockoff"``: KnockoffNets with ``strategy``, ``checkpoints`` and ``min_steps`` (least
    thief gradient steps per checkpoint; costs no queries). ``"jacobian"``:
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
        check_choice("strategy", strategy, ("random", "adaptive", "balanced"), owner=owner)
        cps = tuple(c for c in checkpoints if c < budget)
        strat: Literal["random", "adaptive", "balanced"] = (
            "adaptive" if strategy == "adaptive" else "balanced" if strategy == "balanced" else "random")
        attack = KnockoffNets(budget=budget, strategy=strat, min_steps=min_steps,
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
        kind: BlackBoxOutput = "labels" if self.label_only else "proba"
        self._answer = black_box_answers(api, output=kind, on_answer=self._record)
        self.model = CallableModel(self, bounds=api.bounds, output=kind, n_classes=api.n_classes_known)

    def _record(self, x: Tensor, answer: Tensor) -> Tensor:
        self._x.append(x.detach().clone())
        self._labels.append((answer if answer.dim() == 1 else answer.argmax(1)).long())
        return answer

    def __call__(self, x_np: np.ndarray) -> np.ndarray:
        """Answer one batch of queries (numpy) through the API's black-box view, and record it."""
        return self._answer(x_np)

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
        "final_w": _json_float(mon.shapiro_.get(client)),
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


def check_budget_memory(budget: int, input_shape: Sequence[int], *, owner: str) -> None:
    """Raise ConfigError unless an extraction with ``budget`` queries of ``input_shape`` fits in memory.

    The estimate is ``budget x prod(input_shape) x 4 bytes (float32) x 3 copies``: the queried
    rows, the API's log of them and the thief's training set (see ``modelshield._resources``).
    """
    row = tuple(int(s) for s in input_shape)
    check_memory(owner, f"the query budget ({budget} queries of shape {row}, float32, 3 copies: the "
                 "queries, the API's log of them and the thief's training set)",
                 tensor_bytes(budget, row, copies=3),
                 fix="Give the attack a smaller budget (CLI: lower --queries).")


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
    budget = getattr(attack, "budget", None)
    if isinstance(budget, int):
        check_budget_memory(budget, (x_pool.x if isinstance(x_pool, Pool) else x_pool).shape[1:],
                            owner="run_extraction")
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
