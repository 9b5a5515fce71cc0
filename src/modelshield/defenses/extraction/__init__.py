"""Defences against model extraction: output hardening, the PRADA monitor, per-client budgets.

These are library objects meant to sit in front of a live model (e.g. in the gateway):
``harden`` wraps the model's answers, ``PRADA.update`` watches each client's query stream and
``ClientBudget.charge`` caps each client's queries.
"""

from __future__ import annotations

from modelshield.defenses.extraction.budgets import ClientBudget
from modelshield.defenses.extraction.hardening import (
    HARDENING_METHODS,
    harden,
    honest_cost,
    noisy_probabilities,
    reverse_sigmoid,
    round_probabilities,
)
from modelshield.defenses.extraction.prada import PRADA, Alert

__all__ = [
    "HARDENING_METHODS",
    "PRADA",
    "Alert",
    "ClientBudget",
    "harden",
    "honest_cost",
    "noisy_probabilities",
    "reverse_sigmoid",
    "round_probabilities",
]
