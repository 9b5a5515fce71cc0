"""``modelshield serve`` as a real process: graceful shutdown on SIGTERM, and restart after ``kill -9``.

SIGTERM while requests are in flight: requests whose head the server had read before the signal
(held open here with half-sent bodies) are finished and answered; new connections are refused from
the signal on; the process exits 0 within a bound after a final signed audit checkpoint; every
answered request has its audit record (matched by the SHA-256 of its body) and no request has a
record without the client having had its answer. ``kill -9`` under load, then a restart on the same
state: the chain still verifies, every answered request is recorded, and the records beyond the
answered ones are at most the requests in flight at the kill (committed, killed before the answer
left).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("uvicorn")

from testkit import gateway as support

from modelshield.secure.audit import AuditLog
from modelshield.serve import ENDPOINTS, KeyStore, Policy

START_TIMEOUT_S = 60.0  # importing torch and loading the model on a busy 2-core machine
EXIT_BOUND_S = 15.0


@dataclass
class Setup:
    """A trained model, a gateway.yaml and keys in a state folder (shared by the tests of this module)."""

    root: Path
    model: Path
    rows: list[Any]
    keys: dict[str, str] = field(default_factory=dict)

    def config(self, name: str) -> Path:
        """A gateway.yaml with its own state folder (so tests do not share audit logs), keys copied in."""
        state = self.root / name
        path = self.root / f"{name}.yaml"
        path.write_text(f"state_dir: {state}\nmax_batch: 8\nlog_level: warning\n")
        return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("gateway-shutdown")
    model = root / "digits-cnn.pt"
    support.train_digits_cnn(model)
    from sklearn.datasets import load_digits

    images = load_digits().images / 16.0
    rows = [[img.tolist()] for img in images[:256]]
    return Setup(root=root, model=model, rows=rows)


class Gateway:
    """A ``modelshield serve`` process on a loopback port, with an admin and a client key."""

    def __init__(self, setup: Setup, name: str, *, keys: dict[str, str] | None = None) -> None:
        self.config = setup.config(name)
        self.state = setup.root / name
        if keys is None:
            with KeyStore.open(self.state / "keys.db") as store:
                keys = {
                    "admin": store.create(name="ops", role="admin", policy=Policy(
                        endpoints=ENDPOINTS, output="probabilities", rate_per_s=1e6, burst=1_000_000,
                        budget=None))[1],
                    "client": store.create(name="app", role="client", policy=Policy(
                        rate_per_s=1e6, burst=1_000_000, budget=None))[1],
                }
        self.keys = keys
        self.rows = setup.rows
        self.model = setup.model
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = setup.root / f"{name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Gateway:
        with socket.socket() as probe:  # a free port (released again; uvicorn binds it a moment later)
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        exe = Path(sys.executable).with_name("modelshield")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                              "from modelshield.cli.app import main; main()"]
        cmd += ["serve", "--model", str(self.model), "--data", "digits", "--config", str(self.config),
                "--port", str(self.port)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.proc.returncode, self.log.read_text()[-2000:])
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve not ready within {START_TIMEOUT_S} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def body(self, i: int) -> bytes:
        """A unique /v1/predict body: a digits image whose first pixel encodes ``i`` (i < 1e6)."""
        image = [list(line) for line in self.rows[i % len(self.rows)][0]]
        image[0][0] = i / 1_000_000
        return json.dumps({"inputs": [[image]]}).encode()


@pytest.fixture()
def gateway(setup: Setup, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    gw = Gateway(setup, request.node.name.replace("[", "-").replace("]", ""))
    try:
        yield gw
    finally:
        gw.kill()


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass
class Load:
    """Clients sending unique bodies in threads, one fresh connection per request, until stopped."""

    gw: Gateway
    clients: int
    answered: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def run(self, c: int) -> None:
        i = c
        headers = {"Authorization": f"Bearer {self.gw.keys['client']}", "Content-Type": "application/json"}
        while not self.stop.is_set():
            body = self.gw.body(1000 + i)
            i += self.clients
            try:
                r = httpx.post(self.gw.url + "/v1/predict", content=body, headers=headers, timeout=20)
                with self.lock:
                    self.answered[digest(body)] = r.status_code
                assert r.status_code == 200 and r.json()["labels"], r.text
            except httpx.TransportError as exc:
                with self.lock:
                    self.failed[digest(body)] = type(exc).__name__
                if isinstance(exc, httpx.ConnectError):
                    return  # refused: the server no longer accepts connections

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self.run, args=(c,), daemon=True)
                        for c in range(self.clients)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def audit(state: Path) -> tuple[Any, list[Any]]:
    with AuditLog.open(state / "audit.db") as log:
        return log.verify(), log.records()


def send_partial(gw: Gateway, body: bytes) -> socket.socket:
    """A connection holding a request whose head and all but the last 5 body bytes are sent."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=20)
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gw.keys['client']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    sock.sendall(head + body[:-5])
    return sock


def finish(sock: socket.socket, body: bytes) -> tuple[int, dict[str, Any]]:
    sock.sendall(body[-5:])
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    status, payload = resp.status, json.loads(resp.read())
    sock.close()
    return status, payload


@pytest.mark.parametrize("clients,held", [(4, 3), pytest.param(16, 12, marks=pytest.mark.slow)])
def test_sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_0(gateway: Gateway, clients: int,
                                                                        held: int) -> None:
    gw = gateway.start()
    wrong = httpx.post(gw.url + "/v1/predict", content=gw.body(0), timeout=10,
                       headers={"Authorization": "Bearer msk_wrong", "Content-Type": "application/json"})
    assert wrong.status_code == 401  # a refusal: audited too
    held_bodies = [gw.body(100 + i) for i in range(held)]
    with Load(gw, clients) as load:
        socks = [send_partial(gw, b) for b in held_bodies]
        time.sleep(1.0)  # traffic flows, and the server has read the held requests' heads
        assert gw.proc is not None
        t_term = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(ConnectionRefusedError):  # refused while the held requests are still open
            socket.create_connection(("127.0.0.1", gw.port), timeout=5).close()
        answers = [finish(s, b) for s, b in zip(socks, held_bodies, strict=True)]
        code = gw.proc.wait(timeout=EXIT_BOUND_S)
        exit_s = time.monotonic() - t_term
    assert all(status == 200 and payload["labels"] for status, payload in answers), answers
    assert code == 0, (code, gw.log.read_text()[-2000:])
    assert exit_s < EXIT_BOUND_S
    assert all(kind == "ConnectError" for kind in load.failed.values()), load.failed  # never a reset
    assert len(load.answered) >= clients, load.answered

    report, records = audit(gw.state)
    assert report.ok, report.to_dict()
    assert report.latest_checkpoint == len(records)  # the final checkpoint signs every record
    recorded = {r.details.get("input_sha256"): r.details["status"] for r in records
                if r.details["endpoint"] == "/v1/predict"}
    answered = {**load.answered, **{digest(b): 200 for b in held_bodies}}
    assert {d: recorded.get(d) for d in answered} == answered  # every answer has its record
    assert not set(load.failed) & set(recorded)  # nothing recorded that the client did not get
    refusals = [r for r in records if r.details["status"] == 401]
    assert len(refusals) == 1 and len(records) == len(answered) + len(refusals)
    print(f"SIGTERM: {len(load.answered)} answered under load, {held} held answered, "
          f"{len(load.failed)} refused connections, exit {code} after {exit_s:.2f} s, {len(records)} records")


@pytest.mark.parametrize("clients", [4, pytest.param(16, marks=pytest.mark.slow)])
def test_kill_9_under_load_then_restart_keeps_the_chain_verifying(gateway: Gateway, clients: int) -> None:
    gw = gateway.start()
    with Load(gw, clients) as load:
        time.sleep(1.5)
        gw.kill()  # SIGKILL: no drain, no final checkpoint
    answered = {d for d, status in load.answered.items() if status == 200}
    assert len(answered) >= clients, load.answered

    report, records = audit(gw.state)
    assert report.ok, report.to_dict()
    digests = [r.details.get("input_sha256") for r in records]
    assert len(set(digests)) == len(digests)  # one record per request
    assert answered <= set(digests)  # no answer left before its record was committed
    extra = set(digests) - answered
    assert extra <= set(load.failed) and len(extra) <= clients  # committed, killed before the answer left

    again = Gateway.__new__(Gateway)
    again.__dict__.update(gw.__dict__)
    again.start()
    try:
        headers = {"Authorization": f"Bearer {gw.keys['admin']}"}
        verified = httpx.get(again.url + "/v1/admin/audit/verify", headers=headers, timeout=30).json()
        assert verified["ok"], verified
        more = [httpx.post(again.url + "/v1/predict", content=again.body(5000 + i), timeout=10,
                           headers={**headers, "Content-Type": "application/json"}).status_code
                for i in range(5)]
        assert more == [200] * 5
        assert again.proc is not None
        again.proc.send_signal(signal.SIGTERM)
        assert again.proc.wait(timeout=EXIT_BOUND_S) == 0
    finally:
        again.kill()
    report, after = audit(gw.state)
    assert report.ok, report.to_dict()
    assert len(after) == len(records) + 1 + 5  # the verify request and five predictions
    assert report.latest_checkpoint == len(after)
    print(f"kill -9: {len(answered)} answered, {len(extra)} committed but unanswered, "
          f"{len(load.failed)} client errors, {len(after)} records after restart")
