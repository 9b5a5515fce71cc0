"""Transfer attack: craft on a white-box surrogate, replay on the (black-box) victim."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from modelshield._typing import Norm
from modelshield.attacks.evasion._query import black_box_mode, check_room_for_call
from modelshield.attacks.evasion.protocol import EvasionAttack
from modelshield.attacks.results import EvasionResult
from modelshield.attacks.verify import attack_params, probe_forward, start_call
from modelshield.errors import ConfigError
from modelshield.models import ModelLike, TorchModel

__all__ = ["Transfer"]


def _json_rate(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 6)


@dataclass(frozen=True, kw_only=True, slots=True)
class Transfer:
    """Transfer attack: run a white-box attack on a surrogate, then replay its inputs on the victim.

    The surrogate is any torch classifier the attacker controls (e.g. trained on the same
    data, or distilled from the victim's answers); the victim can be any model, including a
    label-only black box. Success is what the victim answers on the replayed inputs.

    Queries on the victim: one clean query per point (``point_queries`` = 1) and the replay,
    which is the verification query: 2N in all. The surrogate's own queries and its success
    are reported in ``extra`` (``surrogate_success_rate``, ``surrogate_robust_accuracy``,
    ``surrogate_queries_forward``/``_backward``), together with ``transfer_rate``: the share
    of points broken on the surrogate by the attack (the surrogate was right on the clean input)
    and classified correctly by the victim that also break the victim.

    Args:
        attack: the white-box attack run on the surrogate, e.g. ``PGD(eps=0.1)``.
        surrogate: a ``torch.nn.Module`` returning logits (wrapped with the victim's bounds),
            or a ``TorchModel`` from ``as_model``.

    Raises:
        QueryBudgetExceeded: the victim's budget is below 2 queries per point.
        ConfigError: the surrogate's bounds or number of classes differ from the victim's.

    Reference: Papernot, McDaniel and Goodfellow, "Transferability in Machine Learning: from
    Phenomena to Black-Box Attacks using Adversarial Samples", 2016 (arXiv:1605.07277).

    Example:
        result = Transfer(attack=PGD(eps=0.1), surrogate=my_net)(as_model(api_predict_proba), x, y)
        result.extra["transfer_rate"], result.robust_accuracy
    """

    attack: EvasionAttack
    surrogate: nn.Module | TorchModel

    needs_gradients: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not callable(self.attack) or not hasattr(self.attack, "needs_gradients"):
            raise ConfigError(
                f"Transfer: 'attack' must be an evasion attack; got {self.attack!r}. "
                "Pass an attack instance such as PGD(eps=0.1)."
            )
        if not isinstance(self.surrogate, nn.Module | TorchModel):
            raise ConfigError(
                f"Transfer: 'surrogate' must be a torch.nn.Module returning logits; got "
                f"{type(self.surrogate).__name__}. Train a torch surrogate (e.g. on the same data)."
            )

    @property
    def eps(self) -> float | None:
        """The inner attack's budget (None for minimum-norm attacks)."""
        value = getattr(self.attack, "eps", None)
        return None if value is None else float(value)

    @property
    def norm(self) -> Norm:
        """The inner attack's norm (``"inf"`` when it has none)."""
        value = getattr(self.attack, "norm", "inf")
        return "2" if value == "2" else "inf"

    def __call__(
        self, model: ModelLike, x: Tensor, y: Tensor, *, target: Tensor | None = None
    ) -> EvasionResult:
        call = start_call(model, x, y, target, owner="Transfer", gradients=False)
        m, n = call.model, call.x.shape[0]
        check_room_for_call(m, n, owner="Transfer")
        sur = self.surrogate if isinstance(self.surrogate, TorchModel) else TorchModel(
            self.surrogate, bounds=m.bounds
        )
        if tuple(sur.bounds) != tuple(m.bounds):
            raise ConfigError(
                f"Transfer: the surrogate's bounds must match the victim's {m.bounds}; got "
                f"{sur.bounds}. Build the surrogate with as_model(net, bounds={m.bounds})."
            )
        if not sur.n_classes_confirmed:
            probe_forward(sur, call.x, owner="Transfer")
        if sur.n_classes != m.n_classes:
            raise ConfigError(
                f"Transfer: the surrogate must have the victim's {m.n_classes} classes; got "
                f"{sur.n_classes}. Train the surrogate on the victim's label set."
            )
        crafted = self.attack(sur, call.x, call.y, target=call.target)
        with black_box_mode(m):
            clean_pred = m.predict(call.x)
            res = call.finish(
                crafted.x_adv, attack=self, eps=crafted.eps, norm=self.norm,
                clean_pred=clean_pred,
                point_queries=torch.ones(n, dtype=torch.long, device=call.x.device),
            )
        # Only examples the attack made count: the surrogate was right on x and wrong on x_adv
        # (its own clean mistakes are not adversarial examples), and the victim was right on x.
        both = crafted.success & crafted.eligible & res.eligible
        transfer_rate = float(res.success[both].float().mean()) if bool(both.any()) else math.nan
        extra = {
            "surrogate_success_rate": _json_rate(crafted.attack_success_rate),
            "surrogate_robust_accuracy": _json_rate(crafted.robust_accuracy),
            "surrogate_queries_forward": crafted.queries_forward,
            "surrogate_queries_backward": crafted.queries_backward,
            "transfer_rate": _json_rate(transfer_rate),
        }
        params = {
            "attack": {"attack": type(self.attack).__name__, **attack_params(self.attack)},
            "surrogate": type(sur.module).__name__,
        }
        return dataclasses.replace(res, params=params, extra={**res.extra, **extra})
