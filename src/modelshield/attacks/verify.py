"""Re-verification of attack outputs: query the model again, check budget and bounds per point."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from typing import Any

import torch
from torch import Tensor

from modelshield._checks import check_inputs, check_labels, exception_head
from modelshield._typing import Norm
from modelshield.attacks.ops import labels_adversarial, lp_norms
from modelshield.attacks.results import EvasionResult
from modelshield.errors import EvaluationWarning, InputError, ModelCapabilityError
from modelshield.models import CallableModel, TorchModel, eval_mode
from modelshield.models.outputs import labels_and_errors

__all__ = [
    "CHECK_ROWS",
    "TOL",
    "VOTES",
    "VOTE_ROUNDS",
    "AttackCall",
    "attack_params",
    "check_batch",
    "probe_forward",
    "start_call",
    "verification_queries",
    "verify_evasion",
]

TOL = 1e-6
"""Slack for float round-off when checking the eps-ball and the bounds."""


def attack_params(attack: object) -> dict[str, Any]:
    """The attack's config as a JSON-safe dict (its dataclass fields)."""
    if dataclasses.is_dataclass(attack) and not isinstance(attack, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(attack):
            v = getattr(attack, f.name)
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
                out[f.name] = {"attack": type(v).__name__, **attack_params(v)}
            elif isinstance(v, tuple | list):
                out[f.name] = [
                    {"attack": type(m).__name__, **attack_params(m)}
                    if dataclasses.is_dataclass(m) else m
                    for m in v
                ]
            else:
                out[f.name] = v
        return out
    return {}


def check_batch(
    model: TorchModel | CallableModel,
    x: object,
    y: object,
    *,
    owner: str,
    target: object = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate an attack's (x, y, target) against the model; return them as tensors.

    For a torch model, x must have the dtype of the model's parameters, and the first call
    runs one counted probe row (in eval mode) that reads the true number of classes and turns
    a shape mismatch into an InputError.
    """
    x_t = check_inputs(x, bounds=model.bounds, owner=owner)
    if isinstance(model, TorchModel):
        model.check_device(x_t)
        want = model.dtype
        if want is not None and x_t.dtype != want:
            raise InputError(
                f"{owner}: x must have the model's dtype {want}; got dtype {x_t.dtype}. Convert the "
                f"inputs with x.to({want}) (or the model with model.to({x_t.dtype})); results follow "
                "x's dtype."
            )
        if not model.n_classes_confirmed:
            probe_forward(model, x_t, owner=owner)
    n_classes = model.n_classes
    y_t = check_labels(y, n=x_t.shape[0], n_classes=n_classes, owner=owner, device=x_t.device)
    t_t = None
    if target is not None:
        t_t = check_labels(
            target, n=x_t.shape[0], n_classes=n_classes, owner=owner, name="target",
            device=x_t.device,
        )
    return x_t, y_t, t_t


def probe_forward(model: TorchModel, x: Tensor, *, owner: str) -> None:
    """One counted forward row in eval mode: reveals the output width, or a shape mismatch."""
    try:
        with torch.no_grad(), eval_mode(model):
            model.scores(x[:1])
    except RuntimeError as exc:
        raise InputError(
            f"{owner}: x must have the input shape the model expects; got x of shape "
            f"{tuple(x.shape)} (one input: {tuple(x.shape[1:])}), on which the model failed: "
            f"{exception_head(exc)}. Reshape the inputs to the model's input shape (e.g. "
            "x.view(N, 1, 28, 28) for a CNN on 28x28 images), or check that the data set matches the model."
        ) from exc


VOTES = 9
"""Repeated queries per point when a model answers the same input differently (majority vote)."""
VOTE_ROUNDS = 33
"""Up to this many rounds of VOTES queries for a point whose vote is still close."""


def _same_answers(a: Tensor, b: Tensor) -> bool:
    """Whether two answers to the same rows agree (scores up to float round-off)."""
    if a.shape != b.shape:
        return False
    la, ea = labels_and_errors(a)
    lb, eb = labels_and_errors(b)
    if not torch.equal(ea, eb) or not torch.equal(la[~ea], lb[~eb]):
        return False
    if a.dim() == 1 or not a.is_floating_point():
        return True
    fa, fb = a[~ea].double(), b[~eb].double()
    if fa.numel() == 0:
        return True
    rel = max(1e-3, 16 * torch.finfo(a.dtype).eps)
    scale = max(1.0, float(fa.abs().max()))
    return bool(((fa - fb).abs() <= rel * scale).all())


CHECK_ROWS = 32
"""Clean rows re-asked, with every claimed success, in the second batch of the determinism check."""


def _check_rows(n: int) -> int:
    """Clean rows re-asked in the determinism check: CHECK_ROWS, at most n - 1, at least 1 (n - 1:
    the re-asked batch must differ from x even when nothing succeeded)."""
    return min(CHECK_ROWS, max(n - 1, 1))


def verification_queries(n: int, successes: int) -> int:
    """Forward queries ``verify_evasion`` spends on a deterministic model with enough budget.

    The clean batch and the returned batch once each, then the claimed successes with the
    first ``CHECK_ROWS`` clean rows (at most n - 1, at least 1) asked again.
    """
    return 2 * n + successes + _check_rows(n)


def _recheck(model: TorchModel | CallableModel, x: Tensor, x_adv: Tensor, first: Tensor, adv: Tensor,
             claimed: Tensor) -> str | None:
    """What differs when the model is asked again; None when it answers the same.

    Every claimed success and the first clean rows are asked again together, in one batch whose
    composition differs from the verification batches; answers that differ mean the model is not
    deterministic. That batch is then asked once more: ``"random"`` if the repeat differs too
    (noise, dropout at inference: also caught when only adversarial inputs trigger it), else
    ``"batch"`` (the batch composition changes the answers, e.g. batch statistics in forward).
    """
    k = _check_rows(int(x.shape[0]))
    idx = claimed.nonzero().squeeze(1)
    batch = torch.cat([x_adv[idx], x[:k]])
    again = model.outputs(batch)
    if _same_answers(torch.cat([adv[idx], first[:k]]), again):
        return None
    return "batch" if _same_answers(again, model.outputs(batch)) else "random"


def _rowwise(model: TorchModel | CallableModel, x: Tensor, *, owner: str) -> tuple[Tensor, Tensor]:
    """Labels and model errors with every row asked on its own (one input per query)."""
    parts: list[tuple[Tensor, Tensor]] = []
    for i in range(int(x.shape[0])):
        try:
            parts.append(labels_and_errors(model.outputs(x[i:i + 1])))
        except (RuntimeError, ValueError) as exc:
            raise ModelCapabilityError(
                f"{owner}: the model's answers depend on the other inputs of the batch, and it fails "
                f"on a single input ({type(exc).__name__}: {str(exc)[:120]}), so no result can be "
                "verified. Make forward() independent of the batch (e.g. BatchNorm in eval mode, "
                "running statistics instead of batch statistics)."
            ) from exc
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _votes(
    model: TorchModel | CallableModel,
    x: Tensor,
    k: int,
    *,
    rounds: int,
) -> tuple[Tensor, Tensor]:
    """(N, C) label counts and (N,) model-error counts over repeated queries of x.

    Every row gets k queries; rows whose vote is still close get k more, up to ``rounds``
    times; a row is settled once its two most frequent answers (model errors count as one
    answer) differ by more than three standard deviations of a fair coin.
    """
    c = model.n_classes
    counts = torch.zeros(int(x.shape[0]), c + 1, dtype=torch.long, device=x.device)
    todo = torch.arange(int(x.shape[0]), device=x.device)
    for _ in range(rounds):
        for _ in range(k):
            labels, err = labels_and_errors(model.outputs(x[todo]))
            lab = torch.where(err, torch.full_like(labels, c), labels.clamp(0, c))
            counts[todo] += torch.nn.functional.one_hot(lab, c + 1)
        best = counts[todo].topk(2, dim=1).values
        total = counts[todo].sum(1).double()
        todo = todo[(best[:, 0] - best[:, 1]).double() <= 3 * total.sqrt()]
        if todo.numel() == 0:
            break
    return counts[:, :-1], counts[:, -1]


def _plurality(counts: Tensor, errors: Tensor) -> tuple[Tensor, Tensor]:
    """(N,) most frequent label and (N,) bool: model errors outnumber every label."""
    top = counts.max(1)
    return top.indices, errors > top.values


def verify_evasion(
    model: TorchModel | CallableModel,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    *,
    attack: object,
    eps: float | None,
    norm: Norm | None,
    target: Tensor | None = None,
    clean_pred: Tensor | None = None,
    queries_start: tuple[int, int],
    started: float,
    extra: dict[str, Any] | None = None,
    point_queries: Tensor | None = None,
    votes: int = VOTES,
) -> EvasionResult:
    """Build an EvasionResult whose every claim is checked.

    The returned inputs are checked point by point (finite, inside the bounds, within eps in
    the attack's norm, tolerance 1e-6); a failing row is replaced by its clean input and an
    EvaluationWarning is issued. The model is then queried again (torch modules in eval mode)
    and success is read from those fresh answers, never from the attack's own bookkeeping:

    - the clean batch and the returned batch are asked once each; then every claimed success
      and the first ``CHECK_ROWS`` clean rows are asked again together, in a batch of another
      composition. When those answers differ the model is not deterministic
      (``extra["stochastic"] = True``, with an EvaluationWarning).
      Randomised answers (noise, dropout at inference) are then read as the most frequent
      label over ``votes`` queries of each clean and each returned input, with up to
      ``VOTE_ROUNDS`` rounds for inputs whose vote is close (expectation over the randomness,
      as randomised defences are evaluated; ``extra["votes"]``, ``extra["max_votes"]``);
      answers that depend on the batch are read one input per query. ``clean_pred`` from the
      attack is not used for this.
    - a row on which the model answers NaN or inf is a model error, never a success: its
      returned input is replaced by the clean one (counted as not broken), it is marked in
      ``model_errors`` and an EvaluationWarning says how many there were. A clean input with a
      non-finite answer gets the label -1 (not correctly classified).

    The deterministic case costs two forward passes over the batch plus one over the claimed
    successes and ``CHECK_ROWS`` clean rows. When the model's query budget cannot pay for the
    second query, the check is skipped (``extra["determinism_checked"] = False``).
    """
    owner = type(attack).__name__
    if x_adv.shape != x.shape:
        raise InputError(
            f"verify_evasion: x_adv has shape {tuple(x_adv.shape)} but x has {tuple(x.shape)}."
        )
    x_adv = x_adv.detach().to(dtype=x.dtype)
    lo, hi = model.bounds
    flat = x_adv.flatten(1)
    valid = torch.isfinite(flat).all(1) & (flat >= lo - TOL).all(1) & (flat <= hi + TOL).all(1)
    norms = lp_norms(x_adv - x, norm or "inf")
    if eps is not None:
        valid &= norms <= eps + TOL
    if not bool(valid.all()):
        bad = int((~valid).sum())
        warnings.warn(
            f"{owner}: {bad} returned inputs were outside the eps-ball or the "
            "bounds and were replaced by the clean inputs (counted as not broken).",
            EvaluationWarning,
            stacklevel=3,
        )
        x_adv = torch.where(valid.view(-1, *([1] * (x.dim() - 1))), x_adv, x)
        norms = lp_norms(x_adv - x, norm or "inf")
    info: dict[str, Any] = {}
    n = int(x.shape[0])
    mode = eval_mode(model) if isinstance(model, TorchModel) else contextlib.nullcontext()
    with torch.no_grad(), mode:
        left = model.queries.remaining
        kind: str | None = None
        if left is not None and left < 2 * n:  # the attack kept only n queries for verification
            info["determinism_checked"] = False
            if clean_pred is None:
                clean_pred, clean_err = model.predict_with_errors(x)
            else:
                clean_err = torch.zeros_like(valid)
            adv_pred, adv_err = model.predict_with_errors(x_adv)
        else:
            first, adv = model.outputs(x), model.outputs(x_adv)
            clean_pred, clean_err = labels_and_errors(first)
            adv_pred, adv_err = labels_and_errors(adv)
            claimed = valid & ~adv_err & labels_adversarial(adv_pred, y, target)
            left = model.queries.remaining
            # the recheck asks the claimed successes and the check rows, then once more if they differ
            if left is not None and left < 2 * (int(claimed.sum()) + _check_rows(n)):
                info["determinism_checked"] = False
            else:
                kind = _recheck(model, x, x_adv, first, adv, claimed)
            if kind == "batch":
                clean_pred, clean_err = _rowwise(model, x, owner=owner)
                adv_pred, adv_err = _rowwise(model, x_adv, owner=owner)
            elif kind == "random":
                left = model.queries.remaining
                k = votes if left is None else max(1, min(votes, left // (2 * n)))
                rounds = VOTE_ROUNDS if left is None else 1
                clean_pred, clean_err = _plurality(*_votes(model, x, k, rounds=rounds))
                adv_pred, adv_err = _plurality(*_votes(model, x_adv, k, rounds=rounds))
                info["votes"] = k
                info["max_votes"] = k * rounds
    clean_pred = torch.where(clean_err, torch.full_like(clean_pred, -1), clean_pred)
    errors = adv_err & valid
    if bool(errors.any()):
        x_adv = torch.where(errors.view(-1, *([1] * (x.dim() - 1))), x, x_adv)
        adv_pred = torch.where(errors, clean_pred, adv_pred)
        norms = lp_norms(x_adv - x, norm or "inf")
    model_errors = errors | clean_err
    if bool(model_errors.any()):
        warnings.warn(
            f"{owner}: the model returned NaN or inf on {int(errors.sum())} returned inputs and "
            f"{int(clean_err.sum())} clean inputs; these are model errors, counted as not broken "
            "(the clean input is kept), never as successes. Check the model on such inputs.",
            EvaluationWarning,
            stacklevel=3,
        )
    if kind is not None:
        how = ("read one input per query" if kind == "batch"
               else f"read by a majority of {info['votes']} queries per input")
        warnings.warn(
            f"{owner}: the model answered the same inputs differently "
            f"({'the batch composition changes its answers' if kind == 'batch' else 'randomised outputs'}); "
            f"clean and adversarial labels were {how}. Evaluate randomised defences with "
            "expectation over transformation (EOT) and make inference deterministic where possible.",
            EvaluationWarning,
            stacklevel=3,
        )
        info.update(stochastic=True, nondeterminism=kind)
    success = valid & ~errors & labels_adversarial(adv_pred, y, target)
    fwd, bwd = model.queries.snapshot()
    return EvasionResult(
        attack=owner,
        params=attack_params(attack),
        x_adv=x_adv,
        y=y,
        target=target,
        clean_pred=clean_pred,
        adv_pred=adv_pred,
        success=success,
        valid=valid,
        norms=norms,
        norm=norm,
        eps=eps,
        queries_forward=fwd - queries_start[0],
        queries_backward=bwd - queries_start[1],
        time_s=time.perf_counter() - started,
        extra={**(extra or {}), **info},
        point_queries=point_queries,
        model_errors=model_errors,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class AttackCall:
    """A validated attack call: the adapted model, checked tensors, and the start marks."""

    model: TorchModel | CallableModel
    x: Tensor
    y: Tensor
    target: Tensor | None
    queries_start: tuple[int, int]
    started: float

    @property
    def gradient_model(self) -> TorchModel:
        if not isinstance(self.model, TorchModel):  # start_call(gradients=True) guarantees it
            raise TypeError("internal: gradient model requested from a black-box call")
        return self.model

    def finish(
        self,
        x_adv: Tensor,
        *,
        attack: object,
        eps: float | None,
        norm: Norm | None,
        clean_pred: Tensor | None = None,
        extra: dict[str, Any] | None = None,
        point_queries: Tensor | None = None,
    ) -> EvasionResult:
        """Verify x_adv and build the result (see verify_evasion)."""
        return verify_evasion(
            self.model, self.x, self.y, x_adv, attack=attack, eps=eps, norm=norm,
            target=self.target, clean_pred=clean_pred, queries_start=self.queries_start,
            started=self.started, extra=extra, point_queries=point_queries,
        )


def start_call(
    model: object, x: object, y: object, target: object, *, owner: str, gradients: bool
) -> AttackCall:
    """Adapt the model, validate the batch and note the query counts and start time."""
    from modelshield.models import as_gradient_model, as_model

    started = time.perf_counter()
    m = as_gradient_model(model, caller=owner) if gradients else as_model(model)
    marks = m.queries.snapshot()
    x_t, y_t, t_t = check_batch(m, x, y, owner=owner, target=target)
    return AttackCall(m, x_t, y_t, t_t, marks, started)
