"""Feature constraints for realistic tabular evasion: the spec, its checks and its repair.

A :class:`ConstraintSpec` says, per feature, which values an adversarial row may take and how
it may differ from the clean row (immutable, direction of change, reachable values), plus
one-hot groups and named relations between features. ``check`` verifies rows point by point,
``repair`` snaps a continuous candidate back to the nearest valid row.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import torch
from torch import Tensor

from modelshield._checks import check_choice
from modelshield._io import write_atomic
from modelshield.errors import ConfigError, DataError, InputError

__all__ = [
    "DIRECTIONS",
    "ConstraintSpec",
    "Direction",
    "FeatureConstraint",
    "Relation",
    "count_changes",
]

Direction: TypeAlias = Literal["any", "increase", "decrease"]
DIRECTIONS: tuple[Direction, ...] = ("any", "increase", "decrease")

TOL = 1e-6
"""Slack when comparing feature values (float32 round-off of small integers is exact)."""

_FEATURE_KEYS = ("values", "integer", "min", "max", "mutable", "direction", "reachable", "note")
_SPEC_KEYS = ("name", "features", "groups", "relations")


def count_changes(x_clean: Tensor, x_adv: Tensor) -> Tensor:
    """(N,) int64 number of features (L0) where x_adv differs from x_clean by more than 1e-6."""
    return ((x_adv - x_clean).abs() > TOL).sum(dim=1)


def _suggest(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(owner: str, what: str, names: Sequence[str], valid: Sequence[str]) -> ConfigError:
    listed = ", ".join(f"{n!r}{_suggest(n, valid)}" for n in names)
    return ConfigError(
        f"{owner}: {what} must be known feature names; got unknown {listed}. "
        f"Valid names: {', '.join(valid)}."
    )


def _num(v: float) -> int | float:
    """A JSON/YAML-friendly number: int when integral."""
    return int(v) if float(v).is_integer() else float(v)


# --------------------------------------------------------------------------------------------
# Relations
# --------------------------------------------------------------------------------------------

_OPS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "==": lambda a, v: (a - v).abs() <= TOL,
    "!=": lambda a, v: (a - v).abs() > TOL,
    ">=": lambda a, v: a >= v - TOL,
    "<=": lambda a, v: a <= v + TOL,
    ">": lambda a, v: operator.gt(a, v + TOL),
    "<": lambda a, v: operator.lt(a, v - TOL),
}
_CLAUSE = re.compile(
    r"^\s*([A-Za-z_][\w.\-]*)\s*(==|!=|>=|<=|>|<)\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*$"
)
_IF_THEN = re.compile(r"^\s*if\s+(.+?)\s+then\s+(.+?)\s*$", re.IGNORECASE)


def _clause(text: str, expr: str, names: Sequence[str]) -> Callable[[Tensor], Tensor]:
    m = _CLAUSE.match(text)
    if m is None:
        raise ConfigError(
            f"Relation: 'expr' must be '<feature> <op> <number>' or 'if <clause> then <clause>' "
            f"with op one of ==, !=, >=, <=, >, <; got {expr!r}. "
            "Example: 'if having_IP_Address == 1 then URL_Length >= 0'."
        )
    feat, op, value = m.group(1), m.group(2), float(m.group(3))
    if feat not in names:
        raise _unknown("Relation", f"the features in {expr!r}", [feat], names)
    j, fn = list(names).index(feat), _OPS[op]
    return lambda x: fn(x[:, j], value)


@dataclass(frozen=True, kw_only=True, slots=True)
class Relation:
    """A named rule between features that every adversarial row must satisfy.

    Attributes:
        name: a short name used in violation messages.
        fn: maps rows ``(N, D)`` to an ``(N,)`` bool mask (True where the rule holds).
        expr: the textual rule it was parsed from (``Relation.parse``), or None for a Python
            callable; only relations with an ``expr`` can be written to YAML/JSON.
    """

    name: str
    fn: Callable[[Tensor], Tensor] = field(compare=False)
    expr: str | None = None

    @classmethod
    def parse(cls, expr: str, feature_names: Sequence[str], *, name: str | None = None) -> Relation:
        """Build a relation from ``'<feat> <op> <num>'`` or ``'if <clause> then <clause>'``.

        Raises:
            ConfigError: the text does not parse, or names an unknown feature.

        Example:
            Relation.parse("if having_IP_Address == 1 then URL_Length >= 0", names)
        """
        if not isinstance(expr, str):
            raise ConfigError(f"Relation: 'expr' must be a string; got {expr!r}.")
        m = _IF_THEN.match(expr)
        if m is not None:
            cond = _clause(m.group(1), expr, feature_names)
            then = _clause(m.group(2), expr, feature_names)
            fn: Callable[[Tensor], Tensor] = lambda x: ~cond(x) | then(x)  # noqa: E731
        else:
            fn = _clause(expr, expr, feature_names)
        return cls(name=name or expr.strip(), fn=fn, expr=expr.strip())


# --------------------------------------------------------------------------------------------
# Per-feature constraint
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class FeatureConstraint:
    """What an attacker may do to one feature.

    Attributes:
        name: the feature's name (a column of the data).
        values: the allowed value set (sorted), or None for a continuous feature.
        integer: values must be integers.
        min, max: bounds (inclusive); None means unbounded, or the value set's extremes.
        mutable: False means the adversarial value must equal the clean value.
        direction: ``"any"``, ``"increase"`` (adv >= clean) or ``"decrease"`` (adv <= clean).
        reachable: values a *changed* feature may take (subset of ``values``), or None for any
            allowed value; e.g. a state the attacker may keep but cannot newly acquire.
        note: the rationale, for humans (kept in YAML round-trips).
    """

    name: str
    values: tuple[float, ...] | None = None
    integer: bool = False
    min: float | None = None
    max: float | None = None
    mutable: bool = True
    direction: Direction = "any"
    reachable: tuple[float, ...] | None = None
    note: str = ""

    def __post_init__(self) -> None:
        owner = f"FeatureConstraint({self.name!r})"
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"FeatureConstraint: 'name' must be a non-empty string; got {self.name!r}.")
        check_choice("direction", self.direction, DIRECTIONS, owner=owner)
        for flag in ("integer", "mutable"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{owner}: {flag!r} must be true or false; got {getattr(self, flag)!r}.")
        values = self._number_tuple("values", self.values, owner)
        reachable = self._number_tuple("reachable", self.reachable, owner)
        lo = self._bound("min", self.min, owner)
        hi = self._bound("max", self.max, owner)
        if values is not None:
            lo = min(values) if lo is None else lo
            hi = max(values) if hi is None else hi
            outside = [v for v in values if v < lo - TOL or v > hi + TOL]
            if outside:
                raise ConfigError(
                    f"{owner}: 'values' must lie within [min, max] = [{lo:g}, {hi:g}]; got "
                    f"{[_num(v) for v in outside]!r}. Widen the bounds or drop those values."
                )
            if self.integer and any(not v.is_integer() for v in values):
                raise ConfigError(
                    f"{owner}: 'values' must be integers when integer=true; got "
                    f"{[_num(v) for v in values]!r}."
                )
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"{owner}: 'min' must be <= 'max'; got min={lo!r}, max={hi!r}.")
        if reachable is not None and values is not None:
            extra = [v for v in reachable if not any(abs(v - w) <= TOL for w in values)]
            if extra:
                raise ConfigError(
                    f"{owner}: 'reachable' must be a subset of 'values' {[_num(v) for v in values]!r}; "
                    f"got {[_num(v) for v in extra]!r}. List only allowed values."
                )
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "reachable", reachable)
        object.__setattr__(self, "min", lo)
        object.__setattr__(self, "max", hi)

    @staticmethod
    def _number_tuple(what: str, seq: object, owner: str) -> tuple[float, ...] | None:
        if seq is None:
            return None
        if (
            not isinstance(seq, Sequence | set | frozenset)
            or isinstance(seq, str)
            or len(seq) == 0
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in seq
            )
        ):
            raise ConfigError(
                f"{owner}: {what!r} must be a non-empty list of finite numbers or null; got {seq!r}."
            )
        return tuple(sorted({float(v) for v in seq}))

    @staticmethod
    def _bound(what: str, v: object, owner: str) -> float | None:
        if v is None:
            return None
        if not isinstance(v, int | float) or isinstance(v, bool) or math.isnan(v):
            raise ConfigError(f"{owner}: {what!r} must be a number or null; got {v!r}.")
        return float(v)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-safe dict of the non-default fields (without the name)."""
        out: dict[str, Any] = {}
        if self.values is not None:
            out["values"] = [_num(v) for v in self.values]
        if self.integer:
            out["integer"] = True
        if self.min is not None:
            out["min"] = _num(self.min)
        if self.max is not None:
            out["max"] = _num(self.max)
        out["mutable"] = self.mutable
        if self.direction != "any":
            out["direction"] = self.direction
        if self.reachable is not None:
            out["reachable"] = [_num(v) for v in self.reachable]
        if self.note:
            out["note"] = self.note
        return out

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> FeatureConstraint:
        """Build from a dict with keys among values, integer, min, max, mutable, direction,
        reachable, note. Unknown keys raise ConfigError."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"ConstraintSpec: the entry of feature {name!r} must be a mapping; got {data!r}."
            )
        bad = [k for k in data if k not in _FEATURE_KEYS]
        if bad:
            listed = ", ".join(f"{k!r}{_suggest(str(k), _FEATURE_KEYS)}" for k in bad)
            raise ConfigError(
                f"ConstraintSpec: the keys of feature {name!r} must be among "
                f"{', '.join(_FEATURE_KEYS)}; got {listed}."
            )
        return cls(name=name, **dict(data))


# --------------------------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ConstraintSpec:
    """Constraints on every feature of a tabular data set, in column order.

    Attributes:
        features: one :class:`FeatureConstraint` per column, in the data's column order.
        groups: one-hot groups: tuples of feature names of which exactly one is 1 (others 0).
        relations: named :class:`Relation` rules every adversarial row must satisfy.
        name: a label for reports.

    A row ``x_adv`` is valid for its clean row ``x`` when every value is allowed (value set,
    integer, bounds), immutable features are unchanged, changes respect each feature's
    direction and reachable set, one-hot groups hold exactly one 1, and every relation holds.

    Reference: the feasibility notion follows Kulynych, Hayes, Samarin and Troncoso,
    "Evading classifiers in discrete domains with provable optimality guarantees" (2018,
    arXiv:1810.10939) and Simonetto, Dyrmishi, Ghamizi, Cordy and Le Traon, "A Unified
    Framework for Adversarial Attack and Defense in Constrained Feature Space", IJCAI 2022.

    Example:
        spec = ConstraintSpec.from_yaml("phishing_constraints.yaml")
        ok = spec.check(x, x_adv)        # (N,) bool
    """

    features: tuple[FeatureConstraint, ...]
    groups: tuple[tuple[str, ...], ...] = ()
    relations: tuple[Relation, ...] = ()
    name: str = ""
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        feats = tuple(self.features)
        if not feats or not all(isinstance(f, FeatureConstraint) for f in feats):
            raise ConfigError(
                "ConstraintSpec: 'features' must be a non-empty sequence of FeatureConstraint; "
                f"got {self.features!r}. Start from ConstraintSpec.infer(x_train, feature_names)."
            )
        names = [f.name for f in feats]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ConfigError(f"ConstraintSpec: feature names must be unique; got duplicates {dups!r}.")
        object.__setattr__(self, "features", feats)
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(names)})
        groups = tuple(tuple(g) for g in self.groups)
        seen: set[str] = set()
        for g in groups:
            unknown = [n for n in g if n not in self._index]
            if unknown:
                raise _unknown("ConstraintSpec", "one-hot group members", unknown, names)
            if len(g) < 2 or len(set(g)) != len(g):
                raise ConfigError(
                    "ConstraintSpec: a one-hot group must list at least two distinct features; "
                    f"got {list(g)!r}."
                )
            if seen & set(g):
                raise ConfigError(
                    f"ConstraintSpec: a feature may belong to one one-hot group only; got "
                    f"{sorted(seen & set(g))!r} in two groups."
                )
            seen |= set(g)
            for n in g:
                vals = feats[self._index[n]].values
                if vals is None or any(v not in (0.0, 1.0) for v in vals):
                    raise ConfigError(
                        f"ConstraintSpec: one-hot group member {n!r} must have values [0, 1]; got "
                        f"{vals!r}. Set values: [0, 1] for every member of the group."
                    )
        object.__setattr__(self, "groups", groups)
        rels = tuple(self.relations)
        if not all(isinstance(r, Relation) for r in rels):
            raise ConfigError(
                f"ConstraintSpec: 'relations' must hold Relation objects; got {self.relations!r}. "
                "Use Relation(name=..., fn=...) or Relation.parse(expr, feature_names)."
            )
        object.__setattr__(self, "relations", rels)

    # ---- construction -----------------------------------------------------------------------

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def n_features(self) -> int:
        return len(self.features)

    def __getitem__(self, name: str) -> FeatureConstraint:
        if name not in self._index:
            raise _unknown("ConstraintSpec", "feature names", [name], self.feature_names)
        return self.features[self._index[name]]

    @property
    def bounds(self) -> tuple[float, float]:
        """(lo, hi) over all features' bounds, for ``as_model(..., bounds=spec.bounds)``."""
        los = [f.min for f in self.features]
        his = [f.max for f in self.features]
        lo = min(v for v in los if v is not None) if any(v is not None for v in los) else -math.inf
        hi = max(v for v in his if v is not None) if any(v is not None for v in his) else math.inf
        return lo, hi

    @property
    def mutable_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.mutable)

    @classmethod
    def infer(
        cls, x_train: Tensor, feature_names: Sequence[str], *, max_categories: int = 10, name: str = ""
    ) -> ConstraintSpec:
        """A permissive starting spec from training data, to be edited.

        Per column: the values seen (when there are at most ``max_categories`` distinct ones),
        whether they are all integers, and the observed min and max. Every feature is mutable
        in any direction; there are no groups and no relations.

        Raises:
            InputError: x_train is not a finite 2-D float tensor matching feature_names.
        """
        if not isinstance(x_train, Tensor) or x_train.dim() != 2 or not x_train.is_floating_point():
            raise InputError(
                "ConstraintSpec.infer: x_train must be a 2-D float tensor (N, D); got "
                f"{type(x_train).__name__} {tuple(getattr(x_train, 'shape', ()))}."
            )
        names = [str(n) for n in feature_names]
        if len(names) != x_train.shape[1]:
            raise InputError(
                f"ConstraintSpec.infer: feature_names must have one name per column; got "
                f"{len(names)} names for {x_train.shape[1]} columns."
            )
        if not bool(torch.isfinite(x_train).all()):
            raise InputError("ConstraintSpec.infer: x_train has NaN or infinite values; impute them first.")
        feats = []
        for j, n in enumerate(names):
            col = x_train[:, j].double()
            uniq = torch.unique(col)
            integer = bool((col == col.round()).all())
            values = tuple(float(v) for v in uniq) if uniq.numel() <= max_categories else None
            feats.append(
                FeatureConstraint(
                    name=n, values=values, integer=integer, min=float(col.min()), max=float(col.max())
                )
            )
        return cls(features=tuple(feats), name=name)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, feature_names: Sequence[str] | None = None
    ) -> ConstraintSpec:
        """Build from ``{"name", "features": {name: {...}}, "groups": [[...]], "relations": [...]}``.

        Args:
            data: the dict (as read from YAML/JSON). ``relations`` entries are strings or
                ``{"name": ..., "expr": ...}``.
            feature_names: the data's columns; when given, the spec is put in this order and
                every column must have an entry.

        Raises:
            ConfigError: unknown keys or feature names (with a close-match suggestion and the
                list of valid names), missing features, or invalid entries.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"ConstraintSpec: the spec must be a mapping; got {type(data).__name__}.")
        bad = [k for k in data if k not in _SPEC_KEYS]
        if bad:
            raise ConfigError(
                f"ConstraintSpec: top-level keys must be among {', '.join(_SPEC_KEYS)}; got {bad!r}."
            )
        raw = data.get("features")
        if not isinstance(raw, Mapping) or not raw:
            raise ConfigError(
                "ConstraintSpec: 'features' must be a non-empty mapping of feature name to "
                f"constraint; got {raw!r}."
            )
        if feature_names is not None:
            valid = [str(n) for n in feature_names]
            unknown = [str(n) for n in raw if n not in valid]
            if unknown:
                raise _unknown("ConstraintSpec", "the features in the spec", unknown, valid)
            missing = [n for n in valid if n not in raw]
            if missing:
                raise ConfigError(
                    f"ConstraintSpec: every data column must have a constraint; got none for "
                    f"{missing!r}. Add them, or start from ConstraintSpec.infer(...).update(...)."
                )
            order = valid
        else:
            order = [str(n) for n in raw]
        feats = tuple(FeatureConstraint.from_dict(n, raw[n] or {}) for n in order)
        groups = data.get("groups") or ()
        if not isinstance(groups, Sequence) or not all(
            isinstance(g, Sequence) and not isinstance(g, str) for g in groups
        ):
            raise ConfigError(f"ConstraintSpec: 'groups' must be a list of lists of names; got {groups!r}.")
        relations = []
        for i, r in enumerate(data.get("relations") or ()):
            if isinstance(r, str):
                relations.append(Relation.parse(r, order))
            elif isinstance(r, Mapping) and isinstance(r.get("expr"), str):
                relations.append(Relation.parse(r["expr"], order, name=r.get("name")))
            else:
                raise ConfigError(
                    f"ConstraintSpec: relation {i} must be a string or a mapping with 'expr'; got {r!r}."
                )
        return cls(
            features=feats,
            groups=tuple(tuple(str(n) for n in g) for g in groups),
            relations=tuple(relations),
            name=str(data.get("name") or ""),
        )

    @classmethod
    def from_json(cls, path: str | Path, *, feature_names: Sequence[str] | None = None) -> ConstraintSpec:
        """Read a spec from a JSON file (see ``from_dict``)."""
        return cls.from_dict(json.loads(_read(path)), feature_names=feature_names)

    @classmethod
    def from_yaml(cls, path: str | Path, *, feature_names: Sequence[str] | None = None) -> ConstraintSpec:
        """Read a spec from a YAML file (see ``from_dict``)."""
        import yaml  # type: ignore[import-untyped]  # PyYAML ships no type stubs

        try:
            data = yaml.safe_load(_read(path))
        except yaml.YAMLError as exc:
            raise ConfigError(f"ConstraintSpec: {str(path)!r} is not valid YAML: {exc}.") from exc
        return cls.from_dict(data, feature_names=feature_names)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-safe dict; ``from_dict(spec.to_dict())`` rebuilds an equal spec.

        Raises:
            ConfigError: a relation is a Python callable without an ``expr``.
        """
        rels = []
        for r in self.relations:
            if r.expr is None:
                raise ConfigError(
                    f"ConstraintSpec: relation {r.name!r} is a Python callable and cannot be "
                    "serialised; got expr=None. Write it as Relation.parse('if A == 1 then B >= 0', names)."
                )
            rels.append(r.expr if r.name == r.expr else {"name": r.name, "expr": r.expr})
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        out["features"] = {f.name: f.to_dict() for f in self.features}
        out["groups"] = [list(g) for g in self.groups]
        out["relations"] = rels
        return out

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The spec as YAML text; also written (atomically, replacing it) to ``path`` when given."""
        import yaml

        text: str = yaml.safe_dump(self.to_dict(), sort_keys=False, width=100)
        if path is not None:
            write_atomic(path, text, force=True)
        return text

    def to_json(self, path: str | Path | None = None) -> str:
        """The spec as JSON text; also written (atomically, replacing it) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_atomic(path, text, force=True)
        return text

    def update(self, changes: Mapping[str, Mapping[str, Any]]) -> ConstraintSpec:
        """A copy with some features' fields replaced, e.g. ``{"age": {"mutable": False}}``.

        Raises:
            ConfigError: an unknown feature name or field.
        """
        unknown = [n for n in changes if n not in self._index]
        if unknown:
            raise _unknown("ConstraintSpec.update", "the features to update", unknown, self.feature_names)
        feats = list(self.features)
        for n, fields in changes.items():
            merged = {**self.features[self._index[n]].to_dict(), **dict(fields)}
            for k in ("values", "min", "max", "reachable"):  # explicit None clears the field
                if k in fields and fields[k] is None:
                    merged.pop(k)
            feats[self._index[n]] = FeatureConstraint.from_dict(n, merged)
        return dataclasses.replace(self, features=tuple(feats))

    # ---- checks -----------------------------------------------------------------------------

    def _check_width(self, x: Tensor, owner: str, what: str = "x") -> None:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.n_features:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(
                f"{owner}: {what} must have shape (N, {self.n_features}) to match the spec's "
                f"{self.n_features} features; got {shape}. Check the column order and the spec."
            )

    def _value_table(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(D, V) allowed values padded with NaN, and (D,) has-value-set mask, on x's device."""
        vmax = max((len(f.values) for f in self.features if f.values is not None), default=1)
        table = torch.full((self.n_features, vmax), math.nan, dtype=torch.float64)
        has = torch.zeros(self.n_features, dtype=torch.bool)
        for j, f in enumerate(self.features):
            if f.values is not None:
                table[j, : len(f.values)] = torch.tensor(f.values, dtype=torch.float64)
                has[j] = True
        return table.to(x.device), has.to(x.device)

    def bound_tensors(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(D,) lower and upper bounds (+-inf where unbounded) with like's device and dtype."""
        lo = [-math.inf if f.min is None else f.min for f in self.features]
        hi = [math.inf if f.max is None else f.max for f in self.features]
        return (torch.tensor(lo, dtype=like.dtype, device=like.device),
                torch.tensor(hi, dtype=like.dtype, device=like.device))

    def _value_masks(self, x: Tensor) -> dict[str, Tensor]:
        """Per-point (N, D) masks of violations of the value rules (set, integer, bounds)."""
        xd = x.double()
        table, has = self._value_table(x)
        in_set = ((xd[:, :, None] - table[None]).abs() <= TOL).any(-1) | ~has
        lo, hi = self.bound_tensors(xd)
        integer = torch.tensor([f.integer for f in self.features], device=x.device)
        return {
            "value": ~in_set,
            "integer": integer & ((xd - xd.round()).abs() > TOL),
            "bounds": (xd < lo - TOL) | (xd > hi + TOL) | ~torch.isfinite(xd),
        }

    def _relation_masks(self, x: Tensor) -> list[tuple[Relation, Tensor]]:
        out = []
        for r in self.relations:
            ok = r.fn(x)
            if not isinstance(ok, Tensor) or ok.shape != (x.shape[0],):
                raise ConfigError(
                    f"ConstraintSpec: relation {r.name!r} must return an (N,) bool tensor for N={x.shape[0]} "
                    f"rows; got {getattr(ok, 'shape', type(ok).__name__)}."
                )
            out.append((r, ~ok.bool()))
        return out

    def _group_masks(self, x: Tensor) -> list[tuple[tuple[str, ...], Tensor]]:
        out = []
        for g in self.groups:
            cols = x[:, [self._index[n] for n in g]].double()
            ok = ((cols - 1).abs() <= TOL).sum(1) == 1
            ok &= (((cols - 1).abs() <= TOL) | (cols.abs() <= TOL)).all(1)
            out.append((g, ~ok))
        return out

    def _change_masks(self, x_clean: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
        """Per-point (N, D) masks of violations of the change rules."""
        diff = x_adv.double() - x_clean.double()
        changed = diff.abs() > TOL
        mutable = torch.tensor([f.mutable for f in self.features], device=x_adv.device)
        inc = torch.tensor([f.direction == "increase" for f in self.features], device=x_adv.device)
        dec = torch.tensor([f.direction == "decrease" for f in self.features], device=x_adv.device)
        unreachable = torch.zeros_like(changed)
        for j, f in enumerate(self.features):
            if f.reachable is not None:
                reach = torch.tensor(f.reachable, dtype=torch.float64, device=x_adv.device)
                ok = ((x_adv[:, j, None].double() - reach[None]).abs() <= TOL).any(1)
                unreachable[:, j] = changed[:, j] & ~ok
        return {
            "immutable": changed & ~mutable,
            "direction": (inc & (diff < -TOL)) | (dec & (diff > TOL)),
            "reachable": unreachable,
        }

    def check(self, x_clean: Tensor, x_adv: Tensor) -> Tensor:
        """(N,) bool: each adversarial row satisfies every constraint relative to its clean row.

        Raises:
            InputError: shapes do not match the spec.
        """
        self._check_width(x_clean, "ConstraintSpec.check", "x_clean")
        self._check_width(x_adv, "ConstraintSpec.check", "x_adv")
        if x_clean.shape != x_adv.shape:
            raise InputError(
                f"ConstraintSpec.check: x_adv must have the shape of x_clean {tuple(x_clean.shape)}; "
                f"got {tuple(x_adv.shape)}."
            )
        bad = torch.zeros(x_adv.shape[0], dtype=torch.bool, device=x_adv.device)
        for m in (*self._value_masks(x_adv).values(), *self._change_masks(x_clean, x_adv).values()):
            bad |= m.any(1)
        for _, m in (*self._group_masks(x_adv), *self._relation_masks(x_adv)):
            bad |= m
        return ~bad

    def violations(self, x_clean: Tensor, x_adv: Tensor, *, limit: int | None = 100) -> list[str]:
        """Human-readable reasons why rows fail ``check``, one line per (row, rule), by row.

        Args:
            limit: at most this many lines (None for all).

        Returns:
            An empty list when every row is valid.
        """
        valid = self.check(x_clean, x_adv)
        lines: list[tuple[int, str]] = []
        names = self.feature_names
        masks = {**self._value_masks(x_adv), **self._change_masks(x_clean, x_adv)}
        why = {
            "value": "value {adv:g} is not in the allowed set {allowed}",
            "integer": "value {adv:g} is not an integer",
            "bounds": "value {adv:g} is outside [{lo}, {hi}]",
            "immutable": "is immutable but changed from {clean:g} to {adv:g}",
            "direction": "may only {dir} but changed from {clean:g} to {adv:g}",
            "reachable": "changed from {clean:g} to {adv:g}, which is not reachable (reachable: {reach})",
        }
        for rule, m in masks.items():
            for i, j in m.nonzero().tolist():
                f = self.features[j]
                text = why[rule].format(
                    adv=float(x_adv[i, j]), clean=float(x_clean[i, j]),
                    allowed=[_num(v) for v in f.values or ()], lo=f.min, hi=f.max, dir=f.direction,
                    reach=[_num(v) for v in f.reachable or ()],
                )
                lines.append((i, f"row {i}: feature {names[j]!r} {text}"))
        for g, m in self._group_masks(x_adv):
            for i in m.nonzero().flatten().tolist():
                lines.append((i, f"row {i}: one-hot group {list(g)!r} does not hold exactly one 1"))
        for r, m in self._relation_masks(x_adv):
            for i in m.nonzero().flatten().tolist():
                lines.append((i, f"row {i}: relation {r.name!r} does not hold"))
        if not lines and not bool(valid.all()):  # unreachable by construction; keep the contract
            lines = [(i, f"row {i}: invalid") for i in (~valid).nonzero().flatten().tolist()]
        lines.sort(key=lambda t: t[0])
        out = [s for _, s in lines]
        return out if limit is None else out[:limit]

    def validate_data(self, x: Tensor) -> None:
        """Check clean data against the value rules, groups and relations.

        Raises:
            InputError: x does not have one column per feature.
            DataError: a value is outside its allowed set, not an integer, out of bounds, a
                one-hot group is broken or a relation fails; the message names the feature (or
                rule), the value and the row.
        """
        self._check_width(x, "ConstraintSpec.validate_data")
        what = {"value": "in the allowed set", "integer": "an integer", "bounds": "within bounds"}
        for rule, m in self._value_masks(x).items():
            if bool(m.any()):
                i, j = (int(v) for v in m.nonzero()[0])
                f = self.features[j]
                allowed = [_num(v) for v in f.values] if f.values is not None else f"[{f.min}, {f.max}]"
                shown = f" {allowed}" if rule != "integer" else ""
                raise DataError(
                    f"ConstraintSpec: feature {f.name!r} must be {what[rule]}{shown}"
                    f"; got {float(x[i, j]):g} in row {i} ({int(m.any(1).sum())} rows affected). "
                    "Fix the data, or widen the spec (e.g. start from ConstraintSpec.infer on the data)."
                )
        for g, m in self._group_masks(x):
            if bool(m.any()):
                i = int(m.nonzero()[0, 0])
                raise DataError(
                    f"ConstraintSpec: one-hot group {list(g)!r} must hold exactly one 1 per row; got "
                    f"{x[i, [self._index[n] for n in g]].tolist()} in row {i}. Fix the data or the group."
                )
        for r, m in self._relation_masks(x):
            if bool(m.any()):
                i = int(m.nonzero()[0, 0])
                raise DataError(
                    f"ConstraintSpec: relation {r.name!r} must hold on the clean data; it fails in row {i} "
                    f"({int(m.sum())} rows). Fix the data or drop the relation."
                )

    # ---- repair -----------------------------------------------------------------------------

    def repair(
        self,
        x_clean: Tensor,
        x_candidate: Tensor,
        *,
        max_changes: int | None = None,
        priority: Tensor | None = None,
    ) -> Tensor:
        """Snap continuous candidates to the nearest valid rows; a new tensor, inputs untouched.

        Steps: clamp to bounds and to each feature's direction, round to the nearest allowed
        (and reachable) value, fix one-hot groups (argmax of the candidate), restore immutable
        features, keep at most ``max_changes`` changed features (those with the highest
        ``priority``, default ``|x_candidate - x_clean|``) and revert the rest. A row that still
        fails ``check`` (e.g. a relation) is replaced by its clean row, so the result always
        passes ``check`` when x_clean is valid. Ties are broken toward the clean value.

        Args:
            x_clean: (N, D) valid clean rows.
            x_candidate: (N, D) float candidates (any real values).
            max_changes: L0 budget per row, or None.
            priority: (N, D) scores; higher means keep that change first.

        Returns:
            (N, D) rows with x_clean's dtype and device.
        """
        self._check_width(x_clean, "ConstraintSpec.repair", "x_clean")
        self._check_width(x_candidate, "ConstraintSpec.repair", "x_candidate")
        clean = x_clean.double()
        cand = x_candidate.detach().double()
        dev = cand.device
        lo, hi = self.bound_tensors(cand)
        inc = torch.tensor([f.direction == "increase" for f in self.features], device=dev)
        dec = torch.tensor([f.direction == "decrease" for f in self.features], device=dev)
        cand = torch.maximum(torch.minimum(cand, hi), lo)
        cand = torch.where(inc, torch.maximum(cand, clean), cand)
        cand = torch.where(dec, torch.minimum(cand, clean), cand)
        # Round to allowed values: distance to each allowed value, infeasible ones set to inf.
        table, has = self._value_table(cand)
        v = table[None]  # (1, D, V)
        c0 = clean[:, :, None]
        dist = (cand[:, :, None] - v).abs()
        is_clean = (v - c0).abs() <= TOL
        bad = torch.isnan(v) | (inc[None, :, None] & (v < c0 - TOL)) | (dec[None, :, None] & (v > c0 + TOL))
        for j, f in enumerate(self.features):
            if f.reachable is not None and f.values is not None:
                reach = torch.tensor(f.reachable, dtype=torch.float64, device=dev)
                ok = ((table[j, :, None] - reach[None]).abs() <= TOL).any(1)
                bad[:, j, :] |= ~ok[None, :] & ~is_clean[:, j, :]
        dist = torch.where(bad, math.inf, dist) - is_clean.double() * 1e-9
        best = dist.argmin(-1, keepdim=True)
        snapped = table.expand(cand.shape[0], -1, -1).gather(2, best).squeeze(2)
        none_ok = torch.isinf(dist.gather(2, best).squeeze(2))
        snapped = torch.where(none_ok, clean, snapped)
        integer = torch.tensor([f.integer for f in self.features], device=dev)
        out = torch.where(has, snapped, torch.where(integer, cand.round(), cand))
        out = torch.where(~has & integer, torch.maximum(torch.minimum(out, hi.floor()), lo.ceil()), out)
        out = self._fix_groups(clean, cand, out)
        mutable = torch.tensor([f.mutable for f in self.features], device=dev)
        out = torch.where(mutable, out, clean)
        if max_changes is not None:
            out = self._keep_top(clean, cand, out, max_changes, priority)
        result = out.to(x_clean.dtype)
        ok = self.check(x_clean, result)
        return torch.where(ok[:, None], result, x_clean)

    def _fix_groups(self, clean: Tensor, cand: Tensor, out: Tensor) -> Tensor:
        out = out.clone()
        for g in self.groups:
            idx = [self._index[n] for n in g]
            feats = [self.features[j] for j in idx]
            if not all(f.mutable for f in feats):
                out[:, idx] = clean[:, idx]
                continue
            c = clean[:, idx]
            score = cand[:, idx] + 1e-9 * c  # ties toward the clean position
            on_ok = torch.tensor(
                [f.direction != "decrease" and (f.reachable is None or 1.0 in f.reachable) for f in feats],
                device=out.device,
            )
            off_ok = torch.tensor([f.direction != "increase" for f in feats], device=out.device)
            allowed = on_ok[None] | (c > 0.5)
            score = torch.where(allowed, score, -math.inf)
            pick = score.argmax(1)
            one_hot = torch.nn.functional.one_hot(pick, len(idx)).double()
            stuck = ((c > 0.5) & ~off_ok[None]).any(1, keepdim=True)  # the clean 1 may not turn off
            out[:, idx] = torch.where(stuck, c, one_hot)
        return out

    def _keep_top(
        self, clean: Tensor, cand: Tensor, out: Tensor, k: int, priority: Tensor | None
    ) -> Tensor:
        changed = (out - clean).abs() > TOL
        if not bool((changed.sum(1) > k).any()):
            return out
        p = (cand - clean).abs() if priority is None else priority.detach().double().to(out.device)
        p = torch.where(changed, p, -math.inf)
        keep = torch.zeros_like(changed)
        if k > 0:
            top = p.topk(min(k, p.shape[1]), dim=1).indices
            keep.scatter_(1, top, True)
        return torch.where(keep & changed, out, clean)


def _read(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ConstraintSpec: the spec file must exist; got {str(p)!r}. Check the path.")
    return p.read_text(encoding="utf-8")
