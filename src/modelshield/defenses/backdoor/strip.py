"""STRIP: run-time detection of triggered inputs by the entropy of predictions on superimposed inputs."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import torch
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield.attacks.ops import make_generator
from modelshield.defenses.backdoor._common import check_clean_set, check_fitted
from modelshield.errors import InputError
from modelshield.models import TorchModel, as_model, eval_mode

__all__ = ["STRIP", "strip_entropy"]


def strip_entropy(
    model: Any, x: Tensor, overlays: Tensor, *, mode: str, bounds: tuple[float, float], batch_size: int = 512
) -> Tensor:
    """(N,) mean Shannon entropy (nats) of the model's class probabilities on x[i] superimposed with
    each of overlays[i] (N, K, ...): ``clip(x + o)`` (``mode="add"``, the paper's image sum) or
    ``(x + o) / 2`` (``"average"``)."""
    n, k = overlays.shape[:2]
    mixed = x[:, None] + overlays
    mixed = mixed.clamp(*bounds) if mode == "add" else mixed / 2
    flat = mixed.reshape(n * k, *x.shape[1:])
    out = []
    for s in range(0, n * k, batch_size):
        sc = model.scores(flat[s : s + batch_size])
        p = sc.softmax(1) if isinstance(model, TorchModel) else sc / sc.sum(1, keepdim=True).clamp_min(1e-12)
        out.append(-(p * p.clamp_min(1e-12).log()).sum(1))
    return torch.cat(out).view(n, k).mean(1)


@dataclass(kw_only=True)
class STRIP:
    """STRIP run-time trojan detector (works on black-box models: it only needs class scores).

    Each input is superimposed with ``n_overlays`` random clean images; a clean input's
    predictions then vary (high entropy), while a triggered input stays with the target class
    (low entropy). ``fit`` sets the threshold to the ``frr`` quantile of the entropies of the
    clean set (each clean input overlaid with *other* clean inputs), so about ``frr`` of clean
    inputs are rejected.

    Args:
        n_overlays: superimpositions per input (the paper uses 100; 20 is usually enough).
        frr: target false-rejection rate on clean inputs, in (0, 1).
        mode: ``"add"`` (the paper's clipped sum) or ``"average"``.
        min_clean: smallest clean set accepted. batch_size: rows per model call.
        bounds: input range. seed: overlay sampling seed.

    Fitted attributes:
        threshold_: inputs with entropy below it are flagged. clean_entropy_: (N,) clean
        entropies. false_rejection_: the share of the clean set flagged. overlays_: the pool.

    Reference: Y. Gao, C. Xu, D. Wang, S. Chen, D. C. Ranasinghe and S. Nepal, "STRIP: A
    Defence Against Trojan Attacks on Deep Neural Networks", ACSAC 2019 (arXiv:1902.06531).

    Example:
        strip = STRIP(frr=0.05).fit(model, x_clean)
        strip.predict(res.apply_trigger(x_test)).float().mean()   # detection rate
    """

    n_overlays: int = 20
    frr: float = 0.05
    mode: Literal["add", "average"] = "add"
    min_clean: int = 20
    batch_size: int = 512
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int | None = 0

    threshold_: float | None = field(init=False, default=None)
    clean_entropy_: Tensor | None = field(init=False, default=None, repr=False)
    false_rejection_: float | None = field(init=False, default=None)
    overlays_: Tensor | None = field(init=False, default=None, repr=False)
    _model: Any = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        check_range("n_overlays", self.n_overlays, owner="STRIP", low=1, integer=True)
        if not (isinstance(self.frr, float | int) and 0 < self.frr < 1):
            from modelshield.errors import ConfigError

            raise ConfigError(f"STRIP: 'frr' must be a number in (0, 1); got {self.frr!r}. "
                              "Give the accepted false-rejection rate, e.g. frr=0.05.")
        check_choice("mode", self.mode, ("add", "average"), owner="STRIP")
        check_range("min_clean", self.min_clean, owner="STRIP", low=2, integer=True)
        check_range("batch_size", self.batch_size, owner="STRIP", low=1, integer=True)

    def _entropy(self, x: Tensor, gen: torch.Generator, exclude_self: bool) -> Tensor:
        pool = self.overlays_
        assert pool is not None  # set by fit before use
        n, p = int(x.shape[0]), int(pool.shape[0])
        idx = torch.randint(0, p - 1 if exclude_self else p, (n, self.n_overlays), generator=gen,
                            device=pool.device)
        if exclude_self:  # skip row i itself: shift indices >= i up by one
            idx = idx + (idx >= torch.arange(n, device=pool.device)[:, None]).long()
        m = self._model
        with eval_mode(m) if isinstance(m, TorchModel) else nullcontext():
            return strip_entropy(m, x, pool[idx], mode=self.mode, bounds=self.bounds,
                                 batch_size=self.batch_size).cpu()

    def fit(self, model: Any, x: Tensor, y: Tensor | None = None) -> Self:
        """Calibrate on clean inputs x (N, ...): they are the overlay pool and set the threshold."""
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise InputError("STRIP: x must be a float tensor (N, ...) of clean inputs; got "
                             f"{type(x).__name__}. Convert with torch.as_tensor(x, dtype=torch.float32).")
        check_clean_set(int(x.shape[0]), self.min_clean, owner="STRIP")
        self._model = as_model(model, bounds=self.bounds)
        self.overlays_ = x.detach().clone()
        gen = make_generator(self.seed, torch.device("cpu"))
        ent = self._entropy(x, gen, exclude_self=True)
        self.clean_entropy_ = ent
        self.threshold_ = float(torch.quantile(ent.double(), self.frr))
        self.false_rejection_ = float((ent < self.threshold_).float().mean())
        return self

    def score(self, x: Tensor) -> Tensor:
        """(N,) STRIP entropy of each input (low = likely triggered)."""
        check_fitted(self, "threshold_")
        gen = make_generator(None if self.seed is None else self.seed + 1, torch.device("cpu"))
        return self._entropy(x, gen, exclude_self=False)

    def predict(self, x: Tensor) -> Tensor:
        """(N,) bool: True where the input is flagged as triggered (entropy below threshold_)."""
        check_fitted(self, "threshold_")
        assert self.threshold_ is not None  # checked just above
        return self.score(x) < self.threshold_

