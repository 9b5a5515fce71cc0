"""Checkpoints: one JSON file per finished job, written atomically and verified on every read.

A file ``<folder>/<job key>.json`` holds the job's spec (schema, kind, version, params, key), its
result and the SHA-256 of the result's canonical JSON. It is trusted only when all of these agree
with the job asked for; a corrupt, truncated, renamed or edited file is ignored (the job is
recomputed and the file replaced), never trusted. The digest catches accidents and naive edits,
not a forger who recomputes it: the folder is as trusted as the user who can write it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelshield._io import write_atomic
from modelshield.errors import ConfigError
from modelshield.runner.jobs import Job, canonical_json

__all__ = ["CHECKPOINT_FORMAT", "CheckpointStore"]

CHECKPOINT_FORMAT = "modelshield-runner-checkpoint-v1"

_log = logging.getLogger(__name__)


def _digest(result_json: str) -> str:
    return hashlib.sha256(result_json.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class CheckpointStore:
    """A folder of verified job results, one file per job key.

    Args:
        folder: where the files live (created on first write).

    Example:
        store = CheckpointStore(Path("runs/sweep-1"))
        store.read(job)          # the result dict, or None when absent or not trustworthy
    """

    folder: Path

    def __post_init__(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"CheckpointStore: 'folder' must be a folder; got {str(self.folder)!r}, "
                              "which is a file. Choose another checkpoint location.")

    def path(self, job: Job) -> Path:
        """The file that holds job's result."""
        return self.folder / f"{job.key}.json"

    def read(self, job: Job) -> dict[str, Any] | None:
        """job's checkpointed result, or None when there is none or it fails a check.

        Checks: valid JSON object, the format, the spec equal to job's (schema, kind, version,
        params, key) and the result's digest. A failed check is logged (warning) and the file is
        left for ``write`` to replace.
        """
        path = self.path(job)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            _log.warning("checkpoint %s unreadable (%s); recomputing", path, type(exc).__name__)
            return None
        why = _problem(text, job)
        if why is not None:
            _log.warning("checkpoint %s not trusted (%s); recomputing", path, why)
            return None
        result: dict[str, Any] = json.loads(text)["result"]
        return result

    def write(self, job: Job, result_json: str, *, meta: dict[str, Any] | None = None) -> Path:
        """Write job's result (canonical JSON text) atomically (temporary file, then os.replace).

        ``meta`` (time, worker, attempts) is stored beside the result, outside its digest.
        """
        record = {"format": CHECKPOINT_FORMAT, "job": job.spec(), "result": json.loads(result_json),
                  "result_sha256": _digest(result_json), "meta": meta or {}}
        return write_atomic(self.path(job), json.dumps(record, sort_keys=True, indent=1) + "\n", force=True)


def _problem(text: str, job: Job) -> str | None:
    """Why the checkpoint text cannot be trusted for job, or None."""
    try:
        data = json.loads(text)
    except ValueError:
        return "not JSON"
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("format") != CHECKPOINT_FORMAT:
        return f"format {data.get('format')!r}"
    if data.get("job") != job.spec():
        return "job spec differs"
    if "result" not in data or not isinstance(data["result"], dict):
        return "no result"
    try:
        result_json = canonical_json(data["result"], owner="checkpoint", what="result")
    except ConfigError:
        return "result not JSON-safe"
    if data.get("result_sha256") != _digest(result_json):
        return "result digest mismatch"
    return None
