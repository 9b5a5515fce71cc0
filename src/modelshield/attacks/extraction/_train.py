"""Thief construction and deterministic training, plus the victim-query plumbing of extraction attacks.

Determinism without the global RNG: the default thief is built on the ``meta`` device and
initialised from a private ``torch.Generator``; a factory's thief has its Linear/Conv weights
re-drawn from that generator (``reinit=True``); mini-batch order comes from
``torch.randperm(..., generator=...)`` in ``modelshield.models.train_module``. Same seed, same
thread count, CPU: same copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelshield._checks import check_inputs, check_labels, check_range
from modelshield.attacks.extraction.results import CurvePoint
from modelshield.errors import (
    ConfigError,
    InputError,
    ModelCapabilityError,
    ModelShieldError,
    QueryBudgetExceeded,
)
from modelshield.models import CallableModel, TorchModel, predict_labels, probabilities
from modelshield.models.training import Optimization, cross_entropy_loss, train_module

__all__ = [
    "UNSCALED_ABOVE",
    "Evaluator",
    "OutputMode",
    "Standardise",
    "build_thief",
    "check_checkpoints",
    "check_pool",
    "check_training",
    "check_victim_room",
    "cpu_generator",
    "extraction_params",
    "fit_thief",
    "init_parameters",
    "is_unscaled",
    "pool_statistics",
    "predict_labels",
    "query_in_chunks",
    "query_victim",
    "resolve_seed",
    "uncounted",
]

OutputMode = Literal["proba", "labels"]
ThiefFactory = Callable[[], nn.Module]

LABELS_FIX = "Use output='labels' (KnockoffNets and JacobianAugmentation both work on label-only victims)."


def init_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draw every Linear/Conv layer of module in place from generator (PyTorch's default scheme)."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_uniform_(sub.weight, a=math.sqrt(5), generator=generator)
                if sub.bias is not None:
                    bound = 1.0 / math.sqrt(max(sub.weight[0].numel(), 1))
                    nn.init.uniform_(sub.bias, -bound, bound, generator=generator)
    return module


class Standardise(nn.Module):
    """``(x.flatten(1) - mean) / std`` with fixed per-feature statistics (buffers, not trained).

    The default tabular thief's first layer: features on very different scales (wine rows run
    from 0.1 to 1,680) leave an MLP on raw inputs at chance after a few hundred answers, while
    the same answers train a standardised one to near-perfect agreement. The statistics come
    from the attacker's own query pool (``pool_statistics``), which the attacker holds without
    querying the victim; this is the usual preprocessing of any tabular learner.
    """

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().reshape(1, -1))
        self.register_buffer("std", std.detach().clone().reshape(1, -1))

    def forward(self, x: Tensor) -> Tensor:
        mean, std = self.mean, self.std
        if not isinstance(mean, Tensor) or not isinstance(std, Tensor):  # registered as tensors above
            raise RuntimeError("internal: Standardise buffers are not tensors")
        return (x.flatten(1) - mean) / std


UNSCALED_ABOVE = 10.0
"""A tabular pool with any value beyond +-UNSCALED_ABOVE is taken as unscaled and standardised."""


def pool_statistics(x_pool: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature mean and std ``(D,)`` of pool rows (std 1 where a feature is constant)."""
    flat = x_pool.detach().flatten(1).float()
    mean = flat.mean(0)
    std = flat.std(0, unbiased=False) if flat.shape[0] > 1 else torch.ones_like(mean)
    return mean, torch.where(std > 1e-6 * (1.0 + mean.abs()), std, torch.ones_like(std))


def is_unscaled(x_pool: Tensor) -> bool:
    """True when pool rows hold a value beyond +-``UNSCALED_ABOVE`` (raw units, e.g. wine's 1,680).

    Rows already on a unit scale (pixels, 0/1 flags, the phishing data's -1/0/1) are fed to the
    thief as they are: standardising them would only blow up near-constant features (the border
    pixels of flattened digits), which a copy then leans on and its adversarial examples stop
    transferring.
    """
    return bool(x_pool.numel()) and float(x_pool.detach().abs().max()) > UNSCALED_ABOVE


def _is_image(input_shape: tuple[int, ...]) -> bool:
    return len(input_shape) == 3 and min(input_shape[1:]) >= 8


def default_thief(input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The thief used when no factory is given (built on the meta device: no random draws).

    Images ``(C, H, W)`` with H, W >= 8 get a small CNN (two 3x3 convs, 32/64 channels, pooled to
    4x4, a 128-unit hidden layer); anything else an MLP with one 128-unit hidden layer
    (``build_thief`` puts a ``Standardise`` layer with the pool's statistics in front of it when
    the pool is unscaled, ``is_unscaled``).
    """
    with torch.device("meta"):
        if _is_image(input_shape):
            return nn.Sequential(
                nn.Conv2d(input_shape[0], 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, n_classes),
            )
        return nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), 128), nn.ReLU(),
            nn.Linear(128, n_classes),
        )


def build_thief(
    factory: ThiefFactory | None,
    x_example: Tensor,
    n_classes: int,
    *,
    seed: int | None,
    reinit: bool,
    owner: str,
) -> nn.Module:
    """A fresh thief on x's device, initialised from seed, checked to map x to (N, n_classes) logits.

    ``x_example`` is the attacker's query pool: the default tabular thief standardises unscaled
    rows (``is_unscaled``) with the pool's per-feature mean and std (``Standardise``), which cost
    no victim queries.
    """
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    if factory is None:
        in_shape = tuple(x_example.shape[1:])
        net = default_thief(in_shape, n_classes).to_empty(device=x_example.device)
        init_parameters(net, gen)
        if not _is_image(in_shape) and is_unscaled(x_example):  # with the attacker's own pool's statistics
            mean, std = pool_statistics(x_example)
            net = nn.Sequential(Standardise(mean, std), net).to(x_example.device)
    else:
        net = factory()
        if not isinstance(net, nn.Module):
            raise ConfigError(
                f"{owner}: 'thief_factory' must return a torch.nn.Module; got "
                f"{type(net).__name__}. Pass e.g. thief_factory=lambda: MyNet()."
            )
        if reinit:
            init_parameters(net, gen)
    net.eval()
    try:
        with torch.no_grad():
            out = net(x_example[:1])
    except RuntimeError as exc:
        raise InputError(
            f"{owner}: the thief cannot take inputs of shape {tuple(x_example.shape[1:])} "
            f"(x_pool rows): {exc}. Give x_pool rows the shape the victim and the thief expect, "
            "or pass a matching thief_factory."
        ) from exc
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] != n_classes:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(
            f"{owner}: the thief must return logits of shape (N, {n_classes}) (the victim's "
            f"classes); got {shape}. Make the thief's last layer output {n_classes} logits."
        )
    return net


def _soft_ce(logits: Tensor, target: Tensor) -> Tensor:
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def _distillation_loss(model: nn.Module, xb: Tensor, tb: Tensor, epoch: int, step: int) -> Tensor:
    return _soft_ce(model(xb), tb)


def fit_thief(
    net: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None = None,
) -> torch.optim.Optimizer:
    """Train net in place on (x, target) with Adam; leave it in eval mode; return the optimiser.

    ``target`` is ``(N, C)`` probabilities (soft cross-entropy, i.e. distillation) or ``(N,)``
    labels (cross-entropy). Batch order comes from ``generator`` (CPU). Pass ``optimizer`` to
    continue an earlier training run (Adam's moments are kept). The loop is
    ``modelshield.models.train_module``.
    """
    try:
        result = train_module(
            net, (x, target), epochs=epochs, batch_size=batch_size,
            loss=_distillation_loss if target.dim() == 2 else cross_entropy_loss,
            optimization=Optimization(optimizer="adam", lr=lr), optimizer=optimizer,
            generator=generator, owner="fit_thief",
        )
    finally:
        net.eval()
    return result.optimizer


@contextlib.contextmanager
def uncounted(model: TorchModel | CallableModel) -> Iterator[list[int]]:
    """Queries inside the block are not charged: counter and budget are restored afterwards.

    Yields a one-item list that holds the number of forward queries made in the block.
    Used only for *evaluation* queries (measuring the copy), never for the attack's own.
    """
    q = model.queries
    fwd, bwd, budget = q.forward, q.backward, q.budget
    box = [0]
    q.budget = None
    try:
        yield box
    finally:
        box[0] = q.forward - fwd
        q.forward, q.backward, q.budget = fwd, bwd, budget


def _shape_error(owner: str, x: Tensor, exc: Exception) -> InputError:
    return InputError(
        f"{owner}: the victim could not take inputs of shape {tuple(x.shape[1:])} (x_pool rows): "
        f"{exc}. Give x_pool rows exactly the shape the victim expects (e.g. flatten images for "
        "a tabular model)."
    )


def query_victim(
    model: TorchModel | CallableModel, x: Tensor, *, output: OutputMode, owner: str
) -> Tensor:
    """The victim's answers for x, counted: (N, C) probabilities or (N,) int64 labels.

    A torch module's logits are turned into probabilities (what a prediction API returns).

    Raises:
        ModelCapabilityError: output="proba" but the victim gives labels only.
        InputError: the victim rejects x's shape.
    """
    if output == "proba" and isinstance(model, CallableModel) and model.output == "labels":
        raise ModelCapabilityError(
            f"{owner}: output='proba' needs class probabilities, but the victim returns labels "
            f"only. {LABELS_FIX}"
        )
    try:
        with torch.no_grad():
            if output == "labels":
                return model.predict(x)
            proba = probabilities(model, x)
    except ModelCapabilityError as exc:
        if isinstance(model, CallableModel) and model.output == "labels":
            raise ModelCapabilityError(
                f"{owner}: output='proba' needs class probabilities, but the victim returned "
                f"labels only. {LABELS_FIX}"
            ) from exc
        raise
    except ModelShieldError:
        raise
    except (RuntimeError, ValueError) as exc:
        raise _shape_error(owner, x, exc) from exc
    return proba


def check_checkpoints(checkpoints: object, budget: int, *, owner: str) -> tuple[int, ...]:
    """Validate checkpoints (ints in [1, budget]); return them sorted, unique, ending at budget."""
    if not isinstance(checkpoints, tuple | list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= budget for c in checkpoints
    ):
        raise ConfigError(
            f"{owner}: 'checkpoints' must be a tuple of query counts in [1, budget={budget}]; got "
            f"{checkpoints!r}. Drop the checkpoints above the budget or raise the budget."
        )
    return tuple(sorted({*checkpoints, budget}))


def extraction_params(attack: object) -> dict[str, Any]:
    """The attack's config as a JSON-safe dict; callables are recorded by name."""
    out: dict[str, Any] = {}
    if dataclasses.is_dataclass(attack) and not isinstance(attack, type):
        for f in dataclasses.fields(attack):
            v = getattr(attack, f.name)
            if callable(v):
                out[f.name] = getattr(v, "__qualname__", type(v).__name__)
            elif isinstance(v, tuple):
                out[f.name] = list(v)
            else:
                out[f.name] = v
    return out


class Evaluator:
    """Measures copies on a held-out set against labels the victim gave once, uncounted.

    The victim's labels on ``x_test`` are taken from ``victim_labels`` when given, else asked
    of the victim once before the attack starts inside :func:`uncounted` (so they are charged
    neither to the attacker's budget nor to the victim's counter, and reported as eval queries).
    """

    def __init__(
        self,
        model: TorchModel | CallableModel,
        eval_data: tuple[Tensor, Tensor] | None,
        victim_labels: Tensor | None,
        transfer_attack: Any,
        *,
        input_shape: tuple[int, ...],
        owner: str,
    ) -> None:
        self.model = model
        self.owner = owner
        self.transfer_attack = transfer_attack
        self.eval_queries = 0
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.victim_labels: Tensor | None = None
        if eval_data is None:
            if victim_labels is not None or transfer_attack is not None:
                raise ConfigError(
                    f"{owner}: 'victim_labels' and 'transfer_attack' need eval_data; got "
                    "eval_data=None. Pass eval_data=(x_test, y_test)."
                )
            return
        if not isinstance(eval_data, tuple | list) or len(eval_data) != 2:
            raise InputError(
                f"{owner}: eval_data must be a pair (x_test, y_test); got {type(eval_data).__name__}. "
                "Pass eval_data=(x_test, y_test)."
            )
        x = check_inputs(eval_data[0], bounds=model.bounds, owner=owner)
        if tuple(x.shape[1:]) != input_shape:
            raise InputError(
                f"{owner}: eval_data inputs must have the pool's row shape {input_shape}; got "
                f"{tuple(x.shape[1:])}. Use test data in the same format as x_pool."
            )
        self.x = x
        self._y_raw = eval_data[1]
        self._labels_raw = victim_labels

    @property
    def active(self) -> bool:
        return self.x is not None

    def prepare(self) -> None:
        """Check labels (needs the victim's n_classes) and get the victim's test labels."""
        if self.x is None:
            return
        n_classes = self.model.n_classes
        self.y = check_labels(self._y_raw, n=self.x.shape[0], n_classes=n_classes, owner=self.owner,
                              name="eval_data[1]", device=self.x.device)
        if self._labels_raw is not None:
            self.victim_labels = check_labels(
                self._labels_raw, n=self.x.shape[0], n_classes=n_classes, owner=self.owner,
                name="victim_labels", device=self.x.device,
            )
            return
        with uncounted(self.model) as box, torch.no_grad():
            try:
                self.victim_labels = self.model.predict(self.x)
            except ModelShieldError:
                raise
            except (RuntimeError, ValueError) as exc:
                raise _shape_error(self.owner, self.x, exc) from exc
        self.eval_queries += box[0]

    def point(self, copy: nn.Module, queries: int) -> CurvePoint | None:
        """The copy's fidelity, accuracy (and transfer rate) after ``queries`` victim queries."""
        if self.x is None or self.y is None or self.victim_labels is None:
            return None
        pred = predict_labels(copy, self.x)
        transfer: float | None = None
        if self.transfer_attack is not None:
            from modelshield.attacks.extraction.metrics import transferability

            with uncounted(self.model) as box:
                transfer = transferability(copy, self.model, self.x, self.y, self.transfer_attack)
            self.eval_queries += box[0]
        return CurvePoint(
            queries=queries,
            fidelity=float((pred == self.victim_labels).float().mean()),
            accuracy=float((pred == self.y).float().mean()),
            transfer_rate=transfer,
        )


def resolve_seed(seed: int | None) -> int:
    """seed itself, or fresh entropy when None (not reproducible)."""
    return seed if seed is not None else int(torch.Generator().seed() % (2**31))


def cpu_generator(seed: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen


def check_training(owner: str, *, epochs: object, batch_size: object, lr: object,
                   thief_factory: object) -> None:
    """Validate the thief-training fields shared by the learning-based attacks."""
    check_range("epochs", epochs, owner=owner, low=1, integer=True)
    check_range("batch_size", batch_size, owner=owner, low=1, integer=True)
    check_range("lr", lr, owner=owner, low=0.0, low_open=True, fix="Use e.g. lr=1e-3 (Adam).")
    if thief_factory is not None and not callable(thief_factory):
        raise ConfigError(
            f"{owner}: 'thief_factory' must be a callable returning a fresh torch.nn.Module; got "
            f"{thief_factory!r}. Pass e.g. thief_factory=lambda: MyNet(), or None for the default."
        )


def check_pool(x_pool: object, model: TorchModel | CallableModel, *, owner: str, need: int,
               what: str) -> Tensor:
    """x_pool as a checked tensor with at least ``need`` rows (InputError naming the sizes)."""
    x = check_inputs(x_pool, bounds=model.bounds, owner=owner)
    if x.shape[0] < need:
        raise InputError(
            f"{owner}: x_pool must have at least {need} rows ({what}); got {x.shape[0]} rows of "
            f"shape {tuple(x.shape[1:])}. Pass a larger pool or lower the budget."
        )
    return x


def check_victim_room(model: TorchModel | CallableModel, need: int, *, owner: str) -> None:
    """Raise QueryBudgetExceeded unless the victim's own budget leaves ``need`` queries."""
    left = model.queries.remaining
    if left is not None and left < need:
        raise QueryBudgetExceeded(
            f"{owner}: the victim's remaining query budget must be at least {need} (the attack's "
            f"budget); got {left}. Lower the attack's budget or raise as_model(..., budget=...)."
        )


def query_in_chunks(model: TorchModel | CallableModel, x: Tensor, *, output: OutputMode,
                    owner: str, chunk: int = 512) -> Tensor:
    """query_victim over x in chunks of ``chunk`` rows, concatenated."""
    return torch.cat([query_victim(model, part, output=output, owner=owner)
                      for part in torch.split(x, chunk)])
