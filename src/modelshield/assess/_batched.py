"""Run an evasion attack over a data set in batches and merge the verified results."""

from __future__ import annotations

from torch import Tensor

from modelshield._checks import check_range
from modelshield._resources import check_memory, tensor_bytes
from modelshield._typing import Norm
from modelshield.assess._section import Progress
from modelshield.attacks.evasion.protocol import EvasionAttack
from modelshield.attacks.results import EvasionResult
from modelshield.attacks.verify import start_call
from modelshield.models import ModelLike

__all__ = ["ATTACK_COPIES", "attack_batches", "run_in_batches"]

ATTACK_COPIES = 8
"""Copies of a batch an iterative attack holds at once (input, adversarial input, perturbation,
gradient, best-so-far, momentum and temporaries): the factor of the batch memory estimate."""


def run_in_batches(
    attack: EvasionAttack,
    model: ModelLike,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    progress: Progress | None = None,
    label: str = "",
    offset: int = 0,
    total: int | None = None,
) -> EvasionResult:
    """Attack ``x`` in consecutive batches and merge the results with ``EvasionResult.concat``.

    With ``eps == 0`` the only admissible input is x itself, so the attack is not run: x is
    returned as the adversarial input and verified (fresh queries) like any attack output.

    Args:
        attack: an evasion attack instance (budgeted attacks expose ``eps`` and ``norm``).
        model: the model (adapted with ``as_model`` by the attack).
        x: ``(N, *input_shape)`` inputs; y: ``(N,)`` true labels.
        batch_size: rows per attack call.
        progress: called as ``progress(offset + batches done, total, label)`` after each batch.
        label: progress description. offset, total: position of this run in a longer job
            (total defaults to this run's number of batches).

    Returns:
        The merged, verified EvasionResult over all N rows.
    """
    return EvasionResult.concat(attack_batches(attack, model, x, y, batch_size=batch_size, progress=progress,
                                               label=label, offset=offset, total=total))


def attack_batches(
    attack: EvasionAttack,
    model: ModelLike,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    progress: Progress | None = None,
    label: str = "",
    offset: int = 0,
    total: int | None = None,
) -> list[EvasionResult]:
    """``run_in_batches`` before the merge: one verified EvasionResult per batch, in order.

    A runner job attacks a shard of the points with this and returns the per-batch results, so
    that the driver merges all batches at once, exactly as ``run_in_batches`` does in one process.
    """
    check_range("batch_size", batch_size, owner="run_in_batches", low=1, integer=True)
    rows = min(batch_size, int(x.shape[0]))
    check_memory("run_in_batches", f"'batch_size' ({rows} rows of shape {tuple(x.shape[1:])}, "
                 f"{x.element_size()}-byte values, {ATTACK_COPIES} copies an iterative attack holds; the "
                 "model's activations come on top)",
                 tensor_bytes(rows, x.shape[1:], itemsize=x.element_size(), copies=ATTACK_COPIES),
                 fix="Lower batch_size (CLI: --batch-size).")
    n_batches = -(-int(x.shape[0]) // batch_size)
    total = n_batches if total is None else total
    parts: list[EvasionResult] = []
    for b, start in enumerate(range(0, int(x.shape[0]), batch_size)):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        if getattr(attack, "eps", None) == 0:
            norm: Norm = getattr(attack, "norm", "inf")
            call = start_call(model, xb, yb, None, owner=type(attack).__name__, gradients=False)
            parts.append(call.finish(call.x.clone(), attack=attack, eps=0.0, norm=norm))
        else:
            parts.append(attack(model, xb, yb))
        if progress is not None:
            progress(offset + b + 1, total, label)
    return parts
