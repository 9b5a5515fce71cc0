"""Registry names of the query-only attacks: square, simba, hsj and their query budget."""

from __future__ import annotations

import pytest

from modelshield.attacks.evasion import HopSkipJump, SimBA, Square
from modelshield.attacks.evasion.registry import BLACK_BOX_ATTACKS, DEFAULT_MAX_QUERIES, build_attack
from modelshield.errors import ConfigError


def test_black_box_names_build_their_attacks_with_the_budget() -> None:
    assert sorted(BLACK_BOX_ATTACKS) == ["hsj", "simba", "square"]
    sq = build_attack("square", eps=0.3, seed=4, max_queries=250)
    assert isinstance(sq, Square) and (sq.eps, sq.max_queries, sq.seed, sq.norm) == (0.3, 250, 4, "inf")
    assert build_attack("square", eps=0.3).max_queries == DEFAULT_MAX_QUERIES  # type: ignore[attr-defined]
    simba = build_attack("simba", eps=0.05, max_queries=100)
    assert isinstance(simba, SimBA) and simba.eps_step == 0.05 and simba.eps == 0.05
    simba2 = build_attack("simba", eps=1.5, norm="2")
    assert isinstance(simba2, SimBA) and simba2.eps_step == 0.2
    hsj = build_attack("hsj", eps=1.0, norm="2", steps=7, max_queries=400)
    assert isinstance(hsj, HopSkipJump) and (hsj.steps, hsj.max_queries, hsj.eps) == (7, 400, 1.0)
    assert build_attack("square", eps=0.1, steps=99).max_queries == DEFAULT_MAX_QUERIES  # type: ignore[attr-defined]


def test_budget_errors() -> None:
    with pytest.raises(ConfigError, match=r"build_attack: 'max_queries' must be an int in \[1, inf\]; got 0"):
        build_attack("square", eps=0.1, max_queries=0)
    with pytest.raises(ConfigError, match="'max_queries' must be None for the white-box attack 'pgd'"):
        build_attack("pgd", eps=0.1, max_queries=10)
