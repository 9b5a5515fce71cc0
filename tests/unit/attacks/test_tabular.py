"""Constraint specs and constraint-respecting tabular evasion (TabularSearch, TabularPGD)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelshield.attacks.evasion.tabular import (
    ConstraintSpec,
    FeatureConstraint,
    Relation,
    TabularPGD,
    TabularSearch,
    count_changes,
)
from modelshield.errors import ConfigError, DataError, ModelCapabilityError
from modelshield.models import as_model

IMMUTABLE = {
    "Domain_registeration_length", "age_of_domain", "DNSRecord", "web_traffic", "Page_Rank",
    "Google_Index", "Links_pointing_to_page", "Statistical_report",
}


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phishing():  # type: ignore[no-untyped-def]
    from modelshield.data.phishing import PHISHING_CONSTRAINTS, load_phishing

    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "phishing-websites").is_dir():
        pytest.skip("phishing data not found; set MODELSHIELD_DATA")
    ds = load_phishing(root)
    spec = ConstraintSpec.from_yaml(PHISHING_CONSTRAINTS, feature_names=ds.feature_names)
    return ds, spec


@pytest.fixture(scope="module")
def phishing_models(phishing):  # type: ignore[no-untyped-def]
    from modelshield.zoo.phishing import train_phishing_model

    ds, _ = phishing
    return {kind: train_phishing_model(kind, ds) for kind in ("logreg", "rf")}


def linear3() -> nn.Linear:
    """Binary linear model on 3 features in {-1, 1}: benign logit minus malicious logit is
    2*x0 + 1*x1 + 1*x2 - 0.5 (class 0 = benign wins when positive)."""
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
        lin.bias.copy_(torch.tensor([-0.5, 0.0]))
    return lin


def spec3(**overrides: dict[str, object]) -> ConstraintSpec:
    feats = {n: {"values": [-1, 1], "integer": True} for n in ("a", "b", "c")}
    for k, v in overrides.items():
        feats[k].update(v)
    return ConstraintSpec.from_dict({"features": feats})


# ---------------------------------------------------------------------------------------------
# ConstraintSpec
# ---------------------------------------------------------------------------------------------


def test_shipped_phishing_spec(phishing) -> None:  # type: ignore[no-untyped-def]
    ds, spec = phishing
    assert spec.feature_names == ds.feature_names
    assert {f.name for f in spec.features if not f.mutable} == IMMUTABLE
    assert spec["SSLfinal_State"].reachable == (-1.0, 0.0)
    assert spec["Redirect"].values == (0.0, 1.0)
    assert all(f.note for f in spec.features)
    spec.validate_data(ds.x_train)
    spec.validate_data(ds.x_test)
    assert spec.bounds == (-1.0, 1.0)


def test_infer_from_data() -> None:
    x = torch.tensor([[0.0, 1.5, 3.0], [1.0, 2.5, 7.0], [1.0, 0.5, 5.0]])
    cont = torch.linspace(0, 1, 3)
    x = torch.cat([x, cont[:, None]], 1)
    spec = ConstraintSpec.infer(x, ["bin", "half", "int", "cont"], max_categories=2)
    assert spec["bin"].values == (0.0, 1.0) and spec["bin"].integer
    assert spec["half"].values is None and not spec["half"].integer
    assert (spec["half"].min, spec["half"].max) == (0.5, 2.5)
    assert spec["int"].values is None and spec["int"].integer and spec["int"].max == 7.0
    assert all(f.mutable and f.direction == "any" for f in spec.features)
    assert bool(spec.check(x, x).all())


def test_check_and_violations_point_by_point() -> None:
    spec = ConstraintSpec.from_dict({
        "features": {
            "imm": {"values": [0, 1], "mutable": False},
            "up": {"values": [0, 1, 2], "direction": "increase"},
            "ssl": {"values": [-1, 0, 1], "reachable": [-1, 0]},
            "g1": {"values": [0, 1]},
            "g2": {"values": [0, 1]},
        },
        "groups": [["g1", "g2"]],
        "relations": ["if imm == 1 then up >= 1"],
    })
    clean = torch.tensor([[0.0, 1.0, -1.0, 1.0, 0.0]]).repeat(6, 1)
    adv = clean.clone()
    adv[1, 0] = 1.0           # immutable changed
    adv[2, 1] = 0.0           # decreased an increase-only feature
    adv[3, 2] = 1.0           # reached an unreachable value
    adv[4, 3:] = 1.0          # one-hot group with two ones
    adv[5, 1] = 0.5           # not an allowed value
    ok = spec.check(clean, adv)
    assert ok.tolist() == [True, False, False, False, False, False]
    text = "\n".join(spec.violations(clean, adv))
    for needle in ("row 1: feature 'imm' is immutable", "row 2: feature 'up' may only increase",
                   "row 3: feature 'ssl' changed from -1 to 1, which is not reachable",
                   "row 4: one-hot group ['g1', 'g2']", "row 5: feature 'up' value 0.5 is not in"):
        assert needle in text
    # The relation fails on a row where imm == 1 and up == 0.
    rel = torch.tensor([[1.0, 0.0, -1.0, 1.0, 0.0]])
    assert not bool(spec.check(rel, rel)[0])
    assert "relation 'if imm == 1 then up >= 1' does not hold" in spec.violations(rel, rel)[0]
    assert spec.violations(clean, clean) == []


def test_validate_data_names_feature_value_row() -> None:
    spec = spec3()
    x = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    with pytest.raises(DataError, match=r"feature 'b' must be in the allowed set \[-1, 1\]; got 0 in row 2"):
        spec.validate_data(x)


def test_repair_snaps_to_nearest_valid_row() -> None:
    spec = ConstraintSpec.from_dict({
        "features": {
            "imm": {"values": [-1, 1], "mutable": False},
            "up": {"values": [-1, 0, 1], "direction": "increase"},
            "ssl": {"values": [-1, 0, 1], "reachable": [-1, 0]},
            "free": {"values": [-1, 1]},
        }
    })
    clean = torch.tensor([[-1.0, 0.0, -1.0, -1.0]])
    cand = torch.tensor([[0.9, -0.8, 0.9, 0.2]])
    out = spec.repair(clean, cand)
    # imm restored, up cannot go down (stays 0), ssl may only reach 0, free rounds to 1.
    assert out.tolist() == [[-1.0, 0.0, 0.0, 1.0]]
    assert bool(spec.check(clean, out).all())
    # A tie (0.0 is equally far from -1 and 1) goes to the clean value.
    assert spec.repair(clean, torch.tensor([[-1.0, 0.0, -1.0, 0.0]])).tolist() == clean.tolist()
    # max_changes keeps the highest-priority changes only.
    prio = torch.tensor([[0.0, 0.0, 5.0, 1.0]])
    top1 = spec.repair(clean, cand, max_changes=1, priority=prio)
    assert top1.tolist() == [[-1.0, 0.0, 0.0, -1.0]]
    assert not torch.equal(cand, out)  # inputs untouched, a new tensor


def test_one_hot_group_repair_and_relations() -> None:
    spec = ConstraintSpec.from_dict({
        "features": {"g1": {"values": [0, 1]}, "g2": {"values": [0, 1]}, "g3": {"values": [0, 1]}},
        "groups": [["g1", "g2", "g3"]],
    })
    clean = torch.tensor([[1.0, 0.0, 0.0]])
    out = spec.repair(clean, torch.tensor([[0.3, 0.2, 0.9]]))
    assert out.tolist() == [[0.0, 0.0, 1.0]]
    rel = Relation(name="g1 off", fn=lambda x: x[:, 0] < 0.5)
    spec2 = ConstraintSpec(features=spec.features, groups=spec.groups, relations=(rel,))
    assert spec2.repair(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.9, 0.1, 0.0]])).tolist() == [
        [0.0, 1.0, 0.0]]  # the only repair breaks the relation: the clean row is returned


def test_yaml_and_json_round_trip(tmp_path: Path, phishing) -> None:  # type: ignore[no-untyped-def]
    ds, spec = phishing
    spec = spec.update({"URL_Length": {"direction": "decrease"}})
    spec = ConstraintSpec.from_dict(
        {**spec.to_dict(),
         "relations": [{"name": "ip-len", "expr": "if having_IP_Address == 1 then URL_Length >= 0"}]}
    )
    back = ConstraintSpec.from_yaml(Path(spec.to_yaml(tmp_path / "s.yaml") and tmp_path / "s.yaml"))
    assert back.to_dict() == spec.to_dict() and back.features == spec.features
    back_json = ConstraintSpec.from_json(Path(spec.to_json(tmp_path / "s.json") and tmp_path / "s.json"))
    assert back_json.to_dict() == spec.to_dict()
    assert json.loads(spec.to_json())["features"]["URL_Length"]["direction"] == "decrease"
    row = ds.x_test[:1].clone()
    row[0, 0], row[0, 1] = 1.0, -1.0
    assert back.check(row, row).item() is False  # the parsed relation is live
    rel = Relation(name="f", fn=lambda x: x[:, 0] > 0)
    callable_rel = ConstraintSpec(features=spec.features, relations=(rel,))
    with pytest.raises(ConfigError, match="relation 'f' is a Python callable"):
        callable_rel.to_dict()


def test_spec_errors_name_the_problem() -> None:
    names = ["having_IP_Address", "URL_Length"]
    msg = r"unknown 'URL_Lenght' \(did you mean 'URL_Length'\?\).*Valid names"
    with pytest.raises(ConfigError, match=msg):
        ConstraintSpec.from_dict({"features": {"URL_Lenght": {"values": [-1, 1]}}}, feature_names=names)
    with pytest.raises(ConfigError, match="every data column must have a constraint"):
        ConstraintSpec.from_dict({"features": {"URL_Length": {"values": [-1, 1]}}}, feature_names=names)
    with pytest.raises(ConfigError, match=r"'mutabel' \(did you mean 'mutable'\?\)"):
        ConstraintSpec.from_dict({"features": {"a": {"mutabel": False}}})
    with pytest.raises(ConfigError, match="'direction' must be one of"):
        FeatureConstraint(name="a", direction="up")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'reachable' must be a subset"):
        FeatureConstraint(name="a", values=(-1, 1), reachable=(0,))
    with pytest.raises(ConfigError, match="did you mean 'URL_Length'"):
        Relation.parse("URL_length >= 0", names)
    with pytest.raises(ConfigError, match="did you mean 'URL_Length'"):
        ConstraintSpec.from_dict({"features": {"URL_Length": {}}}).update({"URL_length": {"mutable": False}})
    with pytest.raises(ConfigError, match="one-hot group member 'a' must have values"):
        ConstraintSpec.from_dict({"features": {"a": {"values": [-1, 1]}, "b": {"values": [0, 1]}},
                                  "groups": [["a", "b"]]})


# ---------------------------------------------------------------------------------------------
# Attacks on an analytic model (hand-derivable answers)
# ---------------------------------------------------------------------------------------------


def test_search_on_linear_model_finds_the_minimal_change() -> None:
    model = as_model(linear3(), bounds=(-1.0, 1.0))
    x = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([1, 1, 0])
    # Row 0: margin -4.5; flipping a gives -0.5, flipping b or c gives -2.5: one change cannot
    # win, two can (a + b: +1.5). Row 1: margin -0.5 -> flip a: +3.5. Row 2 is benign.
    res1 = TabularSearch(max_changes=1)(model, x, y, constraints=spec3())
    assert res1.success.tolist() == [False, True, False]
    assert res1.x_adv[1].tolist() == [1.0, 1.0, 1.0]
    res2 = TabularSearch(max_changes=2)(model, x, y, constraints=spec3())
    assert res2.success.tolist() == [True, True, False]
    assert res2.x_adv[0].tolist() == [1.0, 1.0, -1.0]  # greedy: a first (best margin), then b
    assert count_changes(x, res2.x_adv).tolist() == [2, 1, 0]
    assert res2.extra["success_rate_malicious"] == 1.0 and res2.extra["recall_after"] == 0.0
    # With a immutable: row 1 already has b = c = 1 and row 0 reaches at most -0.5: no flip.
    res3 = TabularSearch(max_changes=3)(model, x, y, constraints=spec3(a={"mutable": False}))
    assert res3.success.tolist() == [False, False, False]
    assert torch.equal(res3.x_adv, x)


def test_pgd_on_linear_model_respects_budget_and_immutables() -> None:
    model = as_model(linear3(), bounds=(-1.0, 1.0))
    x = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([1, 1, 0])
    res = TabularPGD(max_changes=2, steps=20)(model, x, y, constraints=spec3())
    assert res.success.tolist() == [True, True, False]
    assert count_changes(x, res.x_adv).max() <= 2
    # The top-2 features by gradient magnitude are a (2) and one of b, c.
    assert res.x_adv[0, 0].item() == 1.0
    res1 = TabularPGD(max_changes=1, steps=20)(model, x, y, constraints=spec3())
    assert res1.success.tolist() == [False, True, False]
    assert torch.equal(res1.x_adv[0], x[0])
    with pytest.raises(ModelCapabilityError, match="needs gradients"):
        TabularPGD()(as_model(lambda a: np.full((len(a), 2), 0.5), bounds=(-1.0, 1.0), n_classes=2),
                     x, y, constraints=spec3())


# ---------------------------------------------------------------------------------------------
# Attacks on phishing models
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["logreg", "rf"])
@pytest.mark.parametrize("max_changes", [1, 2])
def test_search_on_phishing_models(phishing, phishing_models, kind: str, max_changes: int) -> None:  # type: ignore[no-untyped-def]
    ds, spec = phishing
    est = phishing_models[kind]
    x, y = ds.x_test[:400], ds.y_test[:400]
    x_copy = x.clone()
    sizes: list[int] = []

    def proba(a: np.ndarray) -> np.ndarray:
        sizes.append(len(a))
        return np.asarray(est.predict_proba(a))

    model = as_model(proba, bounds=ds.bounds, n_classes=2)
    res = TabularSearch(max_changes=max_changes)(model, x, y, constraints=spec)
    assert torch.equal(x, x_copy)
    assert bool(spec.check(x, res.x_adv).all()) and spec.violations(x, res.x_adv) == []
    imm = [ds.feature_names.index(n) for n in IMMUTABLE]
    assert torch.equal(res.x_adv[:, imm], x[:, imm])
    assert torch.equal(res.x_adv[y == 0], x[y == 0])  # benign rows untouched
    assert not bool(res.success[y == 0].any())
    assert int(count_changes(x, res.x_adv).max()) <= max_changes
    # Query accounting: the result's count is exactly what the model itself saw.
    assert res.queries_forward == sum(sizes) == model.queries.forward
    # Success re-checked with an independent query of the estimator.
    succ = res.success.numpy()
    assert succ.any()
    assert (est.predict(res.x_adv.numpy()[succ]) == 0).all()
    assert (est.predict(x.numpy()[succ]) == 1).all()
    mal = (y == 1).numpy()
    after = float((est.predict(res.x_adv.numpy()[mal]) == 1).mean())
    assert res.extra["recall_after"] == pytest.approx(after, abs=1e-6)
    before = float((est.predict(x.numpy()[mal]) == 1).mean())
    assert res.extra["recall_before"] == pytest.approx(before, abs=1e-6)
    assert res.attack_success_rate == pytest.approx(res.extra["success_rate_malicious"])
    assert res.extra["spec_violations"] == 0


def test_search_monotone_in_budget_and_beam_and_query_cap(phishing, phishing_models) -> None:  # type: ignore[no-untyped-def]
    ds, spec = phishing
    est = phishing_models["rf"]
    x, y = ds.x_test[:300], ds.y_test[:300]
    model = as_model(est, bounds=ds.bounds)
    rates = [TabularSearch(max_changes=k)(model, x, y, constraints=spec).extra["success_rate_malicious"]
             for k in (1, 2)]
    assert rates[0] <= rates[1]
    beam = TabularSearch(max_changes=2, beam_width=3)(est, x, y, constraints=spec)  # raw estimator
    assert bool(spec.check(x, beam.x_adv).all()) and int(count_changes(x, beam.x_adv).max()) <= 2
    capped = TabularSearch(max_changes=3, max_queries=10)(model, x, y, constraints=spec)
    assert capped.point_queries is not None
    assert int(capped.point_queries.max()) <= 10
    assert bool(spec.check(x, capped.x_adv).all())


def test_pgd_on_phishing_mlp(phishing) -> None:  # type: ignore[no-untyped-def]
    ds, spec = phishing
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        for idx in torch.split(torch.randperm(len(ds.y_train), generator=gen), 512):
            opt.zero_grad()
            nn.functional.cross_entropy(net(ds.x_train[idx]), ds.y_train[idx]).backward()  # type: ignore[no-untyped-call]  # torch stub
            opt.step()
    net.eval()
    x, y = ds.x_test[:300], ds.y_test[:300]
    model = as_model(net, bounds=ds.bounds)
    res = TabularPGD(max_changes=2, steps=12)(model, x, y, constraints=spec)
    assert bool(spec.check(x, res.x_adv).all())
    assert int(count_changes(x, res.x_adv).max()) <= 2
    assert torch.equal(res.x_adv[y == 0], x[y == 0])
    with torch.no_grad():
        assert (net(res.x_adv[res.success]).argmax(1) == 0).all()
    search = TabularSearch(max_changes=2)(model, x, y, constraints=spec)  # torch models via scores
    assert bool(spec.check(x, search.x_adv).all()) and search.extra["successes"] > 0


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_config_and_capability_errors() -> None:
    with pytest.raises(ConfigError, match="'max_changes' must be an int in \\[1, inf\\]; got 0"):
        TabularSearch(max_changes=0)
    with pytest.raises(ConfigError, match="'max_queries' must be an int in \\[1, inf\\]; got 0"):
        TabularSearch(max_queries=0)
    with pytest.raises(ConfigError, match="'max_changes'"):
        TabularPGD(max_changes=0)
    x = torch.tensor([[-1.0, 1.0, 1.0], [1.0, -1.0, -1.0]])
    y = torch.tensor([1, 1])
    labels = as_model(lambda a: np.ones(len(a), dtype=np.int64), bounds=(-1.0, 1.0), n_classes=2,
                      output="labels")
    with pytest.raises(ModelCapabilityError, match="label-only model"):
        TabularSearch()(labels, x, y, constraints=spec3())
    auto = as_model(lambda a: np.ones(len(a), dtype=np.int64), bounds=(-1.0, 1.0), n_classes=2)
    with pytest.raises(ModelCapabilityError, match="labels"):
        TabularSearch()(auto, x, y, constraints=spec3())
    with pytest.raises(ConfigError, match="'constraints' must be a ConstraintSpec"):
        TabularSearch()(linear3(), x, y, constraints={"features": {}})  # type: ignore[arg-type]
    bad = x.clone()
    bad[1, 2] = 0.0
    with pytest.raises(DataError, match=r"feature 'c' must be in the allowed set .*got 0 in row 1"):
        TabularSearch()(as_model(linear3(), bounds=(-1.0, 1.0)), bad, y, constraints=spec3())
