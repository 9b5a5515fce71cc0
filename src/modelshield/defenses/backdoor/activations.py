"""Hidden-layer representations for detectors: by default the input of the last nn.Linear."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from modelshield.errors import ConfigError, ModelCapabilityError

__all__ = ["extract_features", "penultimate_layer", "torch_module"]


def torch_module(model: Any, *, owner: str) -> nn.Module:
    """The nn.Module behind model (a module or a TorchModel), or ModelCapabilityError."""
    from modelshield.models import TorchModel

    if isinstance(model, TorchModel):
        return model.module
    if isinstance(model, nn.Module):
        return model
    raise ModelCapabilityError(
        f"{owner}: needs the model's hidden layers, so the model must be a torch.nn.Module; got "
        f"{type(model).__name__}. Pass the PyTorch classifier itself (STRIP works on black boxes)."
    )


def penultimate_layer(module: nn.Module) -> str:
    """Name of the last nn.Linear registered in module (its input is the penultimate layer)."""
    name: str | None = None
    for n, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            name = n
    if name is None:
        raise ModelCapabilityError(
            f"penultimate_layer: found no nn.Linear in {type(module).__name__} to read the "
            "penultimate representation from. Pass layer='<name>' (a module from "
            "model.named_modules()) whose output is the representation to use."
        )
    return name


def extract_features(
    model: Any, x: Tensor, *, layer: str | None = None, batch_size: int = 256, owner: str = "extract_features"
) -> Tensor:
    """(N, D) float CPU representations of x, batched, without gradients, model flags restored.

    Args:
        model: a torch module (or TorchModel).
        x: (N, ...) inputs.
        layer: None reads the *input* of the last nn.Linear (the penultimate-layer
            representation, which separates poisoned points far better than the logits);
            a module name reads that module's *output*, flattened.
        batch_size: rows per forward pass.
    """
    module = torch_module(model, owner=owner)
    modules = dict(module.named_modules())
    name = penultimate_layer(module) if layer is None else layer
    if name not in modules:
        close = [n for n in modules if n and layer and layer in n][:3]
        raise ConfigError(
            f"{owner}: 'layer' must name a module of the model; got {layer!r}. "
            f"Pick one of model.named_modules(){' (e.g. ' + ', '.join(close) + ')' if close else ''}."
        )
    store: list[Tensor] = []

    def hook(_m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        t = inputs[0] if layer is None else output
        store.append(t.detach().flatten(1).float().cpu())

    flags = [m.training for m in module.modules()]
    handle = modules[name].register_forward_hook(hook)
    module.eval()
    try:
        with torch.no_grad():
            for start in range(0, int(x.shape[0]), batch_size):
                module(x[start : start + batch_size])
    finally:
        handle.remove()
        for m, f in zip(module.modules(), flags, strict=True):
            m.training = f
    return torch.cat(store)
