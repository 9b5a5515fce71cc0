"""Per-token attributions for text classifiers over raw strings (spam filters).

Tokens come from a simple regex tokenizer (:func:`tokenize`: runs of word characters, with an
inner apostrophe, and runs of punctuation); a coalition of tokens is the text rebuilt from the kept
tokens with their original leading whitespace, so the full coalition is the original string and the
empty one is ``""`` (the baseline). The model is any text model modelshield takes (a pipeline with
``predict_proba`` over strings, a margin model, a callable ``list[str] -> (N, C)``, a ``TextModel``);
the output space is the probability of the target class (margins: their softmax).

- :class:`TextOcclusion`: leave-one-out, ``f(text) - f(text without token i)`` (Zeiler and Fergus
  2014's occlusion, one token at a time; no completeness: ``baseline_score`` is None).
- :class:`TextKernelShap`: Kernel SHAP (Lundberg and Lee 2017) with tokens as players, against the
  empty text: ``sum(values) == f(text) - f("")`` exactly; exact when ``2^T - 2 <= samples``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from modelshield._checks import check_range
from modelshield.attacks.ops import make_generator
from modelshield.errors import InputError
from modelshield.explain.result import Attribution
from modelshield.explain.shapley import kernel_coalitions, solve_kernel_shap
from modelshield.models import TextModel

__all__ = ["TextKernelShap", "TextOcclusion", "rebuild", "tokenize"]

TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]+")


def tokenize(text: str) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """``(tokens, gaps, tail)``: each token, the whitespace before it, and the text after the last one."""
    tokens: list[str] = []
    gaps: list[str] = []
    pos = 0
    for m in TOKEN.finditer(text):
        gaps.append(text[pos:m.start()])
        tokens.append(m.group())
        pos = m.end()
    return tuple(tokens), tuple(gaps), text[pos:]


def rebuild(tokens: Sequence[str], gaps: Sequence[str], tail: str, keep: Sequence[bool]) -> str:
    """The text with only the kept tokens (each with its own leading gap); all kept -> the original."""
    body = "".join(g + t for g, t, k in zip(gaps, tokens, keep, strict=True) if k)
    return body + tail if any(keep) else ""


def _text_model(model: Any) -> TextModel:
    return model if isinstance(model, TextModel) else TextModel(model)


def _probs(tm: TextModel, texts: list[str]) -> Tensor:
    s = tm.scores(texts).double()
    return s.softmax(1) if tm.score_kind == "margins" else s


def _scored(tm: TextModel, texts: list[str], batch_size: int) -> Tensor:
    """``(len(texts), C)`` probabilities, one model call per batch_size texts."""
    if not texts:
        return torch.zeros(0, 1, dtype=torch.float64)
    return torch.cat([_probs(tm, texts[lo:lo + batch_size]) for lo in range(0, len(texts), batch_size)])


def _check_texts(owner: str, texts: object) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts or not all(
            isinstance(t, str) for t in texts):
        raise InputError(f"{owner}: x must be a non-empty list of strings; got {type(texts).__name__}"
                         f"{'' if not isinstance(texts, Sequence) else f' of {len(texts)}'}. Pass e.g. "
                         "['win a free prize', ...] (one string is ['text']).")
    return list(texts)


def _targets(owner: str, p_x: Tensor, target: Tensor | None) -> Tensor:
    n, c = p_x.shape
    if target is None:
        return p_x.argmax(1)
    if not isinstance(target, Tensor) or target.shape != (n,) or target.is_floating_point():
        raise InputError(f"{owner}: target must be an int tensor of shape ({n},); got "
                         f"{getattr(target, 'shape', type(target).__name__)}. Pass one class per text.")
    tgt = target.long().cpu()
    if bool(((tgt < 0) | (tgt >= c)).any()):
        raise InputError(f"{owner}: target must be class indices in [0, {c - 1}]; got {tgt.tolist()[:5]}. "
                         "Check the labels match the model's outputs.")
    return tgt


def _pad(rows: list[Tensor]) -> Tensor:
    width = max((r.shape[0] for r in rows), default=0)
    out = torch.zeros(len(rows), width, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, :r.shape[0]] = r.float()
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class TextOcclusion:
    """Leave-one-token-out attributions: ``values[i, t] = f(text_i) - f(text_i without token t)``.

    All occluded texts of all inputs are scored in one model call per ``batch_size`` texts.

    Example:
        att = TextOcclusion()(spam_pipeline, ["WIN a FREE prize now!!"])
        list(zip(att.tokens[0], att.values[0].tolist()))
    """

    batch_size: int = 4096

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, owner="TextOcclusion", low=1, integer=True,
                    fix="Pass how many texts one model call may score, e.g. 4096.")

    def __call__(self, model: Any, x: Sequence[str], target: Tensor | None = None) -> Attribution:
        start = time.perf_counter()
        texts = _check_texts("TextOcclusion", x)
        tm = _text_model(model)
        p_x = _probs(tm, texts)
        tgt = _targets("TextOcclusion", p_x, target)
        parsed = [tokenize(t) for t in texts]
        queries: list[str] = []
        owners: list[int] = []
        for i, (tok, gaps, tail) in enumerate(parsed):
            for j in range(len(tok)):
                queries.append(rebuild(tok, gaps, tail, [k != j for k in range(len(tok))]))
                owners.append(i)
        p_occ = _scored(tm, queries, self.batch_size)
        f_x = p_x.gather(1, tgt[:, None])[:, 0]
        rows: list[Tensor] = []
        pos = 0
        for i, (tok, _, _) in enumerate(parsed):
            occ = p_occ[pos:pos + len(tok), int(tgt[i])] if tok else torch.zeros(0, dtype=torch.float64)
            rows.append(f_x[i] - occ)
            pos += len(tok)
        return Attribution(
            method="text-occlusion", values=_pad(rows), target=tgt, score=f_x,
            tokens=tuple(p[0] for p in parsed), details={"output": "probability", "queries": len(queries)},
            config=asdict(self), seconds=time.perf_counter() - start)


@dataclass(frozen=True, kw_only=True, slots=True)
class TextKernelShap:
    """Kernel SHAP over tokens (coalitions are token masks; absent tokens are removed from the text).

    Attributes:
        samples: coalitions per text; when ``2^T - 2 <= samples`` every coalition is scored (exact).
        seed: seeds the coalition draws (None: fresh entropy).
        paired: antithetic (complementary) coalition pairs.
        batch_size: texts per model call.

    Example:
        att = TextKernelShap(samples=512)(spam_pipeline, texts)
        att.values.sum(1), att.score - att.baseline_score  # equal
    """

    samples: int = 512
    seed: int | None = 0
    paired: bool = True
    batch_size: int = 4096

    def __post_init__(self) -> None:
        check_range("samples", self.samples, owner="TextKernelShap", low=2, integer=True,
                    fix="Pass the number of token coalitions per text, e.g. 512.")
        check_range("batch_size", self.batch_size, owner="TextKernelShap", low=1, integer=True,
                    fix="Pass how many texts one model call may score, e.g. 4096.")

    def __call__(self, model: Any, x: Sequence[str], target: Tensor | None = None) -> Attribution:
        start = time.perf_counter()
        texts = _check_texts("TextKernelShap", x)
        tm = _text_model(model)
        p_x = _probs(tm, [*texts, ""])
        p_empty, p_x = p_x[-1], p_x[:-1]
        tgt = _targets("TextKernelShap", p_x, target)
        gen = make_generator(self.seed, torch.device("cpu"))
        parsed = [tokenize(t) for t in texts]
        plans: list[tuple[Tensor, Tensor]] = []
        queries: list[str] = []
        for tok, gaps, tail in parsed:
            if len(tok) < 2:
                plans.append((torch.zeros(0, len(tok), dtype=torch.bool),
                              torch.zeros(0, dtype=torch.float64)))
                continue
            masks, weights = kernel_coalitions(len(tok), self.samples, paired=self.paired, generator=gen)
            plans.append((masks, weights))
            queries.extend(rebuild(tok, gaps, tail, row) for row in masks.tolist())
        p_q = _scored(tm, queries, self.batch_size)
        f_x = p_x.gather(1, tgt[:, None])[:, 0]
        f_null = p_empty[tgt]
        rows: list[Tensor] = []
        pos = 0
        for i, (masks, weights) in enumerate(plans):
            d = masks.shape[1]
            if d == 0:
                rows.append(torch.zeros(0, dtype=torch.float64))
            elif d == 1:
                rows.append((f_x[i] - f_null[i]).reshape(1))
            else:
                vals = p_q[pos:pos + masks.shape[0], int(tgt[i])][None]
                rows.append(solve_kernel_shap(masks, weights, vals, f_x[i:i + 1], f_null[i:i + 1])[0])
                pos += masks.shape[0]
        return Attribution(
            method="text-kernel-shap", values=_pad(rows), target=tgt, score=f_x, baseline_score=f_null,
            tokens=tuple(p[0] for p in parsed),
            details={"output": "probability", "baseline": "the empty text", "queries": len(queries),
                     "exact": [bool(m.shape[0] >= 2 ** m.shape[1] - 2) for m, _ in plans]},
            config=asdict(self), seconds=time.perf_counter() - start)
