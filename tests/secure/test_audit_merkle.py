"""RFC 6962 Merkle tree: published vectors and a brute-force check against the RFC's recursive text.

The vectors (leaves, roots of sizes 1..8, inclusion and consistency proofs) are the Certificate
Transparency ones, as published in transparency-dev/merkle ``proof/verify_test.go`` (Apache-2.0),
originally from the C++ CT log's merkle_tree_test.
"""

from __future__ import annotations

import hashlib

import pytest

from modelshield.errors import ConfigError
from modelshield.secure.audit import merkle

LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                      "606162636465666768696a6b6c6d6e6f")]
ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
# (leaf index, tree size, audit path)
INCLUSION = [
    (0, 8, ("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (5, 8, ("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 3, ("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",)),
    (1, 5, ("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
]
# (old size, new size, proof)
CONSISTENCY = [
    (1, 1, ()),
    (1, 8, ("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (6, 8, ("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 5, ("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
    (6, 7, ("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
]
HASHES = [merkle.leaf_hash(d) for d in LEAVES]


def flipped(proof: list[bytes], i: int) -> list[bytes]:
    out = list(proof)
    out[i] = bytes([out[i][0] ^ 8]) + out[i][1:]
    return out


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert merkle.root_hash([]) == hashlib.sha256(b"").digest() == merkle.EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_published_roots(size: int) -> None:
    assert merkle.root_hash(HASHES[:size]) == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_published_inclusion_proofs(index: int, size: int, path: tuple[str, ...]) -> None:
    proof = [bytes.fromhex(p) for p in path]
    assert merkle.inclusion_proof(HASHES, index, size) == proof
    root, leaf = ROOTS[size - 1], HASHES[index]
    assert merkle.verify_inclusion(index, size, leaf, proof, root)
    # the corruptions of transparency-dev's verifierCheck: none may verify
    bad = [(index - 1, size, leaf, proof, root), (index + 1, size, leaf, proof, root),
           (index ^ 2, size, leaf, proof, root), (index, size * 2, leaf, proof, root),
           (index, size // 2, leaf, proof, root), (index, size, b"WrongLeaf", proof, root),
           (index, size, leaf, proof, merkle.EMPTY_ROOT), (index, size, leaf, [*proof, b""], root),
           (index, size, leaf, [*proof, root], root), (index, size, leaf, [root, *proof], root),
           (index, size, leaf, proof[:-1], root)]
    bad += [(index, size, leaf, flipped(proof, i), root) for i in range(len(proof))]
    assert not any(merkle.verify_inclusion(*case) for case in bad)


@pytest.mark.parametrize(("old", "new", "path"), CONSISTENCY)
def test_published_consistency_proofs(old: int, new: int, path: tuple[str, ...]) -> None:
    proof = [bytes.fromhex(p) for p in path]
    assert merkle.consistency_proof(HASHES, old, new) == proof
    r1, r2 = ROOTS[old - 1], ROOTS[new - 1]
    assert merkle.verify_consistency(old, new, r1, r2, proof)
    if not proof:
        return
    bad = [(old - 1, new, r1, r2, proof), (old + 1, new, r1, r2, proof), (old ^ 2, new, r1, r2, proof),
           (old, new * 2, r1, r2, proof), (old, new // 2, r1, r2, proof), (old, new, r2, r1, proof),
           (old, new, r1, r2, []), (old, new, r1, r2, [*proof, r1]), (old, new, r1, r2, [r2, *proof]),
           (old, new, r1, r2, [proof[0], *proof]), (old, new, r1, r2, proof[:-1])]
    bad += [(old, new, r1, r2, flipped(proof, i)) for i in range(len(proof))]
    assert not any(merkle.verify_consistency(*case) for case in bad)


def test_trivial_consistency_cases() -> None:
    r = ROOTS[0]
    assert merkle.verify_consistency(0, 0, r, r, [])
    assert merkle.verify_consistency(0, 5, b"", ROOTS[4], [])
    assert not merkle.verify_consistency(1, 1, ROOTS[0], ROOTS[1], [])
    assert not merkle.verify_consistency(2, 1, ROOTS[1], ROOTS[0], [])
    assert not merkle.verify_consistency(1, 1, r, r, [merkle.EMPTY_ROOT])


# --- brute force: the library's iterative code against the RFC's recursion, written from its text ----


def mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = 1
    while k * 2 < len(d):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = 1
    while k * 2 < len(d):
        k *= 2
    return [*path(m, d[:k]), mth(d[k:])] if m < k else [*path(m - k, d[k:]), mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [mth(d)]
    k = 1
    while k * 2 < len(d):
        k *= 2
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


BRUTE = [merkle.leaf_hash(i.to_bytes(2, "big")) for i in range(64)]


def test_roots_match_the_recursive_definition_for_sizes_1_to_64() -> None:
    for n in range(1, 65):
        assert merkle.root_hash(BRUTE[:n]) == mth(BRUTE[:n]), n


def test_every_inclusion_proof_up_to_64_leaves() -> None:
    for n in range(1, 65):
        root = mth(BRUTE[:n])
        for m in range(n):
            proof = merkle.inclusion_proof(BRUTE, m, n)
            assert proof == path(m, BRUTE[:n]), (m, n)
            assert merkle.verify_inclusion(m, n, BRUTE[m], proof, root), (m, n)
            assert not merkle.verify_inclusion(m, n, BRUTE[(m + 1) % 64], proof, root) or (n == 1 and m == 0)
            if proof:
                assert not merkle.verify_inclusion(m, n, BRUTE[m], flipped(proof, len(proof) - 1), root)
                assert not merkle.verify_inclusion((m + 1) % n, n, BRUTE[m], proof, root) or n == 1


def test_every_consistency_proof_up_to_64_leaves() -> None:
    roots = [mth(BRUTE[:n]) for n in range(65)]
    for n in range(1, 65):
        for m in range(0, n + 1):
            proof = merkle.consistency_proof(BRUTE, m, n)
            expected = [] if m in (0, n) else subproof(m, BRUTE[:n], True)
            assert proof == expected, (m, n)
            assert merkle.verify_consistency(m, n, roots[m], roots[n], proof), (m, n)
            if proof:
                assert not merkle.verify_consistency(m, n, roots[m], roots[n], flipped(proof, 0)), (m, n)
                assert not merkle.verify_consistency(m, n, roots[m], roots[n - 1], proof), (m, n)


def test_bad_proof_requests_raise_with_the_range() -> None:
    with pytest.raises(ConfigError, match=r"'index' must be an int in \[0, 3\]; got 4"):
        merkle.inclusion_proof(BRUTE, 4, 4)
    with pytest.raises(ConfigError, match=r"'old_size' must be an int in \[0, 3\]; got 5"):
        merkle.consistency_proof(BRUTE, 5, 3)
