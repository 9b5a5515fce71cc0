"""Kernel SHAP and exact Shapley values: closed forms, convergence to the enumeration, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn

from modelshield.errors import ConfigError, InputError
from modelshield.explain import ExactShapley, KernelShap, PermutationImportance
from modelshield.explain.shapley import kernel_coalitions, kmeans_summary


def _data(d: int = 6, n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = ((x[:, 0] + x[:, 1] * x[:, 2] - 0.5 * x[:, 3]) > 0).long()
    return x, y


@pytest.fixture(scope="module")
def logreg() -> tuple[LogisticRegression, torch.Tensor, torch.Tensor]:
    x, y = _data()
    return LogisticRegression().fit(x.numpy(), y.numpy()), x, y


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    g = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net


class _Linear:
    """A 'model' whose class-1 probability is exactly linear in x (so Shapley values are closed form)."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        self.w, self.b = w.double().numpy(), b

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p1 = x @ self.w + self.b
        return np.stack([1 - p1, p1], axis=1)


def test_exact_shapley_of_a_linear_model_is_w_times_x_minus_mean() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(5, generator=g) * 0.05
    x = torch.rand(4, 5, generator=g, dtype=torch.float64)
    bg = torch.rand(30, 5, generator=g, dtype=torch.float64)
    att = ExactShapley()(_Linear(w, 0.5), x, target=torch.ones(4, dtype=torch.long), background=bg)
    expected = w.double() * (x - bg.mean(0))
    # the black-box adapter answers float32 probabilities: agreement to float32 precision
    assert torch.allclose(att.values, expected, atol=1e-7)
    assert float(att.completeness_gap.max()) < 1e-7  # type: ignore[union-attr]


@pytest.mark.parametrize("which", ["logreg", "mlp"])
def test_kernel_shap_converges_to_exact_shapley(which: str, logreg: tuple, mlp: nn.Module) -> None:
    model = logreg[0] if which == "logreg" else mlp
    x_all = logreg[1]
    x, bg = x_all[200:212], x_all[:40]
    exact = ExactShapley()(model, x, background=bg)
    errors = []
    for samples in (16, 40):
        att = KernelShap(samples=samples)(model, x, background=bg)
        assert torch.equal(att.target, exact.target)
        assert float(att.completeness_gap.max()) < 1e-5  # type: ignore[union-attr]
        errors.append(float((att.values - exact.values).abs().max()))
    scale = float(exact.values.abs().max())
    assert errors[1] < errors[0] and errors[1] < 0.1 * scale, (errors, scale)
    # all 2^6 - 2 = 62 coalitions: Kernel SHAP is the exact answer
    full = KernelShap(samples=62)(model, x, background=bg)
    assert full.details["exact"] is True
    assert torch.allclose(full.values, exact.values, atol=1e-5)


def test_kernel_shap_logit_link_and_local_accuracy(logreg: tuple) -> None:
    model, x_all, _ = logreg
    x, bg = x_all[200:205], x_all[:20]
    att = KernelShap(samples=62, link="logit")(model, x, background=bg)
    exact = ExactShapley(link="logit")(model, x, background=bg)
    assert torch.allclose(att.values, exact.values, atol=1e-5)
    p = torch.as_tensor(model.predict_proba(x.numpy()))[torch.arange(5), att.target]
    assert torch.allclose(att.score.double(), torch.log(p / (1 - p)).double(), atol=1e-4)  # type: ignore[union-attr]
    assert float(att.completeness_gap.max()) < 1e-5  # type: ignore[union-attr]


def test_kernel_shap_is_deterministic_with_a_seed_and_leaves_inputs_alone(mlp: nn.Module) -> None:
    x_all, _ = _data()
    x, bg = x_all[:5], x_all[50:80]
    x_copy = x.clone()
    mlp.train()
    a = KernelShap(samples=30, seed=3)(mlp, x, background=bg)
    b = KernelShap(samples=30, seed=3)(mlp, x, background=bg)
    c = KernelShap(samples=30, seed=4)(mlp, x, background=bg)
    assert torch.equal(a.values, b.values) and not torch.equal(a.values, c.values)
    assert torch.equal(x, x_copy) and mlp.training  # nothing mutated, training flag restored


def test_coalitions_enumerate_small_sizes_and_carry_the_kernel_weights() -> None:
    gen = torch.Generator().manual_seed(0)
    masks, w = kernel_coalitions(10, 400, paired=True, generator=gen)
    assert masks.shape[0] == 400 and abs(float(w.sum()) - 1) < 1e-12
    sizes = masks.sum(1)
    # sizes 1 and 9 (2 x 10 coalitions) and 2 and 8 (2 x 45) are enumerated exactly: 110 coalitions
    for s in (1, 2, 8, 9):
        assert int((sizes == s).sum()) == math.comb(10, s)
    kernel = {s: 9 / (s * (10 - s)) for s in range(1, 10)}
    norm = sum(kernel[s] * math.comb(10, s) / math.comb(10, s) for s in range(1, 10))
    one = w[sizes == 1][0]
    assert abs(float(one) - kernel[1] / norm / 10) < 1e-12  # shap's per-coalition weight
    assert len({tuple(m) for m in masks.tolist()}) == masks.shape[0]  # no duplicates


def test_background_is_summarised_by_weighted_kmeans(logreg: tuple) -> None:
    model, x_all, _ = logreg
    gen = torch.Generator().manual_seed(0)
    centres, weights = kmeans_summary(x_all, 8, generator=gen)
    assert centres.shape == (8, 6) and abs(float(weights.sum()) - 1) < 1e-12
    att = KernelShap(samples=62, background=8)(model, x_all[:3], background=x_all)
    assert "k-means" in att.details["background_summary"]
    assert float(att.completeness_gap.max()) < 1e-5  # type: ignore[union-attr]


def test_permutation_importance_ranks_the_informative_feature_first() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g)
    y = (x[:, 2] > 0).long()
    clf = LogisticRegression().fit(x.numpy(), y.numpy())
    res = PermutationImportance(repeats=4, seed=1)(clf, x, y)
    assert res.ranking()[0] == 2
    assert float(res.importances_mean[2]) > 0.3
    assert float(res.importances_mean[[0, 1, 3, 4]].abs().max()) < 0.05
    assert res.importances.shape == (4, 5) and res.importances_std.shape == (5,)
    again = PermutationImportance(repeats=4, seed=1)(clf, x, y)
    assert torch.equal(res.importances, again.importances)
    assert res.to_dict()["metric"] == "accuracy"
    nll = PermutationImportance(repeats=2, metric="log-loss")(clf, x, y)
    assert nll.ranking()[0] == 2


def test_bad_inputs_give_one_clear_line(logreg: tuple) -> None:
    model, x_all, _ = logreg
    x, bg = x_all[:3], x_all[:20]
    with pytest.raises(InputError, match="background rows must have the inputs' shape"):
        KernelShap()(model, x, background=bg[:, :4])
    with pytest.raises(InputError, match=r"background must be a floating tensor.*N >= 1"):
        KernelShap()(model, x, background=bg[:0])
    with pytest.raises(InputError, match=r"x must be a floating tensor.*N >= 1"):
        KernelShap()(model, x[:0], background=bg)
    nan = x.clone()
    nan[1, 2] = float("nan")
    with pytest.raises(InputError, match=r"NaN or infinite values \(first in row 1\)"):
        KernelShap()(model, nan, background=bg)
    with pytest.raises(InputError, match="target must be class indices"):
        KernelShap()(model, x, torch.tensor([0, 1, 5]), background=bg)
    with pytest.raises(InputError, match="at most 16 features"):
        ExactShapley()(model, torch.zeros(2, 17), background=torch.zeros(3, 17))
    with pytest.raises(ConfigError, match="'samples'"):
        KernelShap(samples=1)
    with pytest.raises(ConfigError, match="'background'"):
        KernelShap(background=0)
    with pytest.raises(ConfigError, match="'link'"):
        KernelShap(link="probit")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'repeats'"):
        PermutationImportance(repeats=0)
    with pytest.raises(InputError, match="y must be an int tensor"):
        PermutationImportance()(model, x, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("paired", [True, False])
def test_coalitions_are_distinct_weighted_and_never_exceed_what_exists(paired: bool) -> None:
    for d in (2, 3, 5, 6):
        for samples in range(2, 2 ** d + 8):
            gen = torch.Generator().manual_seed(0)
            masks, w = kernel_coalitions(d, samples, paired=paired, generator=gen)
            assert masks.shape[0] == min(samples, 2 ** d - 2), (d, samples)
            assert len({tuple(m) for m in masks.tolist()}) == masks.shape[0]
            assert bool((masks.any(1) & ~masks.all(1)).all())  # never the empty or full coalition
            assert abs(float(w.sum()) - 1) < 1e-9 and bool((w > 0).all())


def test_kernel_shap_puts_feature_names_on_the_result_and_checks_their_count(logreg: tuple) -> None:
    model, x_all, _ = logreg
    x, bg = x_all[200:203], x_all[:20]
    names = ("a", "b", "c", "d", "e", "f")
    att = KernelShap(samples=62)(model, x, background=bg, feature_names=list(names))
    assert att.feature_names == names and att.to_dict()["feature_names"] == list(names)
    assert KernelShap(samples=62)(model, x, background=bg).feature_names is None
    with pytest.raises(InputError, match="feature_names must name the 6 features; got 5") as err:
        KernelShap(samples=62)(model, x, background=bg, feature_names=names[:5])
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="sequence of strings"):
        KernelShap(samples=62)(model, x, background=bg, feature_names="abcdef")


def test_coalition_sizes_are_importance_sampled_without_bias() -> None:
    d, samples, seeds = 16, 200, 40
    mass = torch.tensor([(d - 1) / (s * (d - s)) for s in range(1, d)], dtype=torch.float64)
    mass /= mass.sum()

    def per_size(power: float) -> tuple[Tensor, Tensor]:
        weight, count = torch.zeros(d - 1, dtype=torch.float64), torch.zeros(d - 1, dtype=torch.float64)
        for seed in range(seeds):
            gen = torch.Generator().manual_seed(seed)
            masks, w = kernel_coalitions(d, samples, paired=True, generator=gen, size_power=power)
            sizes = masks.sum(1) - 1
            weight.index_add_(0, sizes, w)
            count.index_add_(0, sizes, torch.ones_like(w))
        return weight / seeds, count / seeds

    for power in (1.0, 0.5, 0.0):
        weight, _ = per_size(power)
        # every size keeps its kernel mass on average, whatever the proposal
        assert torch.allclose(weight, mass, rtol=0.15, atol=2e-3), (power, weight, mass)
    _, shap_like = per_size(1.0)
    _, flatter = per_size(0.5)
    # a flatter proposal draws the middle sizes (6..10) more often and the small ones (2, 14) less
    middle = slice(5, 10)
    assert float(flatter[middle].sum()) > 1.1 * float(shap_like[middle].sum())
    assert float(flatter[[1, 13]].sum()) < 0.9 * float(shap_like[[1, 13]].sum())
    # size_power=1 gives every drawn coalition of one size the same weight (shap's sampling)
    masks, w = kernel_coalitions(d, samples, paired=True, generator=torch.Generator().manual_seed(0),
                                 size_power=1.0)
    for size in (3, 8):
        same = w[masks.sum(1) == size]
        ratio = same / same.min()
        assert same.numel() > 1 and float((ratio - ratio.round()).abs().max()) < 1e-9  # duplicates: multiples
