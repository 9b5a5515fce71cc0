"""Output hardening against model extraction, and its cost to honest users."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from modelshield._checks import check_choice, check_inputs, check_labels, check_range
from modelshield.errors import ModelCapabilityError
from modelshield.models import CallableModel, ModelLike, as_black_box, as_model, probabilities

__all__ = [
    "HARDENING_METHODS",
    "harden",
    "honest_cost",
    "noisy_probabilities",
    "reverse_sigmoid",
    "round_probabilities",
]

HardeningMethod = Literal["top1", "round", "noise", "reverse_sigmoid"]
HARDENING_METHODS: tuple[HardeningMethod, ...] = ("top1", "round", "noise", "reverse_sigmoid")

_CLIP = 1e-9
"""Probabilities are clipped to [1e-9, 1 - 1e-9] before the logit in the reverse sigmoid."""


def round_probabilities(p: Tensor, decimals: int) -> Tensor:
    """(N, C) probabilities rounded to ``decimals`` places (rows may no longer sum to 1)."""
    return torch.round(p, decimals=decimals)


def noisy_probabilities(p: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """(N, C) probabilities plus N(0, std^2) noise, clipped at 0 and renormalised (top-1 may change)."""
    noise = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
    q = (p + std * noise).clamp_min(0.0)
    total = q.sum(1, keepdim=True)
    return torch.where(total > 0, q / total.clamp_min(1e-12), p)


def reverse_sigmoid(p: Tensor, beta: float, gamma: float) -> Tensor:
    """Lee et al.'s reverse-sigmoid perturbation of (N, C) probabilities; top-1 kept.

    ``r = beta * (sigmoid(gamma * logit(p)) - 1/2)``, ``q = normalise(clip(p - r, 0, 1))``.
    The perturbation is largest where the softmax is flat, so a thief that distils the
    probabilities learns wrong logits. The map is not monotone near 0, so rarely the argmax
    moves; such a row gets its two entries swapped so that the original class stays on top
    (the paper's requirement that honest users keep the top-1 label).
    """
    pc = p.clamp(_CLIP, 1.0 - _CLIP)
    r = beta * (torch.sigmoid(gamma * torch.log(pc / (1.0 - pc))) - 0.5)
    q = (p - r).clamp(0.0, 1.0)
    total = q.sum(1, keepdim=True)
    top = p.argmax(1)
    one_hot = torch.nn.functional.one_hot(top, p.shape[1]).to(p.dtype)
    q = torch.where(total > 0, q / total.clamp_min(1e-12), one_hot)
    new_top = q.argmax(1)
    moved = (new_top != top).nonzero().squeeze(1)
    if moved.numel():
        rows_top, rows_new = q[moved, top[moved]], q[moved, new_top[moved]]
        q[moved, top[moved]] = rows_new
        q[moved, new_top[moved]] = rows_top
    return q


def harden(
    model: ModelLike,
    *,
    method: HardeningMethod = "top1",
    decimals: int = 2,
    noise_std: float = 0.05,
    beta: float = 1.0,
    gamma: float = 0.1,
    seed: int | None = 0,
) -> CallableModel:
    """A black-box view of ``model`` whose answers are hardened against extraction.

    Methods: ``"top1"`` answers labels only; ``"round"`` rounds probabilities to ``decimals``
    places; ``"noise"`` adds Gaussian noise (``noise_std``) and renormalises (may change the
    top-1 label); ``"reverse_sigmoid"`` applies Lee et al.'s deceptive perturbation
    (``beta``, ``gamma``), keeping the top-1 label. The result is a ``CallableModel`` with its
    own query counter (the wrapped model counts too), usable wherever a model is.

    Args:
        model: anything ``as_model`` accepts that gives probabilities (or torch logits).
        method: one of ``HARDENING_METHODS``.
        decimals: places kept by ``"round"``.
        noise_std: noise standard deviation for ``"noise"`` (probability units).
        beta, gamma: reverse-sigmoid strength and slope (ART's defaults).
        seed: seed of the noise generator; None draws fresh entropy.

    Raises:
        ConfigError: unknown method or bad parameters.

    Reference: Lee, Edwards, Molloy and Srivastava, "Defending Against NN Model Stealing Attacks
    Using Deceptive Perturbations", IEEE S&P Workshops 2019; Tramer et al., USENIX Security
    2016 (rounding and label-only answers).

    Example:
        api = harden(net, method="reverse_sigmoid")
        honest_cost(net, api, x_test, y_test)
    """
    check_choice("method", method, HARDENING_METHODS, owner="harden")
    check_range("decimals", decimals, owner="harden", low=0, integer=True)
    check_range("noise_std", noise_std, owner="harden", low=0.0)
    check_range("beta", beta, owner="harden", low=0.0)
    check_range("gamma", gamma, owner="harden", low=0.0, low_open=True)
    base = as_model(model)
    if method == "top1":
        return as_black_box(base, output="labels")
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)

    def perturb(_x: Tensor, p: Tensor) -> Tensor:
        if method == "round":
            return round_probabilities(p, decimals)
        if method == "noise":
            return noisy_probabilities(p, noise_std, gen)
        return reverse_sigmoid(p, beta, gamma)

    return as_black_box(base, output="proba", on_answer=perturb)


def honest_cost(model: ModelLike, hardened: ModelLike, x: Tensor, y: Tensor) -> dict[str, Any]:
    """What hardening costs an honest user on (x, y).

    Returns a JSON-safe dict: ``accuracy_before`` / ``accuracy_after`` (top-1 accuracy of the
    model and of the hardened model), ``label_agreement`` (share of x with the same top-1
    label), ``mean_l1_change`` and ``max_l1_change`` (L1 distance between the probability
    vectors; a label-only answer counts as its one-hot vector) and ``n``.

    Args:
        model: the original model. hardened: its hardened view (e.g. from :func:`harden`).
        x: ``(N, *input_shape)`` honest queries. y: ``(N,)`` their true labels.
    """
    m, h = as_model(model), as_model(hardened)
    x = check_inputs(x, bounds=m.bounds, owner="honest_cost")
    p = probabilities(m, x)
    n_classes = p.shape[1]
    y_t = check_labels(y, n=x.shape[0], n_classes=n_classes, owner="honest_cost", device=x.device)
    q: Tensor | None = None
    if not (isinstance(h, CallableModel) and h.output == "labels"):
        try:
            q = probabilities(h, x).to(p.dtype)
        except ModelCapabilityError:
            if not (isinstance(h, CallableModel) and h.output == "labels"):
                raise
    if q is None:  # a label-only answer counts as its one-hot vector
        with torch.no_grad():
            q = torch.nn.functional.one_hot(h.predict(x), n_classes).to(p.dtype)
    labels_h = q.argmax(1)
    pred = p.argmax(1)
    l1 = (p - q).abs().sum(1)
    return {
        "n": int(x.shape[0]),
        "accuracy_before": round(float((pred == y_t).float().mean()), 6),
        "accuracy_after": round(float((labels_h == y_t).float().mean()), 6),
        "label_agreement": round(float((labels_h == pred).float().mean()), 6),
        "mean_l1_change": round(float(l1.mean()), 6),
        "max_l1_change": round(float(l1.max()), 6),
    }
