"""The model protocol: adapters, query counting, budgets, capability errors, state hygiene."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from modelshield import PGD, as_model
from modelshield.errors import InputError, ModelCapabilityError, QueryBudgetExceeded
from modelshield.models import CallableModel, TorchModel, as_gradient_model, eval_mode


def test_torch_module_becomes_white_box_and_counts(tiny_linear: nn.Linear) -> None:
    m = as_model(tiny_linear)
    assert isinstance(m, TorchModel) and m.n_classes == 3 and m.bounds == (0.0, 1.0)
    x = torch.rand(5, 4)
    assert torch.equal(m.predict(x), tiny_linear(x).argmax(1))
    _, g = m.value_and_grad(x, lambda logits: logits[:, 0])
    assert torch.allclose(g, torch.tensor([1.0, 0, 0, 0]).expand(5, 4))
    assert m.queries.snapshot() == (10, 5)
    assert as_model(m) is m


def test_one_logit_binary_model_gives_two_logits() -> None:
    lin = nn.Linear(3, 1)
    m = as_model(lin)
    assert m.n_classes == 2
    x = torch.rand(4, 3)
    z = m.scores(x)
    assert z.shape == (4, 2)
    p1 = torch.softmax(z, 1)[:, 1]
    assert torch.allclose(p1, torch.sigmoid(lin(x)[:, 0]).detach())


def test_budget_is_enforced_before_the_model_is_called(tiny_linear: nn.Linear) -> None:
    calls = []
    tiny_linear.register_forward_hook(lambda *_: calls.append(1))
    m = as_model(tiny_linear, budget=7)
    m.predict(torch.rand(5, 4))
    with pytest.raises(QueryBudgetExceeded, match="budget of 7 would be exceeded"):
        m.predict(torch.rand(3, 4))
    assert len(calls) == 1 and m.queries.forward == 5 and m.queries.remaining == 2


def test_sklearn_estimator_is_black_box() -> None:
    rng = np.random.default_rng(0)
    xs = rng.random((60, 4)).astype(np.float32)
    ys = (xs[:, 0] > 0.5).astype(int)
    clf = LogisticRegression().fit(xs, ys)
    m = as_model(clf)
    assert isinstance(m, CallableModel) and m.n_classes == 2
    x = torch.as_tensor(xs[:10])
    assert torch.equal(m.predict(x), torch.as_tensor(clf.predict(xs[:10])))
    assert torch.allclose(m.scores(x), torch.as_tensor(clf.predict_proba(xs[:10]), dtype=torch.float32))
    assert m.queries.forward == 20
    with pytest.raises(ModelCapabilityError, match=r"PGD: needs gradients.*Square"):
        as_gradient_model(clf, caller="PGD")
    with pytest.raises(ModelCapabilityError, match=r"PGD: needs gradients"):
        PGD(eps=0.1)(clf, x, torch.as_tensor(ys[:10]))


def test_label_only_callable_refuses_scores() -> None:
    m = as_model(lambda a: (a[:, 0] > 0.5).astype(np.int64), n_classes=2)
    x = torch.rand(6, 3)
    assert torch.equal(m.predict(x), (x[:, 0] > 0.5).long())
    with pytest.raises(ModelCapabilityError, match="labels only"):
        m.scores(x)


def test_bad_model_outputs_are_named() -> None:
    with pytest.raises(ModelCapabilityError, match=r"as_model: expected a torch\.nn\.Module"):
        as_model(42)
    feats = nn.Sequential(nn.Flatten(0))  # returns a 1-D vector, not (N, C) logits
    with pytest.raises(ModelCapabilityError, match=r"logits of shape \(N, C\)"):
        as_model(feats, n_classes=3).scores(torch.rand(2, 3))
    # NaN scores are passed on, never guessed into a class: both adapters mark them as errors.
    m = as_model(lambda a: np.full((len(a), 2), np.nan))
    assert torch.isnan(m.scores(torch.rand(2, 3))).all()
    labels, errors = m.predict_with_errors(torch.rand(2, 3))
    assert errors.all() and labels.shape == (2,)


def test_device_mismatch_names_the_fix(tiny_linear: nn.Linear) -> None:
    m = as_model(tiny_linear)
    meta = torch.empty(2, 4, device="meta")
    with pytest.raises(InputError, match=r"x is on meta but the model is on cpu.*x.to\('cpu'\)"):
        m.scores(meta)


def test_eval_mode_restores_flags_and_grad_requirements() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 3))
    net.train()
    net[2].weight.requires_grad_(False)
    m = as_model(net)
    with pytest.raises(RuntimeError), eval_mode(m):
        assert not net.training and not any(p.requires_grad for p in net.parameters())
        raise RuntimeError("boom")
    assert net.training and net[1].training
    assert [p.requires_grad for p in net.parameters()] == [True, True, False, True]
    assert all(p.grad is None for p in net.parameters())
