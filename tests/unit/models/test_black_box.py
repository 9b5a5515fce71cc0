"""One black-box view (as_black_box) and one predict_labels that restores every training flag."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn

from modelshield.errors import ConfigError, ModelCapabilityError
from modelshield.models import (
    CallableModel,
    TorchModel,
    as_black_box,
    as_model,
    evaluating,
    predict_labels,
    probabilities,
)
from modelshield.zoo.spam import predict_labels as spam_predict_labels


def _mixed_net() -> nn.Sequential:
    """Dropout child in train mode, BatchNorm child in eval mode, the container in train mode."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.9), nn.BatchNorm1d(8), nn.Linear(8, 3))
    net.train()
    net[2].eval()
    return net


def _flags(net: nn.Module) -> list[bool]:
    return [m.training for m in net.modules()]


def test_predict_labels_restores_each_submodule_flag() -> None:
    net = _mixed_net()
    before = _flags(net)
    assert before == [True, True, True, False, True]
    x = torch.rand(10, 4)
    labels = predict_labels(net, x, batch_size=3)  # batched: 4 chunks
    assert _flags(net) == before
    with evaluating(net):
        assert not any(_flags(net))
        expected = net(x).argmax(1)
    assert _flags(net) == before
    # eval mode (dropout off) makes the answer deterministic and equal to the full-batch argmax
    assert labels.dtype == torch.int64 and torch.equal(labels, expected)
    assert torch.equal(predict_labels(net, x), labels)
    assert spam_predict_labels(net, x.numpy()).tolist() == labels.tolist()
    assert _flags(net) == before


def test_predict_labels_other_models() -> None:
    x = np.random.default_rng(0).random((40, 3))
    y = (x[:, 0] > 0.5).astype(np.int64)
    est = LogisticRegression().fit(x, y)
    assert predict_labels(est, x).tolist() == est.predict(x).tolist()
    assert predict_labels(lambda a: np.stack([1 - a[:, 0], a[:, 0]], 1), x).tolist() == y.tolist()
    one_logit = nn.Linear(3, 1)  # a binary classifier with one logit, as TorchModel reads it
    xt = torch.as_tensor(x, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(predict_labels(one_logit, xt), (one_logit(xt)[:, 0] > 0).long())
    m = as_model(_mixed_net())
    assert predict_labels(m, torch.rand(5, 4), batch_size=2).shape == (5,) and m.queries.forward == 5
    assert predict_labels(_mixed_net(), torch.zeros(0, 4)).shape == (0,)


def test_black_box_answers_probabilities_in_eval_mode_and_restores_flags() -> None:
    net = _mixed_net()
    before = _flags(net)
    grads_before = [p.requires_grad for p in net.parameters()]
    box = as_black_box(net, bounds=(0.0, 1.0))
    assert isinstance(box, CallableModel) and box.output == "proba" and box.n_classes == 3
    x = torch.rand(6, 4)
    p = box.scores(x)
    with evaluating(net), torch.no_grad():
        want = net(x).softmax(1)
    assert torch.allclose(p, want, atol=1e-6) and torch.allclose(p.sum(1), torch.ones(6), atol=1e-6)
    assert _flags(net) == before and [q.requires_grad for q in net.parameters()] == grads_before
    assert box.queries.forward == 6
    labels = as_black_box(net, output="labels")
    assert labels.output == "labels" and torch.equal(labels.predict(x), want.argmax(1))
    with pytest.raises(ModelCapabilityError, match="labels only"):
        labels.scores(x)
    assert _flags(net) == before


def test_black_box_hides_gradients_and_keeps_bounds_and_budget() -> None:
    white = TorchModel(nn.Sequential(nn.Linear(4, 2)), bounds=(-1.0, 1.0))
    box = as_black_box(white, budget=5)
    assert box.bounds == (-1.0, 1.0) and not hasattr(box, "value_and_grad")
    out = box.scores(torch.zeros(5, 4, requires_grad=True))
    assert not out.requires_grad and white.queries.forward == 5
    with pytest.raises(Exception, match="budget"):
        box.scores(torch.zeros(1, 4))
    with pytest.raises(ConfigError, match="'output'"):
        as_black_box(white, output="logits")  # type: ignore[arg-type]  # deliberately wrong


def test_black_box_follows_a_float64_module() -> None:
    net = nn.Linear(3, 2).double()
    box = as_black_box(net)
    x = torch.rand(4, 3)  # float32 queries reach a float64 module as float64
    with torch.no_grad():
        assert torch.allclose(box.scores(x), net(x.double()).softmax(1).float())


def test_black_box_estimator_and_hook() -> None:
    x = np.random.default_rng(1).random((60, 2))
    y = (x.sum(1) > 1).astype(np.int64)
    est = LogisticRegression().fit(x, y)
    xt = torch.as_tensor(x, dtype=torch.float32)
    proba = as_black_box(est)
    assert proba.n_classes == 2
    assert np.allclose(proba.scores(xt).numpy(), est.predict_proba(x.astype(np.float32)), atol=1e-6)
    labels = as_black_box(est, output="labels").predict(xt)
    assert labels.tolist() == est.predict(x.astype(np.float32)).tolist()

    seen: list[tuple[Tensor, Tensor]] = []

    def hook(q: Tensor, answer: Tensor) -> Tensor:
        seen.append((q, answer))
        return torch.round(answer, decimals=1)

    rounded = as_black_box(est, on_answer=hook).scores(xt[:7])
    assert len(seen) == 1 and torch.equal(seen[0][0], xt[:7]) and seen[0][1].dtype == torch.float64
    assert torch.allclose(rounded * 10, (rounded * 10).round(), atol=1e-5)


def test_probabilities_of_white_and_black_models() -> None:
    net = nn.Linear(3, 4)
    x = torch.rand(5, 3)
    with torch.no_grad():
        want = net(x).softmax(1)
    assert torch.allclose(probabilities(as_model(net), x), want)
    assert torch.allclose(probabilities(as_black_box(net), x), want, atol=1e-6)
