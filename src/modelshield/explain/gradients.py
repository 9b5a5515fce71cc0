"""Gradient attributions for PyTorch models: Captum's maths, batched within a memory budget.

Saliency, gradient x input, Integrated Gradients, SmoothGrad, occlusion and guided backpropagation.
Captum computes every attribution; this module adds what its users keep asking for: each call
measures what one model row costs (``explain.memory``), cuts the batch (and Integrated Gradients'
steps, through Captum's ``internal_batch_size``) so that no pass holds more than ``max_memory_mb``,
defaults the target to the predicted class, reports Integrated Gradients' completeness gap, seeds
SmoothGrad's noise per point, and leaves the model and the inputs as it found them.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, ClassVar, Literal, TypeAlias

import captum.attr as captum_attr  # type: ignore[import-untyped]  # captum ships no py.typed marker
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelshield._checks import check_choice, check_inputs, check_labels, check_range
from modelshield.attacks.ops import point_keys, point_normal, point_uniform
from modelshield.attacks.verify import probe_forward
from modelshield.errors import ConfigError, InputError
from modelshield.explain.memory import CPU_PASS_BYTES, MemoryPlan, memory_budget, plan_rows, probe_row_cost
from modelshield.explain.result import Attribution
from modelshield.models import ModelLike, TorchModel, as_gradient_model, eval_mode
from modelshield.models.outputs import safe_argmax

__all__ = [
    "BASELINES",
    "IG_METHODS",
    "BaselineKind",
    "GradientTimesInput",
    "GuidedBackprop",
    "IGMethod",
    "IntegratedGradients",
    "Occlusion",
    "Saliency",
    "SmoothGrad",
    "blur_baseline",
    "smoothing_noise",
]

BaselineKind: TypeAlias = Literal["zeros", "blur", "uniform"]
BASELINES: tuple[BaselineKind, ...] = ("zeros", "blur", "uniform")
IGMethod: TypeAlias = Literal[
    "gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"
]
IG_METHODS: tuple[IGMethod, ...] = (
    "gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"
)

_NOISE_STREAM = 0x5347  # SmoothGrad's noise: (_NOISE_STREAM,) per point
_UNIFORM_STREAM = 0x4947  # Integrated Gradients' uniform baseline

# Bytes of input-sized tensors the explainers hold per model row, besides the model's own
# activations (in units of one input row): Captum's interpolated inputs (the list and their
# concatenation), gradients and scaled gradients for IG; the input copy and its gradient else.
_IG_COPIES = 5
_GRAD_COPIES = 3
_OCCLUSION_COPIES = 3  # the expanded inputs, the ablation mask and the ablated inputs
_CALL_COPIES = 4  # input-sized tensors per point held for a whole call (see _prepare)


# --------------------------------------------------------------------------------------------
# Pure helpers


def blur_baseline(x: Tensor, sigma: float | None = None) -> Tensor:
    """Gaussian blur of each image in x over its last two (spatial) axes; same shape as x.

    The blurred-input baseline of Sturmfels, Lundberg and Lee, "Visualizing the Impact of Feature
    Attribution Baselines", Distill 2020: it removes the fine detail an attribution should
    explain while keeping the image's colours. ``sigma`` is in pixels; None means
    ``max(H, W) / 8``. Borders are padded by replication.

    Args:
        x: ``(N, H, W)`` or ``(N, C, H, W)`` float images.
        sigma: the blur's standard deviation in pixels (> 0), or None.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    s = max(h, w) / 8.0 if sigma is None else float(sigma)
    radius = max(1, math.ceil(3.0 * s))
    grid = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (grid / s) ** 2)
    kernel = kernel / kernel.sum()
    planes = x.detach().reshape(-1, 1, h, w)
    planes = F.pad(planes, (radius, radius, radius, radius), mode="replicate")
    planes = F.conv2d(planes, kernel.view(1, 1, 1, -1))
    planes = F.conv2d(planes, kernel.view(1, 1, -1, 1))
    return planes.reshape(x.shape)


def smoothing_noise(x: Tensor, *, samples: int, std: float, seed: int | None) -> Tensor:
    """SmoothGrad's Gaussian noise for x: ``(N * samples, *input_shape)``, row i's samples together.

    The layout is Captum's ``NoiseTunnel`` layout (``x.repeat_interleave(samples, 0) + noise``).
    Row i's noise depends only on row i's values and seed (``attacks.ops.point_keys``), so results
    do not depend on the batch, its order or how it is cut into passes.
    """
    keys = point_keys(x, None, seed)
    noise = point_normal(keys, _NOISE_STREAM, (samples, *x.shape[1:]), dtype=x.dtype)
    return noise.mul_(std).reshape(x.shape[0] * samples, *x.shape[1:])


def _spans(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most size rows covering range(n)."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _grad_ready(x: Tensor) -> Tensor:
    """A fresh leaf over x's storage, requiring grad (Captum wants that flag), without a copy: x's
    own flag is untouched and autograd refuses in-place writes to a leaf that requires grad."""
    return x.detach().requires_grad_(True)


def _join(parts: list[Tensor]) -> Tensor:
    """The passes' results in order; one pass is returned as it is (no copy)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _pick(logits: Tensor, target: Tensor) -> Tensor:
    return logits.gather(1, target[:, None]).squeeze(1)


def _json(value: object) -> object:
    """A JSON-able view of a config value (tensors by shape, nested explainers by config)."""
    if isinstance(value, Tensor):
        return {"tensor": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    if is_dataclass(value) and not isinstance(value, type):
        return {"method": getattr(value, "name", type(value).__name__), **_config(value)}
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    return value


def _config(explainer: object) -> dict[str, Any]:
    """The explainer's settings (its dataclass fields), JSON-able."""
    return {f.name: _json(getattr(explainer, f.name)) for f in fields(explainer)}  # type: ignore[arg-type]  # explainers are dataclasses


def _check_memory_mb(owner: str, value: float | None) -> None:
    if value is not None:
        check_range("max_memory_mb", value, owner=owner, low=0.0, low_open=True,
                    fix="Give megabytes (e.g. max_memory_mb=2048), or None for a share of the free memory.")


def _check_bool(owner: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{owner}: {name!r} must be True or False; got {value!r}.")


# --------------------------------------------------------------------------------------------
# The call: model adapter, input checks, target, memory plan


class _Logits(nn.Module):
    """The model's ``(N, C)`` logits as a module: Captum's ReLU hooks reach the model's layers
    (``inner``) and every row is counted by the adapter."""

    def __init__(self, model: TorchModel) -> None:
        super().__init__()
        self.inner = model.module
        self.adapter = model
        self.kept: list[Tensor] | None = None  # when a list: each pass's logits, detached

    def forward(self, x: Tensor) -> Tensor:
        out = self.adapter.logits(x)
        if self.kept is not None:
            self.kept.append(out.detach())
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class _Call:
    model: TorchModel
    forward: _Logits
    x: Tensor
    target: Tensor
    score: Tensor | None  # None: read from the attribution passes' own forward (forward.kept)
    plan: MemoryPlan

    @property
    def rows(self) -> int:
        return self.plan.rows_per_pass

    @property
    def scores(self) -> Tensor:
        """``(N,)`` the target logit at x."""
        if self.score is not None:
            return self.score
        if self.forward.kept is None or sum(k.shape[0] for k in self.forward.kept) != self.x.shape[0]:
            raise RuntimeError("explain: the attribution passes did not score every input once")
        return _pick(torch.cat(self.forward.kept), self.target)

    def backward(self, rows: int) -> None:
        self.model.queries.add_backward(rows)


def _check_x(m: TorchModel, x: object, owner: str) -> Tensor:
    x_t = check_inputs(x, bounds=m.bounds, owner=owner)
    m.check_device(x_t)
    want = m.dtype
    if want is not None and x_t.dtype != want:
        raise InputError(
            f"{owner}: x must have the model's dtype {want}; got dtype {x_t.dtype}. Convert the "
            f"inputs with x.to({want})."
        )
    if not m.n_classes_confirmed:
        probe_forward(m, x_t, owner=owner)
    return x_t.detach()


def _check_target(m: TorchModel, target: object, x: Tensor, owner: str) -> Tensor | None:
    if target is None:
        return None
    if isinstance(target, int) and not isinstance(target, bool):
        target = torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
    return check_labels(target, n=x.shape[0], n_classes=m.n_classes, owner=owner, name="target",
                        device=x.device)


def _prepare(
    owner: str, m: TorchModel, x: Tensor, target: Tensor | None, *, max_memory_mb: float | None,
    backward: bool, copies: int, scores_from_passes: bool = False,
) -> _Call:
    """Probe the row cost, plan the passes, read the scores and default the target (eval mode on).

    With ``scores_from_passes`` and a given target no separate forward pass is run: the
    attribution's passes (one forward over each row of x, in order) keep their logits instead,
    which saves a forward pass and the memory it leaves behind."""
    fwd = _Logits(m)
    probe_target = target if target is not None else torch.zeros(1, dtype=torch.long, device=x.device)
    cost = probe_row_cost(fwd, m.module, x, probe_target, backward=backward)
    row_input = x[:1].numel() * x.element_size()
    # Held for the whole call: the result and its list of parts, a baseline, the checked input.
    held = _CALL_COPIES * x.shape[0] * row_input
    prefer = CPU_PASS_BYTES if max_memory_mb is None and x.device.type == "cpu" else None
    plan = plan_rows(owner, cost, budget=memory_budget(max_memory_mb, x.device),
                     extra_row_bytes=copies * row_input, extra_fixed_bytes=held, prefer_bytes=prefer)
    if scores_from_passes and target is not None:
        fwd.kept = []
        return _Call(model=m, forward=fwd, x=x, target=target, score=None, plan=plan)
    with torch.no_grad():
        logits = torch.cat([fwd(x[s]) for s in _spans(x.shape[0], plan.rows_per_pass)])
    t = safe_argmax(logits) if target is None else target
    return _Call(model=m, forward=fwd, x=x, target=t, score=_pick(logits, t), plan=plan)


def _explain(
    explainer: Any, model: ModelLike, x: object, target: object, *, backward: bool, copies: int,
    attribute: Callable[[_Call], tuple[Tensor, Tensor | None, dict[str, Any]]],
) -> Attribution:
    """Shared body of every explainer's call: adapt, check, plan, attribute, wrap the result."""
    owner = type(explainer).__name__
    started = time.perf_counter()
    m = as_gradient_model(model, caller=owner)
    x_t = _check_x(m, x, owner)
    t = _check_target(m, target, x_t, owner)
    with eval_mode(m):
        call = _prepare(owner, m, x_t, t, max_memory_mb=explainer.max_memory_mb, backward=backward,
                        copies=copies, scores_from_passes=getattr(explainer, "scores_from_passes", False))
        values, baseline_score, details = attribute(call)
        score = call.scores
    call.forward.kept = None
    details = {**details, "memory": call.plan.to_dict()}
    return Attribution(
        method=explainer.name, values=values.detach(), target=call.target,
        score=score.detach(), baseline_score=baseline_score, details=details,
        config=_config(explainer), seconds=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------------------------
# Row kernels: Captum on consecutive passes of at most call.rows model rows


def _gradient_rows(call: _Call, x: Tensor, target: Tensor, run: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``run(x_pass, target_pass)`` over passes of at most call.rows rows, concatenated."""
    out = []
    for s in _spans(x.shape[0], call.rows):
        out.append(run(_grad_ready(x[s]), target[s]).detach())
        call.backward(s.stop - s.start)
    return _join(out)


def _saliency_rows(call: _Call, x: Tensor, target: Tensor, *, absolute: bool) -> Tensor:
    captum = captum_attr.Saliency(call.forward)
    return _gradient_rows(call, x, target, lambda xs, ts: captum.attribute(xs, target=ts, abs=absolute))


def _input_x_gradient_rows(call: _Call, x: Tensor, target: Tensor) -> Tensor:
    captum = captum_attr.InputXGradient(call.forward)
    return _gradient_rows(call, x, target, lambda xs, ts: captum.attribute(xs, target=ts))


def _guided_rows(call: _Call, x: Tensor, target: Tensor) -> Tensor:
    captum = captum_attr.GuidedBackprop(call.forward)

    def run(xs: Tensor, ts: Tensor) -> Tensor:
        with warnings.catch_warnings():
            # Captum announces its (temporary, removed in a finally) ReLU hooks on every call.
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
            out: Tensor = captum.attribute(xs, target=ts)
        return out

    return _gradient_rows(call, x, target, run)


def _integrated_rows(
    call: _Call, x: Tensor, baseline: Tensor, target: Tensor, *, steps: int, method: IGMethod
) -> Tensor:
    """Integrated Gradients of x from baseline (both (N, ...)), passes of at most call.rows rows.

    A pass holds ``points x steps_per_pass`` rows: when all of a chunk's steps fit, Captum runs
    them in one pass (its default); else ``internal_batch_size`` makes it walk the steps in
    groups, and the chunk of points is cut to fit at least one step.
    """
    captum = captum_attr.IntegratedGradients(call.forward)
    out = []
    for s in _spans(x.shape[0], call.rows):
        n = s.stop - s.start
        per_pass = None if n * steps <= call.rows else (call.rows // n) * n
        values: Tensor = captum.attribute(
            _grad_ready(x[s]), baselines=baseline[s].detach(), target=target[s], n_steps=steps,
            method=method, internal_batch_size=per_pass,
        )
        out.append(values.detach())
        call.backward(n * steps)
    return _join(out)


# --------------------------------------------------------------------------------------------
# The explainers


@dataclass(frozen=True, kw_only=True, slots=True)
class Saliency:
    """Gradient of the target logit with respect to the input (absolute value by default).

    Args:
        absolute: return ``|gradient|`` (Simonyan et al.; Captum's default) or the signed gradient.
        max_memory_mb: the most memory one pass may hold; None means a share of the free memory
            of the model's device (see ``explain.memory``).

    Reference: Simonyan, Vedaldi and Zisserman, "Deep Inside Convolutional Networks: Visualising
    Image Classification Models and Saliency Maps", ICLR workshop 2014 (arXiv:1312.6034).

    Example:
        result = Saliency()(model, x)
        result.values.shape == x.shape
    """

    absolute: bool = True
    max_memory_mb: float | None = None

    name: ClassVar[str] = "saliency"
    scores_from_passes: ClassVar[bool] = True  # one forward per row of x: its logits are the scores
    rows_per_point: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _check_bool("Saliency", "absolute", self.absolute)
        _check_memory_mb("Saliency", self.max_memory_mb)

    def _rows(self, call: _Call, x: Tensor, target: Tensor) -> Tensor:
        return _saliency_rows(call, x, target, absolute=self.absolute)

    def __call__(self, model: ModelLike, x: Tensor, target: Tensor | int | None = None) -> Attribution:
        """Attributions of x ``(N, *input_shape)`` to the logit of target (default: predicted class)."""
        return _explain(self, model, x, target, backward=True, copies=_GRAD_COPIES,
                        attribute=lambda c: (self._rows(c, c.x, c.target), None, {}))


@dataclass(frozen=True, kw_only=True, slots=True)
class GradientTimesInput:
    """Gradient of the target logit times the input, feature by feature.

    Args:
        max_memory_mb: the most memory one pass may hold; None means a share of the free memory.

    Reference: Shrikumar, Greenside, Shcherbina and Kundaje, "Not Just a Black Box: Learning
    Important Features Through Propagating Activation Differences", arXiv:1605.01713, 2016.

    Example:
        result = GradientTimesInput()(model, x, target=y)
    """

    max_memory_mb: float | None = None

    name: ClassVar[str] = "gradient-x-input"
    scores_from_passes: ClassVar[bool] = True  # one forward per row of x: its logits are the scores
    rows_per_point: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _check_memory_mb("GradientTimesInput", self.max_memory_mb)

    def _rows(self, call: _Call, x: Tensor, target: Tensor) -> Tensor:
        return _input_x_gradient_rows(call, x, target)

    def __call__(self, model: ModelLike, x: Tensor, target: Tensor | int | None = None) -> Attribution:
        """Attributions of x ``(N, *input_shape)`` to the logit of target (default: predicted class)."""
        return _explain(self, model, x, target, backward=True, copies=_GRAD_COPIES,
                        attribute=lambda c: (self._rows(c, c.x, c.target), None, {}))


@dataclass(frozen=True, kw_only=True, slots=True)
class GuidedBackprop:
    """Guided backpropagation: the gradient with negative gradients stopped at every ReLU.

    Only ``nn.ReLU`` modules are modified (Captum's rule): a ReLU called as a function inside
    ``forward`` passes its ordinary gradient. Adebayo et al. (2018) show the maps barely depend on
    the weights, so the sanity checks flag it; it is here to be checked.

    Args:
        max_memory_mb: the most memory one pass may hold; None means a share of the free memory.

    Reference: Springenberg, Dosovitskiy, Brox and Riedmiller, "Striving for Simplicity: The All
    Convolutional Net", ICLR workshop 2015 (arXiv:1412.6806).

    Example:
        result = GuidedBackprop()(model, x)
    """

    max_memory_mb: float | None = None

    name: ClassVar[str] = "guided-backprop"
    scores_from_passes: ClassVar[bool] = True  # one forward per row of x: its logits are the scores
    rows_per_point: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _check_memory_mb("GuidedBackprop", self.max_memory_mb)

    def _rows(self, call: _Call, x: Tensor, target: Tensor) -> Tensor:
        return _guided_rows(call, x, target)

    def __call__(self, model: ModelLike, x: Tensor, target: Tensor | int | None = None) -> Attribution:
        """Attributions of x ``(N, *input_shape)`` to the logit of target (default: predicted class)."""
        return _explain(self, model, x, target, backward=True, copies=_GRAD_COPIES,
                        attribute=lambda c: (self._rows(c, c.x, c.target), None, {}))


@dataclass(frozen=True, kw_only=True, slots=True)
class IntegratedGradients:
    """Integrated Gradients with its completeness gap reported per row.

    The attribution of feature i is ``(x_i - b_i)`` times the mean gradient along the straight
    path from the baseline b to x, integrated numerically with ``steps`` points (Captum). By
    completeness the attributions sum to ``f(x) - f(b)`` for the target logit; the result holds
    both scores (``score``, ``baseline_score``), so ``result.completeness_gap`` is the quadrature
    error per row (also in ``details``, with its largest value relative to ``|f(x) - f(b)|``).
    Raise ``steps`` when it is large.

    Memory: the batch is cut into passes of at most ``rows_per_pass`` model rows (points x steps)
    chosen from ``max_memory_mb`` (see ``explain.memory``), so 200 steps on 500 images never runs
    out of memory; ``details["memory"]`` shows the plan.

    Args:
        steps: integration points (>= 1; >= 2 for the Riemann rules).
        baseline: ``"zeros"`` (Captum's default), ``"blur"`` (each image blurred,
            ``blur_baseline``; images only), ``"uniform"`` (uniform noise in the model's bounds,
            seeded per point) or a tensor of the input's shape, ``(1, *input_shape)`` or
            ``(N, *input_shape)``.
        method: ``"gausslegendre"`` (Captum's default) or a Riemann rule (``"riemann_trapezoid"``,
            ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``).
        blur_sigma: the blur's standard deviation in pixels for ``baseline="blur"``; None means
            ``max(H, W) / 8``.
        seed: seed of the ``"uniform"`` baseline.
        max_memory_mb: the most memory one pass may hold; None means a share of the free memory.

    Reference: Sundararajan, Taly and Yan, "Axiomatic Attribution for Deep Networks", ICML 2017
    (arXiv:1703.01365).

    Example:
        result = IntegratedGradients(steps=50)(model, x)
        result.completeness_gap.max()
    """

    steps: int = 50
    baseline: BaselineKind | Tensor = "zeros"
    method: IGMethod = "gausslegendre"
    blur_sigma: float | None = None
    seed: int | None = 0
    max_memory_mb: float | None = None

    name: ClassVar[str] = "integrated-gradients"

    def __post_init__(self) -> None:
        owner = "IntegratedGradients"
        check_choice("method", self.method, IG_METHODS, owner=owner)
        low = 1 if self.method == "gausslegendre" else 2
        check_range("steps", self.steps, owner=owner, low=low, integer=True,
                    fix="Captum's default is steps=50; raise it when the completeness gap is large.")
        if isinstance(self.baseline, Tensor):
            if not self.baseline.is_floating_point() or not bool(torch.isfinite(self.baseline).all()):
                raise ConfigError(
                    f"{owner}: 'baseline' must be a finite floating-point tensor; got one of dtype "
                    f"{self.baseline.dtype} with non-finite values or integers. Pass e.g. "
                    "torch.zeros(input_shape)."
                )
        else:
            check_choice("baseline", self.baseline, BASELINES, owner=owner,
                         fix="Or pass a tensor of the input's shape.")
        if self.blur_sigma is not None:
            check_range("blur_sigma", self.blur_sigma, owner=owner, low=0.0, low_open=True,
                        fix="Give the blur's standard deviation in pixels, or None for max(H, W) / 8.")
        _check_memory_mb(owner, self.max_memory_mb)

    @property
    def rows_per_point(self) -> int:
        return self.steps

    def baseline_for(self, x: Tensor, bounds: tuple[float, float]) -> Tensor:
        """The ``(N, *input_shape)`` baseline for x (an expanded view for a shared tensor baseline).

        Raises:
            InputError: a tensor baseline whose shape, dtype or device does not fit x, or
                ``"blur"`` for inputs that are not images.
        """
        owner = "IntegratedGradients"
        shape = tuple(x.shape[1:])
        if isinstance(self.baseline, Tensor):
            b = self.baseline
            if tuple(b.shape) == shape:
                b = b.unsqueeze(0)
            if b.dim() != x.dim() or tuple(b.shape[1:]) != shape or b.shape[0] not in (1, x.shape[0]):
                raise InputError(
                    f"{owner}: baseline must have shape {shape}, (1, *{shape}) or "
                    f"({x.shape[0]}, *{shape}) to match x; got shape {tuple(self.baseline.shape)}. "
                    "Build it like the inputs, e.g. torch.zeros_like(x)."
                )
            if b.device != x.device or b.dtype != x.dtype:
                raise InputError(
                    f"{owner}: baseline must be on x's device and of x's dtype ({x.device}, {x.dtype}); "
                    f"got {b.device}, {b.dtype}. Convert it with baseline.to(x)."
                )
            return b.detach().expand_as(x)
        if self.baseline == "zeros":
            return torch.zeros_like(x)
        if self.baseline == "uniform":
            lo, hi = bounds
            u = point_uniform(point_keys(x, None, self.seed), _UNIFORM_STREAM, shape, dtype=x.dtype)
            return u.mul_(hi - lo).add_(lo)
        if x.dim() < 3:
            raise InputError(
                f"{owner}: baseline='blur' needs images (N, H, W) or (N, C, H, W); got x of shape "
                f"{tuple(x.shape)}. Use baseline='zeros' or 'uniform', or pass a tensor."
            )
        return blur_baseline(x, self.blur_sigma)

    def _rows(self, call: _Call, x: Tensor, target: Tensor, baseline: Tensor) -> Tensor:
        return _integrated_rows(call, x, baseline, target, steps=self.steps, method=self.method)

    def _attribute(self, call: _Call) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
        baseline = self.baseline_for(call.x, call.model.bounds)
        values = self._rows(call, call.x, call.target, baseline)
        with torch.no_grad():
            base_score = torch.cat([
                _pick(call.forward(baseline[s]), call.target[s]) for s in _spans(call.x.shape[0], call.rows)
            ])
        score = call.scores
        gap = (values.flatten(1).sum(1).double() - (score.double() - base_score.double())).abs()
        diff = (score.double() - base_score.double()).abs().clamp_min(1e-12)
        details = {
            "steps": self.steps, "integration": self.method,
            "completeness_gap": [float(g) for g in gap.cpu()],
            "completeness_gap_relative_max": float((gap / diff).max()),
        }
        return values, base_score.detach(), details

    def __call__(self, model: ModelLike, x: Tensor, target: Tensor | int | None = None) -> Attribution:
        """Attributions of x ``(N, *input_shape)`` to the logit of target (default: predicted class)."""
        return _explain(self, model, x, target, backward=True, copies=_IG_COPIES, attribute=self._attribute)


SmoothGradBase: TypeAlias = Saliency | GradientTimesInput | GuidedBackprop | IntegratedGradients


@dataclass(frozen=True, kw_only=True, slots=True)
class SmoothGrad:
    """SmoothGrad: the mean of a gradient attribution over Gaussian-noised copies of each input.

    Each input gets ``samples`` copies plus noise of standard deviation ``sigma x (hi - lo)`` (the
    model's bounds), and the base explainer's attributions of the copies are averaged (Captum's
    ``NoiseTunnel`` with ``nt_type="smoothgrad"``). The noise is drawn per point from ``seed``
    (``smoothing_noise``) rather than from torch's global generator as ``NoiseTunnel`` does, so a
    call is reproducible, leaves the global generator alone and gives each point the same result
    whatever batch it is in. The base explainer's settings are used, its ``max_memory_mb`` too.

    Args:
        samples: noisy copies per input (>= 1); Smilkov et al. use 50.
        sigma: noise level as a fraction of the input range (>= 0); they suggest 0.1 to 0.2.
        base: the attribution averaged: ``Saliency()`` (default), ``GradientTimesInput()``,
            ``GuidedBackprop()`` or ``IntegratedGradients(...)`` (its baseline is taken from the
            clean input, as with ``NoiseTunnel``).
        seed: seed of the noise; None draws fresh entropy (not reproducible).

    Reference: Smilkov, Thorat, Kim, Viegas and Wattenberg, "SmoothGrad: removing noise by adding
    noise", arXiv:1706.03825, 2017.

    Example:
        result = SmoothGrad(samples=50, sigma=0.15)(model, x)
    """

    samples: int = 50
    sigma: float = 0.15
    base: SmoothGradBase = Saliency()
    seed: int | None = 0

    name: ClassVar[str] = "smoothgrad"

    def __post_init__(self) -> None:
        owner = "SmoothGrad"
        check_range("samples", self.samples, owner=owner, low=1, integer=True,
                    fix="Smilkov et al. use samples=50.")
        check_range("sigma", self.sigma, owner=owner, low=0.0,
                    fix="Give the noise level as a fraction of the input range, e.g. sigma=0.15.")
        if not isinstance(self.base, Saliency | GradientTimesInput | GuidedBackprop | IntegratedGradients):
            raise ConfigError(
                f"{owner}: 'base' must be Saliency(), GradientTimesInput(), GuidedBackprop() or "
                f"IntegratedGradients(...); got {self.base!r}. Pass an explainer instance."
            )
        if self.seed is not None:
            check_range("seed", self.seed, owner=owner, integer=True)

    @property
    def max_memory_mb(self) -> float | None:
        """The base explainer's memory budget."""
        return self.base.max_memory_mb

    def _attribute(self, call: _Call) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
        x, base, k = call.x, self.base, self.samples
        lo, hi = call.model.bounds
        # Points per chunk: all their noisy copies' model rows fit one pass when they can; the
        # base cuts further when even one point's copies do not (then one point per chunk).
        points = max(1, call.rows // (k * base.rows_per_point))
        out = []
        for s in _spans(x.shape[0], points):
            n = s.stop - s.start
            noisy = x[s].repeat_interleave(k, 0).add_(
                smoothing_noise(x[s], samples=k, std=self.sigma * (hi - lo), seed=self.seed))
            tn = call.target[s].repeat_interleave(k, 0)
            if isinstance(base, IntegratedGradients):
                clean = base.baseline_for(x[s], call.model.bounds)
                rows = base._rows(call, noisy, tn, clean.repeat_interleave(k, 0))
            else:
                rows = base._rows(call, noisy, tn)
            out.append(rows.view(n, k, *x.shape[1:]).sum(1) / k)
        return torch.cat(out), None, {"samples": k, "sigma": self.sigma, "base": base.name}

    def __call__(self, model: ModelLike, x: Tensor, target: Tensor | int | None = None) -> Attribution:
        """Attributions of x ``(N, *input_shape)`` to the logit of target (default: predicted class)."""
        copies = (_IG_COPIES if isinstance(self.base, IntegratedGradients) else _GRAD_COPIES) + 2
        return _explain(self, model, x, target, backward=True, copies=copies, attribute=self._attribute)


def _window(
    owner: str, name: str, value: int | tuple[int, ...], shape: tuple[int, ...], fill: Literal["full", "one"]
) -> tuple[int, ...]:
    """value for every input axis: an int applies to the trailing spatial axes (the last two,
    or the only one); a shorter tuple to the trailing axes; leading axes get their full size
    (``fill="full"``) or 1."""
    spatial = min(len(shape), 2)
    given = (value,) * spatial if isinstance(value, int) else tuple(value)
    if len(given) > len(shape) or any(v < 1 for v in given) or any(
        v > s for v, s in zip(given, shape[len(shape) - len(given):], strict=True)
    ):
        raise InputError(
            f"{owner}: {name} must have at most {len(shape)} positive sizes, none larger than the input "
            f"shape {shape}; got {value!r}. Give the patch size over the trailing axes, e.g. {name}=3."
        )
    lead = shape[: len(shape) - len(given)]
    return tuple(s if fill == "full" else 1 for s in lead) + given


@dataclass(frozen=True, kw_only=True, slots=True)
class Occlusion:
    """Occlusion: the drop in the target logit when a sliding patch is replaced by a baseline.

    Each feature's attribution is the mean drop over the patches that cover it (Captum). Only
    forward passes: the memory plan is sized for forward rows, and each pass evaluates as many
    patch positions (Captum's ``perturbations_per_eval``) as fit.

    Args:
        window: the patch: an int for a square over the last two axes (the whole channel axis
            included), or a tuple over the trailing axes (leading axes are taken whole).
        stride: the step between patches, same convention (leading axes: 1); None means 1, Captum's default.
        baseline: the value the patch is set to.
        max_memory_mb: the most memory one pass may hold; None means a share of the free memory.

    Reference: Zeiler and Fergus, "Visualizing and Understanding Convolutional Networks", ECCV
    2014 (arXiv:1311.2901).

    Example:
        result = Occlusion(window=3)(model, x)
    """

    window: int | tuple[int, ...] = 3
    stride: int | tuple[int, ...] | None = None
    baseline: float = 0.0
    max_memory_mb: float | None = None

    name: ClassVar[str] = "occlusion"

    def __post_init__(self) -> None:
        owner = "Occlusion"
        for name, value in (("window", self.window), ("stride", self.stride)):
            if value is None and name == "stride":
                continue
            items = (value,) if isinstance(value, int) else value
            if not isinstance(items, tuple) or not items or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items
            ):
                raise ConfigError(
                    f"{owner}: {name!r} must be a positive int or a tuple of positive ints; got {value!r}. "
                    f"E.g. {name}=3 or {name}=(1, 3, 3)."
                )
        check_range("baseline", self.baseline, owner=owner)
        _check_memory_mb(owner, self.max_memory_mb)

    def _attribute(self, call: _Call) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
        shape = tuple(call.x.shape[1:])
        win = _window("Occlusion", "window", self.window, shape, "full")
        strides = _window("Occlusion", "stride", 1 if self.stride is None else self.stride, shape, "one")
        positions = math.prod((s - w) // st + 1 for s, w, st in zip(shape, win, strides, strict=True))
        captum = captum_attr.Occlusion(call.forward)
        out = []
        for s in _spans(call.x.shape[0], call.rows):
            n = s.stop - s.start
            per_eval = max(1, min(positions, call.rows // n))
            values: Tensor = captum.attribute(
                call.x[s].clone(), sliding_window_shapes=win, strides=strides, baselines=self.baseline,
                target=call.target[s], perturbations_per_eval=per_eval,
            )
            out.append(values.detach())
        details = {"window": list(win), "stride": list(strides), "positions": positions}
        return torch.cat(out), None, details

    def __call__(self, model: ModelLike, x: Tensor, target: Tensor | int | None = None) -> Attribution:
        """Attributions of x ``(N, *input_shape)`` to the logit of target (default: predicted class)."""
        return _explain(self, model, x, target, backward=False, copies=_OCCLUSION_COPIES,
                        attribute=self._attribute)
