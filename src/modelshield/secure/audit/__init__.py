"""Tamper-evident audit log: who did what to which artifact, hash-chained, Merkle-committed, signed.

Records are appended to SQLite (default) or PostgreSQL; each is chained to the previous record's
hash and is a leaf of an RFC 6962 Merkle tree whose heads are signed with Ed25519. ``verify`` names
every edited, deleted, reordered or truncated record; ``prove_inclusion`` / ``prove_consistency``
give Certificate Transparency's proofs, checked by the pure functions of :mod:`.merkle`.

Example:
    from modelshield.secure.audit import AuditLog, Artifact
    log = AuditLog.init("audit.db")
    log.append(action="train", artifact=Artifact.of_file("model.pt"), details={"epochs": 10})
    log.checkpoint()
    report = log.verify()
"""

from __future__ import annotations

from modelshield.secure.audit import merkle
from modelshield.secure.audit.keys import Checkpoint, verify_checkpoint
from modelshield.secure.audit.log import (
    LOG_ENV,
    AuditLog,
    ConsistencyProof,
    Entry,
    InclusionProof,
    Problem,
    ProblemKind,
    VerifyReport,
    default_actor,
    log_event,
)
from modelshield.secure.audit.records import ACTIONS, GENESIS_HASH, Artifact, Record, canonical_json

__all__ = [
    "ACTIONS",
    "GENESIS_HASH",
    "LOG_ENV",
    "Artifact",
    "AuditLog",
    "Checkpoint",
    "ConsistencyProof",
    "Entry",
    "InclusionProof",
    "Problem",
    "ProblemKind",
    "Record",
    "VerifyReport",
    "canonical_json",
    "default_actor",
    "log_event",
    "merkle",
    "verify_checkpoint",
]
