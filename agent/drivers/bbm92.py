"""BBM92 key from delivered end-to-end pairs (C. H. Bennett, G. Brassard, N. D. Mermin, PRL 68, 557, 1992).

One :class:`Bbm92Endpoint` per end node, installed as the node's application
(:meth:`~agent.drivers.emulated_entanglement.EndNode.set_application`). All its messages go to the other
end over the authenticated classical channel; nothing goes to a repeater.

1. **Measurement.** Each delivered pair is measured at once in Z (probability ``p_z``) or X, chosen with
   the endpoint's own random generator, and the basis (never the outcome) is announced (:class:`Basis`).
2. **Sifting.** A pair is sifted when both bases are known and equal.
3. **Blocks.** The leader (the chain's left end) takes its ``block_size`` oldest sifted pairs (by pair id,
   which both ends know) and sends :class:`BlockStart`: the pair ids, a fresh 128-bit seed, and its outcomes
   on a sample (``sample_fraction`` of the positions, chosen from the seed). The follower answers with its
   own sample outcomes (:class:`BlockSample`); both compute the error rates ``e_Z`` and ``e_X`` per basis
   from the same data (an empty sample counts as 1/2).
4. **Error correction.** The follower corrects its remaining bits to the leader's with a BINARY-style
   parity search (the first step of Cascade, G. Brassard, L. Salvail, EUROCRYPT 1993): every pass shuffles
   the positions with a generator seeded from the block seed, splits them into blocks of ``0.73/e``
   (``e`` floored at 1 %, so an optimistic estimate still finds errors), asks the leader for block parities
   (``ParityQuery``/``ParityAnswer``)
   and bisects every block whose parity differs; passes stop after two that find nothing. Then a 64-bit
   tag, HMAC-SHA256 keyed with the seed over the corrected string (:class:`Verify`), must match the
   leader's, or the block is discarded (:class:`Confirm`). The parities revealed are counted
   (``ec_leak_bits``).
5. **Privacy amplification.** The key length is ``floor(n_Z r_Z + n_X r_X)`` bits rounded down to whole
   bytes, with ``n_b`` the remaining (non-sample) bits measured in basis ``b`` and the Shor-Preskill
   fraction ``r_Z = 1 - h(e_X) - f h(e_Z)`` (and symmetrically ``r_X``),
   :func:`qsdn.physics.entanglement.shor_preskill_fraction`; for Werner pairs ``e_X = e_Z = Q`` and this
   is ``r = 1 - 2 h(Q)``. Note that ``f`` is the configured error-correction efficiency, not the measured
   leakage of step 4, as in the asymptotic formula. The extractor is a Toeplitz matrix over GF(2) whose
   ``n + l - 1`` diagonal bits are SHAKE-256 of the block seed (a universal hash family: H. Krawczyk,
   CRYPTO 1994; leftover hash lemma). Both ends store the block under block id ``bbm92-<block number>``
   in their key store for the configured link id (the leader after a matching tag, the follower after the
   leader's confirmation), so ETSI 014 serves it unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Protocol

from agent.drivers.emulated_entanglement import DeliveredPair
from agent.drivers.quantum_medium import Basis
from qsdn.errors import ConfigError
from qsdn.physics.entanglement import shor_preskill_fraction

__all__ = [
    "BasisAnnounce",
    "Bbm92Config",
    "Bbm92Endpoint",
    "Bbm92Stats",
    "BlockSample",
    "BlockStart",
    "Confirm",
    "KeySink",
    "ParityAnswer",
    "ParityQuery",
    "Verify",
    "binary_reconcile",
    "toeplitz_extract",
]

logger = logging.getLogger(__name__)

Label = tuple[int, int]
_TAG_BYTES = 8


class KeySink(Protocol):
    """Where finished key blocks go (:class:`agent.keystore.KeyStore` is one)."""

    def add_block(self, qkdl_id: str, block_id: str, key: bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class Bbm92Config:
    p_z: float = 0.5
    block_size: int = 2048
    sample_fraction: float = 0.2
    ec_efficiency: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.p_z < 1.0:
            raise ConfigError(f"BBM92 basis bias p_z must be within (0, 1), got {self.p_z}")
        if self.block_size < 16:
            raise ConfigError(f"BBM92 block size must be at least 16, got {self.block_size}")
        if not 0.0 < self.sample_fraction < 1.0:
            raise ConfigError(f"BBM92 sample fraction must be within (0, 1), got {self.sample_fraction}")
        if self.ec_efficiency < 1.0:
            raise ConfigError(f"error-correction efficiency must be at least 1, got {self.ec_efficiency}")


# -- messages (end node to end node only) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BasisAnnounce:
    pair_id: Label
    basis: Basis


@dataclass(frozen=True, slots=True)
class BlockStart:
    block_no: int
    pair_ids: tuple[Label, ...]
    seed: bytes
    sample_bits: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BlockSample:
    block_no: int
    sample_bits: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ParityQuery:
    block_no: int
    subsets: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True)
class ParityAnswer:
    block_no: int
    parities: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Verify:
    block_no: int
    tag: bytes


@dataclass(frozen=True, slots=True)
class Confirm:
    block_no: int
    ok: bool


# -- pure pieces ----------------------------------------------------------------------------------------


def _parity(bits: list[int], subset: tuple[int, ...]) -> int:
    p = 0
    for i in subset:
        p ^= bits[i]
    return p


def binary_reconcile(
    bits: list[int], error_rate: float, seed: bytes, max_passes: int = 32
) -> Generator[tuple[tuple[int, ...], ...], tuple[int, ...], tuple[list[int], int]]:
    """The correcting side of BINARY parity search: yields parity queries, receives the other side's
    parities, returns ``(corrected bits, parities revealed)``."""
    b = list(bits)
    n = len(b)
    rng = random.Random(seed)
    k = max(4, min(n, int(0.73 / max(error_rate, 0.01))))
    leak = 0
    quiet = 0
    for _ in range(max_passes):
        perm = list(range(n))
        rng.shuffle(perm)
        size = k
        blocks = tuple(tuple(perm[i : i + size]) for i in range(0, n, size))
        answers = yield blocks
        leak += len(blocks)
        active = [blk for blk, par in zip(blocks, answers, strict=True) if par != _parity(b, blk)]
        found = len(active)
        while active:
            halves = tuple(blk[: len(blk) // 2] for blk in active)
            answers = yield halves
            leak += len(halves)
            nxt: list[tuple[int, ...]] = []
            for blk, half, par in zip(active, halves, answers, strict=True):
                sub = half if par != _parity(b, half) else blk[len(blk) // 2 :]
                if len(sub) == 1:
                    b[sub[0]] ^= 1
                else:
                    nxt.append(sub)
            active = nxt
        quiet = quiet + 1 if found == 0 else 0
        if quiet >= 2:
            break
    return b, leak


def toeplitz_extract(bits: list[int], out_bits: int, seed: bytes) -> bytes:
    """``out_bits`` (a multiple of 8) bits of a Toeplitz hash of ``bits``, diagonals from SHAKE-256(seed)."""
    if out_bits % 8 or out_bits < 0:
        raise ConfigError(f"extracted length must be a whole number of bytes, got {out_bits} bits")
    n = len(bits)
    x = 0
    for i, bit in enumerate(bits):
        x |= bit << i
    diag = hashlib.shake_256(b"qsdn-bbm92-pa" + seed).digest((n + out_bits + 7) // 8)
    t = int.from_bytes(diag, "little")
    mask = (1 << n) - 1
    out = 0
    for i in range(out_bits):
        out |= ((((t >> i) & mask) & x).bit_count() & 1) << i
    return out.to_bytes(out_bits // 8, "little")


def _tag(seed: bytes, bits: list[int]) -> bytes:
    return hmac.new(seed, bytes(bits), hashlib.sha256).digest()[:_TAG_BYTES]


def _sample_positions(seed: bytes, n: int, fraction: float) -> list[int]:
    rng = random.Random(hashlib.sha256(b"qsdn-bbm92-sample" + seed).digest())
    return sorted(rng.sample(range(n), max(1, int(n * fraction))))


def _estimate(bases: list[Basis], mine: list[int], theirs: tuple[int, ...]) -> dict[Basis, tuple[int, int]]:
    counts = {Basis.Z: [0, 0], Basis.X: [0, 0]}
    for b, x, y in zip(bases, mine, theirs, strict=True):
        counts[b][0] += x ^ y
        counts[b][1] += 1
    return {b: (c[0], c[1]) for b, c in counts.items()}


# -- the endpoint ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Bbm92Stats:
    measured: int = 0
    sifted: int = 0
    blocks_ok: int = 0
    blocks_failed: int = 0
    key_bits: int = 0
    ec_leak_bits: int = 0
    sample_errors: dict[Basis, list[int]] = field(default_factory=lambda: {Basis.Z: [0, 0], Basis.X: [0, 0]})
    #: per stored block: (remaining bits after the sample, key bits, estimated e_Z, estimated e_X)
    blocks: list[tuple[int, int, float, float]] = field(default_factory=list)


@dataclass(slots=True)
class _Block:
    seed: bytes
    bases: list[Basis]
    key_bits: list[int]  # remaining (non-sample) bits, in pair-id order
    key_bases: list[Basis]
    errors: dict[Basis, tuple[int, int]] | None = None
    corrected: list[int] | None = None
    reconciler: Generator[tuple[tuple[int, ...], ...], tuple[int, ...], tuple[list[int], int]] | None = None
    leak: int = 0


class Bbm92Endpoint:
    """One end's BBM92: measures delivered pairs, sifts, estimates, corrects, amplifies, stores key."""

    def __init__(
        self,
        node: str,
        link_id: str,
        *,
        leader: bool,
        send: Callable[[object], None],
        sink: KeySink,
        rng: random.Random,
        config: Bbm92Config | None = None,
    ) -> None:
        self.node = node
        self.link_id = link_id
        self._leader = leader
        self._send = send
        self._sink = sink
        self._rng = rng
        self._cfg = config or Bbm92Config()
        self._measured: dict[Label, tuple[Basis, int]] = {}
        self._peer_bases: dict[Label, Basis] = {}
        self._sifted: dict[Label, tuple[Basis, int]] = {}
        self._blocks: dict[int, _Block] = {}
        self._next_block = 0
        self.stats = Bbm92Stats()

    # -- pairs and sifting ----------------------------------------------------------------------------

    def on_pair(self, pair: DeliveredPair) -> None:
        basis = Basis.Z if self._rng.random() < self._cfg.p_z else Basis.X
        outcome = pair.measure(basis)
        self.stats.measured += 1
        self._send(BasisAnnounce(pair.pair_id, basis))
        peer = self._peer_bases.pop(pair.pair_id, None)
        if peer is None:
            self._measured[pair.pair_id] = (basis, outcome)
        else:
            self._sift(pair.pair_id, basis, outcome, peer)

    def _sift(self, pair_id: Label, basis: Basis, outcome: int, peer: Basis) -> None:
        if basis is peer:
            self.stats.sifted += 1
            self._sifted[pair_id] = (basis, outcome)
            if self._leader and len(self._sifted) >= self._cfg.block_size:
                self._start_block()

    def on_message(self, src: str, message: object) -> None:
        if isinstance(message, BasisAnnounce):
            mine = self._measured.pop(message.pair_id, None)
            if mine is None:
                self._peer_bases[message.pair_id] = message.basis
            else:
                self._sift(message.pair_id, mine[0], mine[1], message.basis)
        elif isinstance(message, BlockStart) and not self._leader:
            self._follow_block(message)
        elif isinstance(message, BlockSample) and self._leader:
            block = self._blocks[message.block_no]
            n = len(block.bases)
            sample = _sample_positions(block.seed, n, self._cfg.sample_fraction)
            own = [block.key_bits[i] for i in sample]
            block.errors = _estimate([block.bases[i] for i in sample], own, message.sample_bits)
            keep = sorted(set(range(n)) - set(sample))
            block.key_bases = [block.bases[i] for i in keep]
            block.key_bits = [block.key_bits[i] for i in keep]
        elif isinstance(message, ParityQuery) and self._leader:
            bits = self._blocks[message.block_no].key_bits
            self._send(ParityAnswer(message.block_no, tuple(_parity(bits, s) for s in message.subsets)))
        elif isinstance(message, ParityAnswer) and not self._leader:
            self._reconcile(message.block_no, message.parities)
        elif isinstance(message, Verify) and self._leader:
            block = self._blocks.pop(message.block_no)
            ok = hmac.compare_digest(_tag(block.seed, block.key_bits), message.tag)
            self._send(Confirm(message.block_no, ok))
            self._finish(message.block_no, block, block.key_bits, ok)
        elif isinstance(message, Confirm) and not self._leader:
            block = self._blocks.pop(message.block_no)
            assert block.corrected is not None
            self._finish(message.block_no, block, block.corrected, message.ok)
        else:
            logger.warning("bbm92 %s: unexpected %s from %s ignored", self.node, type(message).__name__, src)

    # -- blocks ---------------------------------------------------------------------------------------

    def _start_block(self) -> None:
        ids = sorted(self._sifted)[: self._cfg.block_size]
        entries = [self._sifted.pop(i) for i in ids]
        seed = self._rng.randbytes(16)
        block_no = self._next_block
        self._next_block += 1
        bases = [e[0] for e in entries]
        bits = [e[1] for e in entries]
        sample = _sample_positions(seed, len(ids), self._cfg.sample_fraction)
        self._blocks[block_no] = _Block(seed, bases, bits, [])
        self._send(BlockStart(block_no, tuple(ids), seed, tuple(bits[i] for i in sample)))

    def _follow_block(self, msg: BlockStart) -> None:
        missing = [i for i in msg.pair_ids if i not in self._sifted]
        if missing:
            logger.error(
                "bbm92 %s: block %d names %d pairs not sifted here", self.node, msg.block_no, len(missing)
            )
            return
        entries = [self._sifted.pop(i) for i in msg.pair_ids]
        bases = [e[0] for e in entries]
        bits = [e[1] for e in entries]
        n = len(bits)
        sample = _sample_positions(msg.seed, n, self._cfg.sample_fraction)
        mine = [bits[i] for i in sample]
        self._send(BlockSample(msg.block_no, tuple(mine)))
        errors = _estimate([bases[i] for i in sample], mine, msg.sample_bits)
        keep = sorted(set(range(n)) - set(sample))
        block = _Block(msg.seed, bases, [bits[i] for i in keep], [bases[i] for i in keep], errors)
        self._blocks[msg.block_no] = block
        e = max(_rate(errors[Basis.Z]), _rate(errors[Basis.X]))
        block.reconciler = binary_reconcile(
            block.key_bits, e, hashlib.sha256(b"qsdn-bbm92-ec" + msg.seed).digest()
        )
        self._send(ParityQuery(msg.block_no, next(block.reconciler)))

    def _reconcile(self, block_no: int, parities: tuple[int, ...]) -> None:
        block = self._blocks[block_no]
        assert block.reconciler is not None
        try:
            query = block.reconciler.send(parities)
        except StopIteration as done:
            block.corrected, block.leak = done.value
            block.reconciler = None
            self._send(Verify(block_no, _tag(block.seed, block.corrected)))
            return
        self._send(ParityQuery(block_no, query))

    def _finish(self, block_no: int, block: _Block, bits: list[int], ok: bool) -> None:
        assert block.errors is not None
        for b, (err, n) in block.errors.items():
            self.stats.sample_errors[b][0] += err
            self.stats.sample_errors[b][1] += n
        if not ok:
            self.stats.blocks_failed += 1
            logger.info("bbm92 %s: block %d failed verification, discarded", self.node, block_no)
            return
        e_z, e_x = _rate(block.errors[Basis.Z]), _rate(block.errors[Basis.X])
        f = self._cfg.ec_efficiency
        n_z = sum(1 for b in block.key_bases if b is Basis.Z)
        n_x = len(block.key_bases) - n_z
        length = n_z * shor_preskill_fraction(e_x, e_z, f) + n_x * shor_preskill_fraction(e_z, e_x, f)
        out_bits = int(length) // 8 * 8
        self.stats.blocks_ok += 1
        self.stats.ec_leak_bits += block.leak
        self.stats.blocks.append((len(bits), out_bits, e_z, e_x))
        if out_bits == 0:
            return
        key = toeplitz_extract(bits, out_bits, block.seed)
        self._sink.add_block(self.link_id, f"bbm92-{block_no:010d}", key)
        self.stats.key_bits += out_bits
        logger.debug("bbm92 %s: block %d stored, %d bits", self.node, block_no, out_bits)


def _rate(counts: tuple[int, int]) -> float:
    err, n = counts
    return err / n if n else 0.5
