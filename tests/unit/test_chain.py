"""Tests for hub.chain: hashing, tree shape, inclusion and consistency proofs, accumulator.

The reference functions below transcribe RFC 6962 / RFC 9162's recursive definitions
with list slicing, independently of the iterative code under test.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.chain import (
    EMPTY_ROOT,
    GENESIS_PREV,
    HASH_SIZE,
    MerkleAccumulator,
    consistency_proof,
    hash_from_hex,
    hash_hex,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from hub.errors import CanonicalError, CheckpointError, IntegrityError

MAX_LEAVES = 70


def blake2b_256(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def reference_root(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        return blake2b_256(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = split(len(leaves))
    return blake2b_256(b"\x01" + reference_root(leaves[:k]) + reference_root(leaves[k:]))


def reference_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = split(len(leaves))
    if m < k:
        return [*reference_path(m, leaves[:k]), reference_root(leaves[k:])]
    return [*reference_path(m - k, leaves[k:]), reference_root(leaves[:k])]


def reference_subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [reference_root(leaves)]
    k = split(n)
    if m <= k:
        return [*reference_subproof(m, leaves[:k], whole), reference_root(leaves[k:])]
    return [*reference_subproof(m - k, leaves[k:], False), reference_root(leaves[:k])]


def flipped(value: bytes, position: int = 0) -> bytes:
    """``value`` with one bit of one byte changed."""
    position %= len(value)
    return value[:position] + bytes([value[position] ^ 0x01]) + value[position + 1 :]


def make_leaves(n: int, salt: bytes = b"") -> list[bytes]:
    """``n`` distinct event hashes (distinct, so no two leaves can stand in for each other)."""
    return [leaf_hash(salt + i.to_bytes(2, "big")) for i in range(n)]


logs = st.builds(make_leaves, st.integers(0, MAX_LEAVES), st.binary(max_size=8))
nonempty_logs = st.builds(make_leaves, st.integers(1, MAX_LEAVES), st.binary(max_size=8))

# The eight inputs of the Certificate Transparency test data, reused for pinned vectors.
CT_INPUTS = [
    bytes.fromhex(h)
    for h in (
        *("", "00", "10", "2021", "3031", "40414243"),
        *("5051525354555657", "606162636465666768696a6b6c6d6e6f"),
    )
]
CT_LEAVES = [leaf_hash(data) for data in CT_INPUTS]
PINNED_ROOTS = [
    "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8",
    "03170a2e7597b7b7e3d84c05391d139a62b157e78786d8c082f29dcf4c111314",
    "607844f4b0299f5c45d63dd035de1f8d697711c7f092b8fa82325f670f6d386a",
    "6ee5d7ded74104b2316b73f9843e14d16d9c5f553a39cbd7da7c3c8238fe0b0e",
    "dad1013557a71536d36ab10db2ea4847bed7ded78aa9d2682ffc0e221e758444",
    "a69507075082f2f7bd0e3e23bd31d7082c4c78ce98d87d897f7990eecf7d6ec5",
    "76840409bd8cc8be20c053d9569472d0bbea7b4f483cd5ae0624ef253c64f227",
    "ae8349a901b95ac305157e4ff4f5cf486653fed085ea4dd59a59c9375682933e",
    "59cc7108743d34853ea37ea07558da3407712c7f0fdb76e59753eb243e0c438e",
]


# --- hashing and constants -----------------------------------------------------------------


def test_leaf_hash_is_blake2b_of_zero_byte_and_data() -> None:
    assert leaf_hash(b"event body") == blake2b_256(b"\x00event body")
    assert len(leaf_hash(b"")) == HASH_SIZE


def test_node_hash_is_blake2b_of_one_byte_left_and_right() -> None:
    left, right = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(left, right) == blake2b_256(b"\x01" + left + right)
    assert node_hash(left, right) != node_hash(right, left)


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    left, right = leaf_hash(b"a"), leaf_hash(b"b")
    assert leaf_hash(b"\x01" + left + right) != node_hash(left, right)


def test_genesis_prev_is_32_zero_bytes() -> None:
    assert GENESIS_PREV == b"\x00" * 32


def test_empty_tree_root_is_blake2b_of_nothing() -> None:
    assert blake2b_256(b"") == EMPTY_ROOT
    assert merkle_root([]) == EMPTY_ROOT
    assert MerkleAccumulator().root() == EMPTY_ROOT


# --- tree shape, by hand -------------------------------------------------------------------


def test_root_of_one_leaf_is_the_leaf() -> None:
    (l0,) = make_leaves(1)
    assert merkle_root([l0]) == l0


def test_root_of_two_leaves_joins_them() -> None:
    l0, l1 = make_leaves(2)
    assert merkle_root([l0, l1]) == node_hash(l0, l1)


def test_root_of_three_leaves_puts_the_perfect_subtree_on_the_left() -> None:
    l0, l1, l2 = make_leaves(3)
    assert merkle_root([l0, l1, l2]) == node_hash(node_hash(l0, l1), l2)


def test_root_of_five_leaves_hangs_the_fifth_off_the_top() -> None:
    l0, l1, l2, l3, l4 = make_leaves(5)
    left = node_hash(node_hash(l0, l1), node_hash(l2, l3))
    assert merkle_root([l0, l1, l2, l3, l4]) == node_hash(left, l4)


def test_inclusion_proofs_of_three_leaves_are_the_siblings_bottom_up() -> None:
    l0, l1, l2 = make_leaves(3)
    assert inclusion_proof([l0, l1, l2], 0) == [l1, l2]
    assert inclusion_proof([l0, l1, l2], 1) == [l0, l2]
    assert inclusion_proof([l0, l1, l2], 2) == [node_hash(l0, l1)]
    assert inclusion_proof([l0], 0) == []


def test_inclusion_proof_in_the_seven_leaf_tree_of_the_docs() -> None:
    leaves = make_leaves(7)
    l0, l1, l2, l3, l4, _, l6 = leaves
    h0123 = node_hash(node_hash(l0, l1), node_hash(l2, l3))
    assert inclusion_proof(leaves, 5) == [l4, l6, h0123]


def test_consistency_proofs_of_small_trees_match_the_rfc_by_hand() -> None:
    l0, l1, l2, l3 = make_leaves(4)
    assert consistency_proof([l0, l1, l2], 1) == [l1, l2]
    assert consistency_proof([l0, l1, l2], 2) == [l2]
    assert consistency_proof([l0, l1, l2, l3], 3) == [l2, l3, node_hash(l0, l1)]
    assert consistency_proof([l0, l1, l2], 3) == []
    assert consistency_proof([l0, l1, l2], 0) == []


@pytest.mark.parametrize("size", range(len(PINNED_ROOTS)))
def test_roots_of_the_ct_inputs_match_the_documented_vectors(size: int) -> None:
    assert hash_hex(merkle_root(CT_LEAVES[:size])) == PINNED_ROOTS[size]


def test_proofs_of_the_ct_inputs_match_the_documented_vectors() -> None:
    assert [hash_hex(h) for h in inclusion_proof(CT_LEAVES, 5)] == [
        "3234371fe31af918988719ccf80cc04c639e69fee40c584ca7d63b5bdb352197",
        "f4b02aedb9eca168d47f50db39a464a01d57961153f2708878e45cf3d3d17ae4",
        "dad1013557a71536d36ab10db2ea4847bed7ded78aa9d2682ffc0e221e758444",
    ]
    assert [hash_hex(h) for h in consistency_proof(CT_LEAVES, 6)] == [
        "858268af4f1eb286011123329b72d29d9fecd88a2ec4b919a555a36deef1cd65",
        "f4b02aedb9eca168d47f50db39a464a01d57961153f2708878e45cf3d3d17ae4",
        "dad1013557a71536d36ab10db2ea4847bed7ded78aa9d2682ffc0e221e758444",
    ]


# --- accumulator ---------------------------------------------------------------------------


@given(logs)
def test_accumulator_root_equals_merkle_root_for_every_prefix(leaves: list[bytes]) -> None:
    acc = MerkleAccumulator()
    assert acc.root() == merkle_root([]) == reference_root([])
    for i, leaf in enumerate(leaves):
        acc.append(leaf)
        assert acc.size == i + 1
        assert acc.root() == merkle_root(leaves[: i + 1]) == reference_root(leaves[: i + 1])


@given(logs)
def test_accumulator_extend_is_append_in_a_loop(leaves: list[bytes]) -> None:
    one, many = MerkleAccumulator(), MerkleAccumulator()
    for leaf in leaves:
        one.append(leaf)
    many.extend(leaves)
    assert (many.size, many.root()) == (one.size, one.root())


@given(logs, st.lists(st.integers(0, MAX_LEAVES), max_size=6))
def test_accumulator_extended_in_pieces_of_any_sizes_has_the_merkle_root(
    leaves: list[bytes], cuts: list[int]
) -> None:
    acc = MerkleAccumulator()
    bounds = sorted({min(c, len(leaves)) for c in cuts} | {0, len(leaves)})
    for lo, hi in itertools.pairwise(bounds):
        acc.extend(leaves[lo:hi])
        assert (acc.size, acc.root()) == (hi, merkle_root(leaves[:hi]))
    assert (acc.size, acc.root()) == (len(leaves), merkle_root(leaves))


@given(logs, st.integers(0, MAX_LEAVES))
def test_accumulator_copy_is_independent(leaves: list[bytes], cut: int) -> None:
    cut = min(cut, len(leaves))
    acc = MerkleAccumulator()
    acc.extend(leaves[:cut])
    snapshot = acc.copy()
    acc.extend(leaves[cut:])
    assert (snapshot.size, snapshot.root()) == (cut, merkle_root(leaves[:cut]))
    assert (acc.size, acc.root()) == (len(leaves), merkle_root(leaves))


@pytest.mark.parametrize("bad", [b"\x00" * 31, b"\x00" * 33, bytearray(32), "00" * 32])
def test_accumulator_refuses_a_leaf_that_is_not_a_hash(bad: object) -> None:
    acc = MerkleAccumulator()
    acc.extend(make_leaves(3))
    before = acc.root()
    with pytest.raises(CheckpointError, match="leaf 3 must be a 32-byte hash"):
        acc.append(bad)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="leaf 3 must be a 32-byte hash"):
        acc.extend([bad])  # type: ignore[list-item]
    assert (acc.size, acc.root()) == (3, before)


def test_accumulator_extend_stopped_by_a_bad_leaf_keeps_the_good_ones() -> None:
    good = make_leaves(5)
    acc = MerkleAccumulator()
    with pytest.raises(CheckpointError):
        acc.extend([*good, b"short"])
    assert (acc.size, acc.root()) == (5, merkle_root(good))


# --- inclusion proofs ----------------------------------------------------------------------


@settings(deadline=None)
@given(logs)
def test_every_inclusion_proof_verifies(leaves: list[bytes]) -> None:
    root = merkle_root(leaves)
    for index, leaf in enumerate(leaves):
        proof = inclusion_proof(leaves, index)
        assert proof == reference_path(index, leaves)
        verify_inclusion(leaf, index, len(leaves), proof, root)


@settings(deadline=None)
@given(nonempty_logs, st.integers(0, HASH_SIZE - 1), st.integers(1, MAX_LEAVES))
def test_inclusion_proof_fails_for_any_wrong_input(
    leaves: list[bytes], spot: int, shift: int
) -> None:
    size, root = len(leaves), merkle_root(leaves)
    for index, leaf in enumerate(leaves):
        proof = inclusion_proof(leaves, index)
        wrong_index = (index + 1 + shift % size) % (size + 1)  # in 0..size, never index
        with pytest.raises(CheckpointError):
            verify_inclusion(flipped(leaf, spot), index, size, proof, root)
        with pytest.raises(CheckpointError):
            verify_inclusion(leaf, wrong_index, size, proof, root)
        with pytest.raises(CheckpointError):
            verify_inclusion(leaf, index, size, proof, flipped(root, spot))
        with pytest.raises(CheckpointError):
            verify_inclusion(leaf, index, size, [*proof, leaf], root)
        for k in range(len(proof)):
            tampered = [*proof[:k], flipped(proof[k], spot), *proof[k + 1 :]]
            with pytest.raises(CheckpointError):
                verify_inclusion(leaf, index, size, tampered, root)
            with pytest.raises(CheckpointError):
                verify_inclusion(leaf, index, size, proof[:k] + proof[k + 1 :], root)


@pytest.mark.parametrize("size", range(1, 17))
def test_an_inclusion_proof_proves_its_own_index_only(size: int) -> None:
    # Only the index: the tree size is bound by the root (one signed checkpoint carries
    # both), not by the proof, which also fits other trees of the same shape.
    leaves = make_leaves(size)
    root = merkle_root(leaves)
    for index in range(size):
        proof = inclusion_proof(leaves, index)
        for other in range(size + 2):
            if other != index:
                with pytest.raises(CheckpointError):
                    verify_inclusion(leaves[index], other, size, proof, root)


def test_inclusion_proof_of_a_leaf_beyond_the_tree_is_refused() -> None:
    leaves = make_leaves(4)
    for index in (-1, 4):
        with pytest.raises(CheckpointError, match="no leaf"):
            inclusion_proof(leaves, index)
    with pytest.raises(CheckpointError, match="no leaf 0 of a tree of size 0"):
        verify_inclusion(leaves[0], 0, 0, [], EMPTY_ROOT)


def test_inclusion_failure_says_which_leaf_did_not_match() -> None:
    leaves = make_leaves(8)
    proof = inclusion_proof(leaves, 5)
    with pytest.raises(CheckpointError) as caught:
        verify_inclusion(leaves[4], 5, 8, proof, merkle_root(leaves))
    assert caught.value.diagnostics() == (
        "CheckpointError: inclusion proof for leaf 5 of a tree of size 8"
        " does not lead to the expected root"
    )
    assert isinstance(caught.value, IntegrityError)


def test_inclusion_proof_of_the_wrong_length_is_refused_before_comparing_roots() -> None:
    leaves = make_leaves(6)
    proof, root = inclusion_proof(leaves, 4), merkle_root(leaves)
    with pytest.raises(CheckpointError, match="leaf 4 of a tree of size 6 has too many hashes"):
        verify_inclusion(leaves[4], 4, 6, [*proof, root], root)
    with pytest.raises(CheckpointError, match="leaf 4 of a tree of size 6 has too few hashes"):
        verify_inclusion(leaves[4], 4, 6, proof[:-1], root)


def test_consistency_proof_of_the_wrong_length_is_refused_before_comparing_roots() -> None:
    leaves = make_leaves(7)
    old, new = merkle_root(leaves[:3]), merkle_root(leaves)
    proof = consistency_proof(leaves, 3)
    with pytest.raises(CheckpointError, match="from size 3 to size 7 has too many hashes"):
        verify_consistency(3, 7, old, new, [*proof, new])
    with pytest.raises(CheckpointError, match="from size 3 to size 7 has too few hashes"):
        verify_consistency(3, 7, old, new, proof[:-1])


def test_inclusion_verification_refuses_values_that_are_not_hashes() -> None:
    leaves = make_leaves(4)
    proof, root = inclusion_proof(leaves, 1), merkle_root(leaves)
    with pytest.raises(CheckpointError, match="leaf must be a 32-byte hash"):
        verify_inclusion(leaves[1][:31], 1, 4, proof, root)
    with pytest.raises(CheckpointError, match="root must be a 32-byte hash"):
        verify_inclusion(leaves[1], 1, 4, proof, root + b"\x00")
    with pytest.raises(CheckpointError, match="inclusion proof element 1"):
        verify_inclusion(leaves[1], 1, 4, [proof[0], hash_hex(proof[1])], root)  # type: ignore[list-item]


# --- consistency proofs --------------------------------------------------------------------


@settings(deadline=None)
@given(logs)
def test_every_consistency_proof_verifies(leaves: list[bytes]) -> None:
    n = len(leaves)
    new_root = merkle_root(leaves)
    for m in range(n + 1):
        proof = consistency_proof(leaves, m)
        if 0 < m < n:
            assert proof == reference_subproof(m, leaves, True)
        else:
            assert proof == []
        verify_consistency(m, n, merkle_root(leaves[:m]), new_root, proof)


@settings(deadline=None)
@given(logs, st.integers(0, HASH_SIZE - 1))
def test_consistency_proof_fails_for_any_wrong_input(leaves: list[bytes], spot: int) -> None:
    n = len(leaves)
    new_root = merkle_root(leaves)
    for m in range(n + 1):
        old_root = merkle_root(leaves[:m])
        proof = consistency_proof(leaves, m)
        with pytest.raises(CheckpointError):
            verify_consistency(m, n, flipped(old_root, spot), new_root, proof)
        if m > 0:  # every tree extends the empty tree, whatever its root
            with pytest.raises(CheckpointError):
                verify_consistency(m, n, old_root, flipped(new_root, spot), proof)
        with pytest.raises(CheckpointError):
            verify_consistency(m, n, old_root, new_root, [*proof, old_root])
        for k in range(len(proof)):
            tampered = [*proof[:k], flipped(proof[k], spot), *proof[k + 1 :]]
            with pytest.raises(CheckpointError):
                verify_consistency(m, n, old_root, new_root, tampered)
            with pytest.raises(CheckpointError):
                verify_consistency(m, n, old_root, new_root, proof[:k] + proof[k + 1 :])


@settings(deadline=None)
@given(nonempty_logs, st.data())
def test_a_truncated_log_is_never_consistent(leaves: list[bytes], data: st.DataObject) -> None:
    n = len(leaves)
    m = data.draw(st.integers(0, n - 1), label="truncated size")
    old_root, new_root = merkle_root(leaves), merkle_root(leaves[:m])
    for proof in ([], consistency_proof(leaves, m)):
        with pytest.raises(CheckpointError, match="truncated"):
            verify_consistency(n, m, old_root, new_root, proof)


@pytest.mark.parametrize("size", range(1, 17))
def test_a_consistency_proof_proves_its_own_old_size_only(size: int) -> None:
    leaves = make_leaves(size)
    roots = [merkle_root(leaves[:n]) for n in range(size + 1)]
    for m in range(1, size):
        proof = consistency_proof(leaves, m)
        for other in range(size + 1):
            if other != m:
                with pytest.raises(CheckpointError):
                    verify_consistency(other, size, roots[m], roots[size], proof)
                with pytest.raises(CheckpointError):
                    verify_consistency(other, size, roots[other], roots[size], proof)


def test_the_same_size_needs_the_same_root_and_an_empty_proof() -> None:
    leaves = make_leaves(5)
    root = merkle_root(leaves)
    verify_consistency(5, 5, root, root, [])
    with pytest.raises(CheckpointError, match="two different roots for the same tree size 5"):
        verify_consistency(5, 5, root, merkle_root(leaves[:4]), [])
    with pytest.raises(CheckpointError, match="must be empty"):
        verify_consistency(5, 5, root, root, [root])


def test_the_empty_tree_is_consistent_with_any_tree_given_an_empty_proof() -> None:
    leaves = make_leaves(5)
    verify_consistency(0, 5, EMPTY_ROOT, merkle_root(leaves), [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(CheckpointError, match="must be empty"):
        verify_consistency(0, 5, EMPTY_ROOT, merkle_root(leaves), [leaves[0]])
    with pytest.raises(CheckpointError, match="size 0 must have the empty-tree root"):
        verify_consistency(0, 5, leaves[0], merkle_root(leaves), [])


def test_consistency_between_different_sizes_needs_a_proof() -> None:
    leaves = make_leaves(6)
    with pytest.raises(CheckpointError, match="from size 4 to size 6 is empty"):
        verify_consistency(4, 6, merkle_root(leaves[:4]), merkle_root(leaves), [])


def test_consistency_proof_beyond_the_tree_is_refused() -> None:
    leaves = make_leaves(4)
    for old_size in (-1, 5):
        with pytest.raises(CheckpointError, match="no consistency proof"):
            consistency_proof(leaves, old_size)
    with pytest.raises(CheckpointError, match="cannot be negative"):
        verify_consistency(-1, 4, EMPTY_ROOT, merkle_root(leaves), [])


def test_consistency_verification_refuses_values_that_are_not_hashes() -> None:
    leaves = make_leaves(6)
    old, new = merkle_root(leaves[:3]), merkle_root(leaves)
    proof = consistency_proof(leaves, 3)
    with pytest.raises(CheckpointError, match="old root must be a 32-byte hash"):
        verify_consistency(3, 6, old[:16], new, proof)
    with pytest.raises(CheckpointError, match="new root must be a 32-byte hash"):
        verify_consistency(3, 6, old, b"", proof)
    with pytest.raises(CheckpointError, match="consistency proof element 0"):
        verify_consistency(3, 6, old, new, [None, *proof[1:]])  # type: ignore[list-item]


# --- merkle_root input checks --------------------------------------------------------------


def test_merkle_root_refuses_leaves_that_are_not_hashes() -> None:
    leaves = make_leaves(3)
    with pytest.raises(CheckpointError, match="leaf 2 must be a 32-byte hash; got 5 bytes"):
        merkle_root([*leaves[:2], b"short"])
    with pytest.raises(CheckpointError, match="leaf 0 must be a 32-byte hash; got a str"):
        inclusion_proof(["00" * 32], 0)  # type: ignore[list-item]


# --- hex -----------------------------------------------------------------------------------


@given(st.binary(min_size=32, max_size=32))
def test_hash_hex_round_trips(value: bytes) -> None:
    text = hash_hex(value)
    assert len(text) == 64
    assert text == text.lower()
    assert hash_from_hex(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "00" * 31,
        "00" * 33,
        "AB" * 32,
        "0x" + "00" * 31,
        "g" + "0" * 63,
        "00" * 32 + "\n",
        " " + "0" * 63,
        "\u0660" * 64,  # ARABIC-INDIC DIGIT ZERO: a digit to str.isdigit, not hex
    ],
)
def test_hash_from_hex_refuses_anything_but_64_lowercase_hex_chars(text: str) -> None:
    with pytest.raises(CanonicalError, match="64 lowercase hex characters"):
        hash_from_hex(text)


def test_hash_from_hex_refuses_bytes() -> None:
    with pytest.raises(CanonicalError):
        hash_from_hex(b"00" * 32)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [b"", b"\x00" * 31, b"\x00" * 64])
def test_hash_hex_refuses_values_that_are_not_hashes(value: bytes) -> None:
    with pytest.raises(CanonicalError, match="a hash is 32 bytes"):
        hash_hex(value)
