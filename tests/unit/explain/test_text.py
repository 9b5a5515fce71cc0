"""Per-token attributions: the tokenizer round trip, exact Shapley over tokens, occlusion by hand,
a real spam filter."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from testkit.shapley import brute_force_shapley

from modelshield.errors import ConfigError, InputError
from modelshield.explain import TextKernelShap, TextOcclusion
from modelshield.explain.text import rebuild, tokenize


def keyword_model(texts: list[str]) -> np.ndarray:
    """A 'spam filter' with interactions: spam score from 'free', 'prize' and 'free' AND 'now'."""
    out = []
    for t in texts:
        w = t.lower().split()
        z = -1.0 + 1.5 * ("free" in w) + 1.0 * ("prize" in w) + 2.0 * ("free" in w and "now" in w)
        p = 1 / (1 + math.exp(-z))
        out.append([1 - p, p])
    return np.asarray(out)


def test_tokenize_and_rebuild_round_trip() -> None:
    text = "  WIN a £1000 prize, now!!  Don't wait "
    tokens, gaps, tail = tokenize(text)
    assert tokens == ("WIN", "a", "£", "1000", "prize", ",", "now", "!!", "Don't", "wait")
    assert rebuild(tokens, gaps, tail, [True] * len(tokens)) == text
    assert rebuild(tokens, gaps, tail, [False] * len(tokens)) == ""
    keep = [t in ("WIN", "prize") for t in tokens]
    assert rebuild(tokens, gaps, tail, keep) == "  WIN prize "


def _brute_force(text: str, target: int) -> np.ndarray:
    tokens, gaps, tail = tokenize(text)
    d = len(tokens)

    def v(s: set[int]) -> float:
        return float(keyword_model([rebuild(tokens, gaps, tail, [i in s for i in range(d)])])[0, target])

    return brute_force_shapley(v, d)


def test_text_kernel_shap_is_exact_shapley_over_tokens_when_enumerable() -> None:
    texts = ["free prize now", "get it free now ok", "hello there"]
    att = TextKernelShap(samples=64)(keyword_model, texts)
    assert att.tokens == tuple(tokenize(t)[0] for t in texts)
    assert all(att.details["exact"])
    for i, t in enumerate(texts):
        ref = _brute_force(t, int(att.target[i]))
        assert np.allclose(att.values[i, :len(ref)].numpy(), ref, atol=1e-6)
        assert float(att.values[i, len(ref):].abs().sum()) == 0.0  # padding
    assert float(att.completeness_gap.max()) < 1e-6  # type: ignore[union-attr]
    # 'free' and 'now' share the interaction bonus equally
    toks = att.tokens[1]  # type: ignore[index]
    assert att.values[1, toks.index("free")] > att.values[1, toks.index("now")] > 0.1


def test_text_kernel_shap_sampled_is_close_and_seeded() -> None:
    text = ["you won a free prize call now to claim it before it expires today ok"]  # 15 tokens
    exact_free = _brute_force(text[0], 1)
    a = TextKernelShap(samples=400, seed=1)(keyword_model, text, target=torch.tensor([1]))
    b = TextKernelShap(samples=400, seed=1)(keyword_model, text, target=torch.tensor([1]))
    assert torch.equal(a.values, b.values)
    assert np.abs(a.values[0].numpy() - exact_free).max() < 0.02
    assert float(a.completeness_gap.max()) < 1e-6  # type: ignore[union-attr]


def test_occlusion_is_leave_one_out() -> None:
    texts = ["free prize now", "nothing here"]
    att = TextOcclusion()(keyword_model, texts, target=torch.tensor([1, 1]))
    full = keyword_model(["free prize now"])[0, 1]
    without_free = keyword_model(["prize now"])[0, 1]
    assert abs(float(att.values[0, 0]) - (full - without_free)) < 1e-6
    assert float(att.values[1].abs().max()) == 0.0
    assert att.baseline_score is None and att.values.shape == (2, 3)


def test_bad_inputs_give_one_clear_line() -> None:
    with pytest.raises(InputError, match="non-empty list of strings"):
        TextOcclusion()(keyword_model, "free prize")
    with pytest.raises(InputError, match="non-empty list of strings"):
        TextKernelShap()(keyword_model, [])
    with pytest.raises(InputError, match="target must be class indices"):
        TextKernelShap()(keyword_model, ["free"], target=torch.tensor([3]))
    with pytest.raises(ConfigError, match="'samples'"):
        TextKernelShap(samples=0)


@pytest.fixture(scope="module")
def spam_nb() -> tuple[Any, list[str]]:
    from modelshield.data.sms_spam import load_sms_spam
    from modelshield.zoo.spam import train_spam_model

    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "sms-spam" / "SMSSpamCollection").is_file():
        pytest.skip("SMS spam data not found; set MODELSHIELD_DATA")
    ds = load_sms_spam(root)
    model = train_spam_model("nb", ds)
    spam = [t for t, y in zip(ds.texts_test, ds.y_test.tolist(), strict=True) if y == 1][:8]
    caught = [t for t, p in zip(spam, model.predict_proba(spam)[:, 1], strict=True) if p > 0.5][:4]
    return model, caught


def test_spam_filter_attributions_point_at_spam_words(spam_nb: tuple[Any, list[str]]) -> None:
    model, texts = spam_nb
    att = TextKernelShap(samples=256)(model, texts, target=torch.ones(len(texts), dtype=torch.long))
    assert float(att.completeness_gap.max()) < 1e-5  # type: ignore[union-attr]
    occ = TextOcclusion()(model, texts, target=torch.ones(len(texts), dtype=torch.long))
    for i, toks in enumerate(att.tokens or ()):
        vals = att.values[i, :len(toks)]
        assert float(vals.sum()) > 0  # caught spam: its probability rises above the empty text's
        top = int(vals.argmax())
        assert float(occ.values[i, top]) > 0, (toks[top], occ.values[i, top])  # removing it lowers spam
