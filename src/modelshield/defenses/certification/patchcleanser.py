"""PatchCleanser: double masking, certified against any patch of a given size (Xiang et al., 2022).

Also the masking-consistency patch detector built on the same masks (``MaskingConsistencyDetector``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from modelshield._checks import check_inputs, check_labels, check_range
from modelshield._resources import check_memory, tensor_bytes
from modelshield._stats import auroc, calibrate_threshold
from modelshield.attacks.physical.transforms import patch_side
from modelshield.errors import ConfigError, InputError, NotFittedError
from modelshield.models import CallableModel, ModelLike, TorchModel, as_model, eval_mode
from modelshield.models.outputs import safe_argmax

__all__ = [
    "CASES",
    "DoubleMaskingCase",
    "MaskingConsistencyDetector",
    "MaskingDetectionResult",
    "PatchCleanser",
    "PatchCleanserPrediction",
    "PatchCleanserResult",
    "double_masking",
    "mask_set",
    "mask_windows",
    "pair_index",
    "patch_side",
]

DoubleMaskingCase = Literal["agree", "second-round", "majority"]
"""Which case of Algorithm 1 decided a point's label."""

CASES: tuple[DoubleMaskingCase, ...] = ("agree", "second-round", "majority")
"""The cases by code: 0 all one-mask predictions agree, 1 a disagreer's second round agreed, 2 majority."""

PatchSize = float | tuple[int, int]

_SHARE_FIX = ("Give a share of the image area in (0, 1), e.g. patch_size=0.04 (a square patch of side "
              "ceil(sqrt(0.04 * H * W))), or the patch's (height, width) in pixels, e.g. patch_size=(5, 5).")


# --------------------------------------------------------------------------------------------
# Pure functions: patch size, the R-covering mask set, Algorithm 1's decision


def mask_windows(n: int, patch: int, masks: int) -> tuple[list[int], int]:
    """Start positions and size of the 1-D masks that cover every ``patch``-long window of ``n``.

    Xiang et al., Section 4: stride ``s = ceil((n - patch + 1) / masks)``, mask size
    ``patch + s - 1``, starts ``0, s, 2s, ...`` plus a last one ending exactly at ``n``. Any window
    ``[a, a + patch)`` then lies inside the mask starting at ``s * floor(a / s)`` (or the last one).
    At most ``masks`` windows come back, fewer when rounding the stride up leaves room (n = 11,
    patch = 2, masks = 6: stride 2, windows of 3 at 0, 2, 4, 6, 8: five).

    Raises:
        ConfigError: patch not in [1, n], or masks < 1.
    """
    owner = "mask_windows"
    check_range("n", n, owner=owner, low=1, integer=True)
    check_range("patch", patch, owner=owner, low=1, high=n, integer=True,
                fix="The patch must fit in the image; give a smaller patch.")
    check_range("masks", masks, owner=owner, low=1, integer=True, fix="Use e.g. masks=6 (the paper's k).")
    stride = math.ceil((n - patch + 1) / masks)
    size = patch + stride - 1
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] != n - size:
        starts.append(n - size)
    return starts, size


def mask_set(height: int, width: int, patch: tuple[int, int], masks_per_axis: int) -> Tensor:
    """(M, height, width) bool R-covering mask set: True where a mask covers (the pixels replaced).

    The product of the per-axis windows of ``mask_windows`` (row windows outer, column windows
    inner), so ``M = k_h * k_w <= masks_per_axis ** 2``. Every ``patch[0] x patch[1]`` region of
    the image lies entirely inside at least one mask (the R-covering property).

    Reference: Xiang, Mahloujifar and Mittal, "PatchCleanser: Certifiably Robust Defense against
    Adversarial Patches for Any Image Classifier", USENIX Security 2022, Section 4.

    Raises:
        ConfigError: a patch side larger than the image, or masks_per_axis < 1.
    """
    if not (isinstance(patch, tuple) and len(patch) == 2):
        raise ConfigError(f"mask_set: 'patch' must be a (height, width) pair of pixel counts; got "
                          f"{patch!r}. Pass e.g. patch=(5, 5).")
    rows, size_h = mask_windows(height, patch[0], masks_per_axis)
    cols, size_w = mask_windows(width, patch[1], masks_per_axis)
    r = torch.arange(height)
    c = torch.arange(width)
    top = torch.tensor(rows)[:, None]
    left = torch.tensor(cols)[:, None]
    in_rows = (r[None] >= top) & (r[None] < top + size_h)  # (k_h, H)
    in_cols = (c[None] >= left) & (c[None] < left + size_w)  # (k_w, W)
    masks = in_rows[:, None, :, None] & in_cols[None, :, None, :]  # (k_h, k_w, H, W)
    return masks.reshape(len(rows) * len(cols), height, width)


def pair_index(n_masks: int) -> tuple[Tensor, Tensor, Tensor]:
    """The unordered mask pairs i <= j: (P,) first and (P,) second indices, and the (M, M) map
    from an ordered pair to its position in that list (symmetric); P = M (M + 1) / 2."""
    first, second = torch.triu_indices(n_masks, n_masks)
    lookup = torch.empty(n_masks, n_masks, dtype=torch.long)
    pos = torch.arange(first.numel())
    lookup[first, second] = pos
    lookup[second, first] = pos
    return first, second, lookup


def _majority(labels: Tensor) -> Tensor:
    """(N,) most frequent value of each row of (N, M) labels >= 0; ties go to the smallest label."""
    width = int(labels.max()) + 1
    counts = torch.zeros(labels.shape[0], width, dtype=torch.long, device=labels.device)
    counts.scatter_add_(1, labels, torch.ones_like(labels))
    return counts.argmax(1)


def double_masking(one_mask: Tensor, two_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Algorithm 1 (double masking) of Xiang et al. on tables of masked predictions.

    First round: the majority of the one-mask labels (ties to the smallest label). If every mask
    agrees, that is the answer (case 0, ``"agree"``). Otherwise each disagreeing mask i gets a
    second round, the labels with masks i and j for every j; the first disagreer whose second
    round is unanimous gives its label (case 1, ``"second-round"``; at most one label can win, as
    a two-mask label is shared by both masks' rounds, so the order of disagreers does not matter).
    Else the majority label (case 2, ``"majority"``).

    Args:
        one_mask: (N, M) int64 labels with one mask each (``two_mask``'s diagonal).
        two_mask: (N, M, M) int64 labels with masks i and j; only rows i of disagreeing masks are
            read (other entries may hold anything, e.g. -1 for "not computed").

    Returns:
        (N,) int64 labels and (N,) int64 case codes (indices into ``CASES``).

    Reference: Xiang, Mahloujifar and Mittal, USENIX Security 2022, Algorithm 1.
    """
    majority = _majority(one_mask)
    disagree = one_mask != majority[:, None]  # (N, M)
    unanimous = (two_mask == one_mask[:, :, None]).all(2)  # (N, M): row i's second round all agree
    winner = disagree & unanimous
    any_disagree = disagree.any(1)
    won = winner.any(1)
    first = winner.long().argmax(1)  # first True (0 when none; then unused)
    labels = torch.where(won, one_mask.gather(1, first[:, None])[:, 0], majority)
    case = torch.where(~any_disagree, 0, torch.where(won, 1, 2))
    return labels, case


# --------------------------------------------------------------------------------------------
# Shared pieces


def _check_patch_size(owner: str, patch_size: object) -> None:
    if isinstance(patch_size, tuple):
        if len(patch_size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                           for v in patch_size):
            raise ConfigError(f"{owner}: 'patch_size' as pixels must be a (height, width) pair of ints >= 1; "
                              f"got {patch_size!r}. {_SHARE_FIX}")
        return
    if isinstance(patch_size, int) and not isinstance(patch_size, bool):
        raise ConfigError(f"{owner}: 'patch_size' must be a share of the image area in (0, 1) or a "
                          f"(height, width) pair; got the int {patch_size!r}. Pass "
                          f"patch_size=({patch_size}, {patch_size}) for a {patch_size}x{patch_size}-pixel "
                          "patch.")
    if not (isinstance(patch_size, float) and 0.0 < patch_size < 1.0):
        raise ConfigError(f"{owner}: 'patch_size' must be a share of the image area in (0, 1) or a "
                          f"(height, width) pair of pixel counts; got {patch_size!r}. {_SHARE_FIX}")


def _check_settings(owner: str, patch_size: object, masks_per_axis: object, mask_value: object,
                    batch_size: object) -> None:
    _check_patch_size(owner, patch_size)
    check_range("masks_per_axis", masks_per_axis, owner=owner, low=1, integer=True,
                fix="Use e.g. masks_per_axis=6 (the paper's k: 6 x 6 = 36 masks).")
    if mask_value is not None:
        check_range("mask_value", mask_value, owner=owner,
                    fix="Give the constant masked pixels take, within the model's bounds, or None "
                        "for the bounds' midpoint.")
        if math.isinf(float(mask_value)):  # type: ignore[arg-type]  # checked numeric just above
            raise ConfigError(f"{owner}: 'mask_value' must be a finite number; got {mask_value!r}. "
                              "Give a value within the model's bounds, or None for their midpoint.")
    check_range("batch_size", batch_size, owner=owner, low=1, integer=True)


def _images(owner: str, m: TorchModel | CallableModel, x: object, name: str = "x") -> Tensor:
    """x checked as a finite float (N, C, H, W) batch within the model's bounds."""
    if isinstance(m, TorchModel) and isinstance(x, Tensor):
        m.check_device(x)  # before reading values: a tensor on another device cannot be read
    if isinstance(x, Tensor) and x.dim() != 4:
        raise InputError(f"{owner}: {name} must be a batch of images of shape (N, C, H, W); got shape "
                         f"{tuple(x.shape)}. Add the missing axes, e.g. {name}[:, None] for (N, H, W) "
                         "grey images or reshape flat rows to (N, C, H, W).")
    return check_inputs(x, bounds=m.bounds, owner=owner).detach()


def _no_grad_eval(m: TorchModel | CallableModel) -> AbstractContextManager[None]:
    return eval_mode(m) if isinstance(m, TorchModel) else nullcontext()


def _masked_batches(x: Tensor, masks: Tensor, point: Tensor, first: Tensor, second: Tensor,
                    fill: Tensor, batch_size: int) -> Iterator[tuple[int, int, Tensor]]:
    """(start, end, copies): rows [start, end) of the plan, row r being x[point[r]] with the pixels
    of masks first[r] and second[r] set to fill; at most batch_size rows at a time."""
    for s in range(0, int(point.numel()), batch_size):
        e = min(s + batch_size, int(point.numel()))
        cover = masks[first[s:e]] | masks[second[s:e]]  # (r, H, W)
        yield s, e, torch.where(cover[:, None], fill, x[point[s:e]])


def _config_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("patch_size", "masks_per_axis", "mask_value", "batch_size", "fpr"):
        if hasattr(obj, name):
            v = getattr(obj, name)
            out[name] = list(v) if isinstance(v, tuple) else v
    return out


def _case_counts(case: Tensor) -> dict[str, int]:
    return {name: int((case == code).sum()) for code, name in enumerate(CASES)}


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class PatchCleanserPrediction:
    """Output of ``PatchCleanser.predict``.

    Attributes:
        labels: (N,) int64 defended labels (Algorithm 1).
        case: (N,) int64 case codes, indices into ``CASES`` (``case_names`` gives the strings).
        one_mask: (N, M) int64 first-round labels, one mask each.
        majority: (N,) int64 majority of the first round.
        patch: the patch (height, width) in pixels the masks cover. n_masks: M.
        queries: masked copies sent to the model. time_s: wall time.
    """

    labels: Tensor
    case: Tensor
    one_mask: Tensor
    majority: Tensor
    patch: tuple[int, int]
    n_masks: int
    queries: int
    time_s: float

    @property
    def case_names(self) -> tuple[DoubleMaskingCase, ...]:
        """(N,) the case of each point by name: ``"agree"``, ``"second-round"`` or ``"majority"``."""
        return tuple(CASES[int(c)] for c in self.case.tolist())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: case counts, patch, masks, queries, time."""
        return {"points": int(self.labels.shape[0]), "cases": _case_counts(self.case),
                "patch": list(self.patch), "n_masks": self.n_masks, "queries": self.queries,
                "time_s": round(self.time_s, 4)}


@dataclass(frozen=True, slots=True)
class PatchCleanserResult:
    """Output of ``PatchCleanser.certify``: defended labels and per-point certificates.

    Attributes:
        labels: (N,) int64 defended labels (Algorithm 1 on x).
        y: (N,) int64 true labels.
        certified: (N,) bool: every two-mask label (a mask with itself included) equals y, so no
            patch within ``patch`` pixels anywhere can change the defended label (Theorem 1).
        clean_labels: (N,) int64 labels of the undefended model on x.
        correct: (N,) bool: labels == y.
        case: (N,) int64 Algorithm-1 case codes on x (indices into ``CASES``).
        patch: the certified patch (height, width) in pixels; patch_share: its share of the area.
        mask_size: the (height, width) of each mask; n_masks: M; mask_value: the fill used.
        config: the defence's settings. queries: model rows (unmasked and masked). time_s: wall time.
    """

    labels: Tensor
    y: Tensor
    certified: Tensor
    clean_labels: Tensor
    correct: Tensor
    case: Tensor
    patch: tuple[int, int]
    patch_share: float
    mask_size: tuple[int, int]
    n_masks: int
    mask_value: float
    config: dict[str, Any]
    queries: int
    time_s: float

    @property
    def clean_accuracy(self) -> float:
        """Accuracy of the undefended model."""
        return float((self.clean_labels == self.y).double().mean())

    @property
    def accuracy(self) -> float:
        """Accuracy of the defended (double-masking) classifier on clean inputs."""
        return float(self.correct.double().mean())

    @property
    def certified_accuracy(self) -> float:
        """Share of points certified (certified points are correct by definition)."""
        return float(self.certified.double().mean())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no tensors)."""
        return {
            "points": int(self.y.shape[0]), "clean_accuracy": round(self.clean_accuracy, 6),
            "accuracy": round(self.accuracy, 6), "certified_accuracy": round(self.certified_accuracy, 6),
            "patch": list(self.patch), "patch_share": round(self.patch_share, 6),
            "mask_size": list(self.mask_size), "n_masks": self.n_masks, "mask_value": self.mask_value,
            "cases": _case_counts(self.case), "config": dict(self.config), "queries": self.queries,
            "time_s": round(self.time_s, 4),
        }


# --------------------------------------------------------------------------------------------
# The defence


@dataclass(frozen=True, kw_only=True, slots=True)
class PatchCleanser:
    """PatchCleanser double masking: a patch-robust classifier around any image classifier.

    A set of M masks (``mask_set``) is built so that every patch of ``patch_size`` lies inside one
    of them. ``predict`` runs Algorithm 1 (``double_masking``): the model's labels with each mask
    (first round), and for each mask that disagrees with the majority, its labels with that mask
    plus every other (second round). ``certify`` computes every two-mask label (pairs i <= j, the
    diagonal being the one-mask labels, M (M + 1) / 2 copies per point); a point whose two-mask
    labels all equal its true label is certified (Theorem 1): no patch of at most that size,
    anywhere, with any content, changes the defended label. The base model works unchanged; it is
    more robust (and certifies more) when trained with masked inputs (e.g. Cutout).

    Masked pixels take ``mask_value`` in every channel. The paper masks with a constant (zero,
    i.e. black, after normalisation); the default here is the midpoint of the model's bounds
    (grey), since the lower bound is the background on MNIST-like data, where a black mask would
    look like no mask at all. Pass ``mask_value=`` to override (within the bounds).

    Args:
        patch_size: a share of the image area in (0, 1) (a square patch of side
            ``patch_side(share, H, W)``) or the patch's ``(height, width)`` in pixels.
        masks_per_axis: masks per image axis, k (M <= k * k; fewer along an axis when rounding
            the stride up leaves room, see ``mask_windows``).
        mask_value: the constant masked pixels take; None: the midpoint of the model's bounds.
        batch_size: masked copies per forward pass.

    Reference: Xiang, Mahloujifar and Mittal, "PatchCleanser: Certifiably Robust Defense against
    Adversarial Patches for Any Image Classifier", USENIX Security 2022 (arXiv:2108.09135).

    Example:
        pc = PatchCleanser(patch_size=0.04, masks_per_axis=6)
        result = pc.certify(model, x, y)
        result.certified_accuracy, pc.predict(model, x_patched).labels
    """

    patch_size: PatchSize
    masks_per_axis: int = 6
    mask_value: float | None = None
    batch_size: int = 512

    def __post_init__(self) -> None:
        _check_settings("PatchCleanser", self.patch_size, self.masks_per_axis, self.mask_value,
                        self.batch_size)

    def config(self) -> dict[str, Any]:
        """The settings, JSON-safe."""
        return _config_dict(self)

    def patch_pixels(self, height: int, width: int) -> tuple[int, int]:
        """The patch (height, width) in pixels on an ``height x width`` image.

        Raises:
            ConfigError: the patch is larger than the image.
        """
        if isinstance(self.patch_size, tuple):
            ph, pw = self.patch_size
        else:
            ph = pw = patch_side(self.patch_size, height, width)
        if ph > height or pw > width:
            raise ConfigError(
                f"PatchCleanser: 'patch_size' must fit in the {height}x{width} image; got "
                f"{self.patch_size!r} ({ph}x{pw} pixels). Give a smaller patch (a share, or "
                f"(height, width) <= ({height}, {width})).")
        return ph, pw

    # -- preparation ---------------------------------------------------------------------------
    def _prepare(self, model: ModelLike, x: object, owner: str
                 ) -> tuple[TorchModel | CallableModel, Tensor, Tensor, Tensor, tuple[int, int]]:
        """Model, checked x, masks (M, H, W) on x's device, the fill (0-d, x's dtype), the patch."""
        m = as_model(model)
        x_t = _images(owner, m, x)
        lo, hi = m.bounds
        value = (lo + hi) / 2.0 if self.mask_value is None else float(self.mask_value)
        if not lo <= value <= hi:
            raise ConfigError(f"{owner}: 'mask_value' must lie within the model's bounds [{lo:g}, {hi:g}]; "
                              f"got {value!r}. Give a value in the bounds, or None for their midpoint.")
        h, w = int(x_t.shape[2]), int(x_t.shape[3])
        patch = self.patch_pixels(h, w)
        masks = mask_set(h, w, patch, self.masks_per_axis).to(x_t.device)
        check_memory(owner, f"a batch of masked copies ({self.batch_size} = batch_size rows of shape "
                     f"{tuple(x_t.shape[1:])}, {x_t.element_size()}-byte values, 2 copies: the copies and "
                     "the first layer's input; the model's activations come on top)",
                     tensor_bytes(self.batch_size, x_t.shape[1:], itemsize=x_t.element_size(), copies=2),
                     fix="Lower batch_size.")
        fill = torch.tensor(value, dtype=x_t.dtype, device=x_t.device)
        return m, x_t, masks, fill, patch

    def _labels(self, m: TorchModel | CallableModel, x: Tensor, masks: Tensor, fill: Tensor,
                point: Tensor, first: Tensor, second: Tensor) -> Tensor:
        """(R,) labels of the plan's masked copies (see ``_masked_batches``)."""
        out = torch.empty(int(point.numel()), dtype=torch.long, device=x.device)
        for s, e, xm in _masked_batches(x, masks, point, first, second, fill, self.batch_size):
            out[s:e] = m.predict(xm)
        return out

    def _unmasked(self, m: TorchModel | CallableModel, x: Tensor) -> Tensor:
        return torch.cat([m.predict(chunk) for chunk in torch.split(x, self.batch_size)])

    def _one_mask(self, m: TorchModel | CallableModel, x: Tensor, masks: Tensor, fill: Tensor) -> Tensor:
        """(N, M) labels with one mask each."""
        n, n_masks = int(x.shape[0]), int(masks.shape[0])
        point = torch.arange(n, device=x.device).repeat_interleave(n_masks)
        idx = torch.arange(n_masks, device=x.device).repeat(n)
        return self._labels(m, x, masks, fill, point, idx, idx).reshape(n, n_masks)

    # -- public verbs --------------------------------------------------------------------------
    def predict(self, model: ModelLike, x: Tensor) -> PatchCleanserPrediction:
        """Defended labels by double masking (Algorithm 1), with the case that decided each.

        Second-round copies are made only for points whose first round disagrees, and only for the
        pairs involving a disagreeing mask (each unordered pair once).

        Args:
            model: the base classifier (``nn.Module`` returning logits, or any model ``as_model``
                takes; its bounds are the input range).
            x: (N, C, H, W) images within the model's bounds.

        Returns:
            The PatchCleanserPrediction.

        Raises:
            InputError: x not a finite (N, C, H, W) float batch in bounds, or on another device.
            ConfigError: the patch is larger than the image, or mask_value outside the bounds.
        """
        started = time.perf_counter()
        owner = "PatchCleanser.predict"
        m, x_t, masks, fill, patch = self._prepare(model, x, owner)
        n, n_masks = int(x_t.shape[0]), int(masks.shape[0])
        with _no_grad_eval(m), torch.no_grad():
            one = self._one_mask(m, x_t, masks, fill)
            majority = _majority(one)
            disagree = one != majority[:, None]
            first, second, lookup = (t.to(x_t.device) for t in pair_index(n_masks))
            # pairs to evaluate: off-diagonal ones with at least one disagreeing mask
            need = (disagree[:, first] | disagree[:, second]) & (first != second)[None]
            point, pair = need.nonzero(as_tuple=True)
            table = torch.full((n, int(first.numel())), -1, dtype=torch.long, device=x_t.device)
            diag = first == second
            table[:, diag] = one[:, first[diag]]
            if point.numel():
                table[point, pair] = self._labels(m, x_t, masks, fill, point, first[pair], second[pair])
        labels, case = double_masking(one, table[:, lookup])
        return PatchCleanserPrediction(
            labels=labels, case=case, one_mask=one, majority=majority, patch=patch, n_masks=n_masks,
            queries=n * n_masks + int(point.numel()), time_s=time.perf_counter() - started)

    def certify(self, model: ModelLike, x: Tensor, y: Tensor) -> PatchCleanserResult:
        """Certify each point against every patch of ``patch_size`` (Theorem 1), and predict it.

        A point is certified when all its two-mask labels equal y: then, for any patch of at most
        that size at any position, the mask covering the patch gives y in both rounds, and double
        masking returns y. The defended labels on x come from the same table.

        Args:
            model: the base classifier (see ``predict``).
            x: (N, C, H, W) images within the model's bounds.
            y: (N,) int64 true labels.

        Returns:
            The PatchCleanserResult.

        Raises:
            InputError: x or y malformed, or on another device.
            ConfigError: the patch is larger than the image, or mask_value outside the bounds.
        """
        started = time.perf_counter()
        owner = "PatchCleanser.certify"
        m, x_t, masks, fill, patch = self._prepare(model, x, owner)
        n, n_masks = int(x_t.shape[0]), int(masks.shape[0])
        h, w = int(x_t.shape[2]), int(x_t.shape[3])
        with _no_grad_eval(m), torch.no_grad():
            clean = self._unmasked(m, x_t)
            y_t = check_labels(y, n=n, n_classes=m.n_classes, owner=owner, device=x_t.device)
            first, second, lookup = (t.to(x_t.device) for t in pair_index(n_masks))
            n_pairs = int(first.numel())
            point = torch.arange(n, device=x_t.device).repeat_interleave(n_pairs)
            pair = torch.arange(n_pairs, device=x_t.device).repeat(n)
            table = self._labels(m, x_t, masks, fill, point, first[pair], second[pair]).reshape(n, n_pairs)
        two = table[:, lookup]  # (N, M, M)
        one = two.diagonal(dim1=1, dim2=2)
        labels, case = double_masking(one, two)
        certified = (table == y_t[:, None]).all(1)
        _, size_h = mask_windows(h, patch[0], self.masks_per_axis)
        _, size_w = mask_windows(w, patch[1], self.masks_per_axis)
        return PatchCleanserResult(
            labels=labels, y=y_t, certified=certified, clean_labels=clean, correct=labels == y_t,
            case=case, patch=patch, patch_share=patch[0] * patch[1] / (h * w), mask_size=(size_h, size_w),
            n_masks=n_masks, mask_value=float(fill), config=self.config(), queries=n + n * n_pairs,
            time_s=time.perf_counter() - started)

    def mask_disagreement(self, model: ModelLike, x: Tensor) -> Tensor:
        """(N,) float64 share of the one-mask labels that differ from the unmasked label.

        A masking-consistency score for patch detection: a patch that drives the label flips the
        label back wherever a mask covers it, while clean images keep theirs under most masks.
        Threshold it at a false-positive rate on clean data (``MaskingConsistencyDetector``).

        Raises:
            InputError, ConfigError: as in ``predict``.
        """
        m, x_t, masks, fill, _ = self._prepare(model, x, "PatchCleanser.mask_disagreement")
        with _no_grad_eval(m), torch.no_grad():
            clean = self._unmasked(m, x_t)
            one = self._one_mask(m, x_t, masks, fill)
        return (one != clean[:, None]).double().mean(1)

    def consistency_scores(self, model: ModelLike, x: Tensor) -> Tensor:
        """(N,) float64 ``mask_disagreement`` with ties broken by the masked copies' confidence.

        ``d + (1 - q) / (M + 1)``, where d is the disagreement share and q the mean probability the
        masked copies give the unmasked label (softmax of logits or margins; a model's own
        probabilities). The second term is below 1 / M, so scores order by disagreement first, and
        the score is continuous among the (many) clean points that no mask flips, which lets a
        threshold reach a chosen false-positive rate. Label-only models get d alone.

        Raises:
            InputError, ConfigError: as in ``predict``.
        """
        return self._consistency_scores(model, x, "PatchCleanser.consistency_scores")

    def _consistency_scores(self, model: ModelLike, x: object, owner: str) -> Tensor:
        m, x_t, masks, fill, _ = self._prepare(model, x, owner)
        n, n_masks = int(x_t.shape[0]), int(masks.shape[0])
        with _no_grad_eval(m), torch.no_grad():
            clean = self._unmasked(m, x_t)
            point = torch.arange(n, device=x_t.device).repeat_interleave(n_masks)
            idx = torch.arange(n_masks, device=x_t.device).repeat(n)
            labels = torch.empty(n * n_masks, dtype=torch.long, device=x_t.device)
            conf = torch.zeros(n * n_masks, dtype=torch.float64, device=x_t.device)
            for s, e, xm in _masked_batches(x_t, masks, point, idx, idx, fill, self.batch_size):
                out = m.outputs(xm)
                if out.dim() == 1:
                    labels[s:e] = out.long()
                    continue
                labels[s:e] = safe_argmax(out)
                # known once the model has answered: a black box's own probabilities are used as such
                as_probs = isinstance(m, CallableModel) and m.score_kind == "probabilities"
                probs = out.double() if as_probs else F.softmax(out.double(), dim=1)
                conf[s:e] = torch.nan_to_num(probs.gather(1, clean[point[s:e], None])[:, 0], nan=0.0)
        flipped = (labels.reshape(n, n_masks) != clean[:, None]).double().mean(1)
        q = conf.reshape(n, n_masks).mean(1).clamp(0.0, 1.0)
        return flipped + (1.0 - q) / (n_masks + 1)


# --------------------------------------------------------------------------------------------
# The masking-consistency detector


@dataclass(frozen=True, kw_only=True, slots=True)
class MaskingDetectionResult:
    """How well a fitted ``MaskingConsistencyDetector`` separates clean from patched images.

    Attributes:
        threshold: the calibrated threshold (score > threshold is flagged).
        target_fpr: the false-positive rate it was calibrated for.
        tpr: share of the patched images flagged. fpr: share of the (held-out) clean images flagged.
        auroc: area under the ROC curve, clean (negative) against patched (positive) scores.
        n_clean, n_patched: the set sizes. clean_scores, patched_scores: the (N,) scores.
        config: the detector's settings. time_s: wall time.
    """

    threshold: float
    target_fpr: float
    tpr: float
    fpr: float
    auroc: float
    n_clean: int
    n_patched: int
    clean_scores: Tensor
    patched_scores: Tensor
    config: dict[str, Any]
    time_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no tensors)."""
        return {"threshold": self.threshold, "target_fpr": self.target_fpr, "tpr": round(self.tpr, 6),
                "fpr": round(self.fpr, 6), "auroc": round(self.auroc, 6), "n_clean": self.n_clean,
                "n_patched": self.n_patched, "config": dict(self.config), "time_s": round(self.time_s, 4)}


@dataclass(kw_only=True)
class MaskingConsistencyDetector:
    """Flags images whose label is not stable under PatchCleanser's masks (an adversarial patch).

    The score is ``PatchCleanser.consistency_scores``: the share of one-mask labels that differ
    from the unmasked label, ties broken by the masked copies' confidence in it. A patch that
    carries the decision loses it under the masks that cover it; a clean image rarely does.
    ``fit`` sets ``threshold_`` to the ``1 - fpr`` quantile of clean scores; ``predict`` flags
    scores above it. An attacker who knows the detector can make patches that survive masking;
    use ``PatchCleanser.certify`` for a guarantee.

    Args:
        patch_size, masks_per_axis, mask_value, batch_size: as in ``PatchCleanser``.
        fpr: target false-positive rate on clean data, in (0, 1).

    Reference: the masks and their consistency follow Xiang, Mahloujifar and Mittal,
    "PatchCleanser", USENIX Security 2022 (arXiv:2108.09135); Xiang and Mittal, "PatchGuard++:
    Efficient Provable Attack Detection against Adversarial Patches", ICLR 2021 workshop
    (arXiv:2104.12609), detect patches from the same kind of masked-prediction inconsistency.

    Example:
        det = MaskingConsistencyDetector(patch_size=0.04, fpr=0.05).fit(model, x_clean)
        det.predict(model, x_patched)
    """

    patch_size: PatchSize
    masks_per_axis: int = 6
    fpr: float = 0.05
    mask_value: float | None = None
    batch_size: int = 512
    threshold_: float = field(init=False)
    fpr_: float = field(init=False)
    n_fit_: int = field(init=False)

    def __post_init__(self) -> None:
        owner = "MaskingConsistencyDetector"
        _check_settings(owner, self.patch_size, self.masks_per_axis, self.mask_value, self.batch_size)
        if not (isinstance(self.fpr, float | int) and not isinstance(self.fpr, bool) and 0 < self.fpr < 1):
            raise ConfigError(f"{owner}: 'fpr' must be a number in (0, 1); got {self.fpr!r}. Give the "
                              "accepted false-positive rate on clean data, e.g. fpr=0.05.")

    def config(self) -> dict[str, Any]:
        """The settings, JSON-safe."""
        return _config_dict(self)

    def _cleanser(self) -> PatchCleanser:
        return PatchCleanser(patch_size=self.patch_size, masks_per_axis=self.masks_per_axis,
                             mask_value=self.mask_value, batch_size=self.batch_size)

    def _check_fitted(self) -> float:
        if not hasattr(self, "threshold_"):
            raise NotFittedError(
                "This MaskingConsistencyDetector instance is not fitted yet. Call 'fit' with appropriate "
                "arguments before using this estimator.")
        return self.threshold_

    def fit(self, model: ModelLike, x_clean: Tensor) -> MaskingConsistencyDetector:
        """Set ``threshold_`` so that about a share ``fpr`` of clean images is flagged; return self.

        Args:
            model: the classifier (see ``PatchCleanser.predict``).
            x_clean: (N, C, H, W) clean images, held out from any evaluation, N >= 1 / fpr.

        Raises:
            InputError: x_clean malformed, or fewer than 1 / fpr rows.
        """
        owner = "MaskingConsistencyDetector.fit"
        need = math.ceil(1.0 / self.fpr)
        if isinstance(x_clean, Tensor) and x_clean.dim() >= 1 and int(x_clean.shape[0]) < need:
            raise InputError(f"{owner}: x_clean must have at least {need} rows for fpr={self.fpr}; got "
                             f"{int(x_clean.shape[0])}. Pass more clean images.")
        scores = self._cleanser()._consistency_scores(model, x_clean, owner)
        self.threshold_ = calibrate_threshold(scores, self.fpr)
        self.fpr_ = float((scores > self.threshold_).double().mean())
        self.n_fit_ = int(scores.numel())
        return self

    def score(self, model: ModelLike, x: Tensor) -> Tensor:
        """(N,) float64 masking-consistency scores; higher is more suspicious."""
        self._check_fitted()
        return self._cleanser()._consistency_scores(model, x, "MaskingConsistencyDetector.score")

    def predict(self, model: ModelLike, x: Tensor) -> Tensor:
        """(N,) bool: True where x is flagged as patched (score > threshold_)."""
        out: Tensor = self.score(model, x) > self._check_fitted()
        return out

    def evaluate(self, model: ModelLike, x_clean: Tensor, x_patched: Tensor) -> MaskingDetectionResult:
        """TPR on patched images at the calibrated threshold, FPR on held-out clean images, AUROC."""
        started = time.perf_counter()
        thr = self._check_fitted()
        clean = self.score(model, x_clean)
        bad = self.score(model, x_patched)
        return MaskingDetectionResult(
            threshold=thr, target_fpr=float(self.fpr), tpr=float((bad > thr).double().mean()),
            fpr=float((clean > thr).double().mean()), auroc=auroc(clean, bad), n_clean=int(clean.numel()),
            n_patched=int(bad.numel()), clean_scores=clean, patched_scores=bad, config=self.config(),
            time_s=time.perf_counter() - started)
