"""The user's own code that two of the README's "Assess your own model" commands import.

``modelshield assess`` never runs code from a model file. Two kinds of model need the user's code:

- a bare PyTorch state dict holds weights but no architecture: ``--arch own_models:make_mlp`` names
  the function that builds the untrained module (``make_own_models.py`` trains it and saves only
  its ``state_dict``);
- a model behind a function (a remote API client, a text pipeline): ``--model own_models:spam_filter``
  names a callable ``list[str] -> (N, 2) probabilities`` that modelshield queries as a black box.

Both are imported by ``package.module:function`` path, so this folder must be on the Python path:
the README runs ``PYTHONPATH=examples modelshield assess ...`` from the repository root.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from torch import nn

__all__ = ["SPAM_WORDS", "make_mlp", "spam_filter"]


def make_mlp() -> nn.Module:
    """The untrained 8x8-digit classifier whose weights ``digits_mlp.pt`` holds: 64 -> 32 -> 10."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


SPAM_WORDS: dict[str, float] = {
    "free": 2.0, "win": 1.5, "won": 1.5, "winner": 2.0, "prize": 2.5, "claim": 2.5, "cash": 1.5,
    "award": 2.0, "guaranteed": 2.0, "urgent": 2.0, "txt": 2.0, "text": 1.0, "reply": 1.2, "stop": 1.2,
    "mobile": 1.2, "ringtone": 2.0, "tone": 1.5, "offer": 1.2, "service": 1.0, "customer": 1.0,
    "call": 0.8, "now": 0.6, "www": 2.0, "http": 2.0, "£": 2.0, "entry": 1.5, "selected": 1.5,
}
"""A hand-written spam filter's word weights (log-odds added per occurrence)."""

_TOKEN = re.compile(r"£|[a-z0-9]+")
_BIAS = -3.0
_LONG_NUMBER = 2.0  # a phone or short-code number (5+ digits) in the message


def spam_filter(texts: Sequence[str]) -> np.ndarray:
    """``(N, 2)`` probabilities ``[ham, spam]`` of each message: a keyword-weight logistic score.

    A stand-in for any text model you can only call (an API, a pipeline in another framework):
    modelshield sees its answers, never its internals.
    """
    scores = np.empty(len(texts), dtype=np.float64)
    for i, text in enumerate(texts):
        tokens = _TOKEN.findall(str(text).lower())
        score = _BIAS + sum(SPAM_WORDS.get(t, 0.0) for t in tokens)
        score += _LONG_NUMBER * any(t.isdigit() and len(t) >= 5 for t in tokens)
        scores[i] = score
    spam = 1.0 / (1.0 + np.exp(-scores))
    return np.stack([1.0 - spam, spam], axis=1)
