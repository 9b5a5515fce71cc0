"""Built-in section runners; importing this package registers them in ``SECTIONS``."""

from __future__ import annotations

from modelshield.assess._section import SECTIONS, register_section
from modelshield.assess.sections.evasion import SEVERITY_THRESHOLDS, EvasionSection, evasion_severity

__all__ = ["SEVERITY_THRESHOLDS", "EvasionSection", "evasion_severity"]

if "evasion" not in SECTIONS:
    register_section(EvasionSection())
