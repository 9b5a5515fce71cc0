"""Pure tensor operations shared by attacks: norms, projections, random starts, losses."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from modelshield._typing import Norm

__all__ = [
    "ce_loss",
    "clip_to_bounds",
    "cw_margin_loss",
    "dlr_loss",
    "expand_as_batch",
    "is_adversarial",
    "lp_norms",
    "make_generator",
    "normalize_grad",
    "project",
    "random_start",
    "stopwatch",
]


def expand_as_batch(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a (N,) tensor to (N, 1, ..., 1) so that it broadcasts against like (N, ...)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def lp_norms(delta: Tensor, norm: Norm) -> Tensor:
    """(N,) L-inf or L2 norm of each row of delta (N, ...)."""
    flat = delta.flatten(1)
    if norm == "inf":
        out: Tensor = flat.abs().amax(dim=1)
        return out
    l2: Tensor = torch.linalg.vector_norm(flat, ord=2, dim=1)
    return l2


def project(delta: Tensor, eps: float | Tensor, norm: Norm) -> Tensor:
    """Closest point of the eps-ball to each row of delta; shape (N, ...) preserved.

    ``eps`` may be a float or an (N,) tensor of per-row radii.
    """
    if isinstance(eps, Tensor):
        eps_b = expand_as_batch(eps, delta)
        if norm == "inf":
            return torch.maximum(torch.minimum(delta, eps_b), -eps_b)
        size = expand_as_batch(lp_norms(delta, "2").clamp_min(1e-12), delta)
        return delta * (eps_b / size).clamp(max=1.0)
    if norm == "inf":
        return delta.clamp(-eps, eps)
    size = lp_norms(delta, "2").clamp_min(1e-12)
    return delta * expand_as_batch((eps / size).clamp(max=1.0), delta)


def clip_to_bounds(x: Tensor, bounds: tuple[float, float]) -> Tensor:
    """x clamped elementwise into [lo, hi]."""
    return x.clamp(bounds[0], bounds[1])


def normalize_grad(grad: Tensor, norm: Norm) -> Tensor:
    """Steepest-ascent direction for the norm: sign(grad) for L-inf, grad/||grad||_2 for L2."""
    if norm == "inf":
        return grad.sign()
    size = lp_norms(grad, "2").clamp_min(1e-12)
    return grad / expand_as_batch(size, grad)


def random_start(x: Tensor, eps: float, norm: Norm, generator: torch.Generator) -> Tensor:
    """A random perturbation (N, ...) drawn uniformly from the eps-ball (L-inf: the cube).

    The L2 draw is uniform in the ball: a Gaussian direction scaled by eps * U^(1/d).
    """
    if norm == "inf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps
    g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    d = x[0].numel()
    r = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
    return normalize_grad(g, "2") * expand_as_batch(r * eps, x)


def is_adversarial(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """(N,) bool from scores (N, C): argmax equals target (targeted), else differs from y."""
    pred = logits.argmax(1)
    return pred == target if target is not None else pred != y


def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """(N,) cross-entropy of logits (N, C) against labels (N,)."""
    return F.cross_entropy(logits, y, reduction="none")


def cw_margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """(N,) max_{j != y} z_j - z_y: positive exactly when the point is misclassified."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.amax(dim=1) - z_y


def dlr_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """(N,) Difference of Logits Ratio loss (Croce & Hein 2020), to be maximised.

    Untargeted: -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3); needs C >= 3.
    Targeted:   -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2); needs C >= 4.
    """
    srt = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        other = logits.clone()
        other.scatter_(1, y[:, None], float("-inf"))
        return -(z_y - other.amax(dim=1)) / (srt[:, 0] - srt[:, 2] + 1e-12)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A private generator on device: seeded when seed is an int, fresh entropy when None."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """Yield a one-item list that holds the elapsed seconds once the block ends."""
    box = [0.0]
    start = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start
