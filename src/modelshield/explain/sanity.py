"""Sanity checks for attribution methods (Adebayo et al. 2018): model-parameter and label randomisation.

An explanation that does not change when the model's weights are replaced by random ones, or when the
model is retrained on random labels, cannot be explaining what the model learned. ``ModelRandomisation``
and ``DataRandomisation`` measure how similar each method's attributions stay and report a method whose
maps barely change as untrustworthy for that model.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelshield._checks import check_choice, check_range
from modelshield.errors import ConfigError, EvaluationWarning, InputError, ModelCapabilityError
from modelshield.explain.ranks import rank_correlation
from modelshield.explain.result import Attribution
from modelshield.models import Optimization, TorchModel, train_module

__all__ = [
    "SIMILARITY_NAMES",
    "DataRandomisation",
    "ModelRandomisation",
    "SanityReport",
    "SanityResult",
    "SimilarityName",
    "attribution_similarity",
    "randomise_layer",
    "rank_correlation",
    "ssim",
]

SimilarityName = Literal["spearman_abs", "spearman", "ssim"]
SIMILARITY_NAMES: tuple[SimilarityName, ...] = ("spearman_abs", "spearman", "ssim")
RandomisationMode = Literal["cascade", "independent"]
MODES: tuple[RandomisationMode, ...] = ("cascade", "independent")

DEFAULT_THRESHOLD = 0.5
"""Default verdict threshold on the Spearman rank correlations (of ``|attributions|`` and signed).

Adebayo et al. (2018, Figs. 2 and 4) read the cascading-randomisation curves with both rank
correlations: gradients decorrelate from the trained model's maps as soon as the logits layer is
re-initialised (near 0), while guided backpropagation stays close to the original until the lowest
layers. A method passes when, averaged over the randomisation steps, neither its magnitude ranking
nor its signed ranking keeps half its agreement with the trained model's (0.5 is halfway between
independent rankings, 0, and the same ranking, 1); a map that keeps either mostly reflects the
input, not the weights. On a digits CNN (tests/unit/explain/test_sanity.py, cascade) saliency
averages 0.18 (abs) and 0.04 (signed), SmoothGrad 0.28, guided backpropagation 0.58 and 0.74.
Gradient x input and Integrated Gradients average 0.90 on absolute values (0.03 signed): their
magnitudes follow the input (zero pixels stay zero), which Adebayo et al. also observe for methods
that multiply by the input; ``input_similarity`` shows it (0.93 at every step).
"""


class _Explainer(Protocol):
    """Any ``explainer(model, x, target=...) -> Attribution`` (the modelshield.explain call shape)."""

    def __call__(self, model: Any, x: Tensor, *, target: Tensor | None = None) -> Attribution: ...


Explainers: TypeAlias = Mapping[str, Any] | Sequence[Any] | _Explainer
"""Explainers ``(model, x, target=...) -> Attribution``: one, a sequence, or a mapping name -> explainer
(``Any`` items: a list of different explainer classes is a ``list[object]`` to mypy; checked at call)."""


# ----------------------------------------------------------------------------------------- maths


def _normalised_maps(values: Tensor) -> Tensor:
    """(N, C, H, W) or (N, H, W) -> (N, 1, H, W) maps of |values| summed over channels, scaled to [0, 1]."""
    v = values.detach().double().abs()
    maps = v.sum(dim=1) if v.dim() == 4 else v
    top = maps.flatten(1).amax(dim=1).clamp_min(1e-300).view(-1, 1, 1)
    return (maps / top).unsqueeze(1)


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Mean structural similarity of two batches of maps in [0, 1]: (N, 1, H, W) x2 -> (N,) float64.

    Gaussian window (sigma 1.5) of side min(11, H, W) rounded down to an odd number, valid positions
    only, data range 1, K1 = 0.01, K2 = 0.03 (Wang et al. 2004).

    Reference:
        Z. Wang, A. C. Bovik, H. R. Sheikh and E. P. Simoncelli, "Image quality assessment: from error
        visibility to structural similarity", IEEE Trans. Image Processing, 2004.
    """
    side = min(11, int(a.shape[-2]), int(a.shape[-1]))
    side -= 1 - side % 2
    coords = torch.arange(side, dtype=torch.float64, device=a.device) - (side - 1) / 2
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).view(1, 1, side, side)
    a, b = a.double(), b.double()

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, window)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return index.flatten(1).mean(dim=1)


def attribution_similarity(a: Tensor, b: Tensor, metric: SimilarityName) -> Tensor:
    """Per-row similarity of two attribution batches of the same shape (N, ...): (N,) float64.

    ``spearman_abs``: rank correlation of the absolute values; ``spearman``: of the signed values;
    ``ssim``: SSIM of the maps of absolute values summed over channels and scaled to [0, 1] per row
    (image attributions only). These are Adebayo et al.'s (2018) similarity metrics.
    """
    if metric == "spearman_abs":
        return rank_correlation(a.abs(), b.abs())
    if metric == "spearman":
        return rank_correlation(a, b)
    return ssim(_normalised_maps(a), _normalised_maps(b))


def randomise_layer(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise module's own parameters (not its children's) in place with PyTorch's default scheme.

    Linear, convolution and other weights: Kaiming-uniform (``a = sqrt(5)``), biases and other vectors
    uniform in ``±1/sqrt(fan_in)`` (fan_in from the weight, else the vector's length); normalisation
    layers: their (deterministic) default, weight 1, bias 0 and running statistics reset; embeddings:
    standard normal. Draws come from generator on the CPU and are copied to the parameter's device, so
    the global RNG is never touched and the result depends on the generator's state only.
    """
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    with torch.no_grad():
        if isinstance(module, norms):
            module.reset_parameters()
            return
        own = list(module.named_parameters(recurse=False))
        weight = dict(own).get("weight")
        fan_in = int(weight[0].numel()) if weight is not None and weight.dim() >= 2 else 0
        for name, p in own:
            fresh = torch.empty(p.shape, dtype=p.dtype)
            if isinstance(module, nn.Embedding) and name == "weight":
                nn.init.normal_(fresh, generator=generator)
                if module.padding_idx is not None:
                    fresh[module.padding_idx] = 0
            elif p.dim() >= 2:
                nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
            else:
                bound = 1.0 / math.sqrt(fan_in or max(p.numel(), 1))
                nn.init.uniform_(fresh, -bound, bound, generator=generator)
            p.copy_(fresh.to(p.device))


# ----------------------------------------------------------------------------------------- results


@dataclass(frozen=True, kw_only=True, slots=True)
class SanityReport:
    """How one attribution method's maps changed under one randomisation check.

    Attributes:
        method: the explainer's name (its Attribution's ``method``, or the mapping key).
        check: ``"model-cascade"``, ``"model-independent"`` or ``"data"``.
        steps: what was randomised at each step: layer names (cascade: the layers re-initialised so
            far, top (logits) first, each step adding the next one down; independent: that layer
            alone), or ``("random-labels",)``.
        similarity: metric -> mean similarity to the trained model's attributions at each step.
        similarity_std: metric -> standard deviation over the inputs at each step.
        input_similarity: Spearman correlation of ``|attributions|`` with ``|x|`` (summed over
            channels) at each step; ``input_similarity_trained`` is the trained model's. A method that
            stays close to the input while the weights are random is an edge detector.
        verdict_metrics, threshold: the verdict's metrics and threshold.
        statistic: the number compared: the largest over ``verdict_metrics`` of the metric's mean
            similarity over the steps.
        passes: ``statistic < threshold``: the attributions change substantially.
        seconds: time spent on this method's attributions.
    """

    method: str
    check: str
    steps: tuple[str, ...]
    similarity: dict[str, tuple[float, ...]]
    similarity_std: dict[str, tuple[float, ...]]
    input_similarity: tuple[float, ...]
    input_similarity_trained: float
    verdict_metrics: tuple[str, ...]
    threshold: float
    statistic: float
    passes: bool
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        """``"passes"`` or ``"untrustworthy"`` (the maps barely depend on what was randomised)."""
        return "passes" if self.passes else "untrustworthy"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "method": self.method, "check": self.check, "steps": list(self.steps),
            "similarity": {k: [round(v, 4) for v in vs] for k, vs in self.similarity.items()},
            "similarity_std": {k: [round(v, 4) for v in vs] for k, vs in self.similarity_std.items()},
            "input_similarity": [round(v, 4) for v in self.input_similarity],
            "input_similarity_trained": round(self.input_similarity_trained, 4),
            "verdict_metrics": list(self.verdict_metrics), "threshold": self.threshold,
            "statistic": round(self.statistic, 4), "passes": self.passes, "verdict": self.verdict,
            "seconds": round(self.seconds, 4),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class SanityResult:
    """The reports of one sanity check, one per attribution method, and what the check did.

    Attributes:
        check: ``"model-cascade"``, ``"model-independent"`` or ``"data"``.
        reports: one SanityReport per method, in the order given.
        target: ``(N,)`` the classes explained (the trained model's, fixed for every step).
        details: check-specific figures (data: ``fit_accuracy`` on the permuted labels,
            ``label_agreement`` of permuted and true labels, the training history).
        config: the check's settings. seconds: wall time.
    """

    check: str
    reports: tuple[SanityReport, ...]
    target: Tensor
    details: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def untrustworthy(self) -> tuple[str, ...]:
        """Names of the methods whose attributions barely changed."""
        return tuple(r.method for r in self.reports if not r.passes)

    def report(self, method: str) -> SanityReport:
        """The report of the method named method.

        Raises:
            ConfigError: no report has that name (the message lists them).
        """
        for r in self.reports:
            if r.method == method:
                return r
        names = ", ".join(repr(r.method) for r in self.reports)
        raise ConfigError(f"SanityResult: 'method' must be one of {names}; got {method!r}. "
                          "Use a name from result.reports.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {"check": self.check, "reports": [r.to_dict() for r in self.reports],
                "untrustworthy": list(self.untrustworthy), "n": int(self.target.shape[0]),
                "details": dict(self.details), "config": dict(self.config),
                "seconds": round(self.seconds, 4)}


# ----------------------------------------------------------------------------------------- helpers


def _check_metrics(similarity: object, verdict_metrics: object, threshold: object, owner: str) -> None:
    fix = "Choose from 'spearman_abs', 'spearman' and 'ssim', e.g. similarity=('spearman_abs', 'ssim')."
    if not isinstance(similarity, tuple) or not similarity:
        raise ConfigError(f"{owner}: 'similarity' must be a non-empty tuple of metric names; got "
                          f"{similarity!r}. {fix}")
    for metric in similarity:
        check_choice("similarity", metric, SIMILARITY_NAMES, owner=owner, fix=fix)
    if not isinstance(verdict_metrics, tuple) or not verdict_metrics:
        raise ConfigError(f"{owner}: 'verdict_metrics' must be a non-empty tuple of metric names; got "
                          f"{verdict_metrics!r}. Use e.g. verdict_metrics=('spearman_abs', 'spearman').")
    for metric in verdict_metrics:
        check_choice("verdict_metrics", metric, similarity, owner=owner,
                     fix="The verdict's metrics must be among the computed similarities.")
    check_range("threshold", threshold, owner=owner, low=-1.0, high=1.0,
                fix=f"Use e.g. threshold={DEFAULT_THRESHOLD} (see DEFAULT_THRESHOLD).")


def _check_module(model: object, owner: str) -> TorchModel | nn.Module:
    if isinstance(model, TorchModel | nn.Module):
        return model
    raise ModelCapabilityError(
        f"{owner}: the model must be a torch.nn.Module (or a TorchModel) whose weights can be "
        f"re-initialised; got {type(model).__name__}. Randomisation checks need the weights: run them "
        "on a PyTorch model."
    )


def _copy_module(model: TorchModel | nn.Module, owner: str) -> nn.Module:
    """A deep copy of the module behind model, in eval mode (the user's model is never touched)."""
    module = model.module if isinstance(model, TorchModel) else model
    try:
        clone = copy.deepcopy(module)
    except (RuntimeError, TypeError, copy.Error) as exc:
        raise InputError(
            f"{owner}: the model must be deep-copyable so that its copy can be randomised; got "
            f"{type(module).__name__} ({exc}). Remove non-copyable attributes (hooks, open handles)."
        ) from exc
    clone.eval()
    return clone


def _rewrap(model: TorchModel | nn.Module, module: nn.Module) -> TorchModel | nn.Module:
    if isinstance(model, TorchModel):
        return TorchModel(module, bounds=model.bounds, n_classes=model.n_classes_known)
    return module


def _named_explainers(explainers: object, owner: str) -> list[tuple[str | None, _Explainer]]:
    items: list[tuple[str | None, Any]]
    if isinstance(explainers, Mapping):
        items = [(str(k), v) for k, v in explainers.items()]
    elif isinstance(explainers, Sequence) and not isinstance(explainers, str):
        items = [(None, e) for e in explainers]
    else:
        items = [(None, explainers)]
    if not items or not all(callable(e) for _, e in items):
        raise ConfigError(
            f"{owner}: 'explainers' must be a non-empty sequence or mapping of explainers "
            f"(callables (model, x, target=...) -> Attribution); got {explainers!r}. "
            "Pass e.g. [Saliency(), GuidedBackprop()]."
        )
    return items


def _explain(explainer: _Explainer, model: Any, x: Tensor, target: Tensor | None, owner: str) -> Attribution:
    out = explainer(model, x, target=target)
    if not isinstance(out, Attribution):
        raise InputError(f"{owner}: each explainer must return an Attribution; got "
                         f"{type(out).__name__} from {explainer!r}. Use a modelshield.explain explainer.")
    if not torch.isfinite(out.values).all():
        raise InputError(f"{owner}: the explainer {out.method!r} returned non-finite attributions; got "
                         "NaN or inf values. Check the model's outputs on x.")
    return out


def _check_x(x: object, owner: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0 or not x.is_floating_point():
        what = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{owner}: x must be a non-empty float tensor (N, ...); got {what}. "
                         "Pass a batch of inputs, e.g. x[:64].")
    if not torch.isfinite(x).all():
        raise InputError(f"{owner}: x must be finite; got NaN or inf values. Clean the inputs first.")
    return x


def _ssim_ready(similarity: tuple[str, ...], shape: tuple[int, ...], owner: str) -> None:
    if "ssim" in similarity and len(shape) not in (3, 4):
        raise InputError(
            f"{owner}: 'ssim' needs image attributions (N, C, H, W) or (N, H, W); got shape {shape}. "
            "Use similarity=('spearman_abs', 'spearman') for tabular or text attributions."
        )


class _Tracker:
    """Similarities of one method's attributions at each step, against the trained model's."""

    def __init__(self, name: str, explainer: _Explainer, trained: Attribution, x: Tensor,
                 similarity: tuple[SimilarityName, ...]) -> None:
        self.name, self.explainer, self.trained, self.similarity = name, explainer, trained, similarity
        self.x_map = _abs_map(x)
        self.means: dict[str, list[float]] = {m: [] for m in similarity}
        self.stds: dict[str, list[float]] = {m: [] for m in similarity}
        self.inputs: list[float] = []
        self.seconds = trained.seconds

    def step(self, attribution: Attribution) -> None:
        self.seconds += attribution.seconds
        for m in self.similarity:
            s = attribution_similarity(attribution.values, self.trained.values, m)
            self.means[m].append(float(s.mean()))
            self.stds[m].append(float(s.std(unbiased=False)))
        self.inputs.append(float(rank_correlation(_abs_map(attribution.values), self.x_map).mean()))

    def report(self, check: str, steps: tuple[str, ...], verdict_metrics: tuple[str, ...],
               threshold: float) -> SanityReport:
        statistic = max(sum(self.means[m]) / len(self.means[m]) for m in verdict_metrics)
        return SanityReport(
            method=self.name, check=check, steps=steps,
            similarity={m: tuple(v) for m, v in self.means.items()},
            similarity_std={m: tuple(v) for m, v in self.stds.items()},
            input_similarity=tuple(self.inputs),
            input_similarity_trained=float(
                rank_correlation(_abs_map(self.trained.values), self.x_map).mean()),
            verdict_metrics=verdict_metrics, threshold=threshold, statistic=statistic,
            passes=statistic < threshold, seconds=self.seconds,
        )


def _own_tensors(module: nn.Module) -> list[Tensor]:
    """The module's own parameters and buffers (not its children's), in a fixed order."""
    return [*module.parameters(recurse=False), *module.buffers(recurse=False)]


def _abs_map(values: Tensor) -> Tensor:
    v = values.detach().double().abs()
    return v.sum(dim=1) if v.dim() == 4 else v


def _trained_attributions(
    explainers: list[tuple[str | None, _Explainer]], model: Any, x: Tensor, target: Tensor | None,
    similarity: tuple[SimilarityName, ...], owner: str,
) -> tuple[list[_Tracker], Tensor]:
    """Each method's attributions on the trained model, all for the same target (given or predicted)."""
    if target is not None and (not isinstance(target, Tensor) or target.shape != (x.shape[0],)
                               or target.is_floating_point() or target.is_complex()):
        what = (f"shape {tuple(target.shape)} {target.dtype}" if isinstance(target, Tensor)
                else type(target).__name__)
        raise InputError(f"{owner}: target must be None or a ({x.shape[0]},) int tensor, one class per row "
                         f"of x; got {what}. Pass target=None to explain the predicted classes.")
    trackers: list[_Tracker] = []
    names: set[str] = set()
    for key, explainer in explainers:
        out = _explain(explainer, model, x, target, owner)
        if target is None:
            target = out.target
        _ssim_ready(similarity, tuple(out.values.shape), owner)
        name = key if key is not None else out.method
        if name in names:
            i = 2
            while f"{name}-{i}" in names:
                i += 1
            name = f"{name}-{i}"
        names.add(name)
        trackers.append(_Tracker(name, explainer, out, x, similarity))
    assert target is not None  # set by the first explainer above (explainers is non-empty)
    return trackers, target


# ----------------------------------------------------------------------------------------- checks


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelRandomisation:
    """Model-parameter randomisation test (Adebayo et al. 2018, section 3.1).

    Re-initialises the layers of a deep copy of the model with their default initialisation, from the
    top (logits) layer down to the input, and measures how similar each method's attributions stay to
    the trained model's, for the same inputs and the same classes (the trained model's predictions
    unless ``target`` is given). ``"cascade"`` randomises cumulatively (step k: the top k layers);
    ``"independent"`` randomises one layer at a time, the others trained. A method whose maps stay
    similar (mean similarity over the steps at or above ``threshold`` for any of ``verdict_metrics``)
    does not depend on the weights and is reported untrustworthy for that model. The user's model is
    never modified. A stochastic method (SmoothGrad) should be given a fixed seed, or its own noise
    counts as change.

    Args:
        layers: ``"cascade"`` or ``"independent"``.
        similarity: metrics to compute, from ``"spearman_abs"`` (rank correlation of absolute values),
            ``"spearman"`` (signed) and ``"ssim"`` (structural similarity of normalised maps; images).
        verdict_metrics: the metrics of the verdict (among ``similarity``): a method passes when the
            mean similarity over the steps is below ``threshold`` for every one of them.
        threshold: the verdict's threshold (see ``DEFAULT_THRESHOLD`` for why 0.5).
        modules: names of the modules to randomise, top layer first (``model.named_modules()``
            names); None: every module with parameters of its own, in reverse registration order.
        seed: seed of the generator the new weights are drawn from.

    Reference:
        J. Adebayo, J. Gilmer, M. Muelly, I. Goodfellow, M. Hardt and B. Kim, "Sanity Checks for
        Saliency Maps", NeurIPS 2018 (arXiv:1810.03292).

    Example:
        result = ModelRandomisation()(model, x, [Saliency(), GuidedBackprop()])
        result.untrustworthy   # ('guided-backprop',)
    """

    layers: RandomisationMode = "cascade"
    similarity: tuple[SimilarityName, ...] = ("spearman_abs", "spearman", "ssim")
    verdict_metrics: tuple[SimilarityName, ...] = ("spearman_abs", "spearman")
    threshold: float = DEFAULT_THRESHOLD
    modules: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        o = "ModelRandomisation"
        check_choice("layers", self.layers, MODES, owner=o,
                     fix="'cascade' randomises from the top layer down, cumulatively; 'independent' "
                         "one layer at a time.")
        _check_metrics(self.similarity, self.verdict_metrics, self.threshold, o)
        if self.modules is not None and (not isinstance(self.modules, tuple) or not self.modules
                                         or not all(isinstance(m, str) for m in self.modules)):
            raise ConfigError(f"{o}: 'modules' must be None or a non-empty tuple of module names; got "
                              f"{self.modules!r}. Use names from model.named_modules(), top layer first.")
        check_range("seed", self.seed, owner=o, low=0, integer=True)

    def _layers(self, module: nn.Module) -> list[tuple[str, nn.Module]]:
        o = "ModelRandomisation"
        named = dict(module.named_modules())
        if self.modules is None:
            found = [(n or "<root>", m) for n, m in named.items()
                     if any(True for _ in m.parameters(recurse=False))][::-1]
        else:
            missing = [n for n in self.modules if n not in named]
            if missing:
                raise ConfigError(f"{o}: 'modules' must name modules of the model; got {missing[0]!r}, "
                                  f"not among {sorted(n for n in named if n)!r}. Use names from "
                                  "model.named_modules().")
            found = [(n, named[n]) for n in self.modules
                     if any(True for _ in named[n].parameters(recurse=False))]
        if not found:
            raise InputError(
                f"{o}: the model must have at least one layer with parameters to randomise; got "
                f"{type(module).__name__} with none. Run the check on a model with weights."
            )
        return found

    def __call__(self, model: Any, x: Tensor, explainers: Explainers, *,
                 target: Tensor | None = None) -> SanityResult:
        """Run the check on x for every explainer.

        Args:
            model: a torch.nn.Module returning logits, or a TorchModel (its copy is randomised).
            x: ``(N, *input_shape)`` inputs to explain.
            explainers: explainers ``(model, x, target=...) -> Attribution``, as a sequence (named by
                their Attribution's ``method``) or a mapping name -> explainer.
            target: ``(N,)`` classes to explain; None: the trained model's predictions (as returned
                by the first explainer), kept for every randomised model.

        Returns:
            A SanityResult with one SanityReport per explainer.

        Raises:
            ModelCapabilityError: model is not a PyTorch model.
            InputError: x malformed; no layer with parameters; an explainer returned no Attribution;
                ``ssim`` asked for non-image attributions.
            ConfigError: explainers malformed, or ``modules`` names an unknown module.
        """
        o = "ModelRandomisation"
        started = time.perf_counter()
        checked = _check_module(model, o)
        x = _check_x(x, o)
        named = _named_explainers(explainers, o)
        work = _copy_module(checked, o)
        layers = self._layers(work)
        wrapped = _rewrap(checked, work)
        trackers, fixed = _trained_attributions(named, wrapped, x, target, self.similarity, o)
        gen = torch.Generator().manual_seed(self.seed)
        for _, layer in layers:
            saved = ([t.detach().clone() for t in _own_tensors(layer)]
                     if self.layers == "independent" else [])
            randomise_layer(layer, gen)
            for t in trackers:
                t.step(_explain(t.explainer, wrapped, x, fixed, o))
            with torch.no_grad():
                for now, before in zip(_own_tensors(layer), saved, strict=False):
                    now.copy_(before)
        check = f"model-{self.layers}"
        steps = tuple(n for n, _ in layers)
        reports = tuple(t.report(check, steps, self.verdict_metrics, self.threshold) for t in trackers)
        return SanityResult(check=check, reports=reports, target=fixed.detach().clone(),
                            details={"layers": list(steps)}, config=asdict(self),
                            seconds=time.perf_counter() - started)


@dataclass(frozen=True, kw_only=True, slots=True)
class DataRandomisation:
    """Data (label) randomisation test (Adebayo et al. 2018, section 3.2).

    Retrains a copy of the model, from freshly initialised weights, on the training inputs with their
    labels randomly permuted until it fits them (memorisation), with ``train_module``, then compares
    each method's attributions on x between the trained model and the random-label model, for the
    trained model's classes. A model that learned nothing about the real task should get different
    explanations; a method whose maps stay similar (similarity at or above ``threshold`` for any of
    ``verdict_metrics``) is reported
    untrustworthy. A warning says when the copy fits fewer than ``min_fit`` of its permuted labels
    (train longer: a model that did not memorise them makes the test weaker).

    Args:
        epochs: training epochs on the permuted labels.
        batch_size: rows per training batch.
        optimization: optimiser and schedule of the retraining.
        min_fit: training accuracy on the permuted labels below which a warning is raised.
        similarity, verdict_metrics, threshold: as in ModelRandomisation.
        seed: seed of the label permutation, the new weights and the shuffling.

    Reference:
        J. Adebayo, J. Gilmer, M. Muelly, I. Goodfellow, M. Hardt and B. Kim, "Sanity Checks for
        Saliency Maps", NeurIPS 2018 (arXiv:1810.03292); C. Zhang, S. Bengio, M. Hardt, B. Recht and
        O. Vinyals, "Understanding deep learning requires rethinking generalization", ICLR 2017.

    Example:
        check = DataRandomisation(epochs=100)
        result = check(model, x, [Saliency()], x_train=x_tr, y_train=y_tr)
    """

    epochs: int = 100
    batch_size: int = 64
    optimization: Optimization = Optimization(lr=3e-3)  # noqa: RUF009  # frozen, so a safe default
    min_fit: float = 0.9
    similarity: tuple[SimilarityName, ...] = ("spearman_abs", "spearman", "ssim")
    verdict_metrics: tuple[SimilarityName, ...] = ("spearman_abs", "spearman")
    threshold: float = DEFAULT_THRESHOLD
    seed: int = 0

    def __post_init__(self) -> None:
        o = "DataRandomisation"
        check_range("epochs", self.epochs, owner=o, low=1, integer=True,
                    fix="The copy must train long enough to fit the random labels, e.g. epochs=100.")
        check_range("batch_size", self.batch_size, owner=o, low=1, integer=True)
        if not isinstance(self.optimization, Optimization):
            raise ConfigError(f"{o}: 'optimization' must be an Optimization; got "
                              f"{type(self.optimization).__name__}. Use Optimization(lr=3e-3).")
        check_range("min_fit", self.min_fit, owner=o, low=0.0, high=1.0)
        _check_metrics(self.similarity, self.verdict_metrics, self.threshold, o)
        check_range("seed", self.seed, owner=o, low=0, integer=True)

    def __call__(self, model: Any, x: Tensor, explainers: Explainers, *, x_train: Tensor,
                 y_train: Tensor, target: Tensor | None = None) -> SanityResult:
        """Run the check on x for every explainer.

        Args:
            model: a trained torch.nn.Module returning logits, or a TorchModel (never modified).
            x: ``(N, *input_shape)`` inputs to explain.
            explainers: as in ModelRandomisation.
            x_train, y_train: training inputs and ``(M,)`` int64 labels on the model's device; the
                labels are permuted, and a copy of the model trained on them.
            target: ``(N,)`` classes to explain; None: the trained model's predictions.

        Returns:
            A SanityResult (``details``: ``fit_accuracy``, ``label_agreement``, ``train``).

        Raises:
            ModelCapabilityError: model is not a PyTorch model.
            InputError: x or the training data malformed; an explainer returned no Attribution.
            ConfigError: explainers malformed.
        """
        o = "DataRandomisation"
        started = time.perf_counter()
        checked = _check_module(model, o)
        x = _check_x(x, o)
        x_train = _check_x(x_train, o)
        if (not isinstance(y_train, Tensor) or y_train.dim() != 1 or y_train.dtype != torch.int64
                or y_train.shape[0] != x_train.shape[0]):
            what = (f"{tuple(y_train.shape)} {y_train.dtype}" if isinstance(y_train, Tensor)
                    else type(y_train).__name__)
            raise InputError(f"{o}: y_train must be a (M,) int64 tensor of class labels, one per x_train "
                             f"row ({x_train.shape[0]}); got {what}. Pass y_train.long().")
        named = _named_explainers(explainers, o)
        trained = _copy_module(checked, o)
        trackers, fixed = _trained_attributions(named, _rewrap(checked, trained), x, target,
                                                self.similarity, o)
        gen = torch.Generator().manual_seed(self.seed)
        shuffled = y_train[torch.randperm(int(y_train.shape[0]), generator=gen).to(y_train.device)]
        random = _copy_module(checked, o)
        for sub in random.modules():
            randomise_layer(sub, gen)
        history = train_module(random, (x_train, shuffled), epochs=self.epochs, batch_size=self.batch_size,
                               optimization=self.optimization, seed=self.seed, owner=o)
        random.eval()
        with torch.no_grad():
            hits = sum(int((random(x_train[lo:lo + self.batch_size]).argmax(dim=1)
                            == shuffled[lo:lo + self.batch_size]).sum())
                       for lo in range(0, int(x_train.shape[0]), self.batch_size))
        fit = hits / int(x_train.shape[0])
        if fit < self.min_fit:
            warnings.warn(EvaluationWarning(
                f"{o}: the copy fits only {fit:.1%} of the permuted labels after {self.epochs} epochs "
                f"(min_fit {self.min_fit:.0%}); train longer (epochs) for a stronger test."), stacklevel=2)
        wrapped = _rewrap(checked, random)
        for t in trackers:
            t.step(_explain(t.explainer, wrapped, x, fixed, o))
        reports = tuple(t.report("data", ("random-labels",), self.verdict_metrics, self.threshold)
                        for t in trackers)
        config = asdict(self)
        details = {"fit_accuracy": fit, "label_agreement": float((shuffled == y_train).double().mean()),
                   "train": history.to_dict()}
        return SanityResult(check="data", reports=reports, target=fixed.detach().clone(), details=details,
                            config=config, seconds=time.perf_counter() - started)
