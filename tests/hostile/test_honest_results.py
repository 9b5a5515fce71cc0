"""Hostile models must not get invented successes (issue #15, item 4).

NaN-emitting, noisy and batch-dependent models; text models in image-only sections; the eps=0
shortcut with a model left in train mode; merged per-member statistics; a head registered
first; inputs of the wrong dtype or shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from modelshield.assess._batched import run_in_batches
from modelshield.assess._section import AssessmentContext
from modelshield.assess.plan import AssessmentPlan, BlackBoxPlan
from modelshield.assess.sections.blackbox import BlackBoxSection
from modelshield.assess.sections.extraction import ExtractionSection
from modelshield.attacks.evasion import FGSM, PGD, Ensemble, Square
from modelshield.attacks.results import EvasionResult
from modelshield.errors import EvaluationWarning, InputError
from modelshield.models import CallableModel, as_model

N = 120
ATTACKS = {
    "fgsm": FGSM(eps=0.15),
    "pgd": PGD(eps=0.15, steps=10),
    "square": Square(eps=0.15, max_queries=200),
}


class _NaNOffGrid(nn.Module):
    """Logits of a trained net, NaN for any input off the 1/16 grid of the digits data."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        z = self.net(x)
        on_grid = ((x * 16 - (x * 16).round()).abs() < 1e-4).flatten(1).all(1)
        return torch.where(on_grid[:, None], z, torch.full_like(z, float("nan")))


class _Noisy(nn.Module):
    """Logits plus Gaussian noise large enough to flip decisions (its own seeded generator)."""

    def __init__(self, net: nn.Module, std: float) -> None:
        super().__init__()
        self.net, self.std = net, std
        self.gen = torch.Generator().manual_seed(123)

    def forward(self, x: Tensor) -> Tensor:
        z = self.net(x)
        return z + self.std * torch.randn(z.shape, generator=self.gen)


class _BatchCentred(nn.Module):
    """Subtracts most of the batch-mean logits: answers depend on the other inputs of the batch."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        z = self.net(x)
        return z - 0.9 * z.mean(0, keepdim=True)


def _majority(module: nn.Module, x: Tensor, *, k: int, rowwise: bool = False) -> tuple[Tensor, Tensor]:
    """(labels, broken-able mask): majority label over k queries and whether it was finite."""
    votes = []
    finite = torch.ones(x.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for _ in range(k):
            z = torch.cat([module(x[i:i + 1]) for i in range(x.shape[0])]) if rowwise else module(x)
            ok = torch.isfinite(z).all(1)
            finite &= ok
            votes.append(torch.where(ok, z.nan_to_num(nan=-torch.inf).argmax(1), -1))
    return torch.stack(votes).mode(0).values, finite


def _reference_robust_accuracy(module: nn.Module, res: EvasionResult, x: Tensor, y: Tensor, *,
                               k: int, rowwise: bool = False) -> float:
    """Robust accuracy from a majority vote on the clean and returned inputs (NaN: not broken)."""
    clean, _ = _majority(module, x, k=k, rowwise=rowwise)
    adv, finite = _majority(module, res.x_adv, k=k, rowwise=rowwise)
    broken = finite & (adv != y)
    return float(((clean == y) & ~broken).double().mean())


def _data(digits_mlp: Any) -> tuple[nn.Module, Tensor, Tensor]:
    net, x, y = digits_mlp
    return net, x[:N], y[:N]


@pytest.mark.parametrize("name", list(ATTACKS))
def test_nan_outputs_are_model_errors_not_successes(name: str, digits_mlp: Any) -> None:
    net, x, y = _data(digits_mlp)
    hostile = _NaNOffGrid(net).eval()
    with pytest.warns(EvaluationWarning, match="NaN or inf"):
        res = ATTACKS[name](hostile, x, y)
    assert res.n_model_errors > 0 and res.to_dict()["model_errors"] == res.n_model_errors
    assert not (res.success & res.model_errors).any()  # type: ignore[operator]
    ref = _reference_robust_accuracy(hostile, res, x, y, k=1)
    assert abs(res.robust_accuracy - ref) <= 0.02
    assert res.robust_accuracy > 0.5  # the NaN model is not "critical" by invented successes


def test_nan_outputs_behave_the_same_behind_a_callable(digits_mlp: Any) -> None:
    net, x, y = _data(digits_mlp)
    hostile = _NaNOffGrid(net).eval()

    def proba(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(hostile(torch.from_numpy(a)), 1).numpy()

    with pytest.warns(EvaluationWarning, match="NaN or inf"):
        res = Square(eps=0.15, max_queries=200)(as_model(proba, n_classes=10), x, y)
    assert res.n_model_errors > 0
    assert abs(res.robust_accuracy - _reference_robust_accuracy(hostile, res, x, y, k=1)) <= 0.02


@pytest.mark.parametrize("name", list(ATTACKS))
def test_noisy_model_successes_hold_under_a_majority_vote(name: str, digits_mlp: Any) -> None:
    net, x, y = digits_mlp  # all ~400 test points: a vote on a near-tie is a coin flip either way
    hostile = _Noisy(net, std=3.0)
    with pytest.warns(EvaluationWarning, match="answered the same inputs differently"):
        res = ATTACKS[name](hostile, x, y)
    assert res.extra["stochastic"] is True and res.extra["nondeterminism"] == "random"
    assert res.extra["votes"] >= 5 and res.to_dict()["stochastic"] is True
    # The reference votes 1,001 times: PGD stops on the boundary, where a 101-vote reference is
    # itself up to 2.5 points from the 1,001-vote one (attack seeds 0-5); against it the verified
    # result stayed within 1.0 point over those seeds (a single unvoted query misses by 12-16).
    ref = _reference_robust_accuracy(hostile, res, x, y, k=1001)
    assert abs(res.robust_accuracy - ref) <= 0.02


@pytest.mark.parametrize("name", list(ATTACKS))
def test_batch_dependent_model_is_verified_one_input_at_a_time(name: str, digits_mlp: Any) -> None:
    net, x, y = _data(digits_mlp)
    hostile = _BatchCentred(net).eval()
    with pytest.warns(EvaluationWarning, match="batch composition"):
        res = ATTACKS[name](hostile, x, y)
    assert res.extra["nondeterminism"] == "batch"
    ref = _reference_robust_accuracy(hostile, res, x, y, k=1, rowwise=True)
    assert abs(res.robust_accuracy - ref) <= 0.02


class _NoisyOffGrid(nn.Module):
    """Deterministic on the digits' 1/16 grid (every clean input), noisy logits anywhere else:
    randomness that only perturbed inputs trigger, which a check of the clean batch cannot see."""

    def __init__(self, net: nn.Module, std: float) -> None:
        super().__init__()
        self.net, self.std = net, std
        self.gen = torch.Generator().manual_seed(7)

    def forward(self, x: Tensor) -> Tensor:
        z = self.net(x)
        on_grid = ((x * 16 - (x * 16).round()).abs() < 1e-4).flatten(1).all(1)
        noise = self.std * torch.randn(z.shape, generator=self.gen)
        return torch.where(on_grid[:, None], z, z + noise)


@pytest.mark.parametrize("name", ["pgd", "square"])
def test_randomness_only_off_the_clean_inputs_is_caught(name: str, digits_mlp: Any) -> None:
    net, x, y = digits_mlp
    hostile = _NoisyOffGrid(net, std=3.0)
    with pytest.warns(EvaluationWarning, match="answered the same inputs differently"):
        res = ATTACKS[name](hostile, x, y)
    assert res.extra["nondeterminism"] == "random"
    ref = _reference_robust_accuracy(hostile, res, x, y, k=1001)
    assert abs(res.robust_accuracy - ref) <= 0.02


def test_eps0_shortcut_runs_the_model_in_eval_mode(digits_mlp: Any) -> None:
    net, x, y = _data(digits_mlp)
    dropout = nn.Sequential(nn.Dropout(0.5), net)
    with torch.no_grad():
        eval_acc = float((net(x).argmax(1) == y).double().mean())
    dropout.train()  # left in train mode by the user
    res = run_in_batches(PGD(eps=0.0), dropout, x, y, batch_size=50)
    assert res.clean_accuracy == pytest.approx(eval_acc)
    assert res.robust_accuracy == pytest.approx(eval_acc)
    assert dropout.training and dropout[0].training  # flags restored


def test_concat_merges_per_member_statistics(digits_mlp: Any) -> None:
    net, x, y = _data(digits_mlp)
    ens = Ensemble(members=(FGSM(eps=0.1), PGD(eps=0.1, steps=5)))
    parts = [ens(net, x[:60], y[:60]), ens(net, x[60:], y[60:])]
    merged = EvasionResult.concat(parts)
    for i, member in enumerate(merged.extra["members"]):
        for key in ("attacked", "broken", "queries_forward", "queries_backward"):
            assert member[key] == sum(p.extra["members"][i][key] for p in parts), key
        assert member["attack"] == parts[0].extra["members"][i]["attack"]
    batched = run_in_batches(ens, net, x, y, batch_size=60)
    assert batched.extra["members"][0]["attacked"] == merged.extra["members"][0]["attacked"]


class _HeadFirst(nn.Module):
    """A valid classifier whose output layer is registered before the body."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.head = nn.Linear(32, 10)
        self.body = nn.Linear(64, 32)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.body(x)))


def test_head_registered_first_is_probed_not_guessed(digits_mlp: Any) -> None:
    _, x, y = _data(digits_mlp)
    model = _HeadFirst()
    res = FGSM(eps=0.1)(model, x, y)
    with torch.no_grad():
        assert torch.equal(res.adv_pred, model(res.x_adv).argmax(1))
    m = as_model(model)
    PGD(eps=0.1, steps=2)(m, x[:5], y[:5])
    assert m.n_classes == 10


def test_float64_inputs_get_one_clear_error(digits_mlp: Any) -> None:
    net, x, y = _data(digits_mlp)
    with pytest.raises(InputError, match=r"PGD: x must have the model's dtype torch\.float32; got dtype "
                                         r"torch\.float64\. Convert the inputs with x\.to"):
        PGD(eps=0.1)(net, x.double(), y)
    with pytest.raises(InputError, match=r"float16"):
        FGSM(eps=0.1)(net, x.half(), y)


def test_wrong_input_shape_gets_one_clear_error(digits_mlp: Any) -> None:
    net, x, y = _data(digits_mlp)
    with pytest.raises(InputError, match=r"FGSM: x must have the input shape the model expects; got x "
                                         r"of shape \(120, 8, 8\)"):
        FGSM(eps=0.1)(net, x.view(-1, 8, 8), y)


def _text_context(plan: AssessmentPlan) -> AssessmentContext:
    """A text model as the CLI builds it: a black box over (N, 1) row indices into messages."""
    texts = [f"message {i} win cash" if i % 3 else f"hello {i}" for i in range(40)]
    y = torch.tensor([int(i % 3 != 0) for i in range(40)])

    def over_rows(rows: np.ndarray) -> np.ndarray:
        spam = np.array([float("win" in texts[round(float(r))]) for r in rows[:, 0]])
        return np.stack([1 - spam, spam], 1) * 0.9 + 0.05

    model = CallableModel(over_rows, bounds=(0.0, 39.0), output="proba", n_classes=2)
    return AssessmentContext(
        model=model, x=torch.arange(40, dtype=torch.float32).unsqueeze(1), y=y, plan=plan,
        model_info={"name": "spam-nb", "modality": "text", "kind": "sklearn"},
        data_info={"name": "sms-spam", "points": "row indices into the test split"},
        bounds=(0.0, 39.0), seed=0, batch_size=40,
    )


@pytest.mark.parametrize("runner", [BlackBoxSection(), ExtractionSection(budgets=(50,), epochs=1)],
                         ids=["blackbox", "extraction"])
def test_text_models_skip_blackbox_and_extraction(runner: Any) -> None:
    plan = AssessmentPlan(sections=("blackbox",), blackbox=BlackBoxPlan(n=20, budgets=(10, 50)))
    ctx = _text_context(plan)
    section = runner(ctx, None)
    assert section.severity == "none"
    assert section.metrics["skipped"] is True
    assert "text" in section.metrics["reason"] and "text" in section.summary
    assert not section.headline and not section.tables and not section.figures
    assert ctx.model.queries.forward == 0  # nothing was attacked


def test_report_says_nan_answers_were_model_errors(digits_mlp: Any) -> None:
    from modelshield.assess import run
    from modelshield.assess.plan import EvasionPlan

    net, x, y = _data(digits_mlp)
    plan = AssessmentPlan(sections=("evasion",), n=60, batch_size=60,
                          evasion=EvasionPlan(attacks=("fgsm", "pgd"), eps=(0.1,), headline_eps=0.1, steps=5))
    with pytest.warns(EvaluationWarning) as caught:  # also: the largest eps breaks nothing
        result = run(_NaNOffGrid(net).eval(), x, y, plan=plan, model_info={"name": "nan-net"},
                     data_info={"name": "digits"})
    assert any("NaN or inf" in str(w.message) for w in caught)
    section = result.to_dict()["sections"][0]
    assert any("counted as not broken, never as successes" in w for w in section["warnings"])
    assert section["severity"] != "critical"
    assert section["metrics"]["curves"]["fgsm"][-1]["model_errors"] > 0
