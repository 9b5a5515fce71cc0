"""The "Supply chain" report section: is the model file safe to load, is it the one that was signed,
is the data the one the manifest describes, and what does the audit log say about where they came from?

Nothing here trains, attacks or even loads the model: the section reads the model file statically
(``modelshield.secure.scan``), checks its signature bundle (OpenSSF model signing, through
``modelshield.secure.signing``), verifies the data against its manifest
(``modelshield.secure.manifest``) and reads the tamper-evident audit log
(``modelshield.secure.audit``), so it takes about as long as hashing the files.

Each of the four checks gives a severity; the section's is the worst of them:

============  ==========================================================================
scan          critical when the scanner blocks the file (it would run code or is
              malformed); low for findings that do not block; none when clean
signature     none when the bundle verifies with a trusted key; critical when it does not
              (the file or bundle was changed); low when the model is unsigned (high when
              the trust policy requires a signature) or no key was given to check it with
manifest      none when the data match it; high when a file or row changed (named); low
              when there is no manifest
provenance    none when the log verifies and holds records of the model; critical when the
              log was tampered with; low without a log or without a record of the model
============  ==========================================================================

References: MITRE ATLAS AML.T0010 (AI Supply Chain Compromise) and AML.T0011.000 (User Execution:
Unsafe AI Artifacts); OpenSSF model signing (https://github.com/sigstore/model-transparency);
RFC 6962 (the audit log's Merkle tree).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelshield.assess._section import (
    AssessmentContext,
    Progress,
    Section,
    Severity,
    Table,
    atlas,
    max_severity,
)
from modelshield.assess.plan import SupplyChainPlan
from modelshield.errors import ModelShieldError

__all__ = ["SupplyChainSection"]

TITLE = "Supply chain (model file scan, signature, data manifest, provenance)"

_FIX_SCAN = ("convert the model to safetensors (`modelshield scan --convert MODEL`) and load only that, or "
             "get the file again from its publisher")
_FIX_SIGN = ("sign the model when it is built (`modelshield sign MODEL --key signing.key`) and verify it "
             "before every load (a trust policy with require_signature: true)")
_FIX_MANIFEST = ("record the training and test data in a manifest (`modelshield manifest create DATA --out "
                 "data.manifest.json`) and verify it before each training run and assessment")
_FIX_AUDIT = ("log training, signing and scans to an audit log (`modelshield audit init --log audit.db`, "
              "then MODELSHIELD_AUDIT_LOG=audit.db) and checkpoint it (`modelshield audit checkpoint`)")
_MAX_ROWS = 25
_DETAILS_CHARS = 160


@dataclass(frozen=True, kw_only=True, slots=True)
class _Part:
    """One check's outcome: its severity, its findings, a table and its JSON metrics."""

    severity: Severity
    findings: tuple[str, ...]
    metrics: Mapping[str, Any]
    table: Table | None = None
    fixes: tuple[str, ...] = ()
    atlas: tuple[str, ...] = ()


def _first(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _model_path(info: Mapping[str, Any]) -> Path | None:
    raw = info.get("path")
    if not raw or info.get("source") == "callable":
        return None
    return Path(str(raw)).expanduser()


# --- (1) the static scan -----------------------------------------------------------------------


def _scan(info: Mapping[str, Any], path: Path | None) -> _Part:
    from modelshield.secure.scan import scan_path

    what = "the model file"
    if info.get("source") == "callable":
        return _Part(severity="low", metrics={"scanned": False, "reason": "callable"}, findings=(
            f"The model {info.get('name')!r} is a Python callable: there is no model file to scan, and its "
            "code runs as imported. Its weights (if any) cannot be checked here; save them as safetensors "
            "and load those to have them scanned.",), fixes=(_FIX_SCAN,))
    if path is None:
        return _Part(severity="low", metrics={"scanned": False, "reason": "no model file"}, findings=(
            "No model file is known (the model was given as an object, without model_info['path']): "
            "nothing could be scanned.",))
    if not (path.exists() or path.is_symlink()):
        return _Part(severity="medium", metrics={"scanned": False, "reason": "missing", "path": str(path)},
                     findings=(f"The model file {str(path)!r} no longer exists: it could not be scanned.",))
    if info.get("source") == "zoo":
        what = "the zoo model's cached file"
    report = scan_path(path)
    blocking = [f for f in report.findings if f.blocking]
    others = [f for f in report.findings if not f.blocking]
    severity: Severity = ("critical" if report.blocked
                          else "low" if any(f.severity == "low" for f in others) else "none")
    top = report.formats.get(str(path), "a folder" if path.is_dir() else "unknown format")
    inner = sorted({v for k, v in report.formats.items() if k != str(path) and v != "unknown"})
    kind = top + (f" holding {', '.join(inner)}" if inner else "")
    findings = [f"The static scan of {what} {str(path)!r} ({kind}; {report.bytes_scanned} bytes in "
                f"{report.seconds:.3f} s, nothing loaded or executed) found {len(report.findings)} "
                f"finding(s) ({len(blocking)} blocking)."]
    if blocking:
        callables = sorted({f.callable for f in blocking if f.callable})
        findings.append(
            f"The file is unsafe to load: {blocking[0].message} [{blocking[0].code}]"
            + (f"; callables outside the allow-list: {_first(callables)}" if callables else "")
            + ". Loading it (torch.load, pickle, joblib) would run that code: critical.")
    rank = ("critical", "high", "medium", "low", "info")
    ordered = sorted(report.findings, key=lambda f: rank.index(f.severity))
    rows = [(f.severity, f.code, f.callable, "!".join(f.location.members) or None, f.offset, f.message)
            for f in ordered[:_MAX_ROWS]]
    table = Table(title=f"Scan findings for {path.name}" + (
        f" (the first {_MAX_ROWS} of {len(ordered)})" if len(ordered) > _MAX_ROWS else ""),
        columns=("severity", "code", "callable", "member", "offset", "message"), rows=rows) if rows else None
    data = report.to_dict()
    data["findings"] = data["findings"][:100]  # type: ignore[index]  # a list in to_dict
    return _Part(severity=severity, findings=tuple(findings), table=table,
                 metrics={"scanned": True, "blocking_findings": len(blocking), **data},
                 fixes=(_FIX_SCAN,) if blocking else (), atlas=("AML.T0011.000",) if blocking else ())


# --- (2) the signature ---------------------------------------------------------------------------


def _signature(plan: SupplyChainPlan, path: Path | None) -> _Part:
    from modelshield.secure.policy import TrustPolicy
    from modelshield.secure.signing import VerificationResult, default_bundle, verify_model

    if path is None:
        return _Part(severity="none", metrics={"status": "not-applicable"},
                     findings=("Signature: not checked (no model file).",))
    try:
        policy = TrustPolicy.from_env()
    except ModelShieldError as exc:
        return _Part(severity="medium", metrics={"status": "error", "reason": str(exc)},
                     findings=(f"Signature: the trust policy could not be read ({exc}).",))
    bundle = plan.bundle if plan.bundle is not None else default_bundle(path, suffix=policy.bundle_suffix)
    keys = plan.public_keys or policy.public_keys
    base: dict[str, Any] = {"bundle": str(bundle), "public_keys": [str(k) for k in keys],
                            "policy_requires_signature": policy.require_signature}
    if not (bundle.is_file() or bundle.is_symlink()):
        severity: Severity = "high" if policy.require_signature else "low"
        need = " although the trust policy requires one" if policy.require_signature else ""
        return _Part(severity=severity, metrics={**base, "status": "unsigned"}, fixes=(_FIX_SIGN,), findings=(
            f"Signature: the model is unsigned (no bundle {str(bundle)!r}){need}; a swapped or edited file "
            "would go unnoticed.",))
    attempts: list[dict[str, Any]] = [{"public_key": k} for k in keys]
    if policy.certificate_chain and not plan.public_keys:
        attempts.append({"certificate_chain": list(policy.certificate_chain)})
    if not attempts:
        return _Part(severity="low", metrics={**base, "status": "unverified"}, findings=(
            f"Signature: a bundle exists ({str(bundle)!r}) but no public key was given (--public-key) or "
            "configured in the trust policy, so it was not verified; an unverified signature proves "
            "nothing.",),
            fixes=("pass the signer's public key (--public-key) or configure it in the trust policy",))
    results: list[VerificationResult] = []
    for attempt in attempts:
        try:
            result = verify_model(path, bundle=bundle, **attempt)
        except ModelShieldError as exc:
            return _Part(severity="medium", metrics={**base, "status": "error", "reason": str(exc)},
                         findings=(f"Signature: could not be checked ({exc}).",))
        if result.ok:
            return _Part(severity="none", metrics={**base, "status": "verified", **result.to_dict()},
                         findings=(f"Signature: verified ({result.method} mode, bundle {str(bundle)!r}): the "
                                   "file is the one that was signed.",))
        results.append(result)
    # a key whose hint matched gives the informative reason (tampering) rather than "key mismatch"
    last = next((r for r in results if "Key mismatch" not in r.reason), results[-1])
    return _Part(severity="critical", metrics={**base, "status": "failed", **last.to_dict()},
                 fixes=("do not load the model: restore the signed file or re-sign it only if you trust it",),
                 atlas=("AML.T0010.003",), findings=(
                     f"Signature: verification FAILED ({last.reason}): the model file is not the one that "
                     "was signed (or the bundle was altered): critical.",))


# --- (3) the data manifest -----------------------------------------------------------------------


def _manifest_root(plan: SupplyChainPlan, data_info: Mapping[str, Any], files: Sequence[str]) -> Path | None:
    if plan.data_root is not None:
        return plan.data_root
    raw = data_info.get("path")
    if not raw:
        return None
    p = Path(str(raw)).expanduser()
    if p.is_file():
        return p if list(files) == [p.name] else p.parent
    return p


def _manifest(plan: SupplyChainPlan, data_info: Mapping[str, Any]) -> _Part:
    from modelshield.secure.manifest import Manifest, verify_manifest

    if plan.manifest is None:
        return _Part(severity="low", metrics={"status": "none"}, fixes=(_FIX_MANIFEST,), findings=(
            "Data manifest: none given (--manifest), so the data's integrity was not checked.",))
    try:
        manifest = Manifest.load(plan.manifest)
    except ModelShieldError as exc:
        return _Part(severity="high", metrics={"status": "unreadable", "manifest": str(plan.manifest),
                                               "reason": str(exc)},
                     findings=(f"Data manifest: {str(plan.manifest)!r} cannot be read ({exc}).",))
    root = _manifest_root(plan, data_info, [f.path for f in manifest.files])
    base = {"manifest": str(plan.manifest), "data_root": None if root is None else str(root),
            "merkle_root": manifest.root}
    if root is None:
        return _Part(severity="medium", metrics={**base, "status": "unverified"}, findings=(
            "Data manifest: given, but the data's location is unknown (a built-in data set); pass the "
            "folder it describes (data_root).",))
    try:
        diff = verify_manifest(manifest, root)
    except ModelShieldError as exc:
        return _Part(severity="medium", metrics={**base, "status": "error", "reason": str(exc)},
                     findings=(f"Data manifest: could not be verified against {str(root)!r} ({exc}).",))
    if diff.ok:
        return _Part(severity="none", metrics={**base, "status": "verified", **diff.to_dict()}, findings=(
            f"Data manifest: the {len(manifest.files)} file(s) under {str(root)!r} match it (Merkle root "
            f"{manifest.root[:16]}...).",))
    problems = diff.problems()
    rows = [(c.path, "changed", c.describe().removeprefix(f"{c.path}: ")) for c in diff.changed]
    rows += [(p, "added", "") for p in diff.added] + [(p, "removed", "") for p in diff.removed]
    rows += [(r.path, "refused", r.reason) for r in diff.refused]
    table = Table(title="Data files that differ from the manifest", columns=("file", "status", "rows"),
                  rows=rows[:_MAX_ROWS]) if rows else None
    return _Part(severity="high", metrics={**base, "status": "failed", **diff.to_dict()}, table=table,
                 fixes=("find out who changed the data (audit log) and retrain on the data the manifest "
                        "describes",), atlas=("AML.T0010.002",), findings=(
                     f"Data manifest: the data under {str(root)!r} differ from it: {'; '.join(problems[:8])}"
                     + (f" (and {len(problems) - 8} more)" if len(problems) > 8 else "") + ": high.",))


# --- (4) provenance from the audit log -------------------------------------------------------------


def _strings(value: object, depth: int = 0) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif depth < 4 and isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v, depth + 1)
    elif depth < 4 and isinstance(value, list):
        for v in value:
            yield from _strings(v, depth + 1)


def _digests(info: Mapping[str, Any], data_info: Mapping[str, Any], path: Path | None,
             manifest_root: str | None) -> dict[str, str]:
    """digest -> what it is the digest of (model file, model weights, data, data manifest root)."""
    out: dict[str, str] = {}
    file_digest = info.get("file_sha256")
    if not file_digest and path is not None and path.is_file():
        from modelshield.models.load import file_sha256

        file_digest = file_sha256(path)
    for digest, what in ((file_digest, "model file"), (info.get("weights_sha256"), "model weights"),
                         (data_info.get("sha256"), "data"), (manifest_root, "data manifest root")):
        if isinstance(digest, str) and len(digest) == 64:
            out.setdefault(digest.lower(), what)
    return out


def _summary(details: Mapping[str, Any]) -> str:
    text = json.dumps(details, sort_keys=True, separators=(", ", ": "), default=str)
    return text if len(text) <= _DETAILS_CHARS else text[: _DETAILS_CHARS - 3] + "..."


def _provenance(plan: SupplyChainPlan, digests: Mapping[str, str]) -> _Part:
    from modelshield.secure.audit import LOG_ENV, AuditLog

    where = plan.audit_log or os.environ.get(LOG_ENV, "").strip() or None
    if where is None:
        return _Part(severity="low", metrics={"status": "no-log"}, fixes=(_FIX_AUDIT,), findings=(
            f"Provenance: no audit log given (--audit-log or ${LOG_ENV}): who trained, signed or changed "
            "this model cannot be said.",))
    try:
        log = AuditLog.open(where)
    except ModelShieldError as exc:
        return _Part(severity="medium", metrics={"status": "error", "reason": str(exc)},
                     findings=(f"Provenance: the audit log could not be opened ({exc}).",))
    with log:
        report = log.verify()
        try:
            records = log.records()
        except ModelShieldError as exc:  # a malformed record: verify names it below
            records, unreadable = [], str(exc)
        else:
            unreadable = ""
    matched: list[tuple[Any, str]] = []
    for rec in records:
        seen = {rec.artifact.sha256 or "", *_strings(rec.details)}
        hits = [digests[d] for d in seen if d in digests]
        if hits:
            matched.append((rec, ", ".join(sorted(set(hits)))))
    metrics: dict[str, Any] = {"status": "verified" if report.ok else "tampered", "log": report.where,
                               "verify": report.to_dict(), "matched_records": len(matched),
                               "digests": dict(digests)}
    findings: list[str] = []
    fixes: list[str] = []
    severity: Severity = "none"
    if not report.ok:
        severity = "critical"
        findings.append(f"Provenance: the audit log {report.where!r} FAILS verification "
                        f"({'; '.join(p.message for p in report.problems[:3])}"
                        + (f"; {len(report.problems) - 3} more" if len(report.problems) > 3 else "")
                        + "): its records cannot be trusted: critical.")
        fixes.append("investigate who edited the audit log (`modelshield audit verify`) and restore it from "
                     "a copy that verifies")
    else:
        findings.append(f"Provenance: the audit log {report.where!r} verifies ({report.records} records, "
                        f"{report.checkpoints} signed checkpoint(s)).")
        if report.warnings:
            severity = "low"
            findings.append("Audit log: " + "; ".join(report.warnings) + ".")
            fixes.append("checkpoint the audit log regularly (`modelshield audit checkpoint`)")
    if unreadable:
        findings.append(f"Audit log: its records could not all be read ({unreadable}).")
    if matched:
        actions = sorted({rec.action for rec, _ in matched})
        findings.append(f"{len(matched)} record(s) concern this model or its data ({', '.join(actions)}); "
                        "the table lists them.")
    elif records or not unreadable:
        severity = max_severity((severity, "low"))
        findings.append("The audit log holds no record of this model's file or weights digest, nor of its "
                        "data: its origin is unknown.")
        fixes.append(_FIX_AUDIT)
    rows = [(rec.seq, rec.time, rec.actor, rec.action, rec.artifact.name, what, _summary(rec.details))
            for rec, what in matched[-_MAX_ROWS:]]
    table = Table(title="Provenance: audit-log records of the model and its data" + (
        f" (the last {_MAX_ROWS} of {len(matched)})" if len(matched) > _MAX_ROWS else ""),
        columns=("seq", "time", "actor", "action", "artifact", "matches", "details"),
        rows=rows) if rows else None
    return _Part(severity=severity, metrics=metrics, findings=tuple(findings), table=table,
                 fixes=tuple(fixes), atlas=("AML.T0010",) if not report.ok else ())


# --- the runner --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class SupplyChainSection:
    """Section runner: can the model file and the data be trusted? (MITRE ATLAS AML.T0010, AML.T0011.000)

    Reads ``ctx.plan.supply_chain`` (``SupplyChainPlan``; the defaults when the plan has none) and
    the model's file from ``ctx.model_info["path"]`` (a user's file, or a zoo model's cached file;
    a Python callable has none, which the section says). Four checks, each with its severity (see
    the module docstring): the static scan of the model file, its signature, the data against a
    manifest, and the model's provenance in the audit log (records whose artifact digest, or a
    digest in whose details, equals the model file's, the weights', the data's or the manifest
    root). Fast: no model call, no training.
    """

    id: str = "supply-chain"

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        plan = getattr(ctx.plan, "supply_chain", None)
        plan = plan if isinstance(plan, SupplyChainPlan) else SupplyChainPlan()
        info, data_info = ctx.model_info, ctx.data_info
        path = _model_path(info)

        def tick(done: int, text: str) -> None:
            if progress is not None:
                progress(done, 4, f"supply chain: {text}")

        tick(0, "scanning the model file")
        scan = _scan(info, path)
        tick(1, "checking the signature")
        sig = _signature(plan, path)
        tick(2, "verifying the data manifest")
        man = _manifest(plan, data_info)
        tick(3, "reading the audit log")
        root = man.metrics.get("merkle_root")
        prov = _provenance(plan, _digests(info, data_info, path, root if isinstance(root, str) else None))
        tick(4, "done")
        parts = {"scan": scan, "signature": sig, "manifest": man, "provenance": prov}
        severity = max_severity([p.severity for p in parts.values()])
        fixes = list(dict.fromkeys(f for p in parts.values() for f in p.fixes))
        techniques = list(dict.fromkeys(("AML.T0010", *(t for p in parts.values() for t in p.atlas))))
        blocking = scan.metrics.get("blocking_findings")
        status = sig.metrics.get("status")
        headline = {
            "supply_chain_blocking_findings": float(blocking) if isinstance(blocking, int) else None,
            "supply_chain_signature_verified": (1.0 if status == "verified" else 0.0
                                                if status in ("failed", "unsigned") else None),
        }
        summary = "; ".join(f"{name} {p.severity}" for name, p in parts.items())
        return Section(
            id=self.id,
            title=TITLE,
            summary=(f"Model file, signature, data manifest and audit log checked ({summary}); "
                     f"overall {severity}."),
            severity=severity,
            atlas=atlas(*techniques),
            recommendation=("Fix, in order: " + "; ".join(fixes) + ".") if fixes else (
                "Nothing to fix: keep scanning, signing, manifesting and logging every model and data set."),
            metrics={**headline, **{name: dict(p.metrics) for name, p in parts.items()}},
            headline=headline,
            findings=tuple(f for p in parts.values() for f in p.findings),
            tables=tuple(p.table for p in parts.values() if p.table is not None),
            provenance={"plan": plan.to_dict(), "model_path": None if path is None else str(path)},
            points=("no assessment points: this section checks the model file, its signature, the data "
                    "manifest and the audit log"),
        )
