"""Built-in section runners; importing this package registers them in ``SECTIONS``."""

from __future__ import annotations

from modelshield.assess._section import SECTIONS, register_section
from modelshield.assess.sections.backdoor import BackdoorSection
from modelshield.assess.sections.blackbox import BlackBoxSection, TabularSection
from modelshield.assess.sections.defenses import DefensesSection
from modelshield.assess.sections.evasion import SEVERITY_THRESHOLDS, EvasionSection, evasion_severity
from modelshield.assess.sections.explain import ExplainSection
from modelshield.assess.sections.extraction import ExtractionSection
from modelshield.assess.sections.physical import PhysicalSection
from modelshield.assess.sections.spam import PoisoningSection, TextEvasionSection
from modelshield.assess.sections.supply_chain import SupplyChainSection

__all__ = [
    "SEVERITY_THRESHOLDS",
    "BackdoorSection",
    "BlackBoxSection",
    "DefensesSection",
    "EvasionSection",
    "ExplainSection",
    "ExtractionSection",
    "PhysicalSection",
    "PoisoningSection",
    "SupplyChainSection",
    "TabularSection",
    "TextEvasionSection",
    "evasion_severity",
]

if "evasion" not in SECTIONS:
    register_section(EvasionSection())
if "blackbox" not in SECTIONS:
    register_section(BlackBoxSection())
if "tabular" not in SECTIONS:
    register_section(TabularSection())
if "extraction" not in SECTIONS:
    register_section(ExtractionSection())
if "poisoning" not in SECTIONS:
    register_section(PoisoningSection())
if "text-evasion" not in SECTIONS:
    register_section(TextEvasionSection())
if "backdoor" not in SECTIONS:
    register_section(BackdoorSection())
if "defenses" not in SECTIONS:
    register_section(DefensesSection())
if "supply-chain" not in SECTIONS:
    register_section(SupplyChainSection())
if "explain" not in SECTIONS:
    register_section(ExplainSection())
if "physical" not in SECTIONS:
    register_section(PhysicalSection())
