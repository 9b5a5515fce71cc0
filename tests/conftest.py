"""Shared, seeded fixtures. Nothing here touches the global RNG."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]

# The tests run many small tensor ops, which one thread runs fastest (and a second thread
# fights every other process on a 2-core CI machine). Benchmarks set their own thread count.
torch.set_num_threads(1)


def shared_data_root() -> Path:
    """$MODELSHIELD_DATA, else ../shared/data beside the checkout."""
    env = os.environ.get("MODELSHIELD_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped when torch sees no CUDA device (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = shared_data_root()
    if not (root / "mnist").is_dir():
        pytest.skip(f"MNIST files not found under {root}; set MODELSHIELD_DATA")
    return root


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Zoo models trained during the tests go to a per-session cache unless one is set."""
    with pytest.MonkeyPatch.context() as mp:
        if "MODELSHIELD_CACHE" not in os.environ:
            mp.setenv("MODELSHIELD_CACHE", str(tmp_path_factory.mktemp("zoo-cache")))
        mp.setenv("MODELSHIELD_DATA", str(shared_data_root()))
        yield


@pytest.fixture()
def tiny_linear() -> nn.Linear:
    """3-class linear model on 4 features with hand-set weights (analytic answers)."""
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]))
        lin.bias.zero_()
    return lin


def train_digits_mlp(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP on sklearn digits (in [0, 1]), trained in well under a second; test split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=gen)
    tr, te = perm[:1400], perm[1400:]
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if p.dim() > 1 else 0.0))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        for idx in torch.randperm(len(tr), generator=gen).split(200):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[tr[idx]]), y[tr[idx]]).backward()
            opt.step()
    net.eval()
    return net, x[te], y[te]


@pytest.fixture(scope="session")
def digits_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return train_digits_mlp()


REDIS_SERVER = Path("/usr/bin/redis-server")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away redis-server (Debian's) on a free loopback port, no persistence; stopped after.

    Skips when /usr/bin/redis-server is absent. Tests share the server: isolate them by key
    prefix (e.g. a fresh ``namespace`` for ``RedisState``), never FLUSHALL.
    """
    import socket
    import subprocess
    import time

    if not REDIS_SERVER.exists():
        pytest.skip(f"{REDIS_SERVER} not installed (apt-get install redis-server)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on port {port} (exit code {proc.poll()})")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
