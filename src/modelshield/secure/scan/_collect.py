"""A findings list for one stream, capped per code so that a hostile file cannot flood a report."""

from __future__ import annotations

from dataclasses import dataclass, field

from modelshield.secure.scan.findings import Finding, Location, Severity

__all__ = ["Collector"]


@dataclass(slots=True)
class Collector:
    """Findings about one stream at ``where``; past ``cap`` findings of one code, one info line."""

    where: Location
    cap: int = 20
    items: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, severity: Severity, code: str, message: str, offset: int | None = None,
            callable: str | None = None) -> None:
        n = self.counts.get(code, 0)
        self.counts[code] = n + 1
        if n < self.cap:
            self.items.append(Finding(severity=severity, code=code, message=message,
                                      location=self.where, offset=offset, callable=callable))
        elif n == self.cap:
            self.items.append(Finding(severity="info", code=code,
                                      message=f"further {code} findings omitted", location=self.where))
