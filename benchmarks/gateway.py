"""The inference gateway over HTTP on loopback (issue #18): detection of attacks, load, and crash safety.

Prints one JSON object and writes it to ``benchmarks/results/gateway.json`` (``--quick``:
``gateway_quick.json``; ``--out`` to choose). Every gateway is a real ``modelshield serve``
subprocess (uvicorn, its own process); the keys are created through the admin API. Three parts,
each bounded in requests and seconds, each saved as soon as it is done (``--resume`` skips the parts
already in the output file, ``--parts`` picks some):

- ``detection``: a gateway with the live monitors on (``stateful``, ``blacklight``, ``prada``,
  ``coverage``; each ``action: block`` but PRADA, which throttles) in front of ``mnist-cnn`` (the
  zoo trains it once if not cached: ``zoo_load_s``) and of the tabular ``phishing-gbm`` (UCI
  phishing). modelshield's own Square (L-inf), HopSkipJump and SimBA (untargeted, one image per
  client key) and a Knockoff Nets thief (natural out-of-distribution pool: Fashion-MNIST for MNIST;
  for the tabular model, random rows of the feature grid, i.e. synthetic queries) run through
  ``modelshield.models.HttpModel`` with a probabilities key: queries answered until the first alert
  (the alert's own query count) and until the key was refused with 403; the targets are <= 50 for
  query-based evasion and <= 200 for extraction. ``benign``: held-out test-set streams (one key
  each, one row per request, images not used by the gateway's reference rows; a blocked key is
  unblocked by the admin and goes on), the per-query false-positive rate (alerts / queries; target
  <= 0.5%; the gateway's detectors keep a key's state across an unblock, so PRADA, once its
  statistic is under the threshold, alerts again at its next check) and how many benign keys were
  blocked at least once, and at which query first (the client's view). ``adaptive``: the same
  attacks with each query blinded before it is sent (Gaussian noise of std ``--sigma`` and, for
  images, a random roll of up to one pixel; ``adaptive_strong``: std ``--strong-sigma`` and up to
  two pixels; the twist the stateful-detection papers evaluate): how many queries then pass before
  the block, and whether the attack still succeeded (re-checked on the model itself, in process).
  ART 1.20.1 has no stateful query detector to put beside the gateway (its unmerged prototype is
  compared offline in benchmarks/monitors.py).
- ``load``: ``mnist-cnn`` with all four monitors on and with none; 1, 8 and 64 concurrent clients
  (one key each, distinct held-out test images, one row per request) in a separate process (an
  asyncio httpx client): requests/s, p50 and p99 latency; the in-process model call of the same
  row (the gateway's own black-box call) and its throughput, and the overhead of the p50s;
  ``healthz_*``: the HTTP floor of the same client and uvicorn (GET /healthz); benign keys blocked
  by a monitor (their later requests get 403); then the gateway is stopped and its audit log read:
  every answered request must have its record (``lost_audit_records``, matched by body digest),
  and the chain must verify. ``only_<monitor>`` (not with ``--quick``): one client with that
  monitor alone (``action: alert``), what each monitor costs per request.
- ``crash``: a ``modelshield serve`` under load from 8 clients is killed with SIGKILL, restarted on
  the same state, queried again and stopped; ``modelshield audit verify`` must pass and every
  request answered before the kill must have its record (records of requests whose answer never
  left are allowed and counted).

Usage: python benchmarks/gateway.py [--quick] [--parts detection,load,crash] [--resume] [--out FILE]
Runtime: about 8 minutes (``--quick``: about 2) on two shared CPU cores. MNIST and Fashion-MNIST
come from ``$MODELSHIELD_DATA`` or ``../shared/data``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# as examples/gateway.yaml: the per-query monitors block after their default burst of alerts (5 in
# 100 queries at fpr 0.005), PRADA (whose statistic covers the key's whole history) throttles
ALL_MONITORS: dict[str, Any] = {"stateful": {"action": "block"}, "blacklight": {"action": "block"},
                                "prada": {"action": "throttle"}, "coverage": {"action": "block"}}
FAST = {"rate_per_s": 1e6, "burst": 1_000_000, "budget": None}


def data_root() -> Path:
    env = os.environ.get("MODELSHIELD_DATA", "").strip()
    return Path(env) if env else ROOT.parent / "shared" / "data"


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- a gateway subprocess ---------------------------------------------------------------------


class Gateway:
    """``modelshield serve`` in its own process (new session, so SIGKILL hits only it)."""

    def __init__(self, model: str, state: Path, settings: dict[str, Any], *, data: str | None = None) -> None:
        self.model, self.state, self.data = model, state, data
        self.settings = {"state_dir": str(state), "log_level": "warning", **settings}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.admin = ""
        self.start_s = 0.0
        self.log = state.parent / f"{state.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 240.0) -> float:
        import yaml  # type: ignore[import-untyped]

        from modelshield.serve import KeyStore

        self.state.mkdir(parents=True, exist_ok=True)
        if not self.admin:
            with KeyStore.open(self.state / "keys.db") as store:
                self.admin = store.create(name="bench-admin", role="admin")[1]
        config = self.state.parent / f"{self.state.name}.yaml"
        config.write_text(yaml.safe_dump(self.settings))
        self.port = _free_port()
        cmd = [str(Path(sys.executable).with_name("modelshield")), "serve", "--model", self.model,
               "--config", str(config), "--port", str(self.port)]
        if self.data:
            cmd += ["--data", self.data]
        env = {**os.environ, "MODELSHIELD_DATA": str(data_root())}
        started = time.perf_counter()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        import httpx

        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"modelshield serve exited {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    self.start_s = time.perf_counter() - started
                    return self.start_s
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"modelshield serve not ready within {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM (graceful: drains, signs a final checkpoint), SIGKILL after 60 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def admin_call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        r = httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {self.admin}"},
                          timeout=30, **kw)
        r.raise_for_status()
        return r.json()

    def new_key(self, name: str, *, output: str = "probabilities") -> tuple[str, str]:
        made = self.admin_call("POST", "/v1/admin/keys", json={
            "name": name, "role": "client", "policy": {"output": output, **FAST}})
        return str(made["key"]), str(made["key_id"])

    def alerts(self, key_id: str) -> list[dict[str, Any]]:
        found = self.admin_call("GET", "/v1/admin/alerts", params={"key_id": key_id, "limit": 1000})
        return list(found["alerts"])


@contextlib.contextmanager
def running(gw: Gateway) -> Iterator[Gateway]:
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def read_audit(state: Path) -> tuple[Any, list[Any]]:
    from modelshield.secure.audit import AuditLog

    with AuditLog.open(state / "audit.db") as log:
        return log.verify(), log.records()


# --- (a) detection ----------------------------------------------------------------------------


def blinder(sigma: float, shift: int, bounds: tuple[float, float],
            seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Query blinding: Gaussian noise of std sigma and (images) a random roll of up to ``shift`` pixels."""
    rng = np.random.default_rng(seed)

    def blind(x: np.ndarray) -> np.ndarray:
        out = x + rng.normal(0.0, sigma, size=x.shape).astype(np.float32)
        if shift and x.ndim == 4:
            for i in range(len(out)):
                dy, dx = (int(v) for v in rng.integers(-shift, shift + 1, size=2))
                out[i] = np.roll(out[i], (dy, dx), axis=(-2, -1))
        return np.clip(out, *bounds).astype(np.float32)

    return blind


def attack_client(gw: Gateway, name: str, attack: Any, x: torch.Tensor, y: torch.Tensor | None, *,
                  net: Callable[[torch.Tensor], torch.Tensor], batch_size: int, n_classes: int,
                  blind: Callable[[np.ndarray], np.ndarray] | None, pool: bool) -> dict[str, Any]:
    """One attack run by its own key through HttpModel; stops at the first refusal."""
    from modelshield.errors import ModelShieldError, QueryRefused
    from modelshield.models import CallableModel, HttpModel

    secret, key_id = gw.new_key(name)
    remote = HttpModel(gw.url, api_key=secret, batch_size=batch_size)
    fn: Callable[[np.ndarray], np.ndarray] = remote if blind is None else (lambda q: remote(blind(q)))
    model = CallableModel(fn, bounds=remote.bounds, n_classes=n_classes)
    out: dict[str, Any] = {"key_id": key_id, "refused": None}
    started = time.perf_counter()
    result = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = attack(model, x) if pool else attack(model, x, y)
        out["refused"] = None
    except QueryRefused as exc:
        out["refused"] = {"status": exc.status, "decision": exc.decision}
    except ModelShieldError as exc:
        out["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"  # e.g. scores from a labels-only API
    finally:
        remote.close()
    out["time_s"] = round(time.perf_counter() - started, 2)
    out["queries_answered"] = remote.queries
    out["requests"] = remote.requests
    alerts = gw.alerts(key_id)
    out["alerts"] = dict(Counter(str(a.get("monitor")) for a in alerts))
    first = alerts[0] if alerts else None
    out["first_alert"] = None if first is None else {
        "monitor": first.get("monitor"), "queries": first.get("queries"), "acted": first.get("acted")}
    out["blocked"] = bool(out["refused"] and out["refused"]["decision"] == "blocked")
    if result is not None and not pool:  # the attack finished: did it really win? (on the model)
        with torch.no_grad():
            out["attack_success"] = bool((net(result.x_adv).argmax(1) != y).all())
    elif result is not None:
        out["attack_finished"] = True
    return out


def summarize(runs: list[dict[str, Any]], target: int) -> dict[str, Any]:
    first = [r["first_alert"]["queries"] if r["first_alert"] else None for r in runs]
    blocked_at = [r["queries_answered"] if r["blocked"] else None for r in runs]
    got = [q for q in first if q is not None]
    return {
        "clients": len(runs),
        "alerted": sum(q is not None for q in first),
        "blocked": sum(q is not None for q in blocked_at),
        "queries_to_first_alert": first,
        "queries_answered_until_block": blocked_at,
        "max_queries_to_first_alert": max(got) if got else None,
        "target": target,
        "within_target": len(got) == len(runs) and max(got, default=0) <= target
                         and all(b is not None and b <= target for b in blocked_at),
        "attack_success_when_finished": [r.get("attack_success") for r in runs],
        "errors": sorted({r["error"] for r in runs if "error" in r}),
        "runs": runs,
    }


def load_model_data(name: str, n: int) -> tuple[Any, torch.Tensor, torch.Tensor, float, bool]:
    """(zoo model, test x, test y, load seconds, whether it was cached before)."""
    from modelshield import zoo

    cached = zoo.is_cached(name)
    started = time.perf_counter()
    model = zoo.load(name, data_root=data_root())
    took = time.perf_counter() - started
    x, y = zoo.test_split(name, n=n, data_root=data_root())
    return model, x, y, took, cached


def net_of(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    module = model.module
    if isinstance(module, torch.nn.Module):
        return lambda x: module(x)
    return lambda x: torch.as_tensor(module.predict_proba(x.numpy()))


def detection(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from modelshield.attacks.evasion import HopSkipJump, SimBA, Square
    from modelshield.attacks.extraction import KnockoffNets
    from modelshield.errors import QueryRefused
    from modelshield.models import HttpModel

    out: dict[str, Any] = {"monitors": ALL_MONITORS, "fpr": args.fpr,
                           "art_stateful": "not run here: ART 1.20.1 has no stateful query detector; its "
                                           "unmerged prototype (PR #1420) is compared offline in "
                                           "benchmarks/monitors.py"}
    points, budget = (2, 300) if args.quick else (3, 500)
    streams, stream_len = (4, 100) if args.quick else (8, 250)
    for model_name, kind in (("mnist-cnn", "image"), ("phishing-gbm", "tabular")):
        started = time.perf_counter()
        zm, x_test, y_test, load_s, cached = load_model_data(
            model_name, n=min(streams * stream_len + 200, 1463 if kind == "tabular" else 10_000))
        n_stream = min(stream_len, (len(x_test) - 200) // streams)
        net = net_of(zm)
        with torch.no_grad():
            correct = (net(x_test).argmax(1) == y_test).nonzero().squeeze(1)
        bounds = (float(zm.spec.bounds[0]), float(zm.spec.bounds[1]))
        gw = Gateway(model_name, work / f"detect-{model_name}",
                     {"max_batch": 256, "monitors": {"fpr": args.fpr, **ALL_MONITORS}})
        res: dict[str, Any] = {"zoo_load_s": round(load_s, 2), "zoo_was_cached": cached,
                               "zoo_train_time_s": zm.meta.get("train_time_s"),
                               "test_accuracy": zm.meta.get("test_accuracy")}
        with running(gw):
            res["gateway_start_s"] = round(gw.start_s, 2)
            attacked = correct[:points]
            if kind == "image":
                eps = 0.3
                pool = _fashion_pool(args, n=2000)
            else:
                eps = 0.5
                gen = torch.Generator().manual_seed(0)
                pool = torch.randint(-1, 2, (2000, 30), generator=gen).float()
            attacks: dict[str, Any] = {
                "square": Square(eps=eps, max_queries=budget, seed=0),
                "hopskipjump": HopSkipJump(max_queries=budget, seed=0),
                "simba": SimBA(eps_step=0.2 if kind == "image" else 0.5, max_queries=budget, seed=0),
            }
            served = gw.admin_call("GET", "/v1/model")["output"]  # probabilities, or labels only
            res["served_output"] = served
            thief = KnockoffNets(budget=1000, epochs=2, batch_size=64, seed=0,
                                 output="labels" if served == "labels" else "proba")
            n_classes = int(zm.spec.n_classes)
            shift = 1 if kind == "image" else 0
            variants: list[tuple[str, tuple[float, int] | None]] = [
                ("attacks", None), ("adaptive", (args.sigma, shift)),
                ("adaptive_strong", (args.strong_sigma, 2 * shift))]
            for variant, blind_cfg in variants:
                section: dict[str, Any] = {}
                for name, attack in attacks.items():
                    runs = []
                    for j, i in enumerate(attacked.tolist()):
                        blind = None if blind_cfg is None else blinder(*blind_cfg, bounds, seed=j)
                        runs.append(attack_client(gw, f"{variant}-{name}-{j}", attack, x_test[i:i + 1],
                                                  y_test[i:i + 1], net=net, batch_size=1, blind=blind,
                                                  pool=False, n_classes=n_classes))
                    section[name] = summarize(runs, 50)
                blind = None if blind_cfg is None else blinder(blind_cfg[0], blind_cfg[1], bounds, seed=99)
                runs = [attack_client(gw, f"{variant}-knockoff", thief, pool, None, net=net, batch_size=16,
                                      blind=blind, pool=True, n_classes=n_classes)]
                section["knockoff"] = summarize(runs, 200)
                section["knockoff"]["pool"] = (
                    "fashion-mnist test images (natural, out of distribution)" if kind == "image"
                    else "random rows of {-1, 0, 1}^30 (synthetic)")
                if blind_cfg is not None:
                    section["blinding"] = {"sigma": blind_cfg[0], "shift_px": blind_cfg[1]}
                res[variant] = section
            # benign held-out streams: one key each, one row per request, distinct images; a blocked
            # key is unblocked by the admin (DELETE /v1/admin/blocks/{id}) and goes on, so the rate is
            # measured over every row of every stream
            benign = []
            gen = torch.Generator().manual_seed(1)
            for s in range(streams):  # disjoint blocks; stream 0 in the test set's own order, others shuffled
                within = torch.arange(n_stream) if s == 0 else torch.randperm(n_stream, generator=gen)
                idx = 200 + s * n_stream + within
                secret, key_id = gw.new_key(f"benign-{s}")
                blocks: list[int] = []
                with HttpModel(gw.url, api_key=secret, batch_size=1) as remote:
                    for row in x_test[idx].numpy():
                        try:
                            remote(row[None])
                        except QueryRefused as exc:
                            if exc.decision != "blocked":
                                raise
                            blocks.append(remote.rows_sent)
                            gw.admin_call("DELETE", f"/v1/admin/blocks/{key_id}")
                    sent = remote.rows_sent
                alerts = gw.alerts(key_id)
                benign.append({"queries": sent, "alerts": len(alerts), "blocked_at_query": blocks,
                               "monitors": dict(Counter(str(a.get("monitor")) for a in alerts))})
            queries = sum(b["queries"] for b in benign)
            false_alerts = sum(b["alerts"] for b in benign)
            res["benign"] = {"streams": benign, "queries": queries, "false_alerts": false_alerts,
                             "per_query_fpr": round(false_alerts / max(queries, 1), 5),
                             "keys_blocked_at_least_once": sum(bool(b["blocked_at_query"]) for b in benign),
                             "blocks": sum(len(b["blocked_at_query"]) for b in benign),
                             "by_monitor": dict(sum((Counter(b["monitors"]) for b in benign), Counter())),
                             "within_0.5%": false_alerts / max(queries, 1) <= 0.005}
        res["time_s"] = round(time.perf_counter() - started, 1)
        out[model_name] = res
    return out


def _fashion_pool(args: argparse.Namespace, n: int) -> torch.Tensor:
    from modelshield.data import load_dataset

    try:
        return load_dataset("fashion-mnist", data_root()).x_test[:n].clone()
    except Exception as exc:  # no Fashion-MNIST: uniform noise images stand in (synthetic queries)
        print(f"fashion-mnist unavailable ({exc}); using uniform noise", file=sys.stderr)
        return torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(0))


# --- (b) load, from another process ------------------------------------------------------------


def client_worker(spec_path: str, out_path: str) -> None:
    """Run ``clients`` asyncio clients (one key each) against the gateway; write latencies and digests."""
    import httpx

    spec = json.loads(Path(spec_path).read_text())
    images = np.load(spec["images"])
    n, per, seconds = spec["clients"], spec["per_client"], spec["seconds"]
    health = spec.get("healthz", False)  # GET /healthz: the HTTP floor of this client and uvicorn
    url = spec["url"] + ("/healthz" if health else "/v1/predict")
    first = spec.get("offset", 0)  # distinct images for every request of a run: benign clients
    bodies = [[json.dumps({"inputs": images[(first + c * per + i) % len(images)][None].tolist()}).encode()
               for i in range(per)] for c in range(n)]
    Path(out_path + ".ready").touch()  # bodies built: the clients start now
    latencies: list[float] = []
    ok_latencies: list[float] = []  # of the answered (200) requests only
    statuses: Counter[int] = Counter()
    answered: list[str] = []
    errors = [0]

    async def main() -> float:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
            deadline = time.monotonic() + seconds

            async def one(c: int) -> None:
                headers = {"Authorization": f"Bearer {spec['keys'][c]}", "Content-Type": "application/json"}
                for body in bodies[c]:
                    if time.monotonic() > deadline:
                        return
                    start = time.perf_counter()
                    try:
                        r = await (client.get(url) if health
                                   else client.post(url, content=body, headers=headers))
                    except httpx.TransportError:
                        errors[0] += 1
                        if spec.get("stop_on_error"):
                            return
                        continue
                    latencies.append(time.perf_counter() - start)
                    statuses[r.status_code] += 1
                    if r.status_code == 200:
                        ok_latencies.append(latencies[-1])
                        answered.append(hashlib.sha256(body).hexdigest())

            started = time.perf_counter()
            await asyncio.gather(*(one(c) for c in range(n)))
            return time.perf_counter() - started

    wall = asyncio.run(main())
    Path(out_path).write_text(json.dumps({
        "wall_s": wall, "latencies": latencies, "ok_latencies": ok_latencies,
        "statuses": {str(k): v for k, v in statuses.items()},
        "answered": answered, "transport_errors": errors[0]}))


def run_clients(url: str, keys: list[str], images: Path, *, per_client: int, seconds: float, work: Path,
                offset: int = 0, stop_on_error: bool = False, healthz: bool = False,
                wait: bool = True) -> subprocess.Popen[bytes] | dict[str, Any]:
    spec = work / f"client-{len(keys)}-{time.monotonic_ns()}.json"
    out = spec.with_suffix(".out.json")
    spec.write_text(json.dumps({"url": url, "keys": keys, "images": str(images), "clients": len(keys),
                                "per_client": per_client, "seconds": seconds, "offset": offset,
                                "healthz": healthz,
                                "stop_on_error": stop_on_error}))
    proc = subprocess.Popen([sys.executable, __file__, "--client-worker", str(spec), str(out)])
    if not wait:
        proc.out_path = out  # type: ignore[attr-defined]
        return proc
    proc.wait()
    return dict(json.loads(out.read_text()))


def client_stats(raw: dict[str, Any]) -> dict[str, Any]:
    lat = raw["ok_latencies"] if raw["statuses"].get("200") else raw["latencies"]  # answered requests
    ok = raw["statuses"].get("200", 0)
    return {"requests": len(lat), "answered": ok, "statuses": raw["statuses"],
            "rps": round(ok / raw["wall_s"], 1) if raw["wall_s"] else None,
            "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99), "transport_errors": raw["transport_errors"]}


def in_process(model_name: str, x: torch.Tensor, n: int) -> dict[str, Any]:
    """The gateway's own black-box call on one row, in this process: latency and throughput."""
    from modelshield.targets import as_query_model, load_target

    target = load_target(model_name, data=None, data_dir=data_root(), arch=None, n=16)
    model = as_query_model(target)
    times = []
    with torch.no_grad():
        for i in range(n):
            start = time.perf_counter()
            model.scores(x[i % len(x)][None]).argmax(1)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        rows = 0
        while time.perf_counter() - start < 1.0:
            model.scores(x[:64]).argmax(1)
            rows += 64
        batch_rps = rows / (time.perf_counter() - start)
    return {"p50_ms": _pct(times, 0.5), "p99_ms": _pct(times, 0.99),
            "single_row_rps": round(1.0 / statistics.median(times), 1),
            "batch64_rows_per_s": round(batch_rps, 1),
            "torch_threads": torch.get_num_threads()}


def load(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from modelshield import zoo

    x, _ = zoo.test_split("mnist-cnn", n=8000, data_root=data_root())
    x = x[2000:]  # away from the rows the detection part streams
    images = work / "load-images.npy"
    np.save(images, x.numpy())
    out: dict[str, Any] = {"in_process": in_process("mnist-cnn", x, 300 if not args.quick else 100)}
    levels = ((1, 150), (8, 40), (64, 12)) if args.quick else ((1, 400), (8, 120), (64, 30))
    seconds = 10.0 if args.quick else 25.0
    configs: list[tuple[str, dict[str, Any] | None, tuple[tuple[int, int], ...]]] = [
        ("monitors_all", {"fpr": args.fpr, **ALL_MONITORS}, levels), ("monitors_none", None, levels)]
    if not args.quick:  # what each monitor costs alone (action alert: nothing is blocked), one client
        configs += [(f"only_{m}", {"fpr": args.fpr, m: {"action": "alert"}}, ((1, 250),))
                    for m in ALL_MONITORS]
    for label, monitors, runs in configs:
        settings: dict[str, Any] = {"max_batch": 256}
        if monitors:
            settings["monitors"] = monitors
        gw = Gateway("mnist-cnn", work / f"load-{label}", settings)
        res: dict[str, Any] = {}
        with running(gw):
            res["gateway_start_s"] = round(gw.start_s, 2)
            for clients in (1, 8) if len(runs) > 1 else ():  # the floor: GET /healthz (no key, model
                # or audit), from the same client process
                raw = run_clients(gw.url, ["-"] * clients, images, per_client=400 // clients, seconds=seconds,
                                  work=work, healthz=True)
                assert isinstance(raw, dict)
                res[f"healthz_clients_{clients}"] = {k: v for k, v in client_stats(raw).items()
                                                     if k in ("rps", "p50_ms", "p99_ms")}
            offset = 0
            for level, (clients, per) in enumerate(runs):  # fresh keys and unseen images at each level
                keys = [gw.new_key(f"load-{level}-{c}", output="top-k")[0] for c in range(clients)]
                raw = run_clients(gw.url, keys, images, per_client=per, seconds=seconds, work=work,
                                  offset=offset)
                offset += clients * per
                assert isinstance(raw, dict)
                stats = client_stats(raw)
                stats["overhead_p50_ms"] = (round(stats["p50_ms"] - out["in_process"]["p50_ms"], 3)
                                            if stats["p50_ms"] is not None else None)
                single = out["in_process"]["single_row_rps"]
                stats["rps_vs_in_process_single_row"] = round(stats["rps"] / single, 3)
                res[f"clients_{clients}"] = stats
                res.setdefault("_answered", []).extend(raw["answered"])
            blocked = gw.admin_call("GET", "/v1/admin/blocks")["blocks"]
            res["benign_keys_blocked"] = len(blocked)
        report, records = read_audit(gw.state)
        answered = Counter(res.pop("_answered"))
        logged = Counter(r.details.get("input_sha256") for r in records
                         if r.details.get("endpoint") == "/v1/predict" and r.details.get("status") == 200)
        res["answered_requests"] = sum(answered.values())
        res["audit_records_answered"] = sum(logged.values())
        res["lost_audit_records"] = sum((answered - logged).values())
        res["audit_verify_ok"] = report.ok
        out[label] = res
    return out


# --- (c) kill -9 under load ---------------------------------------------------------------------


def crash(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from modelshield import zoo
    from modelshield.models import HttpModel

    x, _ = zoo.test_split("mnist-cnn", n=8000, data_root=data_root())
    images = work / "crash-images.npy"
    np.save(images, x[4800:].numpy())  # 3,200 distinct images: 8 clients x 400 requests at most
    gw = Gateway("mnist-cnn", work / "crash", {"max_batch": 256, "checkpoint_every": 200,
                                               "monitors": {"fpr": args.fpr, **ALL_MONITORS}})
    gw.start()
    keys = [gw.new_key(f"crash-{c}", output="label")[0] for c in range(8)]
    proc = run_clients(gw.url, keys, images, per_client=400, seconds=30.0, work=work, stop_on_error=True,
                       wait=False)
    assert isinstance(proc, subprocess.Popen)
    ready = Path(str(proc.out_path) + ".ready")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 120
    while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(3.0 if args.quick else 6.0)
    gw.kill9()
    killed_at = time.time()
    proc.wait()
    raw = json.loads(proc.out_path.read_text())  # type: ignore[attr-defined]
    answered = Counter(raw["answered"])
    restart = gw.start()
    blocked = len(gw.admin_call("GET", "/v1/admin/blocks")["blocks"])  # benign keys a monitor blocked
    with HttpModel(gw.url, api_key=gw.new_key("after-restart", output="label")[0]) as remote:
        remote(x[:20].numpy())
        after = remote.queries
    gw.stop()
    cli = str(Path(sys.executable).with_name("modelshield"))
    verify = subprocess.run([cli, "audit", "verify", "--log", str(gw.state / "audit.db"), "--json"],
                            capture_output=True, text=True, timeout=120)
    try:
        verdict = json.loads(verify.stdout)
    except ValueError:
        verdict = {"stdout": verify.stdout[-500:], "stderr": verify.stderr[-500:]}
    report, records = read_audit(gw.state)
    logged = Counter(r.details.get("input_sha256") for r in records
                     if r.details.get("endpoint") == "/v1/predict" and r.details.get("status") == 200)
    before_kill = Counter(r.details.get("input_sha256") for r in records
                          if r.details.get("endpoint") == "/v1/predict" and r.details.get("status") == 200
                          and float(r.details.get("wall_time", 0)) <= killed_at)
    return {
        "answered_before_kill": sum(answered.values()),
        "client_transport_errors": raw["transport_errors"],
        "records_of_answered_before_kill": sum(before_kill.values()),
        "answered_without_record": sum((answered - logged).values()),
        "records_without_answer": sum((before_kill - answered).values()),
        "restart_s": round(restart, 2), "answered_after_restart": after, "benign_keys_blocked": blocked,
        "cli_audit_verify_exit": verify.returncode, "cli_audit_verify": verdict,
        "audit_verify_ok": report.ok, "audit_records": len(records),
    }


# --- main ---------------------------------------------------------------------------------------


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of whatever parts are in ``result``."""
    out: dict[str, Any] = {}
    det = result.get("detection", {})
    for model in ("mnist-cnn", "phishing-gbm"):
        res = det.get(model)
        if not res:
            continue
        rows: dict[str, Any] = {}
        for variant in ("attacks", "adaptive", "adaptive_strong"):
            for name, sec in res.get(variant, {}).items():
                if isinstance(sec, dict) and "runs" in sec:
                    rows[f"{variant}.{name}"] = (
                        f"n/a: {sec['errors'][0][:60]}" if sec["errors"] else
                        f"alerted {sec['alerted']}/{sec['clients']}, "
                        f"blocked {sec['blocked']}/{sec['clients']}, "
                        f"first alert at {sec['queries_to_first_alert']}, answered until block "
                        f"{sec['queries_answered_until_block']}")
        b = res.get("benign", {})
        streams = b.get("streams", [])
        firsts = [st["blocked_at_query"][0] for st in streams if st.get("blocked_at_query")]
        rows["benign"] = (f"{b.get('false_alerts')} false alerts in {b.get('queries')} queries "
                          f"(fpr {b.get('per_query_fpr')}), {b.get('keys_blocked_at_least_once')}/"
                          f"{len(streams)} keys blocked at least once (first at {firsts} of "
                          f"{b.get('queries', 0) // max(len(streams), 1)}; {b.get('by_monitor')})")
        out[model] = rows
    load = result.get("load", {})
    for label, res in load.items():
        if isinstance(res, dict) and "audit_verify_ok" in res:
            out[f"load.{label}"] = {k: {m: v[m] for m in ("rps", "p50_ms", "p99_ms", "overhead_p50_ms")}
                                    for k, v in res.items() if k.startswith("clients_")}
            out[f"load.{label}"]["lost_audit_records"] = res["lost_audit_records"]
            out[f"load.{label}"]["benign_keys_blocked"] = res["benign_keys_blocked"]
    if "crash" in result:
        c = result["crash"]
        keep = ("answered_before_kill", "answered_without_record", "records_without_answer",
                "cli_audit_verify_exit", "audit_verify_ok", "benign_keys_blocked")
        out["crash"] = {k: c.get(k) for k in keep}
    return out



def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer points, requests and seconds")
    parser.add_argument("--parts", default="detection,load,crash")
    parser.add_argument("--resume", action="store_true", help="keep the parts already in --out")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--fpr", type=float, default=0.005)
    parser.add_argument("--sigma", type=float, default=0.05, help="std of the adaptive blinding noise")
    parser.add_argument("--strong-sigma", type=float, default=0.15, help="std of the strong blinding noise")
    parser.add_argument("--client-worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client_worker:
        client_worker(*args.client_worker)
        return {}
    torch.set_num_threads(1)
    out_path = args.out or RESULTS / ("gateway_quick.json" if args.quick else "gateway.json")
    result: dict[str, Any] = {}
    if args.resume and out_path.exists():
        result = json.loads(out_path.read_text())
    result.update({"benchmark": "gateway", "quick": args.quick, "python": platform.python_version(),
                   "torch": torch.__version__, "cpus": os.cpu_count()})
    parts = {"detection": detection, "load": load, "crash": crash}
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    for name in args.parts.split(","):
        if args.resume and name in result:
            continue
        started = time.perf_counter()
        result[name] = parts[name](args, work)
        result[name]["part_time_s"] = round(time.perf_counter() - started, 1)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{name}: done in {result[name]['part_time_s']} s", file=sys.stderr)
    result["summary"] = summary(result)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
