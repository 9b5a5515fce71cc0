"""Bad ExplainPlan values (the "explain" report section's settings): one clear ConfigError line each."""

from __future__ import annotations

from typing import Any

import pytest

from modelshield.assess.plan import ExplainPlan
from modelshield.errors import ConfigError


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"method": "gradcam"}, "method"),
    ({"method": ""}, "method"),
    ({"attack": "nope"}, "attack"),
    ({"eps": 0.0}, "eps"),
    ({"eps": -0.1}, "eps"),
    ({"eps": float("nan")}, "eps"),
    ({"attack_steps": 0}, "attack_steps"),
    ({"n": 0}, "n"),
    ({"n": 2.5}, "n"),
    ({"worst": -1}, "worst"),
    ({"ig_steps": 0}, "ig_steps"),
    ({"sanity_points": 0}, "sanity_points"),
    ({"sanity_layers": True}, "sanity_layers"),
    ({"sanity_threshold": 0.0}, "sanity_threshold"),
    ({"sanity_threshold": 1.5}, "sanity_threshold"),
    ({"sanity_threshold": "high"}, "sanity_threshold"),
])
def test_bad_value_is_one_clear_line(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ExplainPlan(**kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("ExplainPlan") and f"'{field}'" in msg
    assert repr(next(iter(kwargs.values())))[:6] in msg or str(next(iter(kwargs.values()))) in msg


def test_good_values_are_kept() -> None:
    plan = ExplainPlan(method="integrated-gradients", eps=1, n=8, sanity_threshold=1)
    assert plan.eps == 1.0 and isinstance(plan.eps, float) and plan.sanity_threshold == 1.0
    assert plan.to_dict()["method"] == "integrated-gradients"
