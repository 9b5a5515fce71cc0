"""Beyond one machine: a sweep on local worker processes and on Ray against serial (issue #20).

Parts (each saved to the JSON file, ``--out``, as soon as it finishes; a rerun with the same
settings skips the parts already there, ``--fresh`` starts over; ``--parts`` picks some):

- ``sweep``: a 12-job sweep (``modelshield.runner.sweep``): the zoo models ``digits-cnn`` and
  ``digits-cnn-at`` x PGD L-inf and PGD L2 (``--steps`` steps each) x 3 budgets, each
  (model, attack, eps) one ``evasion-shard`` job on the first ``--n`` test points, run
  1. serially (``InlineExecutor``, one torch thread),
  2. on ``ProcessExecutor(workers=2, threads_per_worker=1)``, pool start-up included (target:
     at least 1.8x faster than serial),
  3. on ``RayExecutor(workers=2, threads_per_worker=1)`` on a local 2-CPU Ray cluster that is
     already running (as with ``--ray-address``; target: at least 1.7x), and the same with the
     cluster started for the run (start-up included).
  Plus the start-up overheads: a process pool, and a local Ray cluster (``ray.init``), each
  measured as the time to start it and run one trivial job (FGSM on one point) minus the same
  job in-process. The three runs' rows must be identical (``identical: true``, checked bit for bit
  on the JSON numbers). The load average before and after each timed run is recorded: other
  work on the machine slows the parallel runs more than the serial one.

- ``ddp``: PGD adversarial training of ``lenet-28`` on 12,800 MNIST images (digits' ``cnn-8x8``
  with ``--quick`` or without MNIST) in one process against 2 DDP processes on gloo, one thread
  each (``benchmarks/scale_ddp.py``): wall and training time, speed-up, clean and PGD-20 accuracy
  of each, and whether the ranks' final weights agree.

- ``assess``: ``modelshield assess`` of ``digits-cnn`` split into jobs (``modelshield.runner.assess``):
  the default evasion attacks and eps grid (each attack's default steps: PGD 40, APGD 100, the
  ensemble 100 per member) on 300 points, the blackbox section on 100 of them and the extraction
  section, in this process (``assess.run``) against 2 local worker
  processes (shards of 150 points, pool start-up included), with the report numbers checked
  identical (``report_numbers``).

Parts are functions in ``PARTS`` (name -> function(args) -> dict).

Zoo models are trained first if not cached (``zoo.load``, about 20 s the first time): a sweep
never trains them itself.

Usage: python benchmarks/scale.py [--quick] [--parts sweep,ddp] [--fresh]
Runtime measured 2026-12-02 on two quiet CPU cores: ``sweep`` 144 s (serial 48 s, processes
28.5 s, Ray 26 s on a running cluster and 31 s with its start-up), ``ddp`` 113 s on MNIST,
``assess`` 58 s (2026-12-03: 34 s in one process, 22 s on 2 processes); with
other work keeping the load average at 2-3 the parallel sweeps were no faster than serial. The
speed-ups need two idle cores: check the recorded load averages before trusting them.
``--quick`` (6 steps: a sweep of about 4 s, for checking the script, not the speed-up) about 40 s.
Ray needs ``pip install 'modelshield[ray]'``; without it the Ray runs are recorded as skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _parts import run_parts, unknown_parts  # benchmarks/ is on sys.path when a script runs

from modelshield import zoo
from modelshield.runner import InlineExecutor, ProcessExecutor, RayExecutor, evasion_shards, run_jobs
from modelshield.runner.sweep import SweepPlan, SweepResult, run_sweep

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("digits-cnn", "digits-cnn-at")
WORKERS = 2


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (os.getloadavg), rounded."""
    return [round(v, 2) for v in os.getloadavg()]


def sweep_plan(args: argparse.Namespace) -> SweepPlan:
    """2 models x 2 attacks x 3 eps = 12 jobs (one shard per cell), of equal cost each."""
    return SweepPlan.from_dict({
        "models": list(MODELS),
        "attacks": [{"name": "pgd", "eps": [0.05, 0.1, 0.2], "norm": "inf", "steps": args.steps},
                    {"name": "pgd", "eps": [0.5, 1.0, 2.0], "norm": "2", "steps": args.steps}],
        "n": args.n, "seed": args.seed, "shard_size": args.n, "batch_size": args.n,
    }, source="benchmarks/scale.py")


def timed(plan: SweepPlan, executor: Any) -> tuple[SweepResult, dict[str, Any]]:
    """Run the sweep with a fresh checkpoint folder (so every job is computed); time and load."""
    before = load()
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        t0 = time.perf_counter()
        result = run_sweep(plan, executor, checkpoint=Path(tmp) / "ckpt", retries=0)
        wall = time.perf_counter() - t0
    assert result.ok, result.failed_jobs
    assert result.counts["done"] == 12, result.counts
    return result, {"executor": result.executor, "wall_s": round(wall, 2), "jobs": result.counts["done"],
                    "load_before": before, "load_after": load()}


def trivial(executor: Any) -> float:
    """Wall time to open the executor and run one FGSM job on one point."""
    jobs = evasion_shards(MODELS[0], attack={"name": "fgsm", "eps": 0.1}, n=1, shard_size=1, batch_size=1)
    t0 = time.perf_counter()
    run = run_jobs(jobs, executor, retries=0)
    wall = time.perf_counter() - t0
    assert run.ok, [r.error for r in run.failed]
    return wall


def ray_init(ray: Any) -> float:
    """Start a local Ray cluster of WORKERS CPUs (as RayExecutor does); seconds taken."""
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, object_store_memory=128 * 2**20,
             log_to_driver=False, configure_logging=False)
    return time.perf_counter() - t0


def sweep_part(args: argparse.Namespace) -> dict[str, Any]:
    for name in MODELS:
        zoo.load(name)  # train once (if not cached), then fan out
    plan = sweep_plan(args)
    out: dict[str, Any] = {"plan": plan.to_dict(), "cells": len(plan.cells), "workers": WORKERS,
                           "threads_per_worker": 1}
    inline_trivial = trivial(InlineExecutor(threads=1))  # warm: model loaded, torch imported
    out["startup"] = {"inline_trivial_job_s": round(inline_trivial, 3)}
    pool_trivial = trivial(ProcessExecutor(workers=WORKERS, threads_per_worker=1))
    out["startup"].update({"process_pool_trivial_job_s": round(pool_trivial, 3),
                           "process_pool_overhead_s": round(pool_trivial - inline_trivial, 3)})

    serial, out["serial"] = timed(plan, InlineExecutor(threads=1))
    print(f"sweep serial: {out['serial']['wall_s']} s", file=sys.stderr, flush=True)
    procs, out["processes"] = timed(plan, ProcessExecutor(workers=WORKERS, threads_per_worker=1))
    out["processes"]["speedup"] = round(out["serial"]["wall_s"] / out["processes"]["wall_s"], 2)
    out["processes"]["target"] = 1.8
    # the pool's own start-up (spawn, import torch, load the models) is paid once per run
    steady = out["processes"]["wall_s"] - out["startup"]["process_pool_overhead_s"]
    out["processes"]["speedup_without_pool_startup"] = round(out["serial"]["wall_s"] / steady, 2)
    print(f"sweep processes: {out['processes']['wall_s']} s", file=sys.stderr, flush=True)
    numbers = serial.numbers()
    out["identical"] = {"processes": procs.numbers() == numbers}

    if importlib.util.find_spec("ray") is None:
        out["ray"] = {"skipped": "ray is not installed (pip install 'modelshield[ray]')"}
    else:
        import ray

        executor = RayExecutor(workers=WORKERS, threads_per_worker=1)
        # 1. cluster started for the run: ray.init + one trivial job, then the sweep on the warm cluster
        init_s = ray_init(ray)
        try:
            ray_trivial = trivial(executor)  # uses the running cluster and leaves it up
            warm, out["ray"] = timed(plan, executor)
        finally:
            ray.shutdown()
        out["ray"]["speedup"] = round(out["serial"]["wall_s"] / out["ray"]["wall_s"], 2)
        out["ray"]["target"] = 1.7
        out["ray"]["cluster"] = "local, already running (started and warmed by one trivial job before timing)"
        out["startup"].update({"ray_init_s": round(init_s, 3),
                               "ray_first_trivial_job_s": round(ray_trivial, 3),
                               "ray_overhead_s": round(init_s + ray_trivial - inline_trivial, 3)})
        print(f"sweep ray (running cluster): {out['ray']['wall_s']} s", file=sys.stderr, flush=True)
        # 2. RayExecutor(address=None) starting and stopping its own cluster: what `--backend ray` pays
        cold, out["ray_cold"] = timed(plan, executor)
        out["ray_cold"]["speedup"] = round(out["serial"]["wall_s"] / out["ray_cold"]["wall_s"], 2)
        out["ray_cold"]["cluster"] = "local, started and shut down by RayExecutor inside the timed run"
        print(f"sweep ray (cluster started for the run): {out['ray_cold']['wall_s']} s", file=sys.stderr,
              flush=True)
        out["identical"].update({"ray": warm.numbers() == numbers, "ray_cold": cold.numbers() == numbers})
    out["identical"]["all"] = all(out["identical"].values())
    out["rows"] = numbers
    return out


def ddp_part(args: argparse.Namespace) -> dict[str, Any]:
    """2-process DDP adversarial training against one process (benchmarks/scale_ddp.py)."""
    import scale_ddp  # benchmarks/ is on sys.path when this script runs

    result: dict[str, Any] = scale_ddp.ddp(args.quick, args.seed)
    return result


def assess_part(args: argparse.Namespace) -> dict[str, Any]:
    """An assessment in one process against the same split into jobs on 2 local processes."""
    from modelshield.assess import AssessmentPlan, BlackBoxPlan, EvasionPlan, run
    from modelshield.assess.report import report_numbers
    from modelshield.assess.suite import target_inputs
    from modelshield.runner.assess import run_assessment
    from modelshield.targets import TargetRef

    ref = TargetRef(model=MODELS[0], n=300)
    plan = AssessmentPlan(sections=("evasion", "blackbox", "extraction"), n=300, batch_size=150,
                          seed=args.seed, evasion=EvasionPlan(steps=6 if args.quick else None),
                          blackbox=BlackBoxPlan(n=100))
    target = ref.load()
    out: dict[str, Any] = {"plan": plan.to_dict(), "workers": WORKERS, "threads_per_worker": 1,
                           "shard_size": 150}
    before = load()
    t0 = time.perf_counter()
    serial = run(plan=plan, **target_inputs(target))
    out["serial"] = {"wall_s": round(time.perf_counter() - t0, 2), "load_before": before,
                     "load_after": load()}
    print(f"assess serial: {out['serial']['wall_s']} s", file=sys.stderr, flush=True)
    before = load()
    t0 = time.perf_counter()
    jobs = run_assessment(ref, plan, ProcessExecutor(workers=WORKERS, threads_per_worker=1), shard_size=150,
                          loaded=target)
    out["processes"] = {"wall_s": round(time.perf_counter() - t0, 2), "jobs": jobs.counts,
                        "load_before": before, "load_after": load()}
    out["processes"]["speedup"] = round(out["serial"]["wall_s"] / out["processes"]["wall_s"], 2)
    out["identical"] = report_numbers(serial.to_dict()) == report_numbers(jobs.assessment.to_dict())
    job_times = sorted((round(r.time_s, 2), r.job.kind, r.job.params.get("section") or r.job.params["attack"])
                       for run_ in jobs.runs for r in run_.reports)
    out["longest_jobs"] = job_times[-5:]
    out["compute_s"] = round(sum(t for t, _, _ in job_times), 2)
    print(f"assess processes: {out['processes']['wall_s']} s", file=sys.stderr, flush=True)
    return out


PARTS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "sweep": sweep_part,
    "ddp": ddp_part,
    "assess": assess_part,
}
"""Part name -> function(args) -> JSON-safe dict; run in this order, each saved as it finishes."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="6 PGD steps: checks the script, not the speed-up")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default results/scale[_quick].json)")
    p.add_argument("--fresh", action="store_true", help="ignore the parts already saved in --out")
    p.add_argument("--n", type=int, default=300, help="test points per sweep job")
    p.add_argument("--steps", type=int, default=None, help="PGD steps per sweep job (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.steps = args.steps or (6 if args.quick else 1000)
    args.out = args.out or RESULTS / ("scale_quick.json" if args.quick else "scale.json")
    unknown = unknown_parts(args.parts, PARTS)
    if unknown:
        p.error(f"--parts must be among {', '.join(PARTS)}; got {unknown}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    torch.set_num_threads(1)
    settings = {"quick": args.quick, "n": args.n, "steps": args.steps, "seed": args.seed}
    environment = {"python": platform.python_version(),
                   "torch": torch.__version__,
                   "cpus": os.cpu_count(),
                   "machine": platform.machine()}
    return run_parts("scale", PARTS, args, settings=settings, environment=environment)


if __name__ == "__main__":  # the guard ProcessExecutor's spawned workers need
    main()
