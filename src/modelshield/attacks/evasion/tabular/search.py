"""Black-box greedy / beam search over allowed feature values (constrained tabular evasion)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from modelshield._checks import check_range
from modelshield.attacks.evasion.tabular.constraints import TOL, ConstraintSpec, count_changes
from modelshield.attacks.ops import cw_margin_loss, make_generator, point_keys, point_uniform
from modelshield.attacks.results import EvasionResult
from modelshield.attacks.verify import AttackCall, start_call
from modelshield.errors import ConfigError, EvaluationWarning, ModelCapabilityError
from modelshield.models import CallableModel, ModelLike, TorchModel, as_model, eval_mode

__all__ = ["TabularSearch"]


# --------------------------------------------------------------------------------------------
# Shared by TabularSearch and TabularPGD
# --------------------------------------------------------------------------------------------


def margin_to(scores: Tensor, target: Tensor) -> Tensor:
    """(N,) s_target - max_{j != target} s_j: positive exactly when the target class wins."""
    return -cw_margin_loss(scores, target)


def scores_in_batches(m: TorchModel | CallableModel, x: Tensor, batch_size: int) -> Tensor:
    """(N, C) model scores of x, queried in chunks of batch_size rows (every row counted)."""
    if x.shape[0] <= batch_size:
        return m.scores(x)
    return torch.cat([m.scores(chunk) for chunk in torch.split(x, batch_size)])


@dataclass(frozen=True, slots=True)
class TabularCall:
    """A validated tabular attack call: the AttackCall (with per-row target) and clean answers."""

    call: AttackCall
    spec: ConstraintSpec
    clean_scores: Tensor
    clean_pred: Tensor
    attacked: Tensor


def start_tabular(
    model: ModelLike,
    x: Tensor,
    y: Tensor,
    target: Tensor | None,
    *,
    constraints: object,
    malicious_class: int,
    owner: str,
    gradients: bool,
    batch_size: int,
) -> TabularCall:
    """Adapt the model (bounds from the spec), validate data against the spec, score x once.

    Rows attacked: true label ``malicious_class``, predicted ``malicious_class`` on the clean
    input, and a target (default: the other class of a binary model) different from it.
    """
    if not isinstance(constraints, ConstraintSpec):
        raise ConfigError(
            f"{owner}: 'constraints' must be a ConstraintSpec; got {type(constraints).__name__}. "
            "Load one with ConstraintSpec.from_yaml(path) or build one with ConstraintSpec.infer(x, names)."
        )
    spec = constraints
    m: object = model
    if not isinstance(model, TorchModel | CallableModel):
        lo, hi = spec.bounds
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise ConfigError(
                f"{owner}: the spec must give finite min/max for every feature to infer the model's "
                f"bounds; got ({lo}, {hi}). Wrap the model yourself: as_model(model, bounds=(lo, hi))."
            )
        m = as_model(model, bounds=(lo, hi))
    if isinstance(m, CallableModel) and m.output == "labels":
        raise ModelCapabilityError(
            f"{owner}: needs class scores (probabilities or logits) to rank candidate rows; got a "
            "label-only model. Wrap a function that returns probabilities (predict_proba)."
        )
    call = start_call(m, x, y, target, owner=owner, gradients=gradients)
    spec._check_width(call.x, owner)
    spec.validate_data(call.x)
    n_classes = call.model.n_classes
    check_range("malicious_class", malicious_class, owner=owner, low=0, high=n_classes - 1, integer=True)
    if call.target is None:
        if n_classes != 2:
            raise ConfigError(
                f"{owner}: 'target' must be given for a model with {n_classes} classes; got None. "
                "Pass target=... with the benign class of each row."
            )
        tgt = torch.full_like(call.y, 1 - malicious_class)
    else:
        tgt = call.target
    call = dataclasses.replace(call, target=tgt)
    clean_scores = scores_in_batches(call.model, call.x, batch_size)
    if clean_scores.dim() != 2:
        raise ModelCapabilityError(
            f"{owner}: needs class scores of shape (N, C); the model returned labels. Wrap a "
            "function that returns probabilities (predict_proba)."
        )
    clean_pred = clean_scores.argmax(1)
    attacked = (call.y == malicious_class) & (clean_pred == malicious_class) & (tgt != malicious_class)
    return TabularCall(call, spec, clean_scores, clean_pred, attacked)


def finish_tabular(
    tc: TabularCall,
    x_adv: Tensor,
    *,
    attack: object,
    max_changes: int,
    malicious_class: int,
    point_queries: Tensor,
    extra: dict[str, Any] | None = None,
) -> EvasionResult:
    """Verify x_adv against the spec and the model, and build the result.

    A row counts as a success only if it satisfies the spec, changes at most ``max_changes``
    features, was an attacked (detected malicious) row, and the model, queried again, gives it
    the target class. Rows failing the spec or the L0 budget (and changed benign rows) are
    replaced by the clean row, marked invalid, and reported with an EvaluationWarning.
    """
    call, spec = tc.call, tc.spec
    x = call.x
    l0 = count_changes(x, x_adv)
    ok = spec.check(x, x_adv) & (l0 <= max_changes) & (tc.attacked | (l0 == 0))
    n_bad = int((~ok).sum())
    if n_bad:
        warnings.warn(
            f"{type(attack).__name__}: {n_bad} returned rows broke the constraint spec, the "
            f"max_changes={max_changes} budget or changed a row that was not attacked; they were "
            "replaced by the clean rows (counted as not broken).",
            EvaluationWarning,
            stacklevel=3,
        )
        x_adv = torch.where(ok[:, None], x_adv, x)
    res = call.finish(
        x_adv, attack=attack, eps=None, norm=None, clean_pred=tc.clean_pred, point_queries=point_queries
    )
    success = res.success & tc.attacked & ok
    valid = res.valid & ok
    l0 = count_changes(x, res.x_adv)
    mal = call.y == malicious_class
    n_mal, n_att, n_succ = int(mal.sum()), int(tc.attacked.sum()), int(success.sum())
    succ_l0 = l0[success]
    hist = {str(k): int((succ_l0 == k).sum()) for k in range(1, max_changes + 1)}
    changed_cols = ((res.x_adv - x).abs() > TOL)[success].sum(0)
    used = {spec.feature_names[j]: int(c) for j, c in enumerate(changed_cols.tolist()) if c}
    att_q = point_queries[tc.attacked].double()

    def rate(num: int, den: int) -> float | None:
        return round(num / den, 6) if den else None

    summary: dict[str, Any] = {
        "constraints": spec.name or None,
        "max_changes": max_changes,
        "malicious_class": malicious_class,
        "malicious_rows": n_mal,
        "attacked_rows": n_att,
        "successes": n_succ,
        "success_rate_malicious": rate(n_succ, n_att),
        "recall_before": rate(int((tc.clean_pred[mal] == malicious_class).sum()), n_mal),
        "recall_after": rate(int((res.adv_pred[mal] == malicious_class).sum()), n_mal),
        "spec_violations": n_bad,
        "median_changes": float(succ_l0.double().median()) if n_succ else None,
        "changes_histogram": hist,
        "features_changed": used,
        "median_queries_per_attacked_row": float(att_q.median()) if n_att else None,
        **(extra or {}),
    }
    return dataclasses.replace(res, success=success, valid=valid, extra=summary)


def rank_in_group(group: Tensor, score: Tensor) -> Tensor:
    """(n,) rank of each item among the items of its group by score, descending (0 = best)."""
    n = group.numel()
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    g = group[order]
    pos = torch.arange(n, device=group.device)
    start = torch.ones(n, dtype=torch.bool, device=group.device)
    start[1:] = g[1:] != g[:-1]
    run_start = torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), 0).values
    rank = torch.empty_like(pos)
    rank[order] = pos - run_start
    return rank


def _options(spec: ConstraintSpec, grid: int, like: Tensor) -> Tensor:
    """(K, D) single-move options: NaN = keep, a number = set; one per (feature, value), plus
    one per one-hot group position (the whole group is set)."""
    d = spec.n_features
    grouped = {n for g in spec.groups for n in g}
    rows: list[Tensor] = []
    for j, f in enumerate(spec.features):
        if not f.mutable or f.name in grouped:
            continue
        if f.values is not None:
            values = list(f.values)
        elif f.min is not None and f.max is not None:
            lin = torch.linspace(f.min, f.max, grid, dtype=torch.float64)
            values = sorted({float(v) for v in (lin.round() if f.integer else lin)})
        else:  # unbounded continuous feature: nothing finite to search over
            continue
        for v in values:
            r = torch.full((d,), math.nan, dtype=torch.float64)
            r[j] = v
            rows.append(r)
    for g in spec.groups:
        idx = [spec.feature_names.index(n) for n in g]
        if not all(spec.features[j].mutable for j in idx):
            continue
        for k in range(len(idx)):
            r = torch.full((d,), math.nan, dtype=torch.float64)
            r[idx] = 0.0
            r[idx[k]] = 1.0
            rows.append(r)
    if not rows:
        return torch.empty((0, d), dtype=like.dtype, device=like.device)
    return torch.stack(rows).to(dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------------------------
# The attack
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class TabularSearch:
    """Query-only evasion of a tabular classifier by greedy or beam search over allowed values.

    Only rows whose true label is ``malicious_class`` and that the model detects are attacked,
    and only toward the benign class (``target``; by default the other class of a binary
    model). Each round tries, for every active row and every row kept in its beam, *all*
    single-feature moves the spec allows (one value of one mutable feature, or one position of
    a one-hot group), scores every candidate in one batched query, and keeps the
    ``beam_width`` best by the margin of the target class (score of the target minus the best
    other score). A row stops as soon as a candidate is classified as the target, so the
    number of changed features is (greedily) minimal, and never exceeds ``max_changes``.
    Models need scores (``predict_proba`` or logits): tree ensembles work, label-only models
    do not. Every scored row is counted; benign rows are scored once and returned unchanged.

    Args:
        max_changes: L0 budget: most features changed per row (>= 1); also the number of rounds.
        beam_width: rows kept per attacked row between rounds (1 = greedy).
        max_queries: most model queries per attacked row (its clean score included), or None.
            When a round would exceed it, a random subset of that row's candidates is scored.
        malicious_class: the label of the rows to attack.
        grid: values tried for a feature without a value set (evenly spaced in [min, max]).
        batch_size: most rows per model call (a round's query is split into such chunks).
        seed: seeds the random subset under ``max_queries``; None draws fresh entropy. The draw
            for a candidate depends only on the seed, its row and the candidate itself, so
            results do not depend on which other rows are attacked in the same call.

    Returns (from the call) an EvasionResult: ``x_adv`` holds the successful rows and the
    clean row elsewhere; ``extra`` has the success rate over detected malicious rows, the
    malicious-class recall before and after the attack, the L0 histogram, the features used
    and the median queries per attacked row (use ``count_changes(x, x_adv)`` for per-row L0).

    Reference: greedy best-first search in the transformation graph of Kulynych, Hayes,
    Samarin and Troncoso, "Evading classifiers in discrete domains with provable optimality
    guarantees" (2018, arXiv:1810.10939); constrained feature space as in Simonetto et al.,
    IJCAI 2022 (arXiv:2112.01156).

    Example:
        spec = ConstraintSpec.from_yaml(PHISHING_CONSTRAINTS)
        res = TabularSearch(max_changes=3)(as_model(rf, bounds=(-1, 1)), x, y, constraints=spec)
        res.extra["success_rate_malicious"], res.extra["recall_after"]
    """

    max_changes: int = 3
    beam_width: int = 1
    max_queries: int | None = None
    malicious_class: int = 1
    grid: int = 5
    batch_size: int = 65536
    seed: int | None = 0

    needs_gradients: ClassVar[bool] = False

    def __post_init__(self) -> None:
        owner = "TabularSearch"
        check_range("max_changes", self.max_changes, owner=owner, low=1, integer=True,
                    fix="Give the most features the attacker may change per row, e.g. max_changes=3.")
        check_range("beam_width", self.beam_width, owner=owner, low=1, integer=True,
                    fix="Use beam_width=1 for greedy search.")
        if self.max_queries is not None:
            check_range("max_queries", self.max_queries, owner=owner, low=1, integer=True,
                        fix="Give a per-row query budget >= 1, or None for no limit.")
        check_range("malicious_class", self.malicious_class, owner=owner, low=0, integer=True)
        check_range("grid", self.grid, owner=owner, low=2, integer=True)
        check_range("batch_size", self.batch_size, owner=owner, low=1, integer=True)

    def __call__(
        self,
        model: ModelLike,
        x: Tensor,
        y: Tensor,
        *,
        constraints: ConstraintSpec,
        target: Tensor | None = None,
    ) -> EvasionResult:
        """Attack the detected malicious rows of x; see the class docstring.

        Raises:
            ConfigError: constraints is not a ConstraintSpec, or target is missing for more
                than two classes.
            DataError: x breaks the spec's value rules (the message names feature, value, row).
            ModelCapabilityError: the model returns labels only.
            InputError: x or y malformed.
        """
        tc = start_tabular(
            model, x, y, target, constraints=constraints, malicious_class=self.malicious_class,
            owner="TabularSearch", gradients=False, batch_size=self.batch_size,
        )
        call = tc.call
        m = call.model
        idx = tc.attacked.nonzero().squeeze(1)
        point_queries = torch.ones(call.x.shape[0], dtype=torch.int64, device=call.x.device)
        x_adv = call.x.clone()
        if idx.numel():
            with eval_mode(m) if isinstance(m, TorchModel) else nullcontext():
                best, flipped, used = self._search(m, tc.spec, call.x[idx], _target(call)[idx])
            x_adv[idx[flipped]] = best[flipped]
            point_queries[idx] += used
        return finish_tabular(
            tc, x_adv, attack=self, max_changes=self.max_changes, malicious_class=self.malicious_class,
            point_queries=point_queries, extra={"beam_width": self.beam_width},
        )

    def _search(
        self, m: TorchModel | CallableModel, spec: ConstraintSpec, x0: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Search from clean rows x0 (A, D) toward targets t (A,).

        Returns (best rows (A, D), flipped (A,) bool, queries used per row (A,) int64).
        """
        a, d = x0.shape
        dev = x0.device
        options = _options(spec, self.grid, x0)
        k = options.shape[0]
        best = x0.clone()
        flipped = torch.zeros(a, dtype=torch.bool, device=dev)
        used = torch.zeros(a, dtype=torch.int64, device=dev)
        if k == 0:
            return best, flipped, used
        row_keys = point_keys(x0, t, self.seed)
        weights = torch.rand(d, generator=make_generator(0, dev), device=dev, dtype=torch.float64) + 1.0
        keep_opt = torch.isnan(options)
        members, owner = x0, torch.arange(a, device=dev)
        for rnd in range(self.max_changes):
            if members.shape[0] == 0:
                break
            cand = torch.where(keep_opt[None], members[:, None, :], options[None]).reshape(-1, d)
            crow = owner.repeat_interleave(k)
            moved = ((cand - members.repeat_interleave(k, 0)).abs() > TOL).any(1)
            moved &= count_changes(x0[crow], cand) <= self.max_changes
            cand, crow = cand[moved], crow[moved]
            ok = spec.check(x0[crow], cand)
            cand, crow = cand[ok], crow[ok]
            if self.beam_width > 1 and cand.shape[0]:
                # Beams reach the same row by different orders of moves: score each row once.
                hid = torch.unique((cand.double() * weights).sum(1), return_inverse=True)[1]
                key = crow * (int(hid.max()) + 1) + hid
                pos = torch.arange(cand.shape[0], device=dev, dtype=torch.float64)
                first = rank_in_group(key, -pos) == 0
                cand, crow = cand[first], crow[first]
            if self.max_queries is not None and cand.shape[0]:
                room = self.max_queries - 1 - used  # the clean score was one query
                u = point_uniform(point_keys(cand, row_keys[crow], 0), rnd, (), dtype=torch.float64)
                pick = rank_in_group(crow, u) < room[crow]
                cand, crow = cand[pick], crow[pick]
            if cand.shape[0] == 0:
                break
            s = scores_in_batches(m, cand, self.batch_size)
            used += torch.bincount(crow, minlength=a)
            marg = margin_to(s, t[crow])
            hit = s.argmax(1) == t[crow]
            # Prefer hits, then the higher margin.
            rank = rank_in_group(crow, marg + hit.to(marg.dtype) * 1e6)
            top = rank == 0
            won = top & hit
            best[crow[won]] = cand[won]
            flipped[crow[won]] = True
            beam = (rank < self.beam_width) & ~flipped[crow]
            members, owner = cand[beam], crow[beam]
        return best, flipped, used


def _target(call: AttackCall) -> Tensor:
    if call.target is None:  # start_tabular always sets it
        raise ConfigError("internal: tabular call without a target")
    return call.target
