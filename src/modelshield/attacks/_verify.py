"""Re-verification of attack outputs: query the model again, check budget and bounds per point."""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any

import torch
from torch import Tensor

from modelshield._checks import check_inputs, check_labels
from modelshield._typing import Norm
from modelshield.attacks._ops import lp_norms
from modelshield.attacks.results import EvasionResult
from modelshield.errors import EvaluationWarning, InputError
from modelshield.models import CallableModel, TorchModel

__all__ = ["TOL", "AttackCall", "attack_params", "check_batch", "start_call", "verify_evasion"]

TOL = 1e-6
"""Slack for float round-off when checking the eps-ball and the bounds."""


def attack_params(attack: object) -> dict[str, Any]:
    """The attack's config as a JSON-safe dict (its dataclass fields)."""
    if dataclasses.is_dataclass(attack) and not isinstance(attack, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(attack):
            v = getattr(attack, f.name)
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
                out[f.name] = {"attack": type(v).__name__, **attack_params(v)}
            elif isinstance(v, tuple | list):
                out[f.name] = [
                    {"attack": type(m).__name__, **attack_params(m)}
                    if dataclasses.is_dataclass(m) else m
                    for m in v
                ]
            else:
                out[f.name] = v
        return out
    return {}


def check_batch(
    model: TorchModel | CallableModel,
    x: object,
    y: object,
    *,
    owner: str,
    target: object = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate an attack's (x, y, target) against the model; return them as tensors."""
    x_t = check_inputs(x, bounds=model.bounds, owner=owner)
    if isinstance(model, TorchModel):
        model._check_device(x_t)
        if model._n_classes is None:
            model.scores(x_t[:1])  # an honest, counted probe that reveals the output width
    n_classes = model.n_classes
    y_t = check_labels(y, n=x_t.shape[0], n_classes=n_classes, owner=owner, device=x_t.device)
    t_t = None
    if target is not None:
        t_t = check_labels(
            target, n=x_t.shape[0], n_classes=n_classes, owner=owner, name="target",
            device=x_t.device,
        )
    return x_t, y_t, t_t


def verify_evasion(
    model: TorchModel | CallableModel,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    *,
    attack: object,
    eps: float | None,
    norm: Norm | None,
    target: Tensor | None = None,
    clean_pred: Tensor | None = None,
    queries_start: tuple[int, int],
    started: float,
    extra: dict[str, Any] | None = None,
    point_queries: Tensor | None = None,
) -> EvasionResult:
    """Build an EvasionResult whose every claim is checked.

    The returned inputs are checked point by point (finite, inside the bounds, within eps in
    the attack's norm, tolerance 1e-6); a failing row is replaced by its clean input and an
    EvaluationWarning is issued. The model is then queried again on the returned inputs and
    success is read from that fresh answer, never from the attack's own bookkeeping.
    """
    if x_adv.shape != x.shape:
        raise InputError(
            f"verify_evasion: x_adv has shape {tuple(x_adv.shape)} but x has {tuple(x.shape)}."
        )
    x_adv = x_adv.detach().to(dtype=x.dtype)
    lo, hi = model.bounds
    flat = x_adv.flatten(1)
    valid = torch.isfinite(flat).all(1) & (flat >= lo - TOL).all(1) & (flat <= hi + TOL).all(1)
    norms = lp_norms(x_adv - x, norm or "inf")
    if eps is not None:
        valid &= norms <= eps + TOL
    if not bool(valid.all()):
        bad = int((~valid).sum())
        warnings.warn(
            f"{type(attack).__name__}: {bad} returned inputs were outside the eps-ball or the "
            "bounds and were replaced by the clean inputs (counted as not broken).",
            EvaluationWarning,
            stacklevel=3,
        )
        x_adv = torch.where(valid.view(-1, *([1] * (x.dim() - 1))), x_adv, x)
        norms = lp_norms(x_adv - x, norm or "inf")
    if clean_pred is None:
        clean_pred = model.predict(x)
    adv_pred = model.predict(x_adv)
    success = valid & ((adv_pred == target) if target is not None else (adv_pred != y))
    fwd, bwd = model.queries.snapshot()
    return EvasionResult(
        attack=type(attack).__name__,
        params=attack_params(attack),
        x_adv=x_adv,
        y=y,
        target=target,
        clean_pred=clean_pred,
        adv_pred=adv_pred,
        success=success,
        valid=valid,
        norms=norms,
        norm=norm,
        eps=eps,
        queries_forward=fwd - queries_start[0],
        queries_backward=bwd - queries_start[1],
        time_s=time.perf_counter() - started,
        extra=extra or {},
        point_queries=point_queries,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class AttackCall:
    """A validated attack call: the adapted model, checked tensors, and the start marks."""

    model: TorchModel | CallableModel
    x: Tensor
    y: Tensor
    target: Tensor | None
    queries_start: tuple[int, int]
    started: float

    @property
    def gradient_model(self) -> TorchModel:
        if not isinstance(self.model, TorchModel):  # start_call(gradients=True) guarantees it
            raise TypeError("internal: gradient model requested from a black-box call")
        return self.model

    def finish(
        self,
        x_adv: Tensor,
        *,
        attack: object,
        eps: float | None,
        norm: Norm | None,
        clean_pred: Tensor | None = None,
        extra: dict[str, Any] | None = None,
        point_queries: Tensor | None = None,
    ) -> EvasionResult:
        """Verify x_adv and build the result (see verify_evasion)."""
        return verify_evasion(
            self.model, self.x, self.y, x_adv, attack=attack, eps=eps, norm=norm,
            target=self.target, clean_pred=clean_pred, queries_start=self.queries_start,
            started=self.started, extra=extra, point_queries=point_queries,
        )


def start_call(
    model: object, x: object, y: object, target: object, *, owner: str, gradients: bool
) -> AttackCall:
    """Adapt the model, validate the batch and note the query counts and start time."""
    from modelshield.models import as_gradient_model, as_model

    started = time.perf_counter()
    m = as_gradient_model(model, caller=owner) if gradients else as_model(model)
    marks = m.queries.snapshot()
    x_t, y_t, t_t = check_batch(m, x, y, owner=owner, target=target)
    return AttackCall(m, x_t, y_t, t_t, marks, started)
