"""Pure tensor operations shared by attacks: norms, projections, random starts, losses.

Per-point randomness. Attacks draw their random numbers with ``point_uniform`` and its
siblings rather than from a ``torch.Generator``: each draw is a pure function of a per-point key
(``point_keys``: a hash of the row's bytes and label, mixed with the attack's seed), a stream id
(which step, restart or purpose the draw is for) and the position of the number in the draw. A
point therefore gets the same random numbers whatever else is in its batch, so results do not
depend on the batch size, on the order of the points or on how the work is sharded over workers,
and a point that leaves the active set early does not shift any other point's draws. Identical
rows with identical labels get identical draws, which is harmless: the attack does the same thing
to the same point. The generator is counter-based (the SplitMix64 finaliser, Steele, Lea and Flood,
"Fast splittable pseudorandom number generators", OOPSLA 2014) built from int64 tensor ops with
wrap-around multiplication (no unsigned types, which torch lacks on the CPU), so it runs on any
device. ``seed=None`` draws a fresh seed per attack call, so then even one batch split differently
gives other numbers: only a fixed seed makes results batch-independent.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Iterator
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
    "labels_adversarial",
    "lp_norms",
    "make_generator",
    "mix64",
    "normalize_grad",
    "point_keys",
    "point_normal",
    "point_randint",
    "point_random_start",
    "point_signs",
    "point_uniform",
    "project",
    "random_start",
    "stopwatch",
]

Stream = int | tuple[int, ...]
"""Id of one random draw: a step, restart or purpose number, or a tuple of them."""


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
    return labels_adversarial(logits.argmax(1), y, target)


def labels_adversarial(pred: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """(N,) bool from labels (N,): pred equals target (targeted), else differs from y."""
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


_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64's increment: 2^64 / golden ratio, odd
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB


def _as_int64(v: int) -> int:
    """The int64 (two's complement) with the low 64 bits of v."""
    v &= _M64
    return v - (1 << 64) if v >= 1 << 63 else v


def _mix_int(z: int) -> int:
    """SplitMix64 finaliser on a Python int: a bijection of 64-bit words that scatters every bit."""
    z &= _M64
    z = ((z ^ (z >> 30)) * _MUL1) & _M64
    z = ((z ^ (z >> 27)) * _MUL2) & _M64
    return z ^ (z >> 31)


def mix64(*parts: int) -> int:
    """A well-scattered 64-bit word (as a non-negative int) from any number of ints.

    The order matters: ``mix64(1, 2) != mix64(2, 1)``. Used to derive stream constants and the
    per-text keys of the text attack.
    """
    h = _mix_int(len(parts) * _GOLDEN)
    for p in parts:
        h = _mix_int(h + _GOLDEN + (p & _M64))
    return h


_G64, _C1, _C2 = _as_int64(_GOLDEN), _as_int64(_MUL1), _as_int64(_MUL2)


def _shr(z: Tensor, k: int, out: Tensor | None = None) -> Tensor:
    """Logical right shift of int64 words (torch's >> is arithmetic: mask the sign copies)."""
    if out is None:
        return (z >> k) & ((1 << (64 - k)) - 1)
    torch.bitwise_right_shift(z, k, out=out)
    return out.bitwise_and_((1 << (64 - k)) - 1)


def _mix_(z: Tensor, tmp: Tensor | None = None) -> Tensor:
    """SplitMix64 finaliser, in place on int64 words z (multiplication wraps modulo 2^64).

    ``tmp`` is an optional scratch buffer of z's shape; in-place work on one buffer keeps large
    draws from paying for a fresh allocation (page faults) at every step.
    """
    t = torch.empty_like(z) if tmp is None else tmp
    z.bitwise_xor_(_shr(z, 30, t))
    z.mul_(_C1)
    z.bitwise_xor_(_shr(z, 27, t))
    z.mul_(_C2)
    return z.bitwise_xor_(_shr(z, 31, t))


_BLOCK = 1 << 16
"""int64 words per block of work on the CPU (512 KiB). A draw reuses two such scratch buffers
instead of allocating full-size temporaries, whose page faults would cost more than the hashing."""

_BLOCK_ACCELERATOR = 1 << 22
"""int64 words per block on other devices (32 MiB): bounds a large draw's scratch memory."""


def _block_size(device: torch.device) -> int:
    return _BLOCK if device.type == "cpu" else _BLOCK_ACCELERATOR


def _blocks(n: int, m: int, device: torch.device) -> Iterator[tuple[slice, slice]]:
    """(rows, columns) slices covering an (n, m) array in blocks of at most the block size.

    The blocking never changes a number: each word is a function of its row's key and column.
    """
    block = _block_size(device)
    if n * m <= block:
        yield slice(0, n), slice(0, m)
    elif m >= block:
        for r in range(n):
            for c in range(0, m, block):
                yield slice(r, r + 1), slice(c, min(c + block, m))
    else:
        step = block // m
        for r in range(0, n, step):
            yield slice(r, min(r + step, n)), slice(0, m)


class _Scratch:
    """Two int64 scratch buffers big enough for one block of an (n, m) draw."""

    def __init__(self, n: int, m: int, device: torch.device) -> None:
        size = min(n * m, _block_size(device))
        self.a = torch.empty(size, dtype=torch.int64, device=device)
        self.b = torch.empty(size, dtype=torch.int64, device=device)

    def views(self, rows: int, cols: int) -> tuple[Tensor, Tensor]:
        k = rows * cols
        return self.a[:k].view(rows, cols), self.b[:k].view(rows, cols)


def _as_words(flat: Tensor) -> Tensor:
    """flat (N, D) as integers with the same bits: int64/int32/int16 views of float64/32/16 values."""
    if flat.dtype == torch.float64:
        return flat.view(torch.int64)
    if flat.dtype == torch.float32:
        return flat.view(torch.int32)
    if flat.dtype in (torch.float16, torch.bfloat16):
        return flat.view(torch.int16)
    if not flat.dtype.is_floating_point and not flat.dtype.is_complex and flat.dtype != torch.bool:
        return flat
    return flat.to(torch.float64).view(torch.int64)


def point_keys(x: Tensor, y: Tensor | None, seed: int | None) -> Tensor:
    """(N,) int64 random-number key of each row of x (N, ...): its bytes and label y (N,), and seed.

    The key depends on nothing else (not on the other rows, their number or their order), so
    the ``point_*`` draws made from it do not depend on the batching. ``seed=None`` draws a fresh
    seed from the operating system (not reproducible; then no two calls agree, batched or not).
    """
    s = secrets.randbits(64) if seed is None else seed
    n = int(x.shape[0])
    words = _as_words(x.detach().reshape(n, -1).contiguous())
    d = int(words.shape[1])
    pos = torch.arange(1, d + 1, device=x.device, dtype=torch.int64).mul_(_G64)
    # Two exact (overflow-free) sums of the 32-bit halves of the mixed words: an
    # order-independent 64-bit digest of the row (sign extension keeps distinct words distinct).
    lo = torch.zeros(n, dtype=torch.int64, device=x.device)
    hi = torch.zeros_like(lo)
    scratch = _Scratch(n, d, x.device)
    for rows, cols in _blocks(n, d, x.device):
        z, t = scratch.views(rows.stop - rows.start, cols.stop - cols.start)
        z.copy_(words[rows, cols])
        _mix_(z.add_(pos[cols]), t)
        lo[rows] += torch.bitwise_and(z, 0xFFFFFFFF, out=t).sum(1)
        hi[rows] += _shr(z, 32, t).sum(1)
    key = _mix_(lo ^ _as_int64(mix64(s, 1)))
    key = _mix_(key + hi * _G64)
    if y is not None:
        lab = y.to(device=x.device, dtype=torch.int64) * _G64 + _as_int64(mix64(s, 2))
        key = _mix_(key ^ _mix_(lab))
    return key


def _draw(keys: Tensor, stream: Stream, m: int, dtype: torch.dtype,
          finish: Callable[[Tensor, Tensor, slice], Tensor]) -> Tensor:
    """(N, m) draw of dtype: ``finish(words, scratch, rows)`` turns each block of random int64
    words (the SplitMix64 sequence of each row's key in the stream) into output values."""
    parts = stream if isinstance(stream, tuple) else (stream,)
    n = int(keys.shape[0])
    base = _mix_(keys ^ _as_int64(mix64(*parts)))
    ctr = torch.arange(1, m + 1, device=keys.device, dtype=torch.int64).mul_(_G64)
    out = torch.empty(n, m, dtype=dtype, device=keys.device)
    scratch = _Scratch(n, m, keys.device)
    for rows, cols in _blocks(n, m, keys.device):
        z, t = scratch.views(rows.stop - rows.start, cols.stop - cols.start)
        torch.add(base[rows, None], ctr[cols], out=z)
        out[rows, cols] = finish(_mix_(z, t), t, rows)
    return out


def point_uniform(keys: Tensor, stream: Stream, shape: tuple[int, ...], *,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """(N, *shape) uniform numbers in [0, 1) of dtype, row i a function of keys[i] and stream only.

    Each number has as many random bits as the dtype's significand holds, so it is exact in
    dtype and never rounds up to 1.
    """
    bits = min(1 - round(math.log2(torch.finfo(dtype).eps)), 53)

    def finish(z: Tensor, t: Tensor, rows: slice) -> Tensor:
        return _shr(z, 64 - bits, t)

    u = _draw(keys, stream, math.prod(shape), dtype, finish)
    return u.mul_(2.0 ** -bits).view(keys.shape[0], *shape)


def point_normal(keys: Tensor, stream: Stream, shape: tuple[int, ...], *,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """(N, *shape) standard normal numbers (Box-Muller on the two 32-bit halves of each word)."""
    work = torch.float64 if dtype == torch.float64 else torch.float32

    def finish(z: Tensor, t: Tensor, rows: slice) -> Tensor:
        u1 = _shr(z, 32, t).to(work).add_(0.5).mul_(2.0**-32)  # in (0, 1): the log is finite
        r = u1.log_().mul_(-2.0).sqrt_()
        angle = torch.bitwise_and(z, 0xFFFFFFFF, out=t).to(work).mul_(2.0 * math.pi * 2.0**-32)
        return r.mul_(angle.cos_())

    return _draw(keys, stream, math.prod(shape), dtype, finish).view(keys.shape[0], *shape)


def point_signs(keys: Tensor, stream: Stream, shape: tuple[int, ...], *,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """(N, *shape) independent, uniform random signs +-1 of dtype."""

    def finish(z: Tensor, t: Tensor, rows: slice) -> Tensor:
        return _shr(z, 63, t).mul_(2).sub_(1)

    return _draw(keys, stream, math.prod(shape), dtype, finish).view(keys.shape[0], *shape)


def point_randint(keys: Tensor, stream: Stream, high: int | Tensor,
                  shape: tuple[int, ...] = ()) -> Tensor:
    """(N, *shape) int64 uniform in [0, high); high is an int or an (N,) tensor of positive ints.

    The modulo bias is below high / 2^63: nil for any index range.
    """
    hi_t = high.to(device=keys.device, dtype=torch.int64)[:, None] if isinstance(high, Tensor) else None

    def finish(z: Tensor, t: Tensor, rows: slice) -> Tensor:
        return _shr(z, 1, t).remainder_(high if hi_t is None else hi_t[rows])

    return _draw(keys, stream, math.prod(shape), torch.int64, finish).view(keys.shape[0], *shape)


def point_random_start(x: Tensor, eps: float, norm: Norm, keys: Tensor, stream: Stream) -> Tensor:
    """``random_start`` with per-point draws: row i depends only on keys[i] and stream."""
    feat = tuple(x.shape[1:])
    parts = stream if isinstance(stream, tuple) else (stream,)
    if norm == "inf":
        return point_uniform(keys, parts, feat, dtype=x.dtype).mul_(2.0).sub_(1.0).mul_(eps)
    g = point_normal(keys, (*parts, 0), feat, dtype=x.dtype)
    d = x[0].numel()
    r = point_uniform(keys, (*parts, 1), (), dtype=x.dtype) ** (1.0 / d)
    return normalize_grad(g, "2") * expand_as_batch(r * eps, x)


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """Yield a one-item list that holds the elapsed seconds once the block ends."""
    box = [0.0]
    start = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start
