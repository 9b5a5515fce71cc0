"""How good a stolen copy is: test accuracy, fidelity to the victim, and transferability."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from modelshield._checks import check_inputs, check_labels
from modelshield.attacks.evasion.protocol import EvasionAttack
from modelshield.errors import ConfigError
from modelshield.models import ModelLike, TorchModel, as_model, predict_labels

__all__ = ["accuracy", "fidelity", "transferability"]


def _copy_module(copy: object, *, owner: str) -> nn.Module:
    if isinstance(copy, TorchModel):
        return copy.module
    if isinstance(copy, nn.Module):
        return copy
    raise ConfigError(
        f"{owner}: 'copy' must be a torch.nn.Module returning logits; got {type(copy).__name__}. "
        "Pass result.copy from an extraction attack."
    )


def accuracy(copy: nn.Module | TorchModel, x: Tensor, y: Tensor) -> float:
    """Share of (x, y) the copy labels correctly.

    Args:
        copy: the stolen model (``torch.nn.Module`` returning logits).
        x: ``(N, *input_shape)`` float inputs. y: ``(N,)`` int64 true labels.
    """
    net = _copy_module(copy, owner="accuracy")
    pred = predict_labels(net, x)
    with torch.no_grad():
        n_classes = int(net(x[:1]).shape[1])
    y_t = check_labels(y, n=x.shape[0], n_classes=n_classes, owner="accuracy", device=x.device)
    return float((pred == y_t).float().mean())


def fidelity(
    copy: nn.Module | TorchModel,
    victim: ModelLike,
    x: Tensor,
    *,
    victim_labels: Tensor | None = None,
) -> float:
    """Share of x on which the copy and the victim predict the same label (label agreement).

    Args:
        copy: the stolen model (``torch.nn.Module`` returning logits).
        victim: anything ``as_model`` accepts; queried once on x (counted) unless
            ``victim_labels`` is given.
        x: ``(N, *input_shape)`` float inputs within the victim's bounds.
        victim_labels: ``(N,)`` labels the victim gave x, to avoid querying it again.

    Reference: Jagielski, Carlini, Berthelot, Kurakin and Papernot, "High Accuracy and High
    Fidelity Extraction of Neural Networks", USENIX Security 2020 (the fidelity metric).
    """
    net = _copy_module(copy, owner="fidelity")
    if victim_labels is None:
        m = as_model(victim)
        x = check_inputs(x, bounds=m.bounds, owner="fidelity")
        with torch.no_grad():
            victim_labels = m.predict(x)
    pred = predict_labels(net, x)
    return float((pred == victim_labels.to(pred.device)).float().mean())


def transferability(
    copy: nn.Module | TorchModel,
    victim: ModelLike,
    x: Tensor,
    y: Tensor,
    attack: EvasionAttack,
) -> float:
    """Share of adversarial examples crafted on the copy that also fool the victim.

    The white-box ``attack`` (e.g. ``PGD(eps=0.1, early_stop=False)``: final iterates transfer far
    better than the default early-stopped, barely adversarial ones) runs on the copy; the inputs it breaks
    are replayed on the victim (``as_model(victim).predict``). The rate is taken over points
    the victim classifies correctly and the attack broke on the copy, the copy having been right
    on the clean input (its own mistakes are not adversarial examples); nan when there are none.
    Victim queries: 2N (clean labels and the replay), counted on the victim.

    Args:
        copy: the stolen model (``torch.nn.Module`` returning logits).
        victim: anything ``as_model`` accepts (label-only black boxes included).
        x: ``(N, *input_shape)`` inputs. y: ``(N,)`` true labels.
        attack: a white-box evasion attack from ``modelshield.attacks.evasion``.

    Reference: Papernot, McDaniel and Goodfellow, "Transferability in Machine Learning",
    arXiv:1605.07277, 2016.

    Example:
        rate = transferability(result.copy, victim, x_test, y_test, PGD(eps=0.1, early_stop=False))
    """
    from modelshield.attacks.evasion.transfer import Transfer

    net = _copy_module(copy, owner="transferability")
    m = as_model(victim)
    res = Transfer(attack=attack, surrogate=TorchModel(net, bounds=m.bounds))(m, x, y)
    rate = res.extra.get("transfer_rate")
    return math.nan if rate is None else float(rate)
