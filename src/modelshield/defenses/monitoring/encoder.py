"""A similarity encoder trained contrastively on benign data, for the stateful detector."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from modelshield._checks import check_range
from modelshield.errors import InputError

__all__ = ["augment", "train_contrastive_encoder"]


def augment(x: Tensor, generator: torch.Generator, *, sigma: float, shift: int) -> Tensor:
    """x (N, ...) plus Gaussian noise of std sigma, each image (N, C, H, W) rolled by up to shift pixels."""
    out = x + sigma * torch.randn(x.shape, generator=generator)
    if shift and x.dim() == 4:
        moves = torch.randint(-shift, shift + 1, (x.shape[0], 2), generator=generator)
        out = torch.stack([row.roll((int(dy), int(dx)), dims=(-2, -1))
                           for row, (dy, dx) in zip(out, moves.tolist(), strict=True)])
    return out


def train_contrastive_encoder(
    x: Tensor,
    *,
    dim: int = 32,
    hidden: int = 256,
    epochs: int = 30,
    batch_size: int = 128,
    margin: float = 1.0,
    sigma: float = 0.05,
    shift: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
) -> nn.Module:
    """Train a small encoder that maps an image and its perturbations close, other images apart.

    Chen, Carlini and Wagner train the stateful detector's encoder with a contrastive loss:
    for a positive pair (x, x') where x' is x under a small transform, ``||E(x) - E(x')||^2``;
    for a negative pair (two different benign images), ``max(0, margin - ||E(x) - E(y)||)^2``.
    Here E is a two-layer MLP over the flattened input and the transforms are Gaussian noise
    (std ``sigma``) and random shifts of up to ``shift`` pixels (images only): the encoder is
    then invariant to the query-blinding transforms of that family, and to nothing else. The
    paper's encoder is a CNN trained on CIFAR-10 with a richer augmentation set.

    Args:
        x: ``(N, *input_shape)`` benign inputs (e.g. the training split).
        dim: encoding size.
        hidden: hidden layer width.
        epochs: passes over x.
        batch_size: pairs per step.
        margin: the negative pairs' margin.
        sigma: positive pairs' noise std, in input units.
        shift: positive pairs' maximum shift in pixels (inputs of shape (N, C, H, W) only).
        lr: Adam's learning rate.
        seed: seeds weights, batches and augmentations (the global RNG is restored afterwards).

    Returns:
        The encoder, in eval mode, on the CPU: ``encoder(x) -> (N, dim)``; pass it as
        ``StatefulDetector(encoder=...)``.

    Reference: Chen, Carlini and Wagner, "Stateful Detection of Black-Box Adversarial Attacks",
    ACM SPAI 2020 (arXiv:1907.05587), section 4; Hadsell, Chopra and LeCun, "Dimensionality
    Reduction by Learning an Invariant Mapping", CVPR 2006 (the contrastive loss).

    Example:
        enc = train_contrastive_encoder(x_train)
        det = StatefulDetector(encoder=enc).fit(x_benign)
    """
    owner = "train_contrastive_encoder"
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 2 or not x.is_floating_point():
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{owner}: x must be a float tensor (N >= 2, *input_shape); got {got}. "
                         "Pass benign training inputs.")
    for name, value in (("dim", dim), ("hidden", hidden), ("epochs", epochs), ("batch_size", batch_size)):
        check_range(name, value, owner=owner, low=1, integer=True)
    check_range("shift", shift, owner=owner, low=0, integer=True)
    for name, fvalue in (("margin", margin), ("lr", lr)):
        check_range(name, fvalue, owner=owner, low=0.0, low_open=True)
    check_range("sigma", sigma, owner=owner, low=0.0)
    x = x.detach().float().cpu()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # nn.Linear initialises from the global RNG, restored on exit
        net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(x.shape[1:]), hidden), nn.ReLU(),
                            nn.Linear(hidden, dim))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = x.shape[0]
    net.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            a = x[order[start:start + batch_size]]
            if a.shape[0] < 2:
                continue
            pos = augment(a, gen, sigma=sigma, shift=shift)
            neg = a.roll(1, dims=0)  # another image of the batch: a negative pair
            ea, ep, en = net(a), net(pos), net(neg)
            d_pos = (ea - ep).pow(2).sum(1)
            d_neg = (ea - en).pow(2).sum(1).clamp_min(1e-12).sqrt()
            loss = d_pos.mean() + (margin - d_neg).clamp_min(0.0).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()
