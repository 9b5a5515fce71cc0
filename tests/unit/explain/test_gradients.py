"""Gradient explainers: Captum's values, IG's completeness, memory-bounded batching, clean state, bad input.

A small CNN (with nn.ReLU modules for guided backprop and a Dropout, so train mode matters) is
trained on scikit-learn's digits in about a second.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import captum.attr as ca  # type: ignore[import-untyped]  # captum ships no py.typed marker
import pytest
import torch
from torch import Tensor, nn

from modelshield.errors import ConfigError, InputError, ModelCapabilityError
from modelshield.explain import (
    GradientTimesInput,
    GuidedBackprop,
    IntegratedGradients,
    Occlusion,
    Saliency,
    SmoothGrad,
)
from modelshield.explain.gradients import blur_baseline, smoothing_noise
from modelshield.explain.memory import CPU_PASS_MIN_ROWS, memory_budget, plan_rows, probe_row_cost
from modelshield.models import TorchModel


def _train_digits_cnn(seed: int = 0) -> tuple[nn.Module, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(128, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.dim() > 1 else 0.0))
    net[6].eval()  # Dropout would draw from torch's global generator: trained without it, deterministic
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(5):
        for idx in torch.randperm(1400, generator=gen).split(100):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    for p in net.parameters():
        p.grad = None
    return net, x[1400:]


@pytest.fixture(scope="module")
def cnn() -> tuple[nn.Module, Tensor]:
    net, x_test = _train_digits_cnn()
    assert (net(x_test).argmax(1) >= 0).all()
    return net, x_test[:40].clone()


def _captum_inputs(x: Tensor) -> Tensor:
    return x.clone().requires_grad_(True)


# ------------------------------------------------------------------------------------------
# Same values as Captum used directly (with its defaults)

CaptumRef = Callable[[nn.Module, Tensor, Tensor], Tensor]

CASES: list[tuple[str, object, CaptumRef]] = [
    ("saliency", Saliency(),
     lambda m, x, t: ca.Saliency(m).attribute(_captum_inputs(x), target=t)),
    ("saliency-signed", Saliency(absolute=False),
     lambda m, x, t: ca.Saliency(m).attribute(_captum_inputs(x), target=t, abs=False)),
    ("gradient-x-input", GradientTimesInput(),
     lambda m, x, t: ca.InputXGradient(m).attribute(_captum_inputs(x), target=t)),
    ("ig", IntegratedGradients(),
     lambda m, x, t: ca.IntegratedGradients(m).attribute(_captum_inputs(x), target=t)),
    ("ig-trapezoid-20", IntegratedGradients(steps=20, method="riemann_trapezoid"),
     lambda m, x, t: ca.IntegratedGradients(m).attribute(
         _captum_inputs(x), target=t, n_steps=20, method="riemann_trapezoid")),
    ("guided-backprop", GuidedBackprop(),
     lambda m, x, t: ca.GuidedBackprop(m).attribute(_captum_inputs(x), target=t)),
    ("occlusion", Occlusion(window=3),
     lambda m, x, t: ca.Occlusion(m).attribute(x.clone(), sliding_window_shapes=(1, 3, 3), target=t)),
    ("occlusion-stride2", Occlusion(window=(2, 2), stride=2, baseline=0.5),
     lambda m, x, t: ca.Occlusion(m).attribute(
         x.clone(), sliding_window_shapes=(1, 2, 2), strides=(1, 2, 2), baselines=0.5, target=t)),
]


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning")
@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients:UserWarning")
@pytest.mark.parametrize(("name", "explainer", "reference"), CASES, ids=[c[0] for c in CASES])
def test_equals_captum_direct(cnn: tuple[nn.Module, Tensor], name: str, explainer: object,
                              reference: CaptumRef) -> None:
    net, x = cnn
    predicted = net(x).argmax(1)
    result = explainer(net, x)  # type: ignore[operator]
    assert torch.equal(result.target, predicted)  # the default target is the predicted class
    expected = reference(net, x, predicted).detach()
    assert result.values.shape == x.shape
    assert (result.values - expected).abs().max().item() <= 1e-4, name
    assert result.values.abs().sum() > 0


def _noise_as_ours(seed: int) -> Callable[[Tensor, float, int], Tensor]:
    def add(inp: Tensor, stdev: float, samples: int) -> Tensor:
        return inp.repeat_interleave(samples, 0) + smoothing_noise(inp, samples=samples, std=stdev, seed=seed)
    return add


@pytest.mark.parametrize("base", ["saliency", "ig"])
def test_smoothgrad_equals_captum_noise_tunnel_given_the_same_noise(
    cnn: tuple[nn.Module, Tensor], base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, x = cnn
    x = x[:10]
    t = net(x).argmax(1)
    explainer = SmoothGrad(samples=8, sigma=0.2, seed=3,
                           base=Saliency() if base == "saliency" else IntegratedGradients(steps=10))
    ours = explainer(net, x)
    # NoiseTunnel draws from torch's global generator; give it our per-point noise instead.
    monkeypatch.setattr(ca.NoiseTunnel, "_add_noise_to_input", staticmethod(_noise_as_ours(3)))
    inner = ca.Saliency(net) if base == "saliency" else ca.IntegratedGradients(net)
    extra = {} if base == "saliency" else {"n_steps": 10}
    expected = ca.NoiseTunnel(inner).attribute(x.clone(), nt_type="smoothgrad", nt_samples=8, stdevs=0.2,
                                               target=t, **extra)
    assert (ours.values - expected).abs().max().item() <= 1e-4
    # and the noise matters: without it the answer is the base method's
    plain = (Saliency() if base == "saliency" else IntegratedGradients(steps=10))(net, x)
    assert (ours.values - plain.values).abs().max().item() > 1e-3


def test_guided_backprop_golden_on_a_two_layer_relu_net() -> None:
    # f(x) = W2 relu(W1 x): guided backprop for class t is W1^T (relu(W2[t]) * [W1 x > 0]).
    gen = torch.Generator().manual_seed(1)
    lin1, lin2 = nn.Linear(5, 6, bias=False), nn.Linear(6, 3, bias=False)
    with torch.no_grad():
        lin1.weight.copy_(torch.randn(6, 5, generator=gen))
        lin2.weight.copy_(torch.randn(3, 6, generator=gen))
    net = nn.Sequential(lin1, nn.ReLU(), lin2)
    x = torch.rand(4, 5, generator=gen)
    t = torch.tensor([0, 1, 2, 1])
    result = GuidedBackprop()(net, x, target=t)
    h = x @ lin1.weight.T
    guided = lin2.weight[t].clamp_min(0) * (h > 0)
    expected = guided @ lin1.weight
    assert torch.allclose(result.values, expected, atol=1e-6)
    plain = Saliency(absolute=False)(net, x, target=t)
    assert not torch.allclose(plain.values, expected, atol=1e-3)  # it is not the plain gradient


# ------------------------------------------------------------------------------------------
# Integrated Gradients' completeness


# A ReLU/max-pool network's path gradient jumps at every kink, so the quadrature converges slowly:
# on this CNN the largest relative gap at 50 steps is about 1-2 %, at 400 steps 0.1-0.4 %.
@pytest.mark.parametrize(("baseline", "steps"), [("zeros", 200), ("blur", 400), ("uniform", 400)])
def test_ig_completeness_within_one_percent_and_gap_recomputed(
    cnn: tuple[nn.Module, Tensor], baseline: str, steps: int
) -> None:
    net, x = cnn
    result = IntegratedGradients(steps=steps, baseline=baseline)(net, x)  # type: ignore[arg-type]
    assert result.score is not None and result.baseline_score is not None
    t = result.target
    b = IntegratedGradients(baseline=baseline).baseline_for(x, (0.0, 1.0))  # type: ignore[arg-type]
    with torch.no_grad():
        f_x = net(x).gather(1, t[:, None]).squeeze(1).double()
        f_b = net(b).gather(1, t[:, None]).squeeze(1).double()
    assert torch.allclose(result.score.double(), f_x, atol=1e-5)
    assert torch.allclose(result.baseline_score.double(), f_b, atol=1e-5)
    recomputed = (result.values.flatten(1).sum(1).double() - (f_x - f_b)).abs()
    gap = result.completeness_gap
    assert gap is not None
    assert torch.allclose(gap, recomputed, atol=1e-5)
    assert result.details["completeness_gap"] == pytest.approx(recomputed.tolist(), abs=1e-5)
    assert ((f_x - f_b).abs() > 0.1).all()
    assert (recomputed <= 0.01 * (f_x - f_b).abs()).all(), (recomputed / (f_x - f_b).abs()).max()
    assert result.details["completeness_gap_relative_max"] <= 0.01


def test_ig_gap_shrinks_with_steps(cnn: tuple[nn.Module, Tensor]) -> None:
    net, x = cnn
    few = IntegratedGradients(steps=3, method="riemann_left")(net, x).completeness_gap
    many = IntegratedGradients(steps=60, method="riemann_left")(net, x).completeness_gap
    assert few is not None and many is not None
    assert many.mean() < 0.5 * few.mean()


def test_blur_baseline_is_smooth_and_keeps_the_mean() -> None:
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    b = blur_baseline(x, 1.0)
    assert b.shape == x.shape and b[0, 0, 4, 4] < 0.2 and b[0, 0, 4, 5] > 0.05
    assert b.sum().item() == pytest.approx(1.0, abs=1e-4)  # the point is far from the border


# ------------------------------------------------------------------------------------------
# Memory-bounded batching


class _Spy(nn.Module):
    """Wraps a module and records the largest batch it is called with."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.largest = 0

    def forward(self, x: Tensor) -> Tensor:
        self.largest = max(self.largest, int(x.shape[0]))
        out: Tensor = self.inner(x)
        return out


SMALL = 0.6  # MiB: a few dozen model rows of the digits CNN per pass

CHUNKED: list[tuple[str, Callable[[float | None], object]]] = [
    ("saliency", lambda mb: Saliency(max_memory_mb=mb)),
    ("gradient-x-input", lambda mb: GradientTimesInput(max_memory_mb=mb)),
    ("guided-backprop", lambda mb: GuidedBackprop(max_memory_mb=mb)),
    ("ig-200", lambda mb: IntegratedGradients(steps=200, max_memory_mb=mb)),
    ("ig-uniform", lambda mb: IntegratedGradients(steps=30, baseline="uniform", max_memory_mb=mb)),
    ("smoothgrad", lambda mb: SmoothGrad(samples=12, base=Saliency(max_memory_mb=mb))),
    ("smoothgrad-ig", lambda mb: SmoothGrad(samples=4, base=IntegratedGradients(steps=16, max_memory_mb=mb))),
    ("occlusion", lambda mb: Occlusion(window=3, max_memory_mb=mb)),
]


@pytest.mark.parametrize(("name", "make"), CHUNKED, ids=[c[0] for c in CHUNKED])
def test_memory_bounded_equals_unbounded(cnn: tuple[nn.Module, Tensor], name: str,
                                         make: Callable[[float | None], object]) -> None:
    net, x = cnn
    whole = make(None)(net, x)  # type: ignore[operator]
    spy = _Spy(net)
    small = make(SMALL)(spy, x)  # type: ignore[operator]
    plan = small.details["memory"]
    assert plan["source"] == "max_memory_mb" and plan["budget_mb"] == SMALL
    assert 4 <= plan["rows_per_pass"] < 200, plan
    # no pass held more rows than planned, and the plan fits the budget
    assert spy.largest <= plan["rows_per_pass"]
    assert plan["rows_per_pass"] * plan["row_kb"] * 1024 + plan["fixed_mb"] * 2**20 <= SMALL * 2**20
    assert whole.details["memory"]["rows_per_pass"] > plan["rows_per_pass"]
    assert (small.values - whole.values).abs().max().item() <= 1e-5, name


def test_plan_scales_with_the_budget_and_refuses_one_that_holds_no_row(cnn: tuple[nn.Module, Tensor]) -> None:
    net, x = cnn
    m = TorchModel(net)
    t = torch.zeros(1, dtype=torch.long)
    cost = probe_row_cost(m.logits, net, x, t, backward=True)
    forward_only = probe_row_cost(m.logits, net, x, t, backward=False)
    assert 0 < forward_only.row_bytes < cost.row_bytes
    # at least the activations the backward pass keeps: conv output, ReLU output (8x8x8 floats each)
    assert cost.row_bytes >= 2 * 8 * 8 * 8 * 4
    small = plan_rows("T", cost, budget=(1 << 20, "max_memory_mb"))
    big = plan_rows("T", cost, budget=(8 << 20, "max_memory_mb"))
    assert 8 * small.rows_per_pass <= big.rows_per_pass <= 8 * small.rows_per_pass + 8
    # the CPU's speed preference: passes kept small while they hold enough rows, never above the budget
    kept = plan_rows("T", cost, budget=(8 << 20, "x"), prefer_bytes=1 << 20)
    assert kept.rows_per_pass == small.rows_per_pass and kept.budget_bytes == 1 << 20
    assert "for speed" in kept.source
    grown = plan_rows("T", cost, budget=(8 << 20, "x"), prefer_bytes=10 * cost.row_bytes)
    assert grown.rows_per_pass == CPU_PASS_MIN_ROWS and grown.budget_bytes == 8 << 20
    roomy = plan_rows("T", cost, budget=(1 << 20, "x"), prefer_bytes=8 << 20)
    assert roomy.rows_per_pass == small.rows_per_pass
    with pytest.raises(ConfigError, match="'max_memory_mb' must leave room for one model row") as info:
        IntegratedGradients(max_memory_mb=1e-4)(net, x)
    assert "\n" not in str(info.value) and "Raise max_memory_mb" in str(info.value)
    budget, source = memory_budget(None, torch.device("cpu"))
    assert budget > 0 and source


# ------------------------------------------------------------------------------------------
# State: the model, the inputs and the global RNG are left as they were


@pytest.mark.parametrize(("name", "make"), CHUNKED, ids=[c[0] for c in CHUNKED])
def test_model_inputs_and_rng_untouched(cnn: tuple[nn.Module, Tensor], name: str,
                                        make: Callable[[float | None], object]) -> None:
    net, x = cnn
    x = x[:8].clone()
    before = x.clone()
    net.train()
    list(net.modules())[7].eval()  # the Dropout: a sub-module with its own flag must keep it
    rng = torch.random.get_rng_state()
    params = [(p.requires_grad, p.detach().clone()) for p in net.parameters()]
    try:
        result = make(None)(net, x)  # type: ignore[operator]
        flags = [mod.training for mod in net.modules()]
    finally:
        net.eval()
    assert flags == [True] * 7 + [False] + [True]  # 9 modules: Sequential + 8 layers; Dropout eval
    assert torch.equal(x, before) and not x.requires_grad and x.grad is None
    assert torch.equal(torch.random.get_rng_state(), rng)
    for p, (flag, value) in zip(net.parameters(), params, strict=True):
        assert p.requires_grad == flag and p.grad is None and torch.equal(p, value)
    # attributions were computed in eval mode (Dropout off): repeatable
    again = make(None)(net, x)  # type: ignore[operator]
    assert torch.equal(result.values, again.values)


def test_smoothgrad_is_seeded_per_point(cnn: tuple[nn.Module, Tensor]) -> None:
    net, x = cnn
    sg = SmoothGrad(samples=6, seed=7)
    whole = sg(net, x[:12])
    part = sg(net, x[4:9])
    assert torch.allclose(whole.values[4:9], part.values, atol=1e-6)
    other = SmoothGrad(samples=6, seed=8)(net, x[:12])
    assert (other.values - whole.values).abs().max() > 1e-4


def test_explicit_target_and_result_summary(cnn: tuple[nn.Module, Tensor]) -> None:
    net, x = cnn
    t = torch.full((x.shape[0],), 3)
    result = IntegratedGradients(steps=20)(net, x, target=3)
    assert torch.equal(result.target, t)
    direct = ca.IntegratedGradients(net).attribute(_captum_inputs(x), target=t, n_steps=20).detach()
    assert (result.values - direct).abs().max() <= 1e-4
    summary = result.to_dict()
    assert summary["method"] == "integrated-gradients" and summary["config"]["steps"] == 20
    assert summary["details"]["memory"]["how"] == "estimated"
    tensor_baseline = IntegratedGradients(steps=5, baseline=torch.zeros(1, 8, 8))
    config = tensor_baseline(net, x).to_dict()["config"]
    assert config["baseline"] == {"tensor": [1, 8, 8], "dtype": "float32"}


class _RowCounter(nn.Module):
    """The wrapped net, counting the rows of every forward call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.rows = net, 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        out: Tensor = self.net(x)
        return out


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning")
@pytest.mark.parametrize("explainer", [Saliency(), GradientTimesInput(), GuidedBackprop()],
                         ids=["saliency", "gradient-x-input", "guided-backprop"])
def test_given_target_scores_come_from_the_attribution_pass(cnn: tuple[nn.Module, Tensor],
                                                            explainer: Saliency) -> None:
    net, x = cnn
    with torch.no_grad():
        logits = net(x)
    t = (logits.argmax(1) + 1) % 10  # not the predicted class
    rows = {}
    for target in (t, None):
        counter = _RowCounter(net)
        result = explainer(counter, x, target)
        want = logits[torch.arange(x.shape[0]), result.target]
        assert torch.allclose(result.score, want, atol=1e-5)  # type: ignore[arg-type]
        rows["given" if target is not None else "none"] = counter.rows
    assert torch.equal(result.target, logits.argmax(1))
    # no separate scoring pass when the target is given: one forward row per input fewer
    assert rows["none"] - rows["given"] == x.shape[0]


# ------------------------------------------------------------------------------------------
# Bad input: one clear line


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_bad_configs_raise_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'steps' must be an int in \[1, inf\]; got 0") as e:
        IntegratedGradients(steps=0)
    _one_line(e)
    with pytest.raises(ConfigError, match=r"'steps' must be an int in \[2, inf\]; got 1"):
        IntegratedGradients(steps=1, method="riemann_trapezoid")
    with pytest.raises(ConfigError, match="'baseline' must be one of"):
        IntegratedGradients(baseline="black")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'baseline' must be a finite floating-point tensor"):
        IntegratedGradients(baseline=torch.full((1, 8, 8), float("nan")))
    with pytest.raises(ConfigError, match="'method' must be one of"):
        IntegratedGradients(method="simpson")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'samples' must be an int"):
        SmoothGrad(samples=0)
    with pytest.raises(ConfigError, match="'sigma' must be a number"):
        SmoothGrad(sigma=-0.1)
    with pytest.raises(ConfigError, match="'base' must be"):
        SmoothGrad(base=Occlusion())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'window' must be a positive int"):
        Occlusion(window=0)
    with pytest.raises(ConfigError, match=r"'max_memory_mb' must be a number in \(0.0, inf\]"):
        Saliency(max_memory_mb=0)
    with pytest.raises(ConfigError, match="'absolute' must be True or False"):
        Saliency(absolute="yes")  # type: ignore[arg-type]


def test_bad_inputs_raise_one_line(cnn: tuple[nn.Module, Tensor]) -> None:
    net, x = cnn
    with pytest.raises(InputError, match=r"baseline must have shape \(1, 8, 8\).*got shape \(3, 3\)") as e:
        IntegratedGradients(baseline=torch.zeros(3, 3))(net, x)
    _one_line(e)
    with pytest.raises(InputError, match=r"got shape \(5, 1, 8, 8\)"):
        IntegratedGradients(baseline=torch.zeros(5, 1, 8, 8))(net, x)
    bad = x.clone()
    bad[2, 0, 3, 3] = float("nan")
    with pytest.raises(InputError, match=r"NaN or infinite values \(first in row 2\)") as e:
        Saliency()(net, bad)
    _one_line(e)
    with pytest.raises(InputError, match=r"target must be class indices in \[0, 9\]; got 10") as e:
        IntegratedGradients()(net, x, target=10)
    _one_line(e)
    with pytest.raises(InputError, match=r"target must have shape \(40,\)"):
        Saliency()(net, x, target=torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError, match="outside bounds"):
        Saliency()(net, x * 3)
    with pytest.raises(InputError, match="baseline='blur' needs images"):
        IntegratedGradients(baseline="blur")(nn.Linear(4, 3), torch.rand(2, 4))
    with pytest.raises(InputError, match="window must have at most 3 positive sizes"):
        Occlusion(window=9)(net, x)
    with pytest.raises(InputError, match="input shape the model expects"):
        Saliency()(net, torch.rand(2, 64))
    with pytest.raises(ModelCapabilityError, match="Saliency: needs gradients"):
        Saliency()(lambda a: torch.softmax(a.flatten(1)[:, :3], 1).numpy(), x)


def test_warnings_from_captum_do_not_leak(cnn: tuple[nn.Module, Tensor]) -> None:
    net, x = cnn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GuidedBackprop()(net, x[:3])
        IntegratedGradients(steps=40, max_memory_mb=SMALL)(net, x)
        SmoothGrad(samples=3, base=GuidedBackprop())(net, x[:3])


@pytest.mark.gpu
def test_cuda_plan_is_measured_and_respected(cnn: tuple[nn.Module, Tensor]) -> None:
    import copy

    net, x = cnn
    dev = torch.device("cuda")
    gpu_net = copy.deepcopy(net).to(dev)
    x_gpu = x.to(dev)
    on_cpu = IntegratedGradients(steps=50)(net, x)
    torch.cuda.synchronize(dev)
    before = torch.cuda.memory_allocated(dev)
    result = IntegratedGradients(steps=50, max_memory_mb=16)(gpu_net, x_gpu)  # the probe resets the peak
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - before
    plan = result.details["memory"]
    assert plan["how"] == "measured" and plan["rows_per_pass"] < x.shape[0] * 50
    assert peak <= 16 * 2**20, peak
    assert result.values.device.type == "cuda" and next(gpu_net.parameters()).device.type == "cuda"
    assert (result.values.cpu() - on_cpu.values).abs().max().item() <= 1e-4
