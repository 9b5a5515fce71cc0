"""The table of evasion attacks the contract tests run on: one row per configuration.

Every public evasion attack class must appear here (test_every_exported_attack_is_in_the_table),
and every registry name must build a class that does. Step counts are small to keep tests fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modelshield.attacks.evasion import (
    APGD,
    APGDT,
    FGSM,
    PGD,
    CarliniWagnerL2,
    DeepFool,
    Ensemble,
    EvasionAttack,
    HopSkipJump,
    SimBA,
    Square,
    Transfer,
)

EPS_INF = 0.15
EPS_L2 = 0.6


@dataclass(frozen=True)
class Case:
    """One attack configuration plus what the contract may expect of it."""

    attack: EvasionAttack
    owner: str  # the name its error messages start with
    stochastic: bool = False  # uses the seeded generator
    min_norm: bool = False  # minimum-norm attack (eps may be None)
    supports_targeted: bool = True
    rejects_target: bool = False  # raises ConfigError when given target=
    # Black-box attacks (needs_gradients False) skip the "black-box model is refused" check.

    @property
    def id(self) -> str:
        a = self.attack
        bits = [type(a).__name__, str(getattr(a, "norm", "")), str(getattr(a, "loss", ""))]
        if getattr(a, "eps", None) is None:
            bits.append("mineps")
        return "-".join(b for b in bits if b)


CASES: tuple[Case, ...] = (
    Case(attack=FGSM(eps=EPS_INF), owner="FGSM"),
    Case(attack=FGSM(eps=EPS_L2, norm="2"), owner="FGSM"),
    Case(attack=PGD(eps=EPS_INF, steps=10), owner="PGD", stochastic=True),
    Case(attack=PGD(eps=EPS_L2, norm="2", steps=10, restarts=2), owner="PGD", stochastic=True),
    Case(attack=APGD(eps=EPS_INF, steps=10), owner="APGD", stochastic=True),
    Case(attack=APGD(eps=EPS_INF, steps=10, loss="dlr"), owner="APGD", stochastic=True),
    Case(attack=APGD(eps=EPS_L2, norm="2", steps=10, restarts=2), owner="APGD", stochastic=True),
    Case(attack=APGDT(eps=EPS_INF, steps=8, n_target_classes=3), owner="APGDT", stochastic=True),
    Case(attack=CarliniWagnerL2(steps=20, binary_search_steps=3), owner="CarliniWagnerL2",
         min_norm=True),
    Case(attack=CarliniWagnerL2(eps=EPS_L2, steps=20, binary_search_steps=3, initial_const=1.0),
         owner="CarliniWagnerL2", min_norm=True),
    Case(attack=DeepFool(steps=10), owner="DeepFool", min_norm=True, supports_targeted=False,
         rejects_target=True),
    Case(attack=DeepFool(norm="inf", eps=EPS_INF, steps=10), owner="DeepFool", min_norm=True,
         supports_targeted=False, rejects_target=True),
    Case(attack=Ensemble(members=(APGD(eps=EPS_INF, steps=8), APGDT(eps=EPS_INF, steps=5,
                                                                    n_target_classes=2))),
         owner="Ensemble", stochastic=True),
    Case(attack=Ensemble(members=(FGSM(eps=EPS_L2, norm="2"), DeepFool(steps=10))),
         owner="Ensemble", supports_targeted=False, rejects_target=True),
    Case(attack=Square(eps=EPS_INF, max_queries=300), owner="Square", stochastic=True),
    Case(attack=Square(eps=EPS_L2, norm="2", max_queries=300), owner="Square", stochastic=True),
    Case(attack=SimBA(eps_step=0.2, eps=EPS_L2, max_queries=300), owner="SimBA", stochastic=True),
    # Targeted HopSkipJump needs x_init rows already at the target; its targeted contract lives
    # in test_blackbox_contract.py.
    Case(attack=HopSkipJump(max_queries=300), owner="HopSkipJump", stochastic=True, min_norm=True,
         supports_targeted=False),
)

# Meta-attacks whose contract is checked in test_blackbox_contract.py (a Transfer attack's
# surrogate is tied to one input shape, so it cannot run on every fixture here).
EXEMPT: frozenset[type] = frozenset({Transfer})


def blobs(
    n: int, n_classes: int, dim: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """n points in [0, 1]^dim from n_classes Gaussian blobs, with their labels."""
    centers = 0.2 + 0.6 * torch.rand(n_classes, dim, generator=generator)
    y = torch.arange(n) % n_classes
    x = centers[y] + 0.08 * torch.randn(n, dim, generator=generator)
    return x.clamp(0.0, 1.0), y


def train_mlp(
    x: torch.Tensor, y: torch.Tensor, n_out: int, generator: torch.Generator, epochs: int = 150
) -> nn.Module:
    """A small MLP fitted full-batch with Adam (well under a second); returned in train mode."""
    net = nn.Sequential(nn.Linear(x.shape[1], 32), nn.ReLU(), nn.Linear(32, n_out))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (1.0 / p.shape[-1]) ** 0.5)
    opt = torch.optim.Adam(net.parameters(), lr=3e-2)
    for _ in range(epochs):
        opt.zero_grad()
        out = net(x)
        if n_out == 1:
            loss = nn.functional.binary_cross_entropy_with_logits(out[:, 0], y.float())
        else:
            loss = nn.functional.cross_entropy(out, y)
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return net
