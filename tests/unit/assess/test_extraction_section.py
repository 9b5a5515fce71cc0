"""The model-extraction section and the scenario helpers behind it (pool, query log, PRADA verdict)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelshield.assess import SECTIONS, AssessmentPlan, render_html, run
from modelshield.assess.sections.extraction import (
    ExtractionSection,
    QueryLog,
    build_extraction_attack,
    digits_from_mnist,
    extraction_severity,
    load_pool,
    prada_verdict,
    run_extraction,
)
from modelshield.attacks.extraction import JacobianAugmentation, KnockoffNets
from modelshield.errors import ConfigError, InputError, ModelCapabilityError
from modelshield.models import as_model

Digits = tuple[nn.Module, torch.Tensor, torch.Tensor]


@pytest.mark.parametrize(("fidelity", "chance", "expected"), [
    (0.91, 0.1, "critical"),   # gain (0.91 - 0.1) / 0.9 = 0.9
    (0.80, 0.1, "high"),       # 0.778
    (0.50, 0.1, "medium"),     # 0.444
    (0.60, 0.5, "low"),        # binary: 0.2
    (0.52, 0.5, "none"),       # 0.04
    (1.00, 1.0, "none"),       # a constant victim: nothing to steal
    (float("nan"), 0.1, "none"),
])
def test_severity_is_the_fidelity_gain_over_a_constant_guess(fidelity: float, chance: float,
                                                             expected: str) -> None:
    assert extraction_severity(fidelity, chance) == expected


def test_build_attack_by_name() -> None:
    jac = build_extraction_attack("jacobian", budget=1000, output="labels", epochs=2)
    # 100 seeds doubled 4 times is 1600 >= 1000 > 800 (3 rounds).
    assert isinstance(jac, JacobianAugmentation) and jac.rounds == 4 and jac.seed_size == 100
    assert jac.epochs == 2
    ko = build_extraction_attack("knockoff", budget=500, checkpoints=(100, 500, 250))
    assert isinstance(ko, KnockoffNets) and ko.checkpoints == (100, 250) and ko.epochs == 30
    with pytest.raises(ConfigError, match="'output' must be 'proba'"):
        build_extraction_attack("equation", budget=100, output="labels")
    with pytest.raises(ConfigError, match="'strategy'"):
        build_extraction_attack("jacobian", budget=100, strategy="adaptive")
    with pytest.raises(ConfigError, match="'name'"):
        build_extraction_attack("copycat", budget=100)


def test_digits_from_mnist_fills_the_frame_with_the_ink_box() -> None:
    x = torch.zeros(2, 1, 28, 28)
    x[0, 0, 5:15, 10:20] = 1.0  # a 10x10 ink square: scaled to fill the 32x32 bitmap
    out = digits_from_mnist(x)
    assert out.shape == (2, 1, 8, 8)
    assert torch.equal(out[0], torch.ones(1, 8, 8))
    assert torch.equal(out[1], torch.zeros(1, 8, 8))  # an empty image stays empty
    assert torch.equal(x[0, 0, 5:15, 10:20], torch.ones(10, 10))  # input untouched


def test_load_pool_files_and_noise(tmp_path: Path) -> None:
    noise = load_pool("noise", input_shape=(1, 8, 8), bounds=(-1.0, 1.0), size=40, seed=3)
    assert noise.x.shape == (40, 1, 8, 8) and noise.x.min() >= -1 and noise.x.max() <= 1
    assert noise.relation == "noise" and noise.groups is None
    assert torch.equal(noise.x, load_pool("noise", input_shape=(1, 8, 8), bounds=(-1.0, 1.0), size=40,
                                          seed=3).x)
    raw = np.full((5, 8, 8), 255, dtype=np.uint8)
    np.save(tmp_path / "p.npy", raw)
    pool = load_pool(str(tmp_path / "p.npy"), input_shape=(1, 8, 8))
    assert pool.x.shape == (5, 1, 8, 8) and torch.equal(pool.x, torch.ones(5, 1, 8, 8))  # / 255
    assert pool.kind == "file" and pool.relation == "unknown" and len(pool.sha256) == 64
    np.save(tmp_path / "q.npy", np.zeros((5, 64), dtype=np.float32))
    with pytest.raises(InputError, match=r"input shape \(1, 8, 8\); got \(64,\)"):
        load_pool(str(tmp_path / "q.npy"), input_shape=(1, 8, 8))
    with pytest.raises(InputError, match=r"existing \.npy/\.npz/\.pt file"):
        load_pool(str(tmp_path / "missing.npy"), input_shape=(1, 8, 8))
    np.save(tmp_path / "r.npy", np.full((5, 64), 2.0, dtype=np.float32))
    with pytest.raises(InputError, match="outside bounds"):
        load_pool(str(tmp_path / "r.npy"), input_shape=(64,))


def test_digits_pool_is_same_distribution() -> None:
    pool = load_pool("digits", input_shape=(1, 8, 8), victim_dataset="digits")
    assert pool.relation == "same-distribution" and pool.groups is not None
    assert pool.groups.shape[0] == pool.x.shape[0]


def test_query_log_records_the_stream(digits_mlp: Digits) -> None:
    net, x, _ = digits_mlp
    log = QueryLog(as_model(net))
    out = log(x[:7].numpy())
    log(x[7:10].numpy())
    assert out.shape == (7, 10) and np.allclose(out.sum(1), 1.0, atol=1e-5)
    assert log.queries == 10 and torch.equal(log.x, x[:10])
    with torch.no_grad():
        assert torch.equal(log.labels, net(x[:10]).argmax(1))


def test_prada_flags_a_stream_of_one_repeated_query() -> None:
    # One class, identical rows: every distance is 0 (W := 0 < delta). The test first runs once
    # D holds more than min_queries=100 distances, i.e. at query 102 (query 1 adds no distance).
    x = torch.zeros(150, 4)
    verdict = prada_verdict(x, torch.zeros(150, dtype=torch.long))
    assert verdict["flagged"] and verdict["queries_to_detection"] == 102 and verdict["queries"] == 150
    empty = prada_verdict(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert not empty["flagged"] and empty["queries_to_detection"] is None


def test_run_extraction_top1_is_label_only(digits_mlp: Digits) -> None:
    net, x, y = digits_mlp
    attack = KnockoffNets(budget=60, epochs=2, output="proba")
    with pytest.raises(ModelCapabilityError, match="output='labels'"):
        run_extraction(net, x[:200], attack, eval_data=(x[:50], y[:50]), defence="top1")
    with pytest.raises(ConfigError, match="'defence'"):
        run_extraction(net, x[:200], attack, eval_data=(x[:50], y[:50]), defence="blur")
    labels = KnockoffNets(budget=60, epochs=2, output="labels")
    res = run_extraction(net, x[:200], labels, eval_data=(x[:50], y[:50]), defence="top1")
    assert res.result.queries == 60 == res.stream_queries
    assert res.honest_cost is not None and res.honest_cost["label_agreement"] == 1.0
    assert res.honest_cost["accuracy_after"] == res.honest_cost["accuracy_before"]


def test_extraction_section_through_the_suite(digits_mlp: Digits, monkeypatch: pytest.MonkeyPatch) -> None:
    net, x, y = digits_mlp
    section = ExtractionSection(budgets=(150, 50), epochs=3, pool="noise")
    monkeypatch.setitem(SECTIONS, "extraction", section)
    result = run(net, x, y, plan=AssessmentPlan(sections=("extraction",), n=150),
                 model_info={"name": "digits-mlp"}, data_info={"name": "digits-flat"}, bounds=(0.0, 1.0))
    (s,) = result.sections
    assert s.id == "extraction" and s.title == "Model extraction"
    assert {a["id"] for a in s.atlas} == {"AML.T0024.002", "AML.T0040"}
    runs = s.metrics["runs"]
    assert set(runs) == {"none", "top1", "round", "noise", "reverse_sigmoid"}
    for r in runs.values():
        assert [p["queries"] for p in r["curve"]] == [50, 150] and r["queries"] == 150
    # top1 and reverse sigmoid keep every honest top-1 label by construction.
    assert runs["top1"]["honest_cost"]["label_agreement"] == 1.0
    assert runs["reverse_sigmoid"]["honest_cost"]["label_agreement"] == 1.0
    best = max(runs["none"]["curve"][-1]["fidelity"], runs["top1"]["curve"][-1]["fidelity"])
    assert s.headline["extraction_fidelity"] == pytest.approx(best)
    assert s.severity == extraction_severity(best, s.metrics["chance_fidelity"])
    prada = s.metrics["prada"]
    assert prada["honest client (assessment points)"]["queries"] == 150
    assert all(v["queries"] == 150 for v in prada.values())
    assert s.metrics["pool"]["relation"] == "noise"
    assert "ClientBudget" in s.recommendation and "PRADA" in s.recommendation
    assert len(s.figures) == 1 and len(s.tables) == 3 and s.figures[0].how_to_read
    report = result.to_dict()
    assert report["summary"]["metrics"]["extraction_fidelity"] == s.headline["extraction_fidelity"]
    assert "extraction:knockoff-none" in report["provenance"]["attacks"]
    assert "Model extraction" in render_html(report)


def test_section_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="'budgets'"):
        ExtractionSection(budgets=())
    with pytest.raises(ConfigError, match="'defences'"):
        ExtractionSection(defences=("none",))
    assert ExtractionSection(budgets=(300, 100, 300)).budgets == (100, 300)


def test_digits_section_falls_back_to_the_own_split_without_mnist(tmp_path: Path) -> None:
    from modelshield.assess import AssessmentContext
    from modelshield.data import load_digits

    ds = load_digits()
    lin = nn.Linear(64, 10)
    with torch.no_grad():  # a fixed linear victim (no training needed for the plumbing)
        lin.weight.copy_(torch.linspace(-1, 1, 640).view(10, 64))
        lin.bias.zero_()
    net = nn.Sequential(nn.Flatten(), lin)
    x, y = ds.x_test[:120], ds.y_test[:120]
    ctx = AssessmentContext(model=as_model(net), x=x, y=y, plan=AssessmentPlan(), model_info={"name": "lin"},
                            data_info={"name": "digits"}, bounds=(0.0, 1.0), seed=0, batch_size=120)
    section = ExtractionSection(budgets=(40,), epochs=1, defences=("top1",), jacobian=False,
                                data_root=str(tmp_path))  # an empty folder: no MNIST for mnist-8x8
    s = section(ctx, None)
    assert s.metrics["pool"]["name"] == "digits" and s.metrics["pool"]["relation"] == "same-distribution"
    assert len(s.warnings) == 1 and "mnist-8x8" in s.warnings[0]
    assert set(s.metrics["runs"]) == {"none", "top1"}
    assert set(s.metrics["prada"]) == {"knockoff, probabilities (no defence)",
                                       "honest client (assessment points)"}
