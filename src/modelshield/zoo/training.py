"""Deterministic CPU training and evaluation for the zoo's reference models.

Determinism without touching the global RNG: initialisation comes from ``build(arch, seed=...)``
(modules built on the meta device, then filled from a private generator), mini-batch order from
the private generator of ``modelshield.models.train_module`` (the one training loop), and the
architectures have no dropout (which would draw from the global RNG). The optimiser (AdamW) and
schedule (one-cycle; a run too short for torch's ``OneCycleLR`` uses the triangular cycle of
``modelshield.models.training.short_cycle_lr``) are deterministic. On the CPU, results are
bit-identical for the same seed and the same number of threads; a recipe may fix the thread count
(restored afterwards), otherwise the caller's setting is used. ``fit`` trains where the module is
(``zoo.train(..., device="cuda")`` moves model and data to a GPU; not bit-reproducible there).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Progress", "Recipe", "evaluate", "fit", "torch_threads"]

from modelshield._typing import Progress
from modelshield.models.outputs import predict_labels
from modelshield.models.training import Optimization, train_module

"""progress(done, total, message): called as training advances."""


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with n torch intra-op CPU threads (None: unchanged), then restore the setting.

    Small models gain nothing from intra-op parallelism, and on a busy machine extra threads
    make every tiny matrix product wait for a core: one thread can be many times faster.
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True, kw_only=True, slots=True)
class Recipe:
    """How a zoo model is trained: AdamW with a one-cycle learning-rate schedule.

    Reference:
        I. Loshchilov and F. Hutter, "Decoupled Weight Decay Regularization", ICLR 2019;
        L. N. Smith and N. Topin, "Super-Convergence", arXiv:1708.07120, 2017.
    """

    epochs: int
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    num_threads: int | None = None
    """Threads for training (restored afterwards); None keeps the caller's setting. Results are
    bit-identical only for the same thread count, so fixing it makes them machine-independent."""


def fit(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    recipe: Recipe,
    *,
    progress: Progress | None = None,
    progress_total: int | None = None,
) -> None:
    """Train module in place on (x, y) with cross-entropy; leave it in eval mode.

    The loop is ``modelshield.models.train_module`` (AdamW, one-cycle schedule, batch order from
    a generator seeded with ``recipe.seed + 1``).

    Args:
        module: the model; its parameters are updated in place where they are (CPU or GPU).
        x: ``(N, *input_shape)`` float inputs on the module's device; not modified.
        y: ``(N,)`` int64 labels on the module's device.
        recipe: epochs, batch size, learning rate, weight decay and shuffling seed.
        progress: optional ``progress(done, total, message)`` callback, called about every
            20 batches and at the end of each epoch (and once before the first batch);
            ``done`` counts batches.
        progress_total: the ``total`` to report (defaults to the number of batches).
    """
    steps = math.ceil(int(x.shape[0]) / recipe.batch_size) * recipe.epochs
    total = steps if progress_total is None else progress_total
    if progress is not None:  # before the first batches, which may take a while
        progress(0, total, f"epoch 1/{recipe.epochs}: training")
    optimization = Optimization(optimizer="adamw", lr=recipe.lr, weight_decay=recipe.weight_decay,
                                schedule="one_cycle", pct_start=0.25)
    try:
        with torch_threads(recipe.num_threads):
            # seed + 1: keep the order stream apart from the init stream (build(arch, seed))
            train_module(module, (x, y), epochs=recipe.epochs, batch_size=recipe.batch_size,
                         optimization=optimization, seed=recipe.seed + 1, progress=progress,
                         progress_total=total, owner="zoo.fit")
    finally:
        module.eval()


def evaluate(module: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1000) -> float:
    """Top-1 accuracy of module on (x, y), in batches, without gradients; module left in eval mode."""
    module.eval()
    correct = int((predict_labels(module, x, batch_size=batch_size) == y).sum())
    return correct / max(int(x.shape[0]), 1)
