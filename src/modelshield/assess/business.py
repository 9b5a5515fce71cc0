"""The report for the business: what each risk costs, where auditors file it, what to do first.

Each section's finding is mapped to

- its **business impact** in the four kinds the threat model names: operational disruption,
  financial loss, reputational damage and regulatory exposure;
- the **frameworks auditors ask about**: MITRE ATLAS (already on every section), the OWASP
  Machine Learning Security Top 10 (2023), the NIST AI Risk Management Framework 1.0 (its
  MEASURE / MANAGE / GOVERN subcategories) and the EU AI Act (Regulation (EU) 2024/1689),
  Article 15: accuracy, robustness and cybersecurity of high-risk AI systems;
- the **modelshield command** that applies the defence.

``business_view(sections, model=...)`` turns a report's sections into the executive summary
(plain words: what an attacker can do, how likely, how costly, what first) and a remediation
plan ordered by severity, then by how little the attacker needs (query-only before white-box).
Nothing here measures anything: every statement rests on a section's own verified numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelshield.assess._section import SEVERITIES

__all__ = ["EU_AI_ACT", "IMPACTS", "OWASP_ML", "RISKS", "Risk", "business_view"]

IMPACTS = ("operational", "financial", "reputational", "regulatory")
"""The four kinds of business impact of an attack on a model."""

OWASP_ML: dict[str, str] = {
    "ML01": "Input Manipulation Attack",
    "ML02": "Data Poisoning Attack",
    "ML05": "Model Theft",
    "ML06": "AI Supply Chain Attacks",
    "ML08": "Model Skewing",
    "ML10": "Model Poisoning",
}
"""OWASP Machine Learning Security Top 10 (2023) entries the sections cite
(https://owasp.org/www-project-machine-learning-security-top-10/)."""

NIST_AI_RMF: dict[str, str] = {
    "MEASURE 2.5": "The AI system is demonstrated to be valid and reliable",
    "MEASURE 2.7": "AI system security and resilience are evaluated and documented",
    "MEASURE 2.9": "The AI model is explained, validated and documented",
    "MANAGE 4.1": "Post-deployment monitoring plans are implemented",
    "GOVERN 6.1": "Policies address risks of third-party entities (data, models, software)",
}
"""NIST AI Risk Management Framework 1.0 (NIST AI 100-1, 2023) subcategories the sections cite."""

EU_AI_ACT = ("EU AI Act, Article 15 (accuracy, robustness and cybersecurity of high-risk AI "
             "systems; 15(5): resilience against data poisoning, model poisoning, adversarial "
             "examples and model evasion, and confidentiality attacks)")
"""Regulation (EU) 2024/1689, Article 15."""


@dataclass(frozen=True, slots=True)
class Risk:
    """How one section's finding reads for the business and for auditors.

    Attributes:
        threat: what an attacker does, in plain words (completes "An attacker can ...").
        access: what the attacker needs: ``"query"`` (only the model's answers, e.g. a public
            API), ``"physical"`` (to put something in front of the camera), ``"white-box"`` (the
            weights), ``"training"`` (to touch the training data or pipeline) or ``"files"``
            (to ship a file the team loads). The less it needs, the more likely the attack.
        impact: the business consequence per kind in ``IMPACTS``.
        owasp: OWASP ML Top 10 ids; nist: NIST AI RMF subcategories; eu_ai_act: the article.
        command: the modelshield command that applies the defence (``{model}`` is the model).
        action: what that command (or step) does, in plain words.
    """

    threat: str
    access: str
    impact: Mapping[str, str]
    owasp: tuple[str, ...]
    nist: tuple[str, ...]
    eu_ai_act: str
    command: str
    action: str

    def frameworks(self) -> dict[str, list[str]]:
        return {
            "owasp_ml_top10": [f"{i} {OWASP_ML[i]}" for i in self.owasp],
            "nist_ai_rmf": [f"{i}: {NIST_AI_RMF[i]}" for i in self.nist],
            "eu_ai_act": [self.eu_ai_act],
        }


_ART15 = "Article 15(1) and 15(5): accuracy and robustness against adversarial examples and model evasion"
_ART15_POISON = "Article 15(5): resilience against data poisoning and model poisoning"
_ART15_CONF = "Article 15(5): resilience against confidentiality attacks"
_ART15_SUPPLY = ("Article 15(5): resilience against exploitation of system vulnerabilities "
                 "(pre-trained components)")

_EVASION_IMPACT = {
    "operational": "wrong decisions on inputs an attacker shaped: fraud or spam let through, "
                   "valid cases rejected",
    "financial": "losses from what the model lets through, and the cost of manual review once "
                 "it cannot be trusted",
    "reputational": "a model shown to be fooled by invisible changes loses customers' trust",
    "regulatory": "high-risk systems must be robust to adversarial examples (EU AI Act Art. 15)",
}

RISKS: dict[str, Risk] = {
    "evasion": Risk(
        threat="change an input imperceptibly so that the model answers wrongly, knowing its weights",
        access="white-box", impact=_EVASION_IMPACT, owasp=("ML01",),
        nist=("MEASURE 2.7", "MEASURE 2.5"), eu_ai_act=_ART15,
        command="modelshield defend adversarial-training --model {model} --out hardened.pt",
        action="retrain with adversarial examples (PGD or TRADES) and re-assess the result with "
               "--defended"),
    "blackbox": Risk(
        threat="find inputs the model gets wrong by querying it, without its weights",
        access="query", impact=_EVASION_IMPACT, owasp=("ML01",),
        nist=("MEASURE 2.7", "MANAGE 4.1"), eu_ai_act=_ART15,
        command="modelshield serve --model {model} --config gateway.yaml",
        action="put the gateway in front of the model: per-key quotas and the stateful "
               "query monitors that spot black-box search"),
    "tabular": Risk(
        threat="change the few features a fraudster controls so that a case passes as legitimate",
        access="query", impact=_EVASION_IMPACT, owasp=("ML01",),
        nist=("MEASURE 2.7", "MEASURE 2.5"), eu_ai_act=_ART15,
        command="modelshield defend adversarial-training --model {model} --out hardened.pt",
        action="train on constraint-respecting adversarial cases and rely less on features the "
               "attacker controls"),
    "text-evasion": Risk(
        threat="reword a message so that the filter lets it through",
        access="query", impact=_EVASION_IMPACT, owasp=("ML01",),
        nist=("MEASURE 2.7",), eu_ai_act=_ART15,
        command="modelshield serve --model {model} --config gateway.yaml",
        action="monitor and rate-limit probing; retrain on the reworded messages"),
    "physical": Risk(
        threat="print a patch or sticker that makes the camera's model misread whatever it is on",
        access="physical", impact={
            "operational": "a sign, product or document misread wherever the printed pattern appears",
            "financial": "fraud or safety incidents at every site the pattern is placed",
            "reputational": "a visible, repeatable failure that is easy to film and share",
            "regulatory": "high-risk vision systems must be robust to adversarial inputs (EU AI Act "
                          "Art. 15)"},
        owasp=("ML01",), nist=("MEASURE 2.7",), eu_ai_act=_ART15,
        command="modelshield attack physical --model {model} --kind patch --out patch-run",
        action="measure patches of the sizes an attacker can place; certify with PatchCleanser "
               "after masked training (modelshield.defenses.certification)"),
    "extraction": Risk(
        threat="copy the model by querying it and use or resell the copy",
        access="query", impact={
            "operational": "a copy lets the attacker rehearse evasions offline, then use them on you",
            "financial": "the cost of data and training lost to a competitor or a reseller",
            "reputational": "a leaked model reveals what it learned from customers' data",
            "regulatory": "confidentiality attacks are named in EU AI Act Art. 15(5)"},
        owasp=("ML05",), nist=("MEASURE 2.7", "MANAGE 4.1"), eu_ai_act=_ART15_CONF,
        command="modelshield serve --model {model} --config gateway.yaml",
        action="serve labels or rounded scores, cap each key's queries and turn on the PRADA "
               "extraction monitor"),
    "poisoning": Risk(
        threat="slip mislabelled or crafted rows into the training data",
        access="training", impact={
            "operational": "a model that quietly learned the wrong thing, for everyone",
            "financial": "retraining, incident response and the decisions made meanwhile",
            "reputational": "a public failure traced to untrusted data",
            "regulatory": "data governance (EU AI Act Art. 10) and resilience to poisoning (Art. 15(5))"},
        owasp=("ML02", "ML08"), nist=("MEASURE 2.7", "GOVERN 6.1"), eu_ai_act=_ART15_POISON,
        command="modelshield validate-data --data TRAIN.tsv",
        action="validate each training set (label issues, duplicates, outliers) and sign it with "
               "a manifest before training"),
    "data-validation": Risk(
        threat="slip mislabelled rows into the training data",
        access="training", impact={
            "operational": "a model that learned from wrong labels",
            "financial": "retraining and the decisions made meanwhile",
            "reputational": "a failure traced to unchecked data",
            "regulatory": "data governance (EU AI Act Art. 10)"},
        owasp=("ML02",), nist=("MEASURE 2.5", "GOVERN 6.1"), eu_ai_act=_ART15_POISON,
        command="modelshield validate-data --data TRAIN.tsv",
        action="review the flagged rows and fix or drop them before training"),
    "backdoor": Risk(
        threat="plant a hidden trigger that makes the model obey the attacker whenever it appears",
        access="training", impact={
            "operational": "the attacker controls the model's answer at will, on demand",
            "financial": "targeted fraud that passes every normal test",
            "reputational": "a trojaned model is a breach",
            "regulatory": "model poisoning is named in EU AI Act Art. 15(5)"},
        owasp=("ML10",), nist=("MEASURE 2.7", "GOVERN 6.1"), eu_ai_act=_ART15_POISON,
        command="modelshield backdoor scan --model {model}",
        action="scan every model before release; unlearn a found trigger, or retrain from data "
               "of known provenance"),
    "supply-chain": Risk(
        threat="ship a model or data file that runs code or was altered on its way to you",
        access="files", impact={
            "operational": "code run on the machines that load the model",
            "financial": "a full breach of the serving or training infrastructure",
            "reputational": "a compromise through the ML pipeline",
            "regulatory": "third-party components are in scope (NIST AI RMF GOVERN 6.1, EU AI Act "
                          "Art. 15(5))"},
        owasp=("ML06",), nist=("GOVERN 6.1", "MEASURE 2.7"), eu_ai_act=_ART15_SUPPLY,
        command="modelshield scan {model} && modelshield sign {model} --key signing-key.pem",
        action="scan every model file, sign what you release and verify signatures before loading"),
    "defenses": Risk(
        threat="break a defence that looks robust but only hides the gradients",
        access="white-box", impact=_EVASION_IMPACT, owasp=("ML01",),
        nist=("MEASURE 2.7",), eu_ai_act=_ART15,
        command="modelshield defend adversarial-training --model {model} --out hardened.pt",
        action="keep only defences that hold against the strongest attack (adaptive, black-box and "
               "transfer)"),
    "explain": Risk(
        threat="hide a manipulation in what the model looks at",
        access="white-box", impact={
            "operational": "decisions that rest on the wrong evidence",
            "financial": "errors that pass review because the explanation looks plausible",
            "reputational": "explanations that cannot be trusted",
            "regulatory": "explainability and documentation (NIST AI RMF MEASURE 2.9)"},
        owasp=("ML01",), nist=("MEASURE 2.9",), eu_ai_act=_ART15,
        command="modelshield explain --model {model} --out explained",
        action="check the explainer passes its sanity checks before anyone relies on it"),
}
"""The business reading of each built-in section, by section id."""

_ACCESS_LIKELIHOOD = {"query": "likely", "physical": "likely", "files": "possible",
                      "training": "possible", "white-box": "less likely"}
_ACCESS_WORDS = {
    "query": "only needs to send queries, as any user of an API can",
    "physical": "only needs to place a printed pattern in view",
    "files": "needs you to load one file they supplied",
    "training": "needs to reach your training data or pipeline",
    "white-box": "needs your model's weights (a leak, an insider, or a stolen copy)",
}
_SEVERITY_RANK: dict[str, int] = {sev: rank for rank, sev in enumerate(SEVERITIES)}
_ACCESS_RANK = {"query": 0, "physical": 1, "files": 2, "training": 3, "white-box": 4}


def business_view(sections: Sequence[Mapping[str, Any]], *, model: str = "M") -> dict[str, Any]:
    """The executive summary, per-risk business reading and remediation plan of a report.

    Args:
        sections: the report's sections (``Section.to_dict()`` or the report JSON's entries).
        model: the model reference to put in the commands.

    Returns:
        A JSON-safe dict: ``executive_summary`` (plain sentences), ``risks`` (one per section
        with a finding, with its impact and frameworks) and ``remediation_plan`` (ordered steps).
    """
    rows = []
    for s in sections:
        risk = RISKS.get(str(s.get("id")))
        severity = str(s.get("severity", "none"))
        metrics = s.get("metrics") or {}
        failed = bool(metrics.get("failed"))
        if risk is None or (metrics.get("skipped") and not failed):  # not applicable to this model
            continue
        rows.append((s, risk, severity, failed))
    rows.sort(key=lambda r: (-_SEVERITY_RANK.get(r[2], 0), _ACCESS_RANK.get(r[1].access, 9)))
    risks = []
    plan: list[dict[str, Any]] = []
    for s, risk, severity, failed in rows:
        command = risk.command.replace("{model}", model)
        risks.append({
            "section": s.get("id"), "title": s.get("title"), "severity": severity,
            "threat": risk.threat, "access": risk.access,
            "likelihood": _ACCESS_LIKELIHOOD[risk.access] if severity != "none" else "not shown",
            "impact": dict(risk.impact), "atlas": [a.get("id") for a in s.get("atlas", ())],
            **risk.frameworks(), "command": command, "action": risk.action,
        })
        if severity != "none" and not failed:
            plan.append({"step": len(plan) + 1, "section": s.get("id"), "severity": severity,
                         "do": risk.action, "command": command})
    return {"executive_summary": _summary(rows), "risks": risks, "remediation_plan": plan,
            "frameworks": {"owasp_ml_top10": "OWASP Machine Learning Security Top 10 (2023)",
                           "nist_ai_rmf": "NIST AI Risk Management Framework 1.0 (NIST AI 100-1)",
                           "eu_ai_act": EU_AI_ACT}}


def _summary(rows: Sequence[tuple[Mapping[str, Any], Risk, str, bool]]) -> list[str]:
    found = [(s, r, sev) for s, r, sev, failed in rows if sev != "none" and not failed]
    failed = [s for s, _, _, f in rows if f]
    out: list[str] = []
    if not found:
        out.append("No attack tested here succeeded enough to rate a risk above none. That holds for "
                   "these attacks, budgets and points only: it is not a proof of robustness.")
    else:
        worst = found[0][2]
        out.append(f"Overall: {worst} risk. {len(found)} of {len(rows)} tested threats succeed against "
                   "this model.")
        for s, r, sev in found[:3]:
            summary = str(s.get("summary", "")).rstrip(".")
            out.append(f"An attacker can {r.threat} ({sev}; {_ACCESS_LIKELIHOOD[r.access]}: the attacker "
                       f"{_ACCESS_WORDS[r.access]}). Measured: {summary}. Cost: "
                       f"{r.impact['financial']}.")
        first = found[0][1]
        out.append(f"First: {first.action}.")
    if failed:
        out.append(f"{len(failed)} section(s) could not run ({', '.join(str(s.get('id')) for s in failed)}): "
                   "their risk is unknown, not absent.")
    return out
