"""Report writers: the JSON (source of truth) and a self-contained HTML page rendered from it."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from modelshield._io import check_output_paths, write_atomic
from modelshield.assess._section import SEVERITIES
from modelshield.assess.suite import Assessment

__all__ = ["check_new_files", "render_html", "render_page", "report_numbers", "write_json", "write_report"]

_TIME_COLUMNS = frozenset({"time (s)"})


def report_numbers(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report without what legitimately differs between two runs of the same seeded plan.

    Drops ``generated_at``, every ``time_s`` (and ``*_time_s``, and a summary's ``<section>.time_s``)
    value, table columns of times, the platform line and ``provenance.runner`` (the executor and
    job counts). Two runs of one seeded plan (in this process, or as jobs on any backend, worker
    count or shard size) give equal ``report_numbers``: the check the runner's tests make, and one
    a user can repeat.
    """
    def strip(obj: Any) -> Any:
        if isinstance(obj, Mapping):
            out = {k: strip(v) for k, v in obj.items()
                   if not (k == "time_s" or str(k).endswith(("_time_s", ".time_s")))}
            cols = out.get("columns")
            if isinstance(cols, list) and isinstance(out.get("rows"), list):
                keep = [i for i, c in enumerate(cols) if c not in _TIME_COLUMNS]
                out["columns"] = [cols[i] for i in keep]
                out["rows"] = [[row[i] for i in keep] for row in out["rows"]]
            return out
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    out: dict[str, Any] = strip(json.loads(json.dumps(report)))
    out.pop("generated_at", None)
    prov = out.get("provenance", {})
    for key in ("runner", "platform"):
        prov.pop(key, None)
    return out

TEMPLATE = "report.html.j2"


def check_new_files(paths: Iterable[Path], *, overwrite: bool, owner: str) -> None:
    """Raise ConfigError unless every path can be written: not a folder, not existing (unless
    overwrite) and in a writable location (checked before any work; see ``check_output_paths``)."""
    check_output_paths(paths, force=overwrite, owner=owner)


def _pct(v: Any, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100 * float(v):.{digits}f}%"


def _num(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}"


def _cell(v: Any, column: str) -> str:
    """Format a table cell: rates as percentages, other numbers compactly."""
    rate = any(w in column for w in ("accuracy", "rate", "eps="))
    return _pct(v) if rate and isinstance(v, int | float) and not isinstance(v, bool) else _num(v)


@functools.cache
def _environment() -> jinja2.Environment:
    """The Jinja2 environment over the package's templates (autoescaped, strict undefined)."""
    folder = resources.files("modelshield.assess").joinpath("templates")

    def load(name: str) -> str:
        return folder.joinpath(name).read_text("utf-8")

    env = jinja2.Environment(loader=jinja2.FunctionLoader(load), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, num=_num, cell=_cell)
    env.globals["severities"] = SEVERITIES
    return env


def render_page(template: str, **context: Any) -> str:
    """Render one of the package's HTML templates (``report.html.j2``, ``index.html.j2``) with
    the shared styles and macros; every page is self-contained (inline CSS, data-URI images)."""
    return _environment().get_template(template).render(**context)


def render_html(report: Assessment | Mapping[str, Any]) -> str:
    """Render the report dict with the package's report template (autoescaped, no external assets)."""
    data = report.to_dict() if isinstance(report, Assessment) else report
    return render_page(TEMPLATE, r=data, provenance_json=json.dumps(
        data.get("provenance", {}), indent=2, sort_keys=True))


def write_json(path: str | Path, payload: Mapping[str, Any], *, overwrite: bool = False) -> Path:
    """Write payload as indented JSON to path atomically (parents created); refuse to overwrite
    by default.

    Raises:
        ConfigError: path exists and overwrite is False.
    """
    out = Path(path)
    check_new_files([out], overwrite=overwrite, owner="write_json")
    return write_atomic(out, json.dumps(payload, indent=2, allow_nan=False) + "\n", force=overwrite)


def write_report(
    assessment: Assessment | Mapping[str, Any], out_dir: str | Path, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into out_dir (created if needed).

    The HTML is rendered from the same dict as the JSON and embeds its figures as data URIs,
    so the single file can be mailed or archived. Each file is written atomically.

    Args:
        assessment: the result of ``assess.run`` (or its ``to_dict()``).
        out_dir: the output folder.
        overwrite: replace existing report files.

    Returns:
        (path to report.json, path to report.html).

    Raises:
        ConfigError: a report file exists and overwrite is False (nothing is written).
    """
    folder = Path(out_dir)
    json_path, html_path = folder / "report.json", folder / "report.html"
    check_new_files([json_path, html_path], overwrite=overwrite, owner="write_report")
    data = assessment.to_dict() if isinstance(assessment, Assessment) else dict(assessment)
    html = render_html(data)
    write_json(json_path, data, overwrite=True)
    write_atomic(html_path, html, force=True)
    _audit(json_path, data)
    return json_path, html_path


def _audit(json_path: Path, data: Mapping[str, Any]) -> None:
    """An ``assess`` record in the configured audit log: the report's digest, the model's and the
    data's identity, the severity and the sections (nothing is written without a log)."""
    from modelshield.secure.audit import log_event

    model, dataset = data.get("model") or {}, data.get("data") or {}
    summary = data.get("summary") or {}
    details = {
        "model": {k: model.get(k) for k in ("name", "sha256", "weights_sha256", "path") if model.get(k)},
        "data": {k: dataset.get(k) for k in ("name", "sha256") if dataset.get(k)},
        "severity": summary.get("severity"),
        "sections": [r.get("section") for r in summary.get("risks") or [] if isinstance(r, Mapping)],
    }
    log_event(action="assess", artifact=json_path, details=details)
