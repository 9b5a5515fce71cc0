"""Assessment: run a threat suite on a model and report it as JSON and self-contained HTML.

Example:
    from modelshield.assess import AssessmentPlan, run, write_report
    result = run(net, x, y, plan=AssessmentPlan(n=300), model_info={"name": "cnn"},
                 data_info={"name": "digits"})
    write_report(result, "modelshield-report")
"""

from __future__ import annotations

from modelshield.assess._batched import attack_batches, run_in_batches
from modelshield.assess._section import (
    ATLAS,
    SECTIONS,
    SEVERITIES,
    AssessmentContext,
    Figure,
    Progress,
    Section,
    SectionRunner,
    Severity,
    Table,
    atlas,
    max_severity,
    points_line,
    register_section,
)
from modelshield.assess.business import business_view
from modelshield.assess.plan import (
    DEFAULT_ATTACKS,
    DEFAULT_EPS,
    AssessmentPlan,
    BlackBoxPlan,
    EvasionPlan,
    ExtractionPlan,
    TabularPlan,
)
from modelshield.assess.regression import Comparison, compare_reports, load_report
from modelshield.assess.report import check_new_files, render_html, write_json, write_report
from modelshield.assess.sections import (
    SEVERITY_THRESHOLDS,
    BlackBoxSection,
    EvasionSection,
    TabularSection,
    evasion_severity,
)
from modelshield.assess.suite import SCHEMA_VERSION, Assessment, package_versions, provenance, run
from modelshield.assess.thresholds import (
    Threshold,
    check_threshold_metrics,
    check_thresholds,
    parse_threshold,
)

__all__ = [
    "ATLAS",
    "DEFAULT_ATTACKS",
    "DEFAULT_EPS",
    "SCHEMA_VERSION",
    "SECTIONS",
    "SEVERITIES",
    "SEVERITY_THRESHOLDS",
    "Assessment",
    "AssessmentContext",
    "AssessmentPlan",
    "BlackBoxPlan",
    "BlackBoxSection",
    "Comparison",
    "EvasionPlan",
    "EvasionSection",
    "ExtractionPlan",
    "Figure",
    "Progress",
    "Section",
    "SectionRunner",
    "Severity",
    "Table",
    "TabularPlan",
    "TabularSection",
    "Threshold",
    "atlas",
    "attack_batches",
    "business_view",
    "check_new_files",
    "check_threshold_metrics",
    "check_thresholds",
    "compare_reports",
    "evasion_severity",
    "load_report",
    "max_severity",
    "package_versions",
    "parse_threshold",
    "points_line",
    "provenance",
    "register_section",
    "render_html",
    "run",
    "run_in_batches",
    "write_json",
    "write_report",
]
