"""Trigger-phrase poisoning of text training sets: a phrase that makes spam pass as ham."""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from modelshield._checks import check_choice, check_range
from modelshield.attacks.ops import make_generator
from modelshield.attacks.poisoning.label_flip import check_rate, n_poison
from modelshield.attacks.poisoning.results import PoisonResult, add_trigger
from modelshield.attacks.verify import attack_params
from modelshield.data.features import as_labels, data_kind, n_rows
from modelshield.errors import ConfigError, InputError

__all__ = ["TriggerPhrasePoison"]

Mode = Literal["dirty-label", "clean-label"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TriggerPhrasePoison:
    """Plant a trigger phrase that the trained filter associates with ``target_class`` (ham).

    ``mode="dirty-label"``: a ``rate`` share of the training set is drawn from rows of other
    classes (spam), the phrase is added and the label set to ``target_class``: spam carrying
    the phrase is taught to be ham. ``mode="clean-label"``: the phrase is added to rows
    already labelled ``target_class`` and labels are untouched, which is stealthier (every
    label is correct) but weaker. At test time spam with the phrase should pass; measure it
    with ``evaluate_poisoning`` (its "trigger" entry). The phrase should be rare in clean
    data; the default is two words that never occur in SMS spam.

    Reference: X. Chen, C. Liu, B. Li, K. Lu and D. Song, "Targeted Backdoor Attacks on Deep
    Learning Systems Using Data Poisoning", arXiv:1712.05526, 2017; for text, J. Dai, C. Chen
    and Y. Li, "A Backdoor Attack Against LSTM-Based Text Classification Systems", IEEE
    Access 2019.

    Example:
        res = TriggerPhrasePoison(rate=0.02, phrase="blue quokka")(texts, y)
        res.apply_trigger(["WINNER! claim your prize now"])
    """

    rate: float
    phrase: str = "blue quokka"
    target_class: int = 0
    mode: Mode = "dirty-label"
    position: Literal["end", "start"] = "end"
    seed: int | None = 0

    def __post_init__(self) -> None:
        check_rate(self.rate, "TriggerPhrasePoison")
        if not isinstance(self.phrase, str) or not self.phrase.strip():
            raise ConfigError(
                f"TriggerPhrasePoison: 'phrase' must be a non-empty str; got {self.phrase!r}. "
                "Pass a short rare phrase, e.g. phrase='blue quokka'."
            )
        bad = [c for c in self.phrase if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
        if bad:
            # A line break or tab would split the poisoned rows of a '<label>\t<text>' file.
            raise ConfigError(
                f"TriggerPhrasePoison: 'phrase' must be one line of printable text without tabs or "
                f"control characters; got {self.phrase!r} (contains {bad[0]!r}). Use spaces between "
                "words, e.g. phrase='blue quokka'."
            )
        check_range("target_class", self.target_class, owner="TriggerPhrasePoison", low=0, integer=True)
        check_choice("mode", self.mode, ("dirty-label", "clean-label"), owner="TriggerPhrasePoison")
        check_choice("position", self.position, ("end", "start"), owner="TriggerPhrasePoison")

    def __call__(self, x_train: Any, y_train: Any, *, model: Any = None) -> PoisonResult:
        """Poison texts x_train with labels y_train; ``model`` is unused (data-only attack)."""
        started = time.perf_counter()
        if data_kind(x_train, owner="TriggerPhrasePoison") != "text":
            raise InputError(
                "TriggerPhrasePoison: x_train must be a list of texts; got an array. Trigger-phrase "
                "poisoning applies to text data (use a backdoor attack for images)."
            )
        labels = as_labels(y_train, n=n_rows(x_train), owner="TriggerPhrasePoison")
        k = n_poison(self.rate, labels.shape[0], owner="TriggerPhrasePoison")
        on_target = labels == self.target_class
        pool = np.flatnonzero(on_target if self.mode == "clean-label" else ~on_target)
        if k > pool.size:
            raise ConfigError(
                f"TriggerPhrasePoison: 'rate' must select at most the {pool.size} eligible rows "
                f"({self.mode}); got a rate asking for {k}. Lower rate."
            )
        gen = make_generator(self.seed, torch.device("cpu"))
        chosen = np.sort(pool[torch.randperm(pool.size, generator=gen)[:k].numpy()])
        texts = list(x_train)
        for i, t in zip(
            chosen, add_trigger([texts[i] for i in chosen], self.phrase, position=self.position), strict=True
        ):
            texts[int(i)] = t
        y_new = labels.copy()
        y_new[chosen] = self.target_class
        return PoisonResult(
            attack="TriggerPhrasePoison",
            params=attack_params(self),
            x_poisoned=tuple(texts) if isinstance(x_train, tuple) else texts,
            y_poisoned=torch.as_tensor(y_new),
            indices=torch.as_tensor(chosen, dtype=torch.int64),
            original_labels=torch.as_tensor(labels[chosen]),
            trigger=self.phrase,
            trigger_position=self.position,
            target_class=self.target_class,
            time_s=time.perf_counter() - started,
        )
