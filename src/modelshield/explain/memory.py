"""Memory budgets for gradient explainers: how many model rows one forward/backward pass may hold.

Captum runs Integrated Gradients on ``N x steps`` rows in one pass unless the user picks an
``internal_batch_size`` by hand, and users keep running out of memory (Captum issues #245, #538,
#1350). Here the explainers take a budget instead (``max_memory_mb``, default a fraction of the
free memory of the model's device), measure what one row costs with one small probe and size
every pass from the two.

The probe: on CUDA it runs a forward and backward pass on ``k`` and ``2k`` copies of one input
and reads ``torch.cuda.max_memory_allocated``: the difference is the cost per row, the rest a
fixed cost (workspaces). On the CPU, where torch keeps no allocation statistics, it adds up the
tensors autograd saves for the backward pass (``saved_tensors_hooks``, which see functional ops
too) and twice the largest activation a module returns (the gradient flowing back through it
and the one it produces), leaving out parameters and buffers. The CUDA figure is the larger of
the measurement and that estimate (times ``SAFETY``, for allocator rounding); the CPU estimate is
multiplied by ``CPU_SAFETY``, since resident memory also holds freed blocks the allocator keeps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from modelshield._resources import available_memory, format_bytes
from modelshield.errors import ConfigError

__all__ = [
    "CPU_FRACTION",
    "CPU_PASS_BYTES",
    "CPU_PASS_MIN_ROWS",
    "CPU_SAFETY",
    "CUDA_FRACTION",
    "PROBE_ROWS",
    "SAFETY",
    "MemoryPlan",
    "RowCost",
    "memory_budget",
    "plan_rows",
    "probe_row_cost",
]

CPU_FRACTION = 0.5
"""Share of the available memory (``MemAvailable``; ``$MODELSHIELD_MAX_MEMORY`` overrides) used on the CPU."""
CUDA_FRACTION = 0.8
"""Share of the free GPU memory (plus what torch's allocator holds unused) used by default on CUDA."""
CPU_PASS_BYTES = 256 << 20
"""Bytes a CPU pass is kept to by default, for speed (256 MiB), while it holds at least
``CPU_PASS_MIN_ROWS`` rows. Big passes are slower on a CPU (caches): IG with 200 steps on 500
digits images (digits-cnn, 2 cores) took 1.8-2.0 s in passes of 2,000-4,000 rows (128-256 MiB
planned), 3.9 s at 8,000, 4.7 s at 16,000 and about 8 s in Captum's single pass of 100,000 rows."""
CPU_PASS_MIN_ROWS = 16
"""Rows a default CPU pass may grow to beyond ``CPU_PASS_BYTES`` (within the budget) for a big model."""
FALLBACK_BYTES = 1 << 30
"""Budget when the available memory cannot be read (1 GiB)."""
PROBE_ROWS = 4
"""Rows of the probe pass (and twice as many for the second CUDA measurement)."""
SAFETY = 1.25
"""Factor on a row cost measured on CUDA (allocator rounding, temporaries between the two probes)."""
CPU_SAFETY = 2.0
"""Factor on a row cost estimated on the CPU. The estimate counts live tensors, but the process's
resident memory also holds what the C allocator keeps of one pass's freed blocks while the next
pass allocates: on the digits CNN, Captum's IG peaked at 1.7x its live tensors with 1,500 rows per
pass (80 MiB resident for about 47 MiB live) and at 1.0x in a single pass."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RowCost:
    """What one model row costs in one pass, and what a pass costs whatever its size.

    Attributes:
        row_bytes: bytes per row held at the peak of a pass (forward only, or forward and backward).
        fixed_bytes: bytes a pass needs whatever its size (CUDA workspaces), 0 on the CPU.
        how: ``"measured"`` (CUDA peak statistics) or ``"estimated"`` (saved activations, CPU).
    """

    row_bytes: int
    fixed_bytes: int
    how: str


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryPlan:
    """How a batch is cut so that no pass holds more than the budget.

    Attributes:
        budget_bytes: the budget.
        source: where the budget comes from (``"max_memory_mb"``, ``"free GPU memory"``, ...).
        row_bytes: planned bytes per model row: the probe's cost plus the explainer's own
            input-sized tensors per row (interpolated inputs, gradients).
        fixed_bytes: planned bytes whatever the pass size: the probe's fixed cost per pass and what
            the call holds throughout (its result, baselines and scores).
        rows_per_pass: the most model rows one forward (and backward) pass may hold.
        how: ``"measured"`` or ``"estimated"`` (see ``RowCost``).
    """

    budget_bytes: int
    source: str
    row_bytes: int
    fixed_bytes: int
    rows_per_pass: int
    how: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (sizes in MiB)."""
        return {
            "budget_mb": round(self.budget_bytes / 2**20, 3), "source": self.source,
            "row_kb": round(self.row_bytes / 1024, 3), "fixed_mb": round(self.fixed_bytes / 2**20, 3),
            "rows_per_pass": self.rows_per_pass, "how": self.how,
        }


def memory_budget(max_memory_mb: float | None, device: torch.device) -> tuple[int, str]:
    """(bytes one call may hold at once, where the figure comes from) for a model on device.

    ``max_memory_mb`` wins when given. Otherwise CUDA gives ``CUDA_FRACTION`` of the free memory
    plus what torch's caching allocator holds unused (free to torch, not to the driver), and the
    CPU ``CPU_FRACTION`` of the available memory (``$MODELSHIELD_MAX_MEMORY`` overrides that).
    """
    if max_memory_mb is not None:
        return int(max_memory_mb * 2**20), "max_memory_mb"
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(CUDA_FRACTION * (free + max(cached, 0))), "free GPU memory"
    limit, source = available_memory()
    if limit is None:
        return FALLBACK_BYTES, "a 1 GiB default (available memory unknown)"
    return int(CPU_FRACTION * limit), source


def _tensor_bytes(obj: object) -> int:
    """Bytes of the tensors in obj (a tensor, or a tuple/list of them; anything else 0)."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, tuple | list):
        return sum(_tensor_bytes(o) for o in obj)
    return 0


def _probe_rows(x: Tensor, k: int) -> Tensor:
    """(k, *input_shape) copies of x's first row (a fresh tensor, never x itself)."""
    return x[:1].detach().expand(k, *x.shape[1:]).clone()


def _estimate(
    forward: Callable[[Tensor], Tensor], module: nn.Module, x: Tensor, target: Tensor, *, backward: bool
) -> int:
    """Estimated bytes per row of one pass on PROBE_ROWS rows (see the module docstring)."""
    k = PROBE_ROWS
    owned = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}
    saved: dict[int, int] = {}
    largest = [0]

    def on_forward(_mod: nn.Module, inputs: Any, output: Any) -> None:
        out = _tensor_bytes(output)
        # Forward only: a module's input and output live together; with a graph the input is saved anyway.
        largest[0] = max(largest[0], out if backward else out + _tensor_bytes(inputs))

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in owned:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    hooks = [sub.register_forward_hook(on_forward) for sub in module.modules()]
    rows = _probe_rows(x, k)
    tgt = target[:1].expand(k)
    try:
        if backward:
            rows.requires_grad_(True)
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                picked = forward(rows).gather(1, tgt[:, None]).sum()
            torch.autograd.grad(picked, rows)
            total = sum(saved.values()) + 2 * largest[0]
        else:
            with torch.no_grad():
                forward(rows)
            total = largest[0]
    finally:
        for h in hooks:
            h.remove()
    return math.ceil(total / k)


def _cuda_peak(run: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated on device by run() above what was allocated before it."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return max(int(torch.cuda.max_memory_allocated(device)) - before, 0)


def probe_row_cost(
    forward: Callable[[Tensor], Tensor], module: nn.Module, x: Tensor, target: Tensor, *, backward: bool
) -> RowCost:
    """Measure (CUDA) or estimate (CPU) the memory of one model row in a pass.

    Args:
        forward: ``(k, *input_shape) -> (k, C)`` logits, differentiable in its input.
        module: the ``nn.Module`` behind forward (hooks are added for the probe and removed).
        x: ``(N, *input_shape)`` inputs; only the first row is used (copied, never changed).
        target: ``(N,)`` int64 classes; the first one is backpropagated.
        backward: cost of a forward and backward pass (gradient methods) or a forward pass only.

    Returns:
        The cost per row and per pass. On CUDA this resets the device's peak-memory statistics.
    """
    live = _estimate(forward, module, x, target, backward=backward)
    if x.device.type != "cuda":
        return RowCost(row_bytes=max(math.ceil(CPU_SAFETY * live), 1), fixed_bytes=0, how="estimated")
    estimate = math.ceil(SAFETY * live)

    def run(k: int) -> Callable[[], None]:
        def go() -> None:
            rows = _probe_rows(x, k)
            tgt = target[:1].expand(k)
            if backward:
                rows.requires_grad_(True)
                with torch.enable_grad():
                    picked = forward(rows).gather(1, tgt[:, None]).sum()
                torch.autograd.grad(picked, rows)
            else:
                with torch.no_grad():
                    forward(rows)
        return go

    k = PROBE_ROWS
    one, two = _cuda_peak(run(k), x.device), _cuda_peak(run(2 * k), x.device)
    per_row = max(two - one, 0) / k
    fixed = max(one - k * per_row, 0.0)
    row = max(math.ceil(SAFETY * per_row), estimate, 1)
    return RowCost(row_bytes=row, fixed_bytes=math.ceil(SAFETY * fixed), how="measured")


def plan_rows(
    owner: str, cost: RowCost, *, budget: tuple[int, str], extra_row_bytes: int = 0,
    extra_fixed_bytes: int = 0, prefer_bytes: int | None = None,
) -> MemoryPlan:
    """The rows one pass may hold within budget, given the probe's cost and per-row extras.

    Args:
        owner: the explainer, first word of an error message.
        cost: the probe's ``RowCost``.
        budget: ``(bytes, source)`` from ``memory_budget``.
        extra_row_bytes: the explainer's own bytes per row (copies of the input it holds).
        extra_fixed_bytes: bytes held for the whole call (the result, baselines, scores).
        prefer_bytes: a smaller size to keep passes to for speed (``CPU_PASS_BYTES`` by default on
            the CPU), used while it leaves ``CPU_PASS_MIN_ROWS`` rows; never more than the budget.

    Raises:
        ConfigError: not even one row fits; the message gives the budget and the need.
    """
    limit, source = budget
    row = cost.row_bytes + max(extra_row_bytes, 0)
    fixed = cost.fixed_bytes + max(extra_fixed_bytes, 0)
    rows = (limit - fixed) // row
    if rows < 1:
        need = fixed + row
        fix = (f"Raise max_memory_mb to at least {math.ceil(need / 2**20)}." if source == "max_memory_mb"
               else "Free memory, or pass max_memory_mb to set the budget yourself.")
        raise ConfigError(
            f"{owner}: 'max_memory_mb' must leave room for one model row; the budget is "
            f"{format_bytes(limit)} ({source}) but the call needs about {format_bytes(need)} with one row "
            f"per pass. {fix}"
        )
    if prefer_bytes is not None and prefer_bytes < limit:
        preferred = (prefer_bytes - fixed) // row
        if preferred >= CPU_PASS_MIN_ROWS:
            limit, rows = prefer_bytes, preferred
            source = f"passes of at most {format_bytes(prefer_bytes)} for speed ({source} allows more)"
        else:
            rows = min(rows, CPU_PASS_MIN_ROWS)
    return MemoryPlan(budget_bytes=limit, source=source, row_bytes=row, fixed_bytes=fixed,
                      rows_per_pass=int(rows), how=cost.how)
