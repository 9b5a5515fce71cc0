"""Reference architectures (built by the zoo and by load_model): small CNNs on [0, 1] images returning logits.

Modules are constructed on the ``meta`` device (no memory, no random draws), materialised on
the CPU with ``to_empty`` and then initialised from a private ``torch.Generator``. This keeps
``torch.manual_seed`` and the global RNG state untouched while making initialisation a pure
function of the seed.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from modelshield.errors import ConfigError

__all__ = ["ARCHS", "Cnn8x8", "LeNet28", "LeNet28Wide", "build", "check_arch", "init_parameters"]


class Cnn8x8(nn.Module):
    """A two-conv CNN for 8x8 grey-scale images (the scikit-learn digits), returning logits.

    conv 1->16 (3x3, pad 1) + ReLU, conv 16->32 (3x3, pad 1) + ReLU + max-pool 2,
    linear 512->64 + ReLU, linear 64->n_classes. Input ``(N, 1, 8, 8)`` in [0, 1]. About 38k
    parameters and 0.34M multiply-adds per image, so attacks on 500 points take milliseconds
    per step. (A stride-2 second conv instead of the max-pool was measured 0.5-1 point less
    accurate on the digits test split.)
    """

    def __init__(self, n_classes: int = 10, *, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, device=device),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, device=device),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * 4 * 4, 64, device=device),
            nn.ReLU(),
            nn.Linear(64, n_classes, device=device),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, 8, 8) images in [0, 1] -> (N, n_classes) logits."""
        out: Tensor = self.classifier(self.features(x))
        return out


class LeNet28(nn.Module):
    """A LeNet-style CNN for 28x28 grey-scale images (MNIST, Fashion-MNIST), returning logits.

    conv 1->16 (5x5, pad 2) + ReLU + max-pool 2, conv 16->32 (5x5, pad 2) + ReLU + max-pool 2,
    linear 1568->128 + ReLU, linear 128->n_classes. Input ``(N, 1, 28, 28)`` in [0, 1].
    About 215k parameters and 3M multiply-adds per image: the channel widths are half of the
    classic 32/64 design, which trains 2-3x faster on a CPU at the same MNIST accuracy.

    Reference:
        Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-based learning applied to
        document recognition", Proc. IEEE, 1998.
    """

    widths: tuple[int, int, int] = (16, 32, 128)
    """Channels of the two convolutions and units of the hidden linear layer."""

    def __init__(self, n_classes: int = 10, *, device: torch.device | str | None = None) -> None:
        super().__init__()
        c1, c2, hidden = self.widths
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2, device=device),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2, device=device),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * 7 * 7, hidden, device=device),
            nn.ReLU(),
            nn.Linear(hidden, n_classes, device=device),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, 28, 28) images in [0, 1] -> (N, n_classes) logits."""
        out: Tensor = self.classifier(self.features(x))
        return out


class LeNet28Wide(LeNet28):
    """The classic-width LeNet for 28x28 images: Madry et al.'s MNIST model, returning logits.

    conv 1->32 (5x5, pad 2) + ReLU + max-pool 2, conv 32->64 (5x5, pad 2) + ReLU + max-pool 2,
    linear 3136->1024 + ReLU, linear 1024->n_classes. About 3.3M parameters and 14M
    multiply-adds per image (4.5x LeNet28). Adversarial training at L-inf eps 0.3 needs this
    capacity: Madry et al. show robust accuracy on MNIST falling with the network's width, and
    LeNet28 (half the channels, an eighth of the hidden units) stays below 98% clean / 88%
    robust after 8 epochs of PGD or TRADES training (benchmarks/RESULTS.md).

    Reference:
        A. Madry, A. Makelov, L. Schmidt, D. Tsipras and A. Vladu, "Towards Deep Learning Models
        Resistant to Adversarial Attacks", ICLR 2018 (arXiv:1706.06083).
    """

    widths = (32, 64, 1024)


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "cnn-8x8": Cnn8x8,
    "lenet-28": LeNet28,
    "lenet-28-wide": LeNet28Wide,
}
"""Architecture name -> module class (called with ``device=``)."""


def check_arch(arch: object, *, owner: str) -> None:
    """Raise ConfigError unless arch names an architecture in ARCHS."""
    if isinstance(arch, str) and arch in ARCHS:
        return
    close = difflib.get_close_matches(str(arch), list(ARCHS), n=1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"{owner}: 'arch' must be one of {', '.join(map(repr, sorted(ARCHS)))}; got {arch!r}. "
        f"{hint}Use a zoo architecture name, or (only for a file from a source you trust) load a "
        "TorchScript file with trust_torchscript=True."
    )


def init_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Initialise every Conv2d / Linear of module in place from generator; return module.

    Uses PyTorch's default scheme (Kaiming-uniform weights with ``a=sqrt(5)``, biases uniform
    in ``±1/sqrt(fan_in)``), drawn in module order, so the result is a function of the
    generator's state only.
    """
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.Conv2d | nn.Linear):
                nn.init.kaiming_uniform_(sub.weight, a=math.sqrt(5), generator=generator)
                if sub.bias is not None:
                    fan_in = sub.weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in)
                    nn.init.uniform_(sub.bias, -bound, bound, generator=generator)
    return module


def build(arch: str, *, seed: int = 0) -> nn.Module:
    """Build an architecture by name, initialised from ``seed`` without touching the global RNG.

    Args:
        arch: a key of ``ARCHS`` (``"cnn-8x8"``, ``"lenet-28"`` or ``"lenet-28-wide"``).
        seed: seed of the private generator used for initialisation.

    Returns:
        The module on the CPU, in training mode (as ``nn.Module`` constructors leave it).

    Raises:
        ConfigError: unknown arch (the message lists the names).

    Example:
        net = build("lenet-28")
        logits = net(torch.zeros(2, 1, 28, 28))
    """
    check_arch(arch, owner="build")
    # Constructing on "meta" draws no random numbers; to_empty gives real (uninitialised)
    # CPU storage that init_parameters then fills deterministically.
    module = ARCHS[arch](device="meta").to_empty(device="cpu")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return init_parameters(module, gen)
