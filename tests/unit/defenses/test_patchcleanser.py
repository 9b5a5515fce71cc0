"""PatchCleanser: the R-covering mask set, Algorithm 1's three cases, sound certificates, the detector."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelshield.defenses.certification import (
    MaskingConsistencyDetector,
    PatchCleanser,
    mask_set,
    patch_side,
)
from modelshield.defenses.certification.patchcleanser import (
    CASES,
    double_masking,
    mask_windows,
    pair_index,
)
from modelshield.errors import ConfigError, InputError, NotFittedError
from modelshield.models import as_model

# --------------------------------------------------------------------------------------------
# Mask set


def covered_locations(masks: Tensor, patch: tuple[int, int]) -> Tensor:
    """(H - ph + 1, W - pw + 1) bool: the patch at (top, left) lies inside at least one mask."""
    inside = F.avg_pool2d(masks[:, None].double(), patch, stride=1)[:, 0] == 1.0  # (M, ., .)
    return inside.any(0)


@pytest.mark.parametrize(("n", "p", "k"), [(8, 2, 4), (8, 2, 3), (32, 5, 6), (224, 23, 6), (10, 9, 6),
                                           (7, 7, 3), (9, 1, 1), (13, 4, 13), (17, 3, 5)])
def test_axis_windows_follow_the_paper(n: int, p: int, k: int) -> None:
    starts, size = mask_windows(n, p, k)
    stride = math.ceil((n - p + 1) / k)
    assert size == p + stride - 1
    assert starts[0] == 0 and starts[-1] + size == n  # the last mask ends at n
    assert all(b - a == stride for a, b in itertools.pairwise(starts[:-1]))
    if len(starts) > 1:
        assert 0 < starts[-1] - starts[-2] <= stride
    assert len(starts) <= min(k, n - p + 1)


@pytest.mark.parametrize(("h", "w", "patch", "k"), [
    (8, 8, (2, 2), 4), (8, 8, (2, 2), 3), (16, 16, (3, 3), 6), (32, 32, (5, 5), 6), (12, 20, (3, 7), 4),
    (20, 9, (6, 2), 5), (8, 8, (8, 8), 6), (9, 9, (1, 1), 2), (6, 11, (6, 1), 3), (64, 48, (9, 4), 6),
])
def test_mask_set_covers_every_patch_location(h: int, w: int, patch: tuple[int, int], k: int) -> None:
    masks = mask_set(h, w, patch, k)
    assert masks.dtype == torch.bool and masks.shape[1:] == (h, w)
    assert masks.shape[0] == len(mask_windows(h, patch[0], k)[0]) * len(mask_windows(w, patch[1], k)[0])
    assert masks.shape[0] <= k * k
    assert bool(covered_locations(masks, patch).all())
    # Every mask is the same (size_h x size_w) rectangle, shifted.
    _, size_h = mask_windows(h, patch[0], k)
    _, size_w = mask_windows(w, patch[1], k)
    assert bool((masks.flatten(1).sum(1) == size_h * size_w).all())


def test_mask_set_hand_example() -> None:
    # n = 8, p = 2, k = 3: stride ceil(7 / 3) = 3, size 4, starts 0, 3 and 4 (the last ends at 8).
    assert mask_windows(8, 2, 3) == ([0, 3, 4], 4)
    masks = mask_set(8, 8, (2, 2), 3)
    assert masks.shape == (9, 8, 8)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[3:7, 4:8] = True
    assert torch.equal(masks[5], expected)  # row window 1 (start 3), column window 2 (start 4)
    # A smaller mask set would not cover: drop any one mask and some 2x2 location is uncovered.
    for i in range(9):
        keep = torch.ones(9, dtype=torch.bool)
        keep[i] = False
        assert not bool(covered_locations(masks[keep], (2, 2)).all())


def test_patch_side_rule() -> None:
    assert patch_side(0.04, 32, 32) == 7  # sqrt(40.96) = 6.4 -> 7
    assert patch_side(0.0625, 16, 16) == 4  # exactly 16 pixels
    # The literal rule, float rounding included (0.04 * 35 * 35 = 49.00000000000001 -> 8), as the
    # patch attacks compute it.
    assert patch_side(0.04, 35, 35) == 8
    assert patch_side(0.09, 10, 10) == 3
    for share, h, w in [(0.01, 28, 28), (0.05, 32, 32), (0.1, 8, 8), (0.3, 17, 5)]:
        assert patch_side(share, h, w) == max(1, math.ceil(math.sqrt(share * h * w)))
    assert patch_side(1e-6, 8, 8) == 1
    assert patch_side(0.02, 224, 224) == 32  # sqrt(1003.52) = 31.7 -> 32
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="share"):
            patch_side(bad, 8, 8)


def test_pair_index_is_symmetric_and_complete() -> None:
    first, second, lookup = pair_index(5)
    assert first.numel() == 15 and bool((first <= second).all())
    assert torch.equal(lookup, lookup.T)
    assert torch.equal(first[lookup], torch.minimum(*torch.meshgrid(torch.arange(5), torch.arange(5),
                                                                      indexing="ij")))


# --------------------------------------------------------------------------------------------
# Algorithm 1 on hand-built models


class BrightCount(nn.Module):
    """3 classes: the number of pixels brighter than 0.9 (capped at 2), as near-one-hot logits."""

    def forward(self, x: Tensor) -> Tensor:
        count = (x > 0.9).flatten(1).sum(1).clamp(max=2).double()
        return -((torch.arange(3, dtype=torch.float64)[None] - count[:, None]) ** 2).float()


def bright(points: list[tuple[int, int]], size: int = 6) -> Tensor:
    img = torch.full((1, 1, size, size), 0.2)
    for r, c in points:
        img[0, 0, r, c] = 1.0
    return img


# 6x6 images, 1x1 patch, k = 3: nine 2x2 masks tiling the image (mask value 0.5, not "bright").
PC_TILES = PatchCleanser(patch_size=(1, 1), masks_per_axis=3)


def test_algorithm1_three_cases_on_a_counting_model() -> None:
    model = BrightCount()
    x = torch.cat([
        bright([]),                # every mask sees 0 bright pixels: "agree" on 0
        bright([(1, 1)]),          # 8 masks say 1, the one covering the pixel says 0; its second
                                   # round (it plus any mask) is all 0: "second-round", label 0
        bright([(0, 0), (5, 5)]),  # 7 masks say 2, two say 1; a disagreer's second round with the
                                   # other disagreer says 0: no unanimous round, "majority", label 2
        bright([(0, 0), (0, 1)]),  # both in one tile: 8 say 2, that tile says 0 and its second
                                   # round is all 0: "second-round", label 0
    ])
    pred = PC_TILES.predict(model, x)
    assert pred.labels.tolist() == [0, 0, 2, 0]
    assert pred.case_names == ("agree", "second-round", "majority", "second-round")
    assert pred.majority.tolist() == [0, 1, 2, 2]
    assert pred.one_mask.shape == (4, 9)
    assert pred.one_mask[1].tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1]
    assert pred.one_mask[2].tolist() == [1, 2, 2, 2, 2, 2, 2, 2, 1]
    # Second-round copies only for the points and pairs with a disagreeing mask (i < j once each):
    # point 1: 8 pairs with mask 0; point 2: 8 + 7 pairs with mask 0 or 8; point 3: 8.
    assert pred.queries == 4 * 9 + 8 + 15 + 8
    assert json.loads(json.dumps(pred.to_dict()))["cases"] == {"agree": 1, "second-round": 2, "majority": 1}


def reference_double_masking(model: nn.Module, x: Tensor, masks: Tensor,
                             fill: float) -> tuple[list[int], list[str]]:
    """Algorithm 1 one image and one mask at a time, as in the authors' code."""
    labels, cases = [], []
    for img in x:
        def f(cover: Tensor, img: Tensor = img) -> int:
            return int(model(torch.where(cover, torch.tensor(fill), img)[None]).argmax(1))
        one = [f(mk) for mk in masks]
        counts = np.bincount(one)
        majority = int(counts.argmax())
        if all(p == majority for p in one):
            labels.append(majority)
            cases.append("agree")
            continue
        for i, p in enumerate(one):
            if p != majority and all(f(masks[i] | mk) == p for mk in masks):
                labels.append(p)
                cases.append("second-round")
                break
        else:
            labels.append(majority)
            cases.append("majority")
    return labels, cases


class RegionVotes(nn.Module):
    """4 classes from 4 image quadrants' brightness: a model whose masked labels often disagree."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(4, 4, generator=gen))

    def forward(self, x: Tensor) -> Tensor:
        q = F.adaptive_avg_pool2d(x.mean(1, keepdim=True), 2).flatten(1)  # (N, 4)
        return (q - 0.5) @ self.weight * 20.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_predict_matches_a_one_at_a_time_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    model = RegionVotes(seed).eval()
    x = torch.rand(24, 1, 8, 8, generator=gen)
    x[::3, :, 2:5, 1:4] = torch.rand(8, 1, 3, 3, generator=gen).round()  # patch-like blocks
    pc = PatchCleanser(patch_size=(2, 2), masks_per_axis=3, batch_size=37)
    pred = pc.predict(model, x)
    with torch.no_grad():
        ref_labels, ref_cases = reference_double_masking(model, x, mask_set(8, 8, (2, 2), 3), 0.5)
    assert pred.labels.tolist() == ref_labels
    assert list(pred.case_names) == ref_cases
    assert len(set(ref_cases)) >= 2  # the draw exercises more than one case
    # certify's labels come from the full two-mask table and agree with predict's.
    res = pc.certify(model, x, pred.labels)
    assert torch.equal(res.labels, pred.labels) and torch.equal(res.case, pred.case)


def test_double_masking_on_tables() -> None:
    one = torch.tensor([[3, 3, 3], [1, 2, 2], [1, 2, 2]])
    two = torch.full((3, 3, 3), -1)
    two[1, 0] = torch.tensor([1, 1, 1])  # disagreer 0 (label 1): all agree -> case 1
    two[2, 0] = torch.tensor([1, 1, 0])  # disagreer 0: one pair differs -> majority
    labels, case = double_masking(one, two)
    assert labels.tolist() == [3, 1, 2]
    assert [CASES[c] for c in case.tolist()] == ["agree", "second-round", "majority"]
    # A tie in the first round goes to the smallest label.
    labels, _ = double_masking(torch.tensor([[4, 2, 4, 2]]), torch.full((1, 4, 4), -1))
    assert labels.tolist() == [2]


def test_certificate_is_sound_on_the_counting_model() -> None:
    model = BrightCount()
    x = torch.cat([bright([]), bright([(2, 3)])])
    y = torch.tensor([0, 1])
    res = PC_TILES.certify(model, x, y)
    # Point 0: every two-mask copy has no bright pixel (label 0): certified. Point 1: the mask over
    # the bright pixel says 0, not 1: not certified, and double masking removes the lone pixel
    # as it would a patch (second round), so the defended label is 0: a clean-accuracy cost.
    assert res.certified.tolist() == [True, False]
    assert res.labels.tolist() == [0, 0] and res.correct.tolist() == [True, False]
    assert res.clean_labels.tolist() == [0, 1] and res.clean_accuracy == 1.0 and res.accuracy == 0.5
    assert [CASES[c] for c in res.case.tolist()] == ["agree", "second-round"]
    assert res.n_masks == 9 and res.patch == (1, 1) and res.mask_size == (2, 2)
    # Any 1x1 bright "patch" anywhere on point 0 leaves the defended label at 0.
    patched = bright([]).repeat(36, 1, 1, 1)
    patched.view(36, 36)[torch.arange(36), torch.arange(36)] = 1.0
    assert bool((PC_TILES.predict(model, patched).labels == 0).all())
    assert bool((model(patched).argmax(1) == 1).all())  # while the undefended model is fooled


def test_black_box_callable_model() -> None:
    def count_probs(a: np.ndarray) -> np.ndarray:
        c = np.minimum((a > 0.9).reshape(len(a), -1).sum(1), 2)
        out: np.ndarray = np.eye(3)[c]
        return out

    x = torch.cat([bright([]), bright([(1, 1)]), bright([(0, 0), (5, 5)])])
    pred = PC_TILES.predict(as_model(count_probs, n_classes=3), x)
    assert pred.labels.tolist() == [0, 0, 2]
    scores = PC_TILES.consistency_scores(as_model(count_probs, n_classes=3), x)
    # One-hot probabilities, used as they are: 1 - q equals the flipped share d, so d + d / 10.
    assert scores.tolist() == pytest.approx([0.0, 1 / 9 + (1 / 9) / 10, 2 / 9 + (2 / 9) / 10])


def test_model_state_and_inputs_are_left_alone() -> None:
    model = nn.Sequential(RegionVotes(0), nn.Dropout(0.5))
    model.train()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x_copy = x.clone()
    pc = PatchCleanser(patch_size=(2, 2), masks_per_axis=3)
    a = pc.predict(model, x).labels
    b = pc.predict(model, x).labels
    assert torch.equal(a, b)  # dropout off during the call
    assert model.training and model[1].training
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(x, x_copy)


# --------------------------------------------------------------------------------------------
# Certification soundness on a small trained CNN


@pytest.fixture(scope="module")
def digits_cnn() -> tuple[nn.Module, Tensor, Tensor]:
    """A small CNN on sklearn digits (1 x 8 x 8 in [0, 1]) trained with two-mask augmentation."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=gen)
    tr, te = perm[:1400], perm[1400:]
    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (p[0].numel() ** -0.5 if p.dim() > 1 else 0.0))
    masks = mask_set(8, 8, (2, 2), 4)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(20):
        for idx in torch.randperm(len(tr), generator=gen).split(100):
            xb, yb = x[tr[idx]], y[tr[idx]]
            a = torch.randint(0, len(masks), (len(idx),), generator=gen)
            b = torch.randint(0, len(masks), (len(idx),), generator=gen)
            cover = (masks[a] | masks[b]) & (torch.rand(len(idx), generator=gen) < 0.8)[:, None, None]
            xb = torch.where(cover[:, None], torch.tensor(0.5), xb)
            opt.zero_grad()
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
    net.eval()
    return net, x[te], y[te]


def patched_copies(net: nn.Module, img: Tensor, label: int, patch: int, gen: torch.Generator,
                   steps: int = 10) -> Tensor:
    """(L * 5, 1, H, W): img with a patch x patch patch at every one of its L locations, filled
    with 0, 1, two draws of uniform noise, and content optimised (sign gradient ascent on the
    cross-entropy of the true label) against the undefended model."""
    _, h, w = img.shape
    tops, lefts = torch.meshgrid(torch.arange(h - patch + 1), torch.arange(w - patch + 1), indexing="ij")
    rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    t, le = tops.flatten()[:, None, None], lefts.flatten()[:, None, None]
    where = ((rows >= t) & (rows < t + patch) & (cols >= le) & (cols < le + patch))[:, None]  # (L,1,H,W)
    n_loc = where.shape[0]
    base = img[None].expand(n_loc, -1, -1, -1)
    contents = [torch.zeros_like(base), torch.ones_like(base),
                torch.rand(base.shape, generator=gen), torch.rand(base.shape, generator=gen)]
    content = torch.rand(base.shape, generator=gen)
    target = torch.full((n_loc,), label)
    for _ in range(steps):
        content.requires_grad_(True)
        loss = F.cross_entropy(net(torch.where(where, content, base)), target)
        (grad,) = torch.autograd.grad(loss, content)
        content = (content.detach() + 0.25 * grad.sign()).clamp(0.0, 1.0)
    contents.append(content)
    return torch.cat([torch.where(where, c, base) for c in contents])


def test_certified_points_survive_every_patch(digits_cnn: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, x, y = digits_cnn
    x, y = x[:120], y[:120]
    pc = PatchCleanser(patch_size=(2, 2), masks_per_axis=4)
    res = pc.certify(net, x, y)
    assert res.patch == (2, 2) and res.n_masks == 16 and res.mask_size == (3, 3)
    assert res.clean_accuracy > 0.9 and res.accuracy > 0.85
    assert 0.25 < res.certified_accuracy <= res.accuracy
    assert bool((res.certified <= res.correct).all())
    assert res.queries == 120 + 120 * 16 * 17 // 2
    summary = json.loads(json.dumps(res.to_dict()))
    assert summary["certified_accuracy"] == pytest.approx(res.certified_accuracy, abs=1e-6)
    assert summary["patch_share"] == pytest.approx(4 / 64)

    gen = torch.Generator().manual_seed(1)
    idx = res.certified.nonzero()[:, 0]
    batches = [patched_copies(net, x[i], int(y[i]), 2, gen) for i in idx.tolist()]
    patched = torch.cat(batches)
    truth = y[idx].repeat_interleave(batches[0].shape[0])
    with torch.no_grad():
        fooled = net(patched).argmax(1) != truth
    defended = pc.predict(net, patched).labels
    assert bool((defended == truth).all()), f"{int((defended != truth).sum())} certified points broken"
    # The patches are real attacks: the undefended model falls for some of them (certified points
    # are the model's most patch-robust ones; about 200 of the 11270 copies here).
    assert int(fooled.sum()) > 50


# --------------------------------------------------------------------------------------------
# Masking-consistency detector


def test_detector_fpr_is_calibrated_on_held_out_clean_data(
        digits_cnn: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, x, y = digits_cnn
    det = MaskingConsistencyDetector(patch_size=(2, 2), masks_per_axis=4, fpr=0.1)
    with pytest.raises(NotFittedError, match="fit"):
        det.score(net, x[:2])
    det.fit(net, x[:200])
    assert det.n_fit_ == 200 and det.fpr_ <= 0.1
    gen = torch.Generator().manual_seed(2)
    attacked = torch.cat([patched_copies(net, x[i], int(y[i]), 2, gen)[-49:][::12] for i in range(200, 260)])
    with torch.no_grad():
        fooled = net(attacked).argmax(1) != y[200:260].repeat_interleave(5)
    ev = det.evaluate(net, x[200:], attacked[fooled])
    assert abs(ev.fpr - 0.1) < 0.05  # 197 held-out points: binomial std about 0.021
    assert ev.auroc > 0.8 and ev.tpr > 0.5
    assert json.loads(json.dumps(ev.to_dict()))["n_clean"] == 197
    flags = det.predict(net, x[200:])
    assert flags.dtype == torch.bool and float(flags.double().mean()) == pytest.approx(ev.fpr)
    share = PatchCleanser(patch_size=(2, 2), masks_per_axis=4).mask_disagreement(net, x[:50])
    assert share.shape == (50,) and bool(((share * 16).round() == share * 16).all())


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("size", [0.0, 1.0, 1.5, -0.2, float("nan"), 3, (0, 2), (2, 2, 2), (2.0, 2.0), "big"])
def test_bad_patch_size(size: object) -> None:
    with pytest.raises(ConfigError, match="patch_size"):
        PatchCleanser(patch_size=size)  # type: ignore[arg-type]  # invalid on purpose


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="masks_per_axis"):
        PatchCleanser(patch_size=0.05, masks_per_axis=0)
    with pytest.raises(ConfigError, match="batch_size"):
        PatchCleanser(patch_size=0.05, batch_size=0)
    with pytest.raises(ConfigError, match="mask_value"):
        PatchCleanser(patch_size=0.05, mask_value=float("inf"))
    with pytest.raises(ConfigError, match="fpr"):
        MaskingConsistencyDetector(patch_size=0.05, fpr=1.0)
    with pytest.raises(ConfigError, match="masks_per_axis"):
        MaskingConsistencyDetector(patch_size=0.05, masks_per_axis=-1)


def test_bad_inputs() -> None:
    model = BrightCount()
    x = torch.cat([bright([]), bright([])])
    with pytest.raises(ConfigError, match=r"patch_size.*6x6 image"):
        PatchCleanser(patch_size=(7, 2)).predict(model, x)
    with pytest.raises(ConfigError, match=r"patch_size.*4x64 image"):  # share 0.5 -> a 12x12 square
        PatchCleanser(patch_size=0.5).predict(model, torch.zeros(1, 1, 4, 64))
    with pytest.raises(InputError, match=r"\(N, C, H, W\); got shape \(2, 6, 6\)"):
        PC_TILES.predict(model, x[:, 0])
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        PC_TILES.certify(model, x.flatten(1), torch.zeros(2, dtype=torch.long))
    with pytest.raises(InputError, match=r"y must have shape \(2,\)"):
        PC_TILES.certify(model, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError, match="outside bounds"):
        PC_TILES.predict(model, x + 5.0)
    with pytest.raises(ConfigError, match="mask_value"):
        PatchCleanser(patch_size=(1, 1), mask_value=2.0).predict(model, x)
    with pytest.raises(InputError, match="at least 10 rows"):
        MaskingConsistencyDetector(patch_size=(1, 1), fpr=0.1).fit(model, x)
