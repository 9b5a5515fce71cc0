"""Resolve the CLI's ``--model`` (a zoo name or a model file) and its evaluation points."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modelshield._typing import Norm
from modelshield.assess import Progress
from modelshield.errors import ConfigError

__all__ = ["Target", "load_target", "parse_norm", "torch_threads"]


@dataclass(frozen=True, slots=True)
class Target:
    """A model with its test points and provenance, ready for an attack or an assessment."""

    module: nn.Module
    x: Tensor
    y: Tensor
    bounds: tuple[float, float]
    model_info: dict[str, Any]
    data_info: dict[str, Any]


def load_target(
    model: str,
    *,
    data: str | None,
    data_dir: Path | None,
    arch: str | None,
    n: int | None,
    progress: Progress | None = None,
) -> Target:
    """Load a zoo model (training it if not cached) or a model file, and the first n test points.

    Raises:
        ConfigError: model is neither a zoo name nor an existing file, or a file model has no
            data set (pass ``--data``).
    """
    from modelshield.data import DATASETS, load_dataset
    from modelshield.models import zoo
    from modelshield.models.load import load_model, weights_sha256

    if n is not None and n < 1:
        raise ConfigError(f"modelshield: '--n' must be an int >= 1; got {n!r}. Use e.g. --n 500.")
    if model in zoo.names():
        zm = zoo.load(model, data_root=data_dir, progress=progress)
        x, y = zoo.test_split(model, n=n, data_root=data_dir)
        meta = dict(zm.meta)
        ds = load_dataset(zm.spec.dataset, root=data_dir)
        return Target(
            module=zm.module, x=x, y=y, bounds=zm.spec.bounds,
            model_info={"name": model, "source": "zoo", "arch": zm.spec.arch,
                        "weights_sha256": meta.get("weights_sha256"), "path": meta.get("path"),
                        "test_accuracy": meta.get("test_accuracy")},
            data_info={"name": zm.spec.dataset, "sha256": meta.get("data_sha256") or ds.sha256,
                       "split": "test", "classes": list(ds.classes)},
        )
    path = Path(model).expanduser()
    if not path.exists():
        raise ConfigError(
            f"modelshield: '--model' must be a zoo name ({', '.join(zoo.names())}) or an existing "
            f"model file; got {model!r}. Run 'modelshield zoo list' to see the zoo."
        )
    module, meta = load_model(path, arch=arch)
    name = data or meta.get("dataset")
    if name is None:
        raise ConfigError(
            f"modelshield: '--data' must name the data set of {str(path)!r} (one of "
            f"{', '.join(DATASETS)}); got nothing. Pass e.g. --data digits."
        )
    ds = load_dataset(str(name), root=data_dir)
    x, y = ds.x_test[:n], ds.y_test[:n]
    return Target(
        module=module, x=x.to(torch.float32), y=y.to(torch.long), bounds=ds.bounds,
        model_info={"name": path.name, "source": "file", "path": str(meta.get("path", path)),
                    "arch": meta.get("arch"), "file_sha256": meta.get("sha256"),
                    "weights_sha256": weights_sha256(module)},
        data_info={"name": ds.name, "sha256": ds.sha256, "split": "test", "classes": list(ds.classes)},
    )


def parse_norm(text: str) -> Norm:
    """The CLI's norm spellings ('inf', 'linf', '2', 'l2') as a Norm; others go on to be rejected."""
    key = text.strip().lower().removeprefix("l")
    return key if key in ("inf", "2") else text  # type: ignore[return-value]  # the attack/plan rejects it


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with n torch intra-op CPU threads (None: unchanged), then restore the setting.

    Small models gain nothing from intra-op parallelism, and on a busy machine extra threads
    make every tiny matrix product wait for a core: one thread can be many times faster.
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
