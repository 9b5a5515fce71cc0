"""RFC 6962 / RFC 9162 Merkle tree hashing, inclusion and consistency proofs, as pure functions.

The tree is the one Certificate Transparency logs use (RFC 6962 §2.1, restated in RFC 9162 §2.1):

- leaf hash ``SHA-256(0x00 || d)`` and interior node hash ``SHA-256(0x01 || left || right)``;
- ``MTH({}) = SHA-256()``, ``MTH({d0}) = leaf hash``, and for ``n > 1`` leaves the tree splits at
  ``k``, the largest power of two smaller than ``n``: ``MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n]))``;
- an inclusion proof is the audit path ``PATH(m, D[n])`` (RFC 6962 §2.1.1), a consistency proof is
  ``PROOF(m, D[n])`` (§2.1.2); the verifiers follow RFC 9162 §2.1.3.2 and §2.1.4.2.

Every function here works on *leaf hashes* (32-byte ``bytes``), so that proofs can be built from
what a log stores, and verification needs nothing but hashes: it never touches a database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from modelshield.errors import ConfigError

__all__ = [
    "EMPTY_ROOT",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH of the empty tree: SHA-256 of the empty string (RFC 6962 §2.1)."""


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one leaf (RFC 6962 §2.1)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node (RFC 6962 §2.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH of leaves[lo:hi] (leaf hashes), by the RFC's recursive definition."""
    n = hi - lo
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[lo]
    k = _split(n)
    return node_hash(_mth(leaves, lo, lo + k), _mth(leaves, lo + k, hi))


def root_hash(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree hash MTH of a list of leaf hashes, in O(n) time and O(log n) memory.

    Keeps the compact range (the perfect subtrees of the binary decomposition of the size, largest
    first) and folds it right to left, which equals the RFC's split-at-a-power-of-two recursion.
    """
    stack: list[tuple[int, bytes]] = []
    for h in leaves:
        size, node = 1, h
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            size, node = left_size + size, node_hash(left, node)
        stack.append((size, node))
    if not stack:
        return EMPTY_ROOT
    acc = stack[-1][1]
    for _, left in reversed(stack[:-1]):
        acc = node_hash(left, acc)
    return acc


def _check_size(owner: str, name: str, value: int, low: int, high: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{owner}: {name!r} must be an int in [{low}, {high}]; got {value!r}. {fix}")


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """The audit path ``PATH(index, D[size])`` of RFC 6962 §2.1.1 over the first ``size`` leaf hashes.

    Raises:
        ConfigError: index not in [0, size) or size larger than the number of leaves.
    """
    n = len(leaves) if size is None else size
    _check_size("inclusion_proof", "size", n, 1, len(leaves), "Ask for a tree size the log has reached.")
    _check_size("inclusion_proof", "index", index, 0, n - 1, "A leaf must lie inside the tree.")
    path: list[bytes] = []
    lo, hi, m = 0, n, index
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(_mth(leaves, lo + k, hi))
            hi = lo + k
        else:
            path.append(_mth(leaves, lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()  # the recursion appends the sibling of the top first; the path lists leaf-up
    return path


def consistency_proof(leaves: Sequence[bytes], old_size: int, new_size: int | None = None) -> list[bytes]:
    """The consistency proof ``PROOF(old_size, D[new_size])`` of RFC 6962 §2.1.2.

    Empty when ``old_size`` is 0 or equals ``new_size`` (both trivially consistent).

    Raises:
        ConfigError: sizes out of order or beyond the leaves.
    """
    n = len(leaves) if new_size is None else new_size
    _check_size("consistency_proof", "new_size", n, 0, len(leaves), "Ask for a tree size the log has "
                                                                    "reached.")
    _check_size("consistency_proof", "old_size", old_size, 0, n, "The old tree cannot be larger than the "
                                                                 "new.")
    if old_size in (0, n):
        return []
    proof: list[bytes] = []
    lo, hi, m, complete = 0, n, old_size, True  # SUBPROOF(m, D[lo:hi], complete)
    while True:
        if m == hi - lo:
            if not complete:
                proof.append(_mth(leaves, lo, hi))
            break
        k = _split(hi - lo)
        if m <= k:
            proof.append(_mth(leaves, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_mth(leaves, lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    proof.reverse()
    return proof


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """True when ``proof`` shows leaf hash ``leaf`` at ``index`` in the tree of ``size`` with ``root``.

    The algorithm of RFC 9162 §2.1.3.2. Pure: only hashes in, a bool out; malformed input is False.
    """
    if not (isinstance(index, int) and isinstance(size, int)) or not 0 <= index < size:
        return False
    if len(leaf) != HASH_SIZE or len(root) != HASH_SIZE or any(len(p) != HASH_SIZE for p in proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True when ``proof`` shows the tree (old_size, old_root) is a prefix of (new_size, new_root).

    The algorithm of RFC 9162 §2.1.4.2, plus the trivial cases: old_size 0 (any tree extends the
    empty one; the proof must be empty) and equal sizes (equal roots, empty proof).
    """
    if not (isinstance(old_size, int) and isinstance(new_size, int)) or not 0 <= old_size <= new_size:
        return False
    if any(len(p) != HASH_SIZE for p in proof):
        return False
    if old_size == 0:
        return len(proof) == 0
    if len(old_root) != HASH_SIZE or len(new_root) != HASH_SIZE:
        return False
    if old_size == new_size:
        return len(proof) == 0 and old_root == new_root
    if len(proof) == 0:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # an exact power of two: the old root is a node of the new tree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
