"""Black-box evasion of text classifiers (spam filters and others): character edits, word substitution,
good words."""

from __future__ import annotations

import hashlib
import math
import secrets
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from modelshield._checks import check_choice, check_range
from modelshield.attacks.evasion.text._edits import (
    CHAR_OPS,
    char_candidates,
    edit_distance,
    good_word_pool,
    lexicon,
    split_words,
    word_candidates,
    words_changed,
)
from modelshield.attacks.ops import labels_adversarial, make_generator, mix64
from modelshield.attacks.verify import attack_params
from modelshield.errors import ConfigError, EvaluationWarning, InputError
from modelshield.models import TextModel, as_text_model

__all__ = ["TextEvasion", "TextEvasionResult", "TextModel", "as_text_model"]

Method = Literal["char", "word", "goodword", "combined"]
METHODS: tuple[Method, ...] = ("char", "word", "goodword", "combined")
Goal = Literal["auto", "malicious", "any"]
GOALS: tuple[Goal, ...] = ("auto", "malicious", "any")
"""What the attacker wants: ``"malicious"`` makes detected rows of the malicious class
(``spam_class``) leave it (spam passing as ham); ``"any"`` changes the label of every correctly
classified row (untargeted, any number of classes); ``"auto"`` is ``"malicious"`` for a model
with two outputs and ``"any"`` otherwise."""


def _margin(scores: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """(N,) distance to success: > 0 while the attack has not succeeded, <= 0 once it has.

    Untargeted: p_y - max_{j != y} p_j. Targeted: max_{j != t} p_j - p_t.
    """
    cls = y if target is None else target
    own = scores.gather(1, cls[:, None]).squeeze(1)
    other = scores.scatter(1, cls[:, None], -math.inf).max(1).values
    return own - other if target is None else other - own


@dataclass(frozen=True, slots=True)
class TextEvasionResult:
    """What a text evasion attack produced, re-verified on the model.

    Attributes:
        attack, params: the attack's class name and configuration.
        texts, texts_adv: the clean and adversarial texts (unattacked rows are unchanged).
        y: (N,) true labels. target: (N,) targets, or None (untargeted).
        clean_pred, adv_pred: (N,) labels for texts and texts_adv (adv_pred from a fresh query).
        attacked: (N,) bool: rows attacked (eligible, see ``eligible``, with a word budget of at
            least one word).
        success: (N,) bool: attacked, within budget, and the fresh query gives a label != y
            (or == target).
        words_changed: (N,) int64 word-level edit distance texts -> texts_adv (recomputed).
        chars_changed: (N,) int64 character-level edit distance.
        word_fraction: (N,) float words_changed / words in the clean text.
        max_words: (N,) int64 the per-text word budget floor(max_word_fraction * words).
        point_queries: (N,) forward queries spent on each text (verification excluded).
        queries_forward: all forward queries of the call, verification included.
        time_s: wall time.
        goal: the goal used, ``"malicious"`` or ``"any"`` (``"auto"`` resolved, see ``GOALS``).
    """

    attack: str
    params: dict[str, Any]
    texts: tuple[str, ...]
    texts_adv: tuple[str, ...]
    y: Tensor
    target: Tensor | None
    clean_pred: Tensor
    adv_pred: Tensor
    attacked: Tensor
    success: Tensor
    words_changed: Tensor
    chars_changed: Tensor
    word_fraction: Tensor
    max_words: Tensor
    point_queries: Tensor
    queries_forward: int
    time_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    goal: Literal["malicious", "any"] = "malicious"

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def eligible(self) -> Tensor:
        """(N,) bool: rows the model classifies correctly on the clean text; for the ``"malicious"``
        goal, only those of the malicious class ``spam_class`` (detected spam)."""
        correct = self.clean_pred == self.y
        if self.goal == "any":
            return correct
        return (self.y == int(self.params.get("spam_class", 1))) & correct

    @property
    def success_rate(self) -> float:
        """Share of eligible rows evaded (nan when none is eligible)."""
        el = self.eligible
        return float(self.success[el].float().mean()) if bool(el.any()) else math.nan

    @property
    def median_words_changed(self) -> float:
        """Median words changed over successful rows (nan when none)."""
        sel = self.words_changed[self.success]
        return float(sel.double().median()) if sel.numel() else math.nan

    @property
    def median_queries(self) -> float:
        """Median queries per eligible row (nan when none)."""
        sel = self.point_queries[self.eligible]
        return float(sel.double().median()) if sel.numel() else math.nan

    def to_dict(self, *, examples: int = 5) -> dict[str, Any]:
        """JSON-safe summary with up to ``examples`` successful (clean, adversarial) text pairs."""

        def f(v: float) -> float | None:
            return None if math.isnan(v) else round(v, 6)

        idx = self.success.nonzero().flatten()[:examples].tolist()
        spam = int(self.params.get("spam_class", 1))
        is_spam = self.y == spam

        def detected(pred: Tensor) -> float:
            return float((pred[is_spam] == spam).float().mean()) if bool(is_spam.any()) else math.nan

        def accuracy(pred: Tensor) -> float:
            return float((pred == self.y).float().mean()) if self.n else math.nan

        # recall of the malicious class for the "malicious" goal; accuracy over all rows for "any"
        rate = detected if self.goal == "malicious" else accuracy
        prefix = "recall" if self.goal == "malicious" else "accuracy"
        return {
            "attack": self.attack,
            "goal": self.goal,
            "n": self.n,
            "eligible": int(self.eligible.sum()),
            "attacked": int(self.attacked.sum()),
            "successes": int(self.success.sum()),
            "success_rate": f(self.success_rate),
            f"{prefix}_before": f(rate(self.clean_pred)),
            f"{prefix}_after": f(rate(self.adv_pred)),
            "median_words_changed": f(self.median_words_changed),
            "median_chars_changed": f(float(self.chars_changed[self.success].double().median()))
            if bool(self.success.any())
            else None,
            "max_word_fraction_used": f(float(self.word_fraction.max())) if self.n else None,
            "median_queries": f(self.median_queries),
            "queries_forward": self.queries_forward,
            "time_s": round(self.time_s, 4),
            "examples": [{"index": i, "text": self.texts[i], "text_adv": self.texts_adv[i]} for i in idx],
            "params": self.params,
            **self.extra,
        }


@dataclass
class _State:
    """Mutable per-text search state (internal)."""

    tokens: list[str]
    words: list[int]  # token positions holding words
    budget: int
    margin: float
    order: list[int] = field(default_factory=list)  # word indices (into words), most important first
    pointer: int = 0
    changed: int = 0
    queries: int = 0
    done: bool = False

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@dataclass(frozen=True, kw_only=True, slots=True)
class TextEvasion:
    """Black-box evasion of a text classifier (e.g. a spam filter) under a word budget.

    ``goal`` says which rows are attacked. ``"malicious"`` (a spam filter): only rows whose true
    class is ``spam_class`` and that the model detects, towards any other class (or ``target``).
    ``"any"`` (a classifier with any number of classes): every row the model classifies
    correctly, and success is any change of label (or reaching ``target``). ``"auto"`` (the
    default) is ``"malicious"`` for a model with two outputs, ``"any"`` otherwise; the result's
    ``goal`` says which was used. Each attacked text gets a budget of
    ``floor(max_word_fraction * n_words)`` changed words, counted as the word-level edit
    distance to the clean text, which is never exceeded (texts whose budget is 0 are left
    alone). Methods:

    - ``"char"``: DeepWordBug (Gao, Lanchantin, Soffa and Qi, 2018): words are ranked by how
      much deleting each lowers the spam score (one batched query per text), then the most
      important words are perturbed greedily with the best of ``char_ops`` (Cyrillic
      homoglyphs, leetspeak, a '.' separator, a zero-width space, an adjacent-letter swap).
    - ``"word"``: the same greedy loop, with substitutes from the shipped lexicon
      (``lexicon.tsv``: single-token synonyms of spam-typical words).
    - ``"goodword"``: the good-word attack (Lowd and Meek, "Good Word Attacks on Statistical
      Spam Filters", CEAS 2005): every word of a public pool (``good_words``, default the
      shipped ``ham_words.txt``; or the attacker's own ham vocabulary, see ``ham_vocabulary``)
      is probed alone once per call, and the most ham-like are appended, as few as needed.
    - ``"combined"``: char and word candidates together, then good words with what is left
      of the budget.

    Every round scores the candidate edits of all active texts in one batched query. The
    random adjacent-letter swaps of a text come from a generator seeded with ``seed`` and the
    text itself (None: fresh entropy), so they do not depend on the other texts of the call. The
    result is re-verified: texts_adv are scored again, and the word budget is checked by
    recomputing the edit distance.

    Example:
        res = TextEvasion(method="char", max_word_fraction=0.2)(spam_nb, texts, y)
        res.success_rate, res.median_words_changed
    """

    method: Method = "char"
    max_word_fraction: float = 0.2
    max_queries: int | None = None
    char_ops: tuple[str, ...] = CHAR_OPS
    good_words: tuple[str, ...] | None = None
    spam_class: int = 1
    goal: Goal = "auto"
    seed: int | None = 0

    needs_gradients: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS, owner="TextEvasion")
        check_choice("goal", self.goal, GOALS, owner="TextEvasion",
                     fix="Use 'malicious' for a spam filter, 'any' for an untargeted attack.")
        check_range(
            "max_word_fraction",
            self.max_word_fraction,
            owner="TextEvasion",
            low=0.0,
            high=1.0,
            fix="Give the share of a text's words that may change, e.g. 0.2.",
        )
        if self.max_queries is not None:
            check_range("max_queries", self.max_queries, owner="TextEvasion", low=1, integer=True)
        if (
            not isinstance(self.char_ops, tuple)
            or not self.char_ops
            or any(o not in CHAR_OPS for o in self.char_ops)
        ):
            raise ConfigError(
                f"TextEvasion: 'char_ops' must be a non-empty tuple from {CHAR_OPS!r}; "
                f"got {self.char_ops!r}. "
                "Pick some of the listed edits."
            )
        if self.good_words is not None and (
            not isinstance(self.good_words, tuple)
            or not self.good_words
            or not all(
                isinstance(w, str) and w.strip() and not any(c.isspace() for c in w) for w in self.good_words
            )
        ):
            raise ConfigError(
                "TextEvasion: 'good_words' must be None or a non-empty tuple of single words; got "
                f"{self.good_words!r}. Pass e.g. ham_vocabulary(my_ham_texts)."
            )
        check_range("spam_class", self.spam_class, owner="TextEvasion", low=0, integer=True)
        if self.seed is not None:
            check_range("seed", self.seed, owner="TextEvasion", low=0, high=2**63 - 1, integer=True)

    def __call__(
        self,
        model: Any,
        texts: Sequence[str],
        y: Tensor | Sequence[int],
        *,
        target: Tensor | Sequence[int] | None = None,
    ) -> TextEvasionResult:
        """Attack the eligible rows of texts (see ``goal``); returns a re-verified TextEvasionResult.

        Raises:
            InputError: malformed texts or labels, or labels outside the model's outputs.
            ConfigError: goal "malicious" with a ``spam_class`` the model does not output.
        """
        started = time.perf_counter()
        m = as_text_model(model)
        q0 = m.queries.forward
        clean = _check_texts(texts)
        n = len(clean)
        y_t = _check_y(y, n, "y")
        t_t = None if target is None else _check_y(target, n, "target")
        clean_scores = m.scores(clean)
        k = clean_scores.shape[1]
        for name, lab in (("y", y_t), ("target", t_t)):
            if lab is not None and bool((lab >= k).any()):
                row = int((lab >= k).nonzero()[0, 0])
                raise InputError(
                    f"TextEvasion: {name} must be class indices in [0, {k - 1}]; got {int(lab[row])} at row "
                    f"{row}. Check the label encoding matches the model's {k} outputs."
                )
        goal: Literal["malicious", "any"] = (
            self.goal if self.goal != "auto" else ("malicious" if k == 2 else "any")
        )
        if goal == "malicious" and self.spam_class >= k:
            raise ConfigError(
                f"TextEvasion: 'spam_class' must be one of the model's classes 0..{k - 1} for the "
                f"'malicious' goal; got {self.spam_class}. Pass the malicious class's index, or goal='any'."
            )
        clean_pred = clean_scores.argmax(1)
        margin0 = _margin(clean_scores, y_t, t_t)
        n_words = torch.tensor([len(t.split()) for t in clean], dtype=torch.int64)
        max_words = torch.floor(n_words.double() * self.max_word_fraction + 1e-9).long()
        attacked = (clean_pred == y_t) & (margin0 > 0) & (max_words > 0)
        if goal == "malicious":
            attacked &= y_t == self.spam_class
        if t_t is not None:
            attacked &= t_t != y_t
        point_q = torch.ones(n, dtype=torch.int64)
        # One generator per text, seeded from the attack's seed and the text itself, so a text's
        # random typos do not depend on the other texts in the call (nor on their number).
        base = secrets.randbits(63) if self.seed is None else self.seed
        gens: dict[int, torch.Generator] = {}
        states: dict[int, _State] = {}
        for i in attacked.nonzero().flatten().tolist():
            toks = split_words(clean[i])
            states[i] = _State(
                toks, [j for j, tk in enumerate(toks) if tk.strip()], int(max_words[i]), float(margin0[i])
            )
            digest = hashlib.blake2b(clean[i].encode("utf-8"), digest_size=8).digest()
            text_seed = mix64(base, int.from_bytes(digest, "little"), int(y_t[i])) >> 1
            gens[i] = make_generator(text_seed, torch.device("cpu"))
        if self.method != "goodword":
            self._greedy(m, states, y_t, t_t, gens)
        if self.method in ("goodword", "combined"):
            self._good_words(m, states, y_t, t_t)
        for i, st in states.items():
            point_q[i] += st.queries
        adv = list(clean)
        for i, st in states.items():
            adv[i] = st.text
        return self._verify(
            m, clean, adv, y_t, t_t, clean_pred, attacked, max_words, n_words, point_q, q0, started, goal
        )

    # -- search ------------------------------------------------------------------------------

    def _cap(self, st: _State) -> int:
        return 10**12 if self.max_queries is None else self.max_queries - 1 - st.queries

    def _greedy(
        self, m: TextModel, states: dict[int, _State], y: Tensor, t: Tensor | None,
        gens: dict[int, torch.Generator],
    ) -> None:
        table = lexicon() if self.method in ("word", "combined") else {}
        use_chars = self.method in ("char", "combined")
        # word importance: delete each word (DeepWordBug's "replace-1" score), one batch
        batch: list[str] = []
        owners: list[tuple[int, int]] = []
        for i, st in states.items():
            for w in range(min(len(st.words), max(self._cap(st), 0))):
                toks = list(st.tokens)
                toks[st.words[w]] = ""
                batch.append("".join(toks))
                owners.append((i, w))
        imp: dict[int, dict[int, float]] = {i: {} for i in states}
        if batch:
            rows = torch.tensor([o[0] for o in owners])
            margins = _margin(m.scores(batch), y[rows], None if t is None else t[rows])
            for (i, w), mg in zip(owners, margins.tolist(), strict=True):
                imp[i][w] = states[i].margin - mg
                states[i].queries += 1
        for i, st in states.items():
            st.order = sorted(imp[i], key=lambda w: (-imp[i][w], w))
        while True:
            batch, owners2 = [], []
            for i, st in states.items():
                while not st.done and st.pointer < len(st.order):
                    if st.changed >= st.budget or self._cap(st) <= 0:
                        st.done = True
                        break
                    pos = st.words[st.order[st.pointer]]
                    st.pointer += 1
                    word = st.tokens[pos]
                    cands = (char_candidates(word, self.char_ops, gens[i]) if use_chars else []) + (
                        word_candidates(word, table) if table else []
                    )
                    cands = [c for c in dict.fromkeys(cands) if c != word][: max(self._cap(st), 0)]
                    if cands:
                        for c in cands:
                            toks = list(st.tokens)
                            toks[pos] = c
                            batch.append("".join(toks))
                            owners2.append((i, pos, c))
                        break
            if not batch:
                break
            rows = torch.tensor([o[0] for o in owners2])
            cand_margins = _margin(m.scores(batch), y[rows], None if t is None else t[rows]).tolist()
            best: dict[int, tuple[float, int, str]] = {}
            for (i, pos, c), mg in zip(owners2, cand_margins, strict=True):
                states[i].queries += 1
                if i not in best or mg < best[i][0]:
                    best[i] = (mg, pos, c)
            for i, (mg, pos, c) in best.items():
                st = states[i]
                if mg < st.margin:
                    st.tokens[pos] = c
                    st.margin = mg
                    st.changed += 1
                    if mg <= 0:
                        st.done = True

    def _good_words(self, m: TextModel, states: dict[int, _State], y: Tensor, t: Tensor | None) -> None:
        active = [
            i for i, st in states.items() if st.margin > 0 and st.changed < st.budget and self._cap(st) > 0
        ]
        if not active:
            return
        pool = list(self.good_words or good_word_pool())
        # Lowd and Meek's probes: score every pool word alone, once; the attacker knows no weights.
        probe = m.scores(pool)
        # One ranking per goal class: untargeted, the words least like the row's own class come
        # first (for spam: the most ham-like); targeted, the words most like the target class.
        rankings: dict[tuple[bool, int], list[str]] = {}
        for i in active:
            key = (t is None, int(y[i] if t is None else t[i]))
            if key not in rankings:
                col = probe[:, key[1]] if key[0] else -probe[:, key[1]]
                rankings[key] = [pool[j] for j in torch.argsort(col, stable=True).tolist()]
        share = math.ceil(len(pool) / len(active))
        for i in active:
            states[i].queries += share  # the probes, shared out over the attacked texts
        batch, owners = [], []
        ranked_of: dict[int, list[str]] = {}
        for i in active:
            st = states[i]
            ranked = ranked_of[i] = rankings[(t is None, int(y[i] if t is None else t[i]))]
            room = min(st.budget - st.changed, max(self._cap(st), 0))
            for j in range(1, room + 1):
                batch.append(st.text + " " + " ".join(ranked[:j]))
                owners.append((i, j))
        if not batch:
            return
        rows = torch.tensor([o[0] for o in owners])
        margins = _margin(m.scores(batch), y[rows], None if t is None else t[rows]).tolist()
        choice: dict[int, tuple[int, float]] = {}
        for (i, j), mg in zip(owners, margins, strict=True):
            states[i].queries += 1
            cur = choice.get(i)
            # smallest j that succeeds; otherwise the j with the lowest margin
            if cur is None or (cur[1] > 0 and (mg <= 0 or mg < cur[1])):
                choice[i] = (j, mg)
        for i, (j, mg) in choice.items():
            st = states[i]
            if mg < st.margin:
                st.tokens.append(" " + " ".join(ranked_of[i][:j]))
                st.changed += j
                st.margin = mg

    # -- verification ------------------------------------------------------------------------

    def _verify(
        self,
        m: TextModel,
        clean: list[str],
        adv: list[str],
        y: Tensor,
        t: Tensor | None,
        clean_pred: Tensor,
        attacked: Tensor,
        max_words: Tensor,
        n_words: Tensor,
        point_q: Tensor,
        q0: int,
        started: float,
        goal: Literal["malicious", "any"],
    ) -> TextEvasionResult:
        wc = torch.tensor(
            [words_changed(a, b) if a != b else 0 for a, b in zip(clean, adv, strict=True)], dtype=torch.int64
        )
        ok = (wc <= max_words) & (attacked | (wc == 0))
        if not bool(ok.all()):
            bad = int((~ok).sum())
            warnings.warn(
                f"TextEvasion: {bad} texts exceeded the word budget and were replaced by the clean "
                "texts (counted as not evaded).",
                EvaluationWarning,
                stacklevel=3,
            )
            adv = [a if bool(o) else c for a, c, o in zip(adv, clean, ok.tolist(), strict=True)]
            wc = torch.where(ok, wc, torch.zeros_like(wc))
        adv_pred = m.predict(adv)  # fresh query: success is read from this answer only
        hit = labels_adversarial(adv_pred, y, t)
        success = attacked & ok & hit
        cc = torch.tensor(
            [edit_distance(a, b) if a != b else 0 for a, b in zip(clean, adv, strict=True)], dtype=torch.int64
        )
        frac = wc.double() / n_words.clamp_min(1).double()
        return TextEvasionResult(
            attack=type(self).__name__,
            params=attack_params(self),
            texts=tuple(clean),
            texts_adv=tuple(adv),
            y=y,
            target=t,
            clean_pred=clean_pred,
            adv_pred=adv_pred,
            attacked=attacked,
            success=success,
            words_changed=wc,
            chars_changed=cc,
            word_fraction=frac,
            max_words=max_words,
            point_queries=point_q,
            queries_forward=m.queries.forward - q0,
            time_s=time.perf_counter() - started,
            goal=goal,
        )


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) == 0:
        raise InputError(
            f"TextEvasion: texts must be a non-empty list of str; got {type(texts).__name__}. "
            "Pass a list of messages (wrap a single message as [text])."
        )
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"TextEvasion: texts[{i}] must be a str; got {type(t).__name__}. Pass strings.")
        if not t.strip():
            raise InputError(
                f"TextEvasion: texts[{i}] must be a non-empty text; got {t!r}. Remove empty rows."
            )
        out.append(t)
    return out


def _check_y(y: object, n: int, name: str) -> Tensor:
    arr = y if isinstance(y, Tensor) else torch.as_tensor(np.asarray(y))
    if arr.dim() != 1 or arr.shape[0] != n or arr.is_floating_point() or arr.dtype == torch.bool:
        raise InputError(
            f"TextEvasion: {name} must be ({n},) integer class indices, one per text; got shape "
            f"{tuple(arr.shape)} and dtype {arr.dtype}. Pass e.g. torch.tensor(labels)."
        )
    if bool((arr < 0).any()):
        row = int((arr < 0).nonzero()[0, 0])
        raise InputError(
            f"TextEvasion: {name} must be >= 0; got {int(arr[row])} at row {row}. Fix the labels."
        )
    return arr.long().cpu()
