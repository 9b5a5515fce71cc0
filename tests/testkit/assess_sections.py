"""Report sections for the runner's assessment tests (registered on import; workers import this
module by name, as they would a user's section plugin).

``test-crash-always`` kills its worker process every time; ``test-crash-once`` kills it on the
first call only (a marker file, named by ``$MODELSHIELD_TEST_MARKER``, remembers the crash), then
reports the mean label of the points; ``test-reads-earlier`` reports which earlier sections it saw.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from modelshield.assess import SECTIONS, AssessmentContext, Progress, Section, register_section


@dataclass(frozen=True, slots=True)
class CrashAlways:
    id: str = "test-crash-always"

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        os._exit(15)


@dataclass(frozen=True, slots=True)
class CrashOnce:
    id: str = "test-crash-once"

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        marker = Path(os.environ["MODELSHIELD_TEST_MARKER"])
        if not marker.exists():
            marker.write_text("crashed\n", encoding="utf-8")
            os._exit(16)
        mean = float(ctx.y.double().mean())
        return Section(id=self.id, title="crash once", summary="survived a crash", severity="low",
                       metrics={"mean_label": mean}, headline={"test_mean_label": mean})


@dataclass(frozen=True, slots=True)
class ReadsEarlier:
    id: str = "test-reads-earlier"
    reads_earlier = True

    def __call__(self, ctx: AssessmentContext, progress: Progress | None) -> Section:
        seen = {k: s.severity for k, s in ctx.earlier.items()}
        return Section(id=self.id, title="reads earlier", summary=f"saw {sorted(seen)}", severity="none",
                       metrics={"seen": seen})


for _runner in (CrashAlways(), CrashOnce(), ReadsEarlier()):
    if _runner.id not in SECTIONS:
        register_section(_runner)
