"""Latency of the inference gateway at one client against calling the model in-process (issue #18).

Prints one JSON object. Only the gateway core is measured so far (keys, quotas, validation, audit;
no monitors, no micro-batching). A small digits CNN (``cnn-8x8``, trained for a second) is served
by uvicorn in a thread on loopback; one httpx client with keep-alive sends ``--requests`` single-row
``/v1/predict`` requests (bounded also by ``--seconds``). Reported, in milliseconds:

- ``in_process``: the same black-box call the gateway makes (``as_query_model(target).scores``),
  one row, no HTTP;
- ``gateway``: the round trip of one request (auth, rate limit, body read and validation, budget
  charge, model, one audit record committed with fsync before the answer leaves);
- ``gateway_overhead_p50``: the difference of the medians;
- ``fsync_ms``: one 4 KiB write+fsync in the state folder (the audit commit's floor), measured first.

Usage: python benchmarks/gateway.py [--requests 300] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch


def _fsync_ms(folder: Path) -> float:
    path = folder / "fsync.probe"
    times = []
    with open(path, "wb") as fh:
        for _ in range(20):
            start = time.perf_counter()
            fh.write(b"x" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
            times.append(time.perf_counter() - start)
    path.unlink()
    return statistics.median(times) * 1e3


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def _concurrent(url: str, headers: dict[str, str], bodies: list[bytes], *, clients: int,
                per_client: int) -> dict[str, float]:
    """``clients`` threads, each with its own connection, sending ``per_client`` requests."""
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()

    def run(c: int) -> None:
        with httpx.Client(headers=headers, timeout=30.0) as client:
            for i in range(per_client):
                start = time.perf_counter()
                r = client.post(url, content=bodies[(c + i) % len(bodies)])
                with lock:
                    latencies.append(time.perf_counter() - start)
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code} {r.text}")

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"requests": len(latencies), "rps": round(len(latencies) / wall, 1),
            "p50_ms": round(_pct(latencies, 0.5), 3), "p99_ms": round(_pct(latencies, 0.99), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    import httpx
    import uvicorn
    from sklearn.datasets import load_digits

    from modelshield.models.archs import build
    from modelshield.models.load import save_model
    from modelshield.serve import GatewayConfig, KeyStore, Policy, create_app
    from modelshield.targets import as_query_model, load_target

    root = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(digits.target, dtype=torch.long)
    net = build("cnn-8x8", seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(3):
        for idx in torch.randperm(len(y), generator=torch.Generator().manual_seed(0)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    save_model(net.eval(), root / "model.pt", arch="cnn-8x8")
    target = load_target(str(root / "model.pt"), data="digits", data_dir=None, arch=None, n=64)
    config = GatewayConfig(state_dir=root / "state")
    config.state_dir.mkdir(parents=True)
    fsync = _fsync_ms(config.state_dir)
    with KeyStore.open(config.key_store) as store:
        _, key = store.create(name="bench", role="client",
                              policy=Policy(output="top-k", rate_per_s=1e6, burst=10**6, budget=None))

    model = as_query_model(target)
    rows = [target.x[i: i + 1] for i in range(len(target.x))]
    in_process: list[float] = []
    with torch.no_grad():
        for i in range(args.requests):
            start = time.perf_counter()
            model.scores(rows[i % len(rows)]).argmax(1)
            in_process.append(time.perf_counter() - start)

    app = create_app(target, config)
    # IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so (plain socket.socket() gives
    # ~40 ms per answer: Nagle's algorithm against the client's delayed ACK)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/predict"
    bodies = [json.dumps({"inputs": r.tolist()}).encode() for r in rows]
    gateway: list[float] = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    deadline = time.monotonic() + args.seconds
    with httpx.Client(headers=headers, timeout=10.0) as client:
        for i in range(5):  # warm-up (connection, first audit commit)
            client.post(url, content=bodies[i])
        for i in range(args.requests):
            if time.monotonic() > deadline:
                break
            start = time.perf_counter()
            r = client.post(url, content=bodies[i % len(bodies)])
            gateway.append(time.perf_counter() - start)
            if r.status_code != 200:
                raise SystemExit(f"request {i} failed: {r.status_code} {r.text}")
    before = app.state.gateway.audit.size()
    concurrent = _concurrent(url, headers, bodies, clients=8, per_client=max(1, args.requests // 8))
    server.should_exit = True
    thread.join(timeout=30)
    from modelshield.secure.audit import AuditLog

    with AuditLog.open(config.audit_target) as log:
        verify = log.verify()
        times = {r.time for r in log.records(before)}  # one commit writes one timestamp
    concurrent["audit_commits"] = len(times)
    print(json.dumps({
        "python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
        "fsync_ms": round(fsync, 3), "requests": len(gateway),
        "in_process": {"p50_ms": round(_pct(in_process, 0.5), 3), "p99_ms": round(_pct(in_process, 0.99), 3)},
        "gateway": {"p50_ms": round(_pct(gateway, 0.5), 3), "p99_ms": round(_pct(gateway, 0.99), 3)},
        "gateway_overhead_p50_ms": round(_pct(gateway, 0.5) - _pct(in_process, 0.5), 3),
        "clients_8": concurrent, "audit_records": verify.records, "audit_verify_ok": verify.ok,
    }, indent=2))


if __name__ == "__main__":
    sys.exit(main())
