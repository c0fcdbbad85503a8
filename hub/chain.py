"""Hash chain and Merkle checkpoints: pure functions over 32-byte BLAKE2b hashes.

A node's event log is a hash chain whose event hashes are also the leaves of an
RFC 6962 / RFC 9162 Merkle tree, with BLAKE2b-256 in place of SHA-256:

* ``leaf_hash(body)`` = BLAKE2b-256(0x00 || body) is an event's hash. Event n carries
  ``prev = leaf_hash(body of event n-1)``; the first event carries :data:`GENESIS_PREV`.
* ``node_hash(left, right)`` = BLAKE2b-256(0x01 || left || right) joins two subtrees.
* :func:`merkle_root` is RFC 6962's Merkle Tree Hash over already-hashed leaves;
  :class:`MerkleAccumulator` computes the same root in one pass over a log.
* Inclusion and consistency proofs follow RFC 9162 §2.1.3 and §2.1.4 exactly, so a
  verifier in any language can check them (see docs/merkle.md).

Nothing here does I/O. Every failed verification raises :class:`~hub.errors.CheckpointError`
(fail closed: no boolean to forget to check); a malformed hex hash raises
:class:`~hub.errors.CanonicalError`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from hub.errors import CanonicalError, CheckpointError

__all__ = [
    "EMPTY_ROOT",
    "GENESIS_PREV",
    "HASH_SIZE",
    "MerkleAccumulator",
    "consistency_path",
    "consistency_proof",
    "hash_from_hex",
    "hash_hex",
    "inclusion_proof",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]

#: Length in bytes of every hash in the chain and the tree (BLAKE2b-256).
HASH_SIZE: Final = 32

#: The ``prev`` of the first event in a log: 32 zero bytes.
GENESIS_PREV: Final = bytes(HASH_SIZE)

#: Root of the tree with no leaves: BLAKE2b-256 of the empty string (RFC 6962 ``MTH({})``).
EMPTY_ROOT: Final = hashlib.blake2b(b"", digest_size=HASH_SIZE).digest()

# Hash states that have already absorbed the domain-separation prefix. Copying one is
# markedly cheaper than building a new BLAKE2b object with keyword arguments each time.
_LEAF_STATE: Final = hashlib.blake2b(b"\x00", digest_size=HASH_SIZE)
_NODE_STATE: Final = hashlib.blake2b(b"\x01", digest_size=HASH_SIZE)
_new_node = _NODE_STATE.copy

_HEX_HASH: Final = re.compile(r"[0-9a-f]{64}")


# --- hashing -------------------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """Hash an event body as a Merkle leaf: BLAKE2b-256(0x00 || data)."""
    state = _LEAF_STATE.copy()
    state.update(data)
    return state.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Join two subtree roots into their parent: BLAKE2b-256(0x01 || left || right)."""
    state = _new_node()
    state.update(left)
    state.update(right)
    return state.digest()


def hash_hex(b: bytes) -> str:
    """Write a 32-byte hash as 64 lowercase hex characters."""
    if not isinstance(b, bytes) or len(b) != HASH_SIZE:
        raise CanonicalError(f"a hash is {HASH_SIZE} bytes; got {_describe(b)}")
    return b.hex()


def hash_from_hex(s: str) -> bytes:
    """Read a hash written by :func:`hash_hex`; anything but 64 lowercase hex chars is refused."""
    if not isinstance(s, str) or _HEX_HASH.fullmatch(s) is None:
        shown = repr(s) if len(repr(s)) <= 80 else repr(s)[:77] + "..."
        raise CanonicalError(
            f"a hash is written as 64 lowercase hex characters; got {shown}",
        )
    return bytes.fromhex(s)


# --- tree shape ----------------------------------------------------------------------------


def _split(n: int) -> int:
    """Largest power of two strictly below ``n`` (``n >= 2``): the RFC 6962 ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree_root(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    """RFC 6962 MTH of ``leaves[lo:hi]`` (``hi > lo``), without copying the sequence."""
    n = hi - lo
    if n == 1:
        return leaves[lo]
    k = _split(n)
    return node_hash(_subtree_root(leaves, lo, lo + k), _subtree_root(leaves, lo + k, hi))


def _describe(value: object) -> str:
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    return f"a {type(value).__name__}"


def _hash_error(value: object, what: str) -> CheckpointError:
    return CheckpointError(f"{what} must be a {HASH_SIZE}-byte hash; got {_describe(value)}")


def _check_hash(value: object, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise _hash_error(value, what)


def _check_leaves(leaves: Sequence[bytes]) -> None:
    for i, leaf in enumerate(leaves):
        _check_hash(leaf, f"leaf {i}")


def _check_proof(proof: Sequence[bytes], kind: str) -> None:
    for i, element in enumerate(proof):
        _check_hash(element, f"{kind} proof element {i}")


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle Tree Hash over already-hashed leaves (event hashes).

    One leaf is its own root; the empty tree's root is :data:`EMPTY_ROOT`
    (BLAKE2b-256 of the empty string). Otherwise, with ``k`` the largest power of two
    below ``n``: ``node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))``.
    """
    _check_leaves(leaves)
    if not leaves:
        return EMPTY_ROOT
    return _subtree_root(leaves, 0, len(leaves))


# --- inclusion proofs (RFC 9162 §2.1.3) ----------------------------------------------------


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Audit path of leaf ``index`` in the tree over ``leaves`` (RFC 9162 ``PATH``).

    Ordered from the leaf's sibling up to the root's other child. Takes O(n) hashing;
    raises :class:`CheckpointError` when ``index`` is not a leaf of the tree.
    """
    _check_leaves(leaves)
    size = len(leaves)
    if not 0 <= index < size:
        raise CheckpointError(f"no leaf {index} in a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            path.append(_subtree_root(leaves, mid, hi))
            hi = mid
        else:
            path.append(_subtree_root(leaves, lo, mid))
            lo = mid
    path.reverse()
    return path


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    Follows RFC 9162 §2.1.3.2. Returns nothing on success; raises
    :class:`CheckpointError` saying what does not match otherwise.
    """
    _check_hash(leaf, "leaf")
    _check_hash(root, "root")
    _check_proof(proof, "inclusion")
    where = f"leaf {index} of a tree of size {size}"
    if not 0 <= index < size:
        raise CheckpointError(f"inclusion proof refused: there is no {where}")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise CheckpointError(f"inclusion proof for {where} has too many hashes")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise CheckpointError(f"inclusion proof for {where} has too few hashes")
    if r != root:
        raise CheckpointError(f"inclusion proof for {where} does not lead to the expected root")


# --- consistency proofs (RFC 9162 §2.1.4) --------------------------------------------------


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """Proof that the tree of the first ``old_size`` leaves is a prefix of ``leaves``.

    RFC 9162 ``PROOF(m, D[n])`` = ``SUBPROOF(m, D[n], true)`` for ``0 < m < n``; the
    proof is empty when ``old_size`` is 0 or ``len(leaves)``. Raises
    :class:`CheckpointError` when ``old_size`` is negative or beyond the tree.
    """
    _check_leaves(leaves)
    return consistency_path(len(leaves), old_size, lambda lo, hi: _subtree_root(leaves, lo, hi))


def consistency_path(size: int, old_size: int, root_of: Callable[[int, int], bytes]) -> list[bytes]:
    """:func:`consistency_proof` for a tree of ``size`` leaves given by ``root_of(lo, hi)``,
    the Merkle root of leaves ``lo..hi-1`` (for a caller that keeps subtree roots and
    so need not hash every leaf again)."""
    if not 0 <= old_size <= size:
        raise CheckpointError(f"no consistency proof from size {old_size} to size {size}")
    if old_size in (0, size):
        return []
    proof: list[bytes] = []
    lo, hi, m = 0, size, old_size
    whole = True  # SUBPROOF's b: is the old tree a complete subtree seen so far?
    while m != hi - lo:
        mid = lo + _split(hi - lo)
        if m <= mid - lo:
            proof.append(root_of(mid, hi))
            hi = mid
        else:
            proof.append(root_of(lo, mid))
            m -= mid - lo
            lo = mid
            whole = False
    if not whole:
        proof.append(root_of(lo, hi))
    proof.reverse()
    return proof


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (``new_size``, ``new_root``) extends (``old_size``, ``old_root``).

    Follows RFC 9162 §2.1.4.2. Equal sizes need an empty proof and equal roots; size 0
    needs an empty proof and ``old_root ==`` :data:`EMPTY_ROOT`; a smaller new tree (a
    truncated log) is always refused. Raises :class:`CheckpointError` on any mismatch.
    """
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    _check_proof(proof, "consistency")
    what = f"from size {old_size} to size {new_size}"
    if old_size < 0 or new_size < 0:
        raise CheckpointError(f"consistency refused {what}: tree sizes cannot be negative")
    if old_size > new_size:
        raise CheckpointError(f"consistency refused {what}: the log was truncated")
    if old_size == 0:
        if old_root != EMPTY_ROOT:
            raise CheckpointError("a tree of size 0 must have the empty-tree root")
        if proof:
            raise CheckpointError(f"consistency proof {what} must be empty")
        return
    if old_size == new_size:
        if proof:
            raise CheckpointError(f"consistency proof {what} must be empty")
        if old_root != new_root:
            raise CheckpointError(f"two different roots for the same tree size {old_size}")
        return
    if not proof:
        raise CheckpointError(f"consistency proof {what} is empty")

    path = list(proof)
    if old_size & (old_size - 1) == 0:  # the old tree is a complete subtree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise CheckpointError(f"consistency proof {what} has too many hashes")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise CheckpointError(f"consistency proof {what} has too few hashes")
    if fr != old_root:
        raise CheckpointError(f"consistency proof {what} does not lead to the old root")
    if sr != new_root:
        raise CheckpointError(f"consistency proof {what} does not lead to the new root")


# --- one-pass accumulation -----------------------------------------------------------------


class MerkleAccumulator:
    """The root of a growing log, in one pass and O(log n) memory.

    Keeps the compact range of the tree: the roots of its perfect subtrees, largest
    (leftmost) first. Appending costs one node hash on average; :meth:`root` folds the
    stack right to left and equals :func:`merkle_root` of every leaf appended so far.
    """

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        self._size = 0
        self._stack: list[bytes] = []

    @property
    def size(self) -> int:
        """How many leaves have been appended."""
        return self._size

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash (an event's hash) at the right edge of the tree."""
        if not isinstance(leaf, bytes) or len(leaf) != HASH_SIZE:
            raise _hash_error(leaf, f"leaf {self._size}")
        stack = self._stack
        n = self._size
        h = leaf
        while n & 1:  # each trailing 1 bit of the old size is a perfect subtree to merge
            state = _new_node()
            state.update(stack.pop())
            state.update(h)
            h = state.digest()
            n >>= 1
        stack.append(h)
        self._size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append many leaf hashes; the same as :meth:`append` in a loop, only faster."""
        stack = self._stack
        push, pop = stack.append, stack.pop
        new_node = _new_node
        size = self._size
        try:
            for leaf in leaves:
                if not isinstance(leaf, bytes) or len(leaf) != HASH_SIZE:
                    raise _hash_error(leaf, f"leaf {size}")
                n = size
                h = leaf
                while n & 1:
                    state = new_node()
                    state.update(pop())
                    state.update(h)
                    h = state.digest()
                    n >>= 1
                push(h)
                size += 1
        finally:
            self._size = size

    def root(self) -> bytes:
        """Merkle root of the leaves so far (:data:`EMPTY_ROOT` when there are none)."""
        stack = self._stack
        if not stack:
            return EMPTY_ROOT
        r = stack[-1]
        for i in range(len(stack) - 2, -1, -1):
            r = node_hash(stack[i], r)
        return r

    def copy(self) -> MerkleAccumulator:
        """An independent accumulator in the same state."""
        other = MerkleAccumulator()
        other._size = self._size
        other._stack = self._stack.copy()
        return other

    def __repr__(self) -> str:
        return f"MerkleAccumulator(size={self._size})"
