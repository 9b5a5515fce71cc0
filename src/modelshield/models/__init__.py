"""The one model protocol, its adapters, safe loading of model files and the reference architectures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

from torch import nn

from modelshield._checks import check_bounds
from modelshield.errors import ModelCapabilityError
from modelshield.models._budget import QueryCounter
from modelshield.models._callable import CallableModel, OutputKind, ScoreKind, label_indices
from modelshield.models._protocol import GradientModel, Model
from modelshield.models._torch import TorchModel, eval_mode, infer_n_classes
from modelshield.models.black_box import BlackBoxOutput, as_black_box, black_box_answers, probabilities
from modelshield.models.device import module_device, parameter_device, resolve_device
from modelshield.models.outputs import evaluating, predict_labels
from modelshield.models.refs import ModelFormat, ModelProvenance, ModelRef, load_model_ref
from modelshield.models.remote import HttpModel
from modelshield.models.text import TextAnswers, TextModel, as_text_model
from modelshield.models.training import (
    EpochDecision,
    EpochInfo,
    Optimization,
    TrainResult,
    cross_entropy_loss,
    make_optimizer,
    train_module,
)

__all__ = [
    "BlackBoxOutput",
    "CallableModel",
    "EpochDecision",
    "EpochInfo",
    "GradientModel",
    "HttpModel",
    "Model",
    "ModelFormat",
    "ModelLike",
    "ModelProvenance",
    "ModelRef",
    "Optimization",
    "QueryCounter",
    "ScoreKind",
    "TextAnswers",
    "TextModel",
    "TorchModel",
    "TrainResult",
    "as_black_box",
    "as_gradient_model",
    "as_model",
    "as_text_model",
    "black_box_answers",
    "cross_entropy_loss",
    "eval_mode",
    "evaluating",
    "infer_n_classes",
    "label_indices",
    "load_model_ref",
    "make_optimizer",
    "module_device",
    "parameter_device",
    "predict_labels",
    "probabilities",
    "resolve_device",
    "train_module",
]

ModelLike: TypeAlias = nn.Module | TorchModel | CallableModel | Any

BLACK_BOX_HINT = "Black-box models work with query-only attacks (Square, SimBA, HopSkipJump)."


def as_model(
    obj: ModelLike,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    output: OutputKind = "auto",
    n_classes: int | None = None,
    budget: int | None = None,
    class_names: Sequence[Any] | None = None,
) -> TorchModel | CallableModel:
    """Wrap a torch module, a predict_proba object or a plain callable; Models pass through.

    Args:
        obj: a ``torch.nn.Module`` returning logits (white-box), an object with
            ``predict_proba`` (e.g. a fitted scikit-learn classifier), an estimator with
            ``decision_function`` but no ``predict_proba`` (LinearSVC, SVC(probability=False): its
            margins are the scores, ``score_kind == "margins"``; not probabilities, but their argmax
            is checked to equal ``predict``, else the model is read as label-only and ``notes`` says
            why), an estimator with only ``predict`` (label-only black box), or a callable
            ``x -> probabilities (N, C)`` or ``x -> labels (N,)`` (black-box).
        bounds: the natural input range; inputs outside it are rejected.
        output: for callables, ``"proba"``, ``"labels"`` or ``"auto"`` (decide on first call);
            ``"labels"`` reads an estimator through ``predict`` only (no probabilities, no margins).
        n_classes: number of classes, when it cannot be inferred.
        budget: maximum number of forward queries (input rows), or None for no limit.
        class_names: the class names by index, to read a black box's label answers by name
            (``"spam"`` -> its index); an estimator's own ``classes_`` come first.

    Raises:
        ModelCapabilityError: obj is none of the above.
        ConfigError: bounds are not a valid (lo, hi) pair.

    Example:
        model = as_model(my_cnn, bounds=(0.0, 1.0))
        model.predict(x)
    """
    if isinstance(obj, TorchModel | CallableModel):
        return obj
    lo_hi = check_bounds(bounds, owner="as_model")
    if isinstance(obj, nn.Module):
        return TorchModel(obj, bounds=lo_hi, n_classes=n_classes, budget=budget)
    return CallableModel(obj, bounds=lo_hi, output=output, n_classes=n_classes, budget=budget,
                         class_names=class_names)


def as_gradient_model(obj: ModelLike, *, caller: str) -> TorchModel:
    """Return a white-box TorchModel for obj, or raise ModelCapabilityError naming the caller."""
    model = as_model(obj)
    if not isinstance(model, TorchModel):
        raise ModelCapabilityError(
            f"{caller}: needs gradients, so the model must be a torch.nn.Module returning logits; "
            f"got a black-box {type(model).__name__}. {BLACK_BOX_HINT}"
        )
    return model
