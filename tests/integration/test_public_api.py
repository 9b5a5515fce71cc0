"""The curated public API: every name in __all__ exists, and __all__ lists each once."""

import importlib

import pytest

import modelshield

PACKAGES = ["modelshield", "modelshield.attacks", "modelshield.attacks.evasion", "modelshield.models",
            "modelshield.data", "modelshield.assess", "modelshield.errors"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_exist_once(name: str) -> None:
    mod = importlib.import_module(name)
    exported = list(mod.__all__)
    assert len(exported) == len(set(exported))
    missing = [n for n in exported if not hasattr(mod, n)]
    assert not missing


def test_top_level_reexports_every_evasion_attack() -> None:
    from modelshield.attacks import evasion

    not_attacks = {"EVASION_ATTACKS", "EvasionAttack"}
    attack_classes = {n for n in evasion.__all__ if n[0].isupper() and n not in not_attacks}
    assert attack_classes <= set(modelshield.__all__)
    assert modelshield.__version__ == importlib.metadata.version("modelshield")
