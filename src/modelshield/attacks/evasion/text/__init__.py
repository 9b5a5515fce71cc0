"""Black-box evasion of text classifiers: DeepWordBug-style character edits, lexicon word
substitution and the good-word attack, under a budget on the share of words changed."""

from __future__ import annotations

from modelshield.attacks.evasion.text._edits import (
    CHAR_OPS,
    char_candidates,
    edit_distance,
    good_word_pool,
    ham_vocabulary,
    lexicon,
    words_changed,
)
from modelshield.attacks.evasion.text.attack import (
    GOALS,
    TextEvasion,
    TextEvasionResult,
    TextModel,
    as_text_model,
)

__all__ = [
    "CHAR_OPS",
    "GOALS",
    "TextEvasion",
    "TextEvasionResult",
    "TextModel",
    "as_text_model",
    "char_candidates",
    "edit_distance",
    "good_word_pool",
    "ham_vocabulary",
    "lexicon",
    "words_changed",
]
