"""Pure text edits: tokenising, character perturbations, lexicon substitutions, edit distances."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CHAR_OPS",
    "HOMOGLYPHS",
    "LEET",
    "char_candidates",
    "edit_distance",
    "good_word_pool",
    "ham_vocabulary",
    "lexicon",
    "split_words",
    "word_candidates",
    "words_changed",
]

CHAR_OPS: tuple[str, ...] = ("homoglyph", "leet", "separator", "invisible", "typo")

HOMOGLYPHS: dict[str, str] = {
    "a": "\u0430",
    "c": "\u0441",
    "e": "\u0435",
    "i": "\u0456",
    "j": "\u0458",
    "o": "\u043e",
    "p": "\u0440",
    "s": "\u0455",
    "x": "\u0445",
    "y": "\u0443",
    "A": "\u0410",
    "B": "\u0412",
    "C": "\u0421",
    "E": "\u0415",
    "H": "\u041d",
    "I": "\u0406",
    "K": "\u041a",
    "M": "\u041c",
    "O": "\u041e",
    "P": "\u0420",
    "S": "\u0405",
    "T": "\u0422",
    "X": "\u0425",
    "Y": "\u04ae",
}
"""Latin letters and their Cyrillic look-alikes."""

LEET: dict[str, str] = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7", "l": "1", "g": "9"}
SEPARATOR = "."
INVISIBLE = "\u200b"  # zero-width space
_WS = re.compile(r"(\s+)")
_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)
_HERE = Path(__file__).parent


def split_words(text: str) -> list[str]:
    """Tokens alternating word / whitespace, so that ''.join(tokens) == text; words at odd or
    even positions depending on leading whitespace (use ``t.strip()`` to tell them apart)."""
    return [t for t in _WS.split(text) if t != ""]


def _middle(word: str) -> int:
    return max(1, len(word) // 2)


def char_candidates(word: str, ops: Sequence[str], gen: torch.Generator) -> list[str]:
    """One perturbed spelling per op (DeepWordBug-style, Gao et al., 2018); none contains
    whitespace or equals word; ops with nothing to change are skipped; words of < 2 chars get none."""
    if len(word) < 2:
        return []
    out: list[str] = []
    for op in ops:
        new = word
        if op == "homoglyph":
            new = "".join(HOMOGLYPHS.get(c, c) for c in word)
        elif op == "leet":
            for pos, c in enumerate(word):
                if c.lower() in LEET:
                    new = word[:pos] + LEET[c.lower()] + word[pos + 1 :]
                    break
        elif op == "separator":
            m = _middle(word)
            new = word[:m] + SEPARATOR + word[m:]
        elif op == "invisible":
            m = _middle(word)
            new = word[:m] + INVISIBLE + word[m:]
        elif op == "typo" and len(word) >= 3:
            pos = int(torch.randint(0, len(word) - 1, (1,), generator=gen))
            new = word[:pos] + word[pos + 1] + word[pos] + word[pos + 2 :]
        if new != word and new not in out:
            out.append(new)
    return out


@lru_cache(maxsize=4)
def lexicon(path: str | None = None) -> dict[str, tuple[str, ...]]:
    """word -> single-token substitutes, from a ``word<TAB>a,b,c`` file (default: the shipped one)."""
    p = Path(path) if path is not None else _HERE / "lexicon.tsv"
    table: dict[str, tuple[str, ...]] = {}
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        word, _, subs = line.partition("\t")
        options = tuple(
            s.strip() for s in subs.split(",") if s.strip() and not any(c.isspace() for c in s.strip())
        )
        if options:
            table[word.strip().lower()] = options
    return table


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def word_candidates(token: str, table: dict[str, tuple[str, ...]]) -> list[str]:
    """Lexicon substitutes of token's core word, keeping its punctuation and capitalisation."""
    m = _CORE.match(token)
    if m is None:
        return []
    pre, core, post = m.groups()
    subs = table.get(core.lower(), ())
    return [pre + _match_case(core, s) + post for s in subs if s.lower() != core.lower()]


@lru_cache(maxsize=2)
def good_word_pool(path: str | None = None) -> tuple[str, ...]:
    """The shipped pool of everyday ham words (or one word per line from path)."""
    p = Path(path) if path is not None else _HERE / "ham_words.txt"
    words = [w.strip() for w in p.read_text(encoding="utf-8").splitlines()]
    return tuple(dict.fromkeys(w for w in words if w and not w.startswith("#") and " " not in w))


def ham_vocabulary(texts: Sequence[str], *, top: int = 300) -> tuple[str, ...]:
    """The ``top`` most frequent lower-case words of texts the attacker holds (e.g. their own ham)."""
    from collections import Counter

    counts = Counter(w.lower() for t in texts for w in re.findall(r"(?u)\b\w\w+\b", t))
    return tuple(w for w, _ in counts.most_common(top))


def edit_distance(a: Sequence[object], b: Sequence[object]) -> int:
    """Levenshtein distance (unit insert/delete/substitute) between two sequences, row by row in numpy."""
    if not a:
        return len(b)
    if not b:
        return len(a)
    codes: dict[object, int] = {}
    ia = np.array([codes.setdefault(t, len(codes)) for t in a])
    ib = np.array([codes.setdefault(t, len(codes)) for t in b])
    m = ib.size
    steps = np.arange(m + 1)
    row = steps.copy()
    for i, ca in enumerate(ia, start=1):
        sub = row[:-1] + (ib != ca)
        new = np.empty(m + 1, dtype=np.int64)
        new[0] = i
        new[1:] = np.minimum(row[1:] + 1, sub)
        # insertions along the row: new[j] = min_k (new[k] + j - k)
        row = np.minimum.accumulate(new - steps) + steps
    return int(row[-1])


def words_changed(original: str, adversarial: str) -> int:
    """Word-level edit distance between the whitespace-split words of the two texts."""
    return edit_distance(original.split(), adversarial.split())
