"""White-box adapter for torch.nn.Module classifiers."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from modelshield.errors import InputError, ModelCapabilityError
from modelshield.models._budget import QueryCounter
from modelshield.models.device import parameter_device
from modelshield.models.outputs import evaluating, labels_and_errors, safe_argmax

__all__ = ["TorchModel", "eval_mode", "infer_n_classes"]


def infer_n_classes(module: nn.Module) -> int | None:
    """out_features of the last nn.Linear registered in the module, if any.

    Only a provisional guess (registration order need not be call order): the first forward
    pass replaces it with the true output width (see ``TorchModel.n_classes_confirmed``).
    """
    last = None
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            last = sub.out_features
    return last


class TorchModel:
    """A torch.nn.Module classifier seen through the model protocol (white-box).

    The module must map a float batch ``(N, *input_shape)`` in ``bounds`` to logits ``(N, C)``.
    A binary model with one output logit ``z`` is presented as two logits ``[0, z]``, so that
    softmax gives ``sigmoid(z)`` for class 1 and every attack works unchanged.
    The adapter never moves the module, never touches parameter ``.grad`` and counts every
    forward row and every input-gradient row. Without ``n_classes`` the class count is a guess
    from the module's layers until the first forward pass reads the real output width
    (attacks probe one row first, see ``attacks.verify.check_batch``).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        n_classes: int | None = None,
        budget: int | None = None,
    ) -> None:
        self.module = module
        self.bounds = bounds
        self.queries = QueryCounter(budget=budget)
        inferred = infer_n_classes(module) if n_classes is None else n_classes
        # A single output logit is a binary classifier.
        self._n_classes: int | None = 2 if inferred == 1 else inferred
        self._confirmed = n_classes is not None

    @property
    def n_classes_known(self) -> int | None:
        """The class count if known or guessed from the layers (see ``n_classes_confirmed``), else None."""
        return self._n_classes

    @property
    def n_classes_confirmed(self) -> bool:
        """True once the class count is known for sure (given, or read from a forward pass)."""
        return self._confirmed

    def __repr__(self) -> str:
        return f"TorchModel({type(self.module).__name__}, bounds={self.bounds})"

    @property
    def n_classes(self) -> int:
        if self._n_classes is None:
            raise ModelCapabilityError(
                "TorchModel: the number of classes is unknown until the model has seen an input. "
                "Pass n_classes=... to as_model()."
            )
        return self._n_classes

    @property
    def device(self) -> torch.device | None:
        """The module's device (its first parameter's or buffer's); None for a stateless module."""
        return parameter_device(self.module)

    def check_device(self, x: Tensor) -> None:
        dev = self.device
        if dev is not None and dev != x.device:
            raise InputError(
                f"TorchModel: x is on {x.device} but the model is on {dev}. "
                f"Move the inputs with x.to('{dev}') (the model is never moved for you)."
            )

    def _raw_logits(self, x: Tensor) -> Tensor:
        out = self.module(x)
        if isinstance(out, tuple | list):
            out = out[0]
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ModelCapabilityError(
                f"TorchModel: the module must return logits of shape (N, C) for N inputs; got "
                f"{shape} for N={x.shape[0]}. Make forward() return one row of class logits per "
                "input (not probabilities, labels or features)."
            )
        if out.shape[1] == 1:
            out = torch.cat([torch.zeros_like(out), out], dim=1)
        if not self._confirmed:
            self._n_classes = int(out.shape[1])
            self._confirmed = True
        elif out.shape[1] != self._n_classes:
            raise ModelCapabilityError(
                f"TorchModel: expected {self._n_classes} logits per input; got {out.shape[1]}. "
                "Pass the right n_classes to as_model()."
            )
        return out

    def logits(self, x: Tensor) -> Tensor:
        """(N, C) logits, differentiable with respect to x; counts N forward queries."""
        self.check_device(x)
        self.queries.add_forward(x.shape[0])
        return self._raw_logits(x)

    def scores(self, x: Tensor) -> Tensor:
        """(N, C) logits without autograd; counts N forward queries."""
        with torch.no_grad():
            return self.logits(x)

    @property
    def dtype(self) -> torch.dtype | None:
        """The floating dtype of the module's first floating parameter or buffer (None if none)."""
        tensors = itertools.chain(self.module.parameters(), self.module.buffers())
        return next((t.dtype for t in tensors if t.is_floating_point()), None)

    def predict(self, x: Tensor) -> Tensor:
        """(N,) int64 labels; counts N forward queries. NaN logits are read as -inf."""
        return safe_argmax(self.scores(x))

    def predict_with_errors(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N,) labels and (N,) bool model errors (rows with NaN or inf logits); N queries."""
        return labels_and_errors(self.scores(x))

    def outputs(self, x: Tensor) -> Tensor:
        """The model's raw answer to x: (N, C) logits; counts N forward queries."""
        return self.scores(x)

    def value_and_grad(
        self, x: Tensor, loss_fn: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Logits at x (detached) and the gradient of ``loss_fn(logits).sum()`` w.r.t. x.

        ``loss_fn`` maps (N, C) logits to (N,) per-point losses. One forward and one backward
        pass; parameter gradients are never computed or stored (``torch.autograd.grad`` on x).
        """
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            z = self.logits(x)
            loss = loss_fn(z)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        self.queries.add_backward(x.shape[0])
        return z.detach(), grad


@contextmanager
def eval_mode(model: TorchModel) -> Iterator[None]:
    """Run the block with every submodule in eval mode and with parameters frozen; restore both.

    Freezing ``requires_grad`` on parameters means the backward pass computes input gradients
    only (no weight-gradient work) and nothing is written to parameter ``.grad``.
    """
    params = list(model.module.parameters())
    saved_grads = [p.requires_grad for p in params]
    with evaluating(model.module):
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(params, saved_grads, strict=True):
                p.requires_grad_(flag)
