"""Ensemble: the per-point worst case over several attacks (AutoAttack-style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield._typing import NORMS, Norm
from modelshield.attacks.evasion.apgd import APGD, APGDT
from modelshield.attacks.evasion.protocol import EvasionAttack
from modelshield.attacks.results import EvasionResult
from modelshield.attacks.verify import TOL, start_call
from modelshield.errors import ConfigError
from modelshield.models import ModelLike, eval_mode

__all__ = ["Ensemble"]


def _shared(members: tuple[EvasionAttack, ...], name: str) -> Any:
    """The one value of attribute name among the members that set it (None if none does)."""
    values = {getattr(m, name) for m in members if getattr(m, name, None) is not None}
    if len(values) > 1:
        listed = ", ".join(f"{type(m).__name__}={getattr(m, name, None)!r}" for m in members)
        raise ConfigError(
            f"Ensemble: members must share {name!r}; got {listed}. Give every member the same "
            f"{name} (members without one, e.g. minimum-norm attacks with eps=None, are fine)."
        )
    return values.pop() if values else None


@dataclass(frozen=True, kw_only=True, slots=True)
class Ensemble:
    """Run attacks in order, each on the points the earlier ones left unbroken; keep the worst case.

    Untargeted, a later member only attacks points that are still correctly classified;
    targeted (``target=``), points not yet at their target. A point's adversarial input is
    the one from the first member that broke it (points nobody breaks are returned as x).
    Members must share the norm and eps where they have one; a minimum-norm member
    (``eps=None``) counts only when its point lies within the ensemble's eps. The combined
    output is re-verified, and ``extra["members"]`` records per member how many points it
    attacked and broke, its queries and its time; the result's queries and time are totals.

    Args:
        members: the attacks, run in this order (cheap and strong first saves queries).

    Reference: Croce and Hein, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", ICML 2020 (arXiv:2003.01690).

    Example:
        result = Ensemble.standard(eps=8 / 255)(model, x, y)
        result.extra["members"]
    """

    members: tuple[EvasionAttack, ...]

    needs_gradients: ClassVar[bool] = True  # refined per instance by `requires_gradients`

    def __post_init__(self) -> None:
        if not isinstance(self.members, tuple) or not self.members:
            raise ConfigError(
                f"Ensemble: 'members' must be a non-empty tuple of attacks; got {self.members!r}. "
                "Pass e.g. members=(APGD(eps=0.1), APGDT(eps=0.1))."
            )
        for mem in self.members:
            if not callable(mem) or not hasattr(mem, "needs_gradients"):
                raise ConfigError(
                    f"Ensemble: every member must be an evasion attack; got {mem!r}. "
                    "Pass attack instances such as APGD(eps=0.1)."
                )
        _shared(self.members, "norm")
        _shared(self.members, "eps")

    @property
    def eps(self) -> float | None:
        """The members' shared budget (None when every member is a minimum-norm attack)."""
        value: float | None = _shared(self.members, "eps")
        return value

    @property
    def norm(self) -> Norm | None:
        value: Norm | None = _shared(self.members, "norm")
        return value

    @property
    def requires_gradients(self) -> bool:
        """Whether any member needs a white-box model."""
        return any(m.needs_gradients for m in self.members)

    @classmethod
    def standard(
        cls, eps: float, norm: Norm = "inf", *, seed: int | None = 0, steps: int = 100
    ) -> Ensemble:
        """AutoAttack's "standard" version, white-box part: APGD-CE then APGD-T (targeted DLR).

        APGD-CE runs without restarts, APGD-T over the 9 most likely wrong classes, both with
        ``steps`` iterations. AutoAttack's two other members are left out: FAB-T (not
        implemented here) and the black-box Square attack (a separate attack). Add Square as a
        member once available to complete the ensemble.
        """
        check_range("eps", eps, owner="Ensemble.standard", low=0.0)
        check_choice("norm", norm, NORMS, owner="Ensemble.standard")
        return cls(members=(
            APGD(eps=eps, norm=norm, steps=steps, loss="ce", seed=seed),
            APGDT(eps=eps, norm=norm, steps=steps, n_target_classes=9, seed=seed),
        ))

    def __call__(
        self, model: ModelLike, x: Tensor, y: Tensor, *, target: Tensor | None = None
    ) -> EvasionResult:
        call = start_call(model, x, y, target, owner="Ensemble", gradients=self.requires_gradients)
        m = call.model
        eps, norm = self.eps, self.norm
        records: list[dict[str, Any]] = []

        def run() -> EvasionResult:
            clean_pred = m.predict(call.x)
            todo = (clean_pred != call.target) if call.target is not None else (clean_pred == call.y)
            x_adv = call.x.clone()
            for mem in self.members:
                idx = todo.nonzero().squeeze(1)
                rec: dict[str, Any] = {"attack": type(mem).__name__, "attacked": int(idx.numel()),
                                       "broken": 0, "queries_forward": 0, "queries_backward": 0,
                                       "time_s": 0.0}
                records.append(rec)
                if idx.numel() == 0:
                    continue
                t_idx = call.target[idx] if call.target is not None else None
                res = mem(m, call.x[idx], call.y[idx], target=t_idx)
                ok = res.success
                if eps is not None:  # a minimum-norm member must also fit the shared budget
                    ok = ok & (res.norms <= eps + TOL)
                x_adv[idx[ok]] = res.x_adv[ok]
                todo[idx[ok]] = False
                rec.update(broken=int(ok.sum()), queries_forward=res.queries_forward,
                           queries_backward=res.queries_backward, time_s=round(res.time_s, 4))
            return call.finish(x_adv, attack=self, eps=eps, norm=norm, clean_pred=clean_pred,
                               extra={"members": records})

        if self.requires_gradients:
            with eval_mode(call.gradient_model):
                return run()
        with torch.no_grad():
            return run()
