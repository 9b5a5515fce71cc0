"""Experiments: whole scenarios that combine attacks with defences (one layer above both).

``backdoor``: plant a backdoor (poison, train, evaluate). ``poisoning``: poison a text data set,
train on it and run the data validators. ``extraction``: steal a model through its outputs with
optional output hardening and PRADA monitoring. ``physical`` (imported on its own): learn a
printable pattern on a target's training split, test it on held-out images and write its files.
The CLI, ``assess`` and the benchmarks share them.
"""

from __future__ import annotations

from modelshield.experiments.backdoor import (
    IMAGE_BACKDOOR_ATTACKS,
    PlantResult,
    build_backdoor_attack,
    plant_backdoor,
)
from modelshield.experiments.extraction import (
    DEFAULT_POOL,
    DEFENCES,
    EXTRACTION_ATTACKS,
    POOLS,
    ExtractionRun,
    Pool,
    QueryLog,
    build_extraction_attack,
    check_budget_memory,
    digits_from_mnist,
    load_pool,
    prada_verdict,
    run_extraction,
)
from modelshield.experiments.poisoning import (
    POISON_ATTACKS,
    VALIDATORS,
    TextPoisoningRun,
    build_poison_attack,
    class_rate,
    detect_poison,
    detection_scores,
    poison_text_dataset,
    text_dataset_from_file,
)

__all__ = [
    "DEFAULT_POOL",
    "DEFENCES",
    "EXTRACTION_ATTACKS",
    "IMAGE_BACKDOOR_ATTACKS",
    "POISON_ATTACKS",
    "POOLS",
    "VALIDATORS",
    "ExtractionRun",
    "PlantResult",
    "Pool",
    "QueryLog",
    "TextPoisoningRun",
    "build_backdoor_attack",
    "build_extraction_attack",
    "build_poison_attack",
    "check_budget_memory",
    "class_rate",
    "detect_poison",
    "detection_scores",
    "digits_from_mnist",
    "load_pool",
    "plant_backdoor",
    "poison_text_dataset",
    "prada_verdict",
    "run_extraction",
    "text_dataset_from_file",
]
