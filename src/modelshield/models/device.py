"""Device names (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``) resolved to a ``torch.device``.

The library follows the model's device (attacks create their tensors on ``x.device``); this module
only turns the CLI's ``--device`` spelling into a device that exists on this machine. CPU is the
default everywhere.
"""

from __future__ import annotations

import difflib
import itertools
import re

import torch
from torch import Tensor, nn

from modelshield.errors import ConfigError

__all__ = ["DEVICE_NAMES", "module_device", "parameter_device", "resolve_device", "synchronize"]

DEVICE_NAMES = ("cpu", "cuda", "mps", "auto")
"""The accepted device names (``cuda:N`` picks one CUDA device)."""

_CUDA_INDEX = re.compile(r"cuda:(\d+)")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device, *, owner: str = "modelshield") -> torch.device:
    """The torch.device for a device name; ``auto`` is CUDA if present, else MPS, else CPU.

    Args:
        name: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"`` (case-insensitive), or a
            ``torch.device``.
        owner: who asks, for error messages (e.g. ``"modelshield attack evasion"``).

    Raises:
        ConfigError: the name is not a device name, or names a device this machine lacks.

    Example:
        model.to(resolve_device("auto"))
    """
    key = str(name).strip().lower()
    if key == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if key == "cpu":
        return torch.device("cpu")
    match = _CUDA_INDEX.fullmatch(key)
    if key == "cuda" or match:
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{owner}: '--device' must be a device this machine has; got {str(name)!r}, but torch "
                f"{torch.__version__} sees no CUDA GPU. Use --device cpu, or --device auto to take a GPU "
                "when there is one."
            )
        count = torch.cuda.device_count()
        if match and int(match.group(1)) >= count:
            raise ConfigError(
                f"{owner}: '--device' must name one of the {count} CUDA device(s) (cuda:0 to "
                f"cuda:{count - 1}); got {str(name)!r}. Use --device cuda for the first one."
            )
        return torch.device(key)
    if key == "mps":
        if not _mps_available():
            raise ConfigError(
                f"{owner}: '--device' must be a device this machine has; got {str(name)!r}, but torch "
                "sees no Apple MPS device. Use --device cpu, or --device auto."
            )
        return torch.device("mps")
    close = difflib.get_close_matches(key, DEVICE_NAMES, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"{owner}: '--device' must be one of {', '.join(DEVICE_NAMES)} or cuda:N; got {str(name)!r}.{hint}"
    )


def parameter_device(module: nn.Module) -> torch.device | None:
    """The device of a module's first parameter or buffer; None for a module without any."""
    return next((t.device for t in itertools.chain(module.parameters(), module.buffers())), None)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module without any)."""
    return parameter_device(module) or torch.device("cpu")


def synchronize(device: torch.device | Tensor) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); a no-op on CPU.

    Call before reading a wall-clock timer around GPU work.
    """
    dev = device.device if isinstance(device, Tensor) else device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()
