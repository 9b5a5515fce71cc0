"""Shared by the gateway tests: a small digits CNN trained in about a second, and uvicorn serving an
app in a thread on a free loopback port. Loaded by path (``importlib.util.spec_from_file_location``),
as tests/secure/audit_support.py is. (No ``from __future__ import annotations``: a dataclass with
string annotations needs its module in sys.modules, which a module loaded by path is not.)"""

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import uvicorn


def train_digits_cnn(path: Path) -> None:
    """cnn-8x8 trained for a few epochs on the digits train split (about a second), saved to path."""
    from sklearn.datasets import load_digits

    from modelshield.models.archs import build
    from modelshield.models.load import save_model

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(digits.target, dtype=torch.long)
    net = build("cnn-8x8", seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    save_model(net, path, arch="cnn-8x8")


@dataclass
class Uvicorn:
    """An app served by uvicorn in a daemon thread on ``sock``."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread
    sock: socket.socket

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.should_exit = True
            self.thread.join(timeout=15)
        self.sock.close()


def start_uvicorn(app: Any, *, log_level: str = "warning", timeout_s: float = 20.0,
                  **options: Any) -> Uvicorn:
    """Serve ``app`` on a free loopback port; returns once uvicorn has started (asserts it did)."""
    # proto IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets (else each answer waits ~40 ms
    # for the client's delayed ACK, as a socket from plain socket.socket() does)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.01)
    assert server.started, f"uvicorn did not start within {timeout_s:g} s"
    return Uvicorn(url=f"http://127.0.0.1:{sock.getsockname()[1]}", server=server, thread=thread, sock=sock)
