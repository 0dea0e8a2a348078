"""One configuration change across many nodes, all or nothing (SYSTEM.md section 2).

The protocol, per RFC 6241 (sections 7.5, 8.3, 8.4):

1. lock running and candidate on every node (all nodes at once: a NETCONF lock that is taken fails
   with lock-denied instead of waiting, so two controllers cannot deadlock, one of them fails);
2. edit-config on the candidate of every node (the candidate lock is only granted on an unmodified
   candidate, so no discard-changes is needed), then validate;
3. ``commit`` with ``<confirmed/>``, a confirm timeout and a ``persist`` token on every node: each
   node now runs the new configuration but will undo it by itself unless confirmed, even if this
   controller dies or loses the session;
4. the confirming ``commit`` (``persist-id``) on every node; then unlock.

Any failure (an ``<rpc-error>``, a timeout, a node that disappears) rolls every node back:
``cancel-commit`` where a confirmed commit is pending, ``discard-changes`` where the candidate was
edited, and, for nodes whose confirming commit already went through when a later node failed in
step 4, the running configuration read right after locking is put back (``edit-config`` with
``default-operation replace``; the locks are still ours, so nobody changed it in between). A node
that cannot be reached for the rollback undoes the change on its own when its confirm timeout
expires, and an agent that restarts with an unconfirmed commit restores the configuration from
before it. The error names the node, the step and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from lxml import etree

from controller.southbound.base import NodeClient
from qsdn.errors import ErrorInfo, QsdnError

log = logging.getLogger(__name__)


class TransactionError(QsdnError):
    """A multi-node change failed and was rolled back; ``node`` and ``reason`` say where and why."""

    tag = "operation-failed"

    def __init__(
        self,
        node: str,
        step: str,
        reason: str,
        errors: list[ErrorInfo] | None = None,
        *,
        label: str | None = None,
    ) -> None:
        """``node`` is the node's id; ``label`` (its name, say) is what the message calls it."""
        message = f"node {label or node}: {step} failed: {reason}"
        super().__init__(message, info={"node": node, "step": step, "reason": reason})
        if errors:
            self.errors = [self.errors[0], *errors]
        self.node = node
        self.step = step
        self.reason = reason


@dataclass
class _NodeState:
    locked_running: bool = False
    locked_candidate: bool = False
    edited: bool = False
    committed: bool = False
    confirmed: bool = False
    snapshot: bytes | None = None


async def apply_transaction(
    clients: Mapping[str, NodeClient],
    edits: Mapping[str, str],
    *,
    confirm_timeout_s: int = 30,
    step_timeout_s: float = 10.0,
    default_operation: str | None = None,
    before_confirm: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Apply ``edits[node]`` (a config subtree) to every node at once, or to none."""
    txid = str(uuid.uuid4())
    order = sorted(edits)
    states = {n: _NodeState() for n in order}

    async def step(node: str, what: str, call: Awaitable[object]) -> None:
        try:
            await asyncio.wait_for(call, step_timeout_s)
        except TimeoutError:
            raise TransactionError(node, what, f"no answer within {step_timeout_s} s") from None
        except QsdnError as exc:
            raise TransactionError(node, what, exc.first.message, exc.errors) from exc

    async def prepare(n: str) -> None:
        # Requests that do not depend on each other are in flight together. No discard-changes:
        # the candidate lock is only granted on an unmodified candidate (RFC 6241 8.3.5.1).
        c, st = clients[n], states[n]

        async def lock(target: str) -> None:
            await step(n, f"lock {target}", c.lock(target))
            if target == "running":
                st.locked_running = True
            else:
                st.locked_candidate = True

        await _all(lock("running"), lock("candidate"))

        async def snapshot() -> None:
            st.snapshot = await _snapshot(n, c, step_timeout_s)

        async def edit() -> None:
            st.edited = True
            await step(
                n,
                "edit-config",
                c.edit_config(edits[n], target="candidate", default_operation=default_operation),
            )

        await _all(snapshot(), edit())
        await step(n, "validate", c.validate("candidate"))

    async def commit(n: str) -> None:
        await step(
            n,
            "confirmed commit",
            clients[n].commit(confirmed=True, confirm_timeout_s=confirm_timeout_s, persist=txid),
        )
        states[n].committed = True

    async def confirm(n: str) -> None:
        await step(n, "confirming commit", clients[n].commit(persist_id=txid))
        states[n].committed = False
        states[n].confirmed = True

    try:
        # Each phase runs on all nodes at once (NETCONF locks fail instead of waiting, so parallel
        # locking cannot deadlock); a phase completes everywhere before the next one starts.
        await _phase(order, prepare)
        await _phase(order, commit)
        if before_confirm is not None:
            await before_confirm()
        await _phase(order, confirm)
    except BaseException as exc:
        reason = exc if isinstance(exc, TransactionError) else None
        log.warning("transaction %s failed (%s); rolling back %d node(s)", txid, reason or exc, len(order))
        await _rollback(clients, states, txid, step_timeout_s)
        raise
    finally:
        await _unlock(clients, states, step_timeout_s)
    log.info("transaction %s applied on %d node(s)", txid, len(order))


async def _all(*calls: Awaitable[None]) -> None:
    """Await all; once all have finished, raise the first failure."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


async def _phase(order: list[str], run: Callable[[str], Awaitable[None]]) -> None:
    """Run one phase on every node concurrently; raise the first failure (in node order)."""
    results = await asyncio.gather(*(run(n) for n in order), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


async def _rollback(
    clients: Mapping[str, NodeClient], states: Mapping[str, _NodeState], txid: str, timeout_s: float
) -> None:
    async def undo(node: str, st: _NodeState) -> None:
        c = clients[node]
        if st.committed:
            try:
                await asyncio.wait_for(c.cancel_commit(persist_id=txid), timeout_s)
                st.committed = False
            except (QsdnError, TimeoutError) as exc:
                log.error(
                    "node %s: cancel-commit failed (%s); it rolls back at its confirm timeout", node, exc
                )
        if st.confirmed and st.snapshot is not None:
            # Already confirmed before another node failed: put back what it ran before (we still hold
            # its locks, so nobody else changed it in between).
            try:
                await asyncio.wait_for(
                    c.edit_config(st.snapshot, target="running", default_operation="replace"), timeout_s
                )
                st.confirmed = False
            except (QsdnError, TimeoutError) as exc:
                log.error("node %s: restoring the previous configuration failed: %s", node, exc)
        if st.edited:
            with contextlib.suppress(QsdnError, TimeoutError):
                await asyncio.wait_for(c.discard_changes(), timeout_s)

    await asyncio.gather(*(undo(n, st) for n, st in states.items()))


async def _snapshot(node: str, client: NodeClient, timeout_s: float) -> bytes:
    """The node's running configuration as ``<config>`` content, to restore if a later node fails."""
    try:
        data = await asyncio.wait_for(client.get_config("running"), timeout_s)
    except TimeoutError:
        raise TransactionError(node, "get-config", f"no answer within {timeout_s} s") from None
    except QsdnError as exc:
        raise TransactionError(node, "get-config", exc.first.message, exc.errors) from exc
    return b"".join(etree.tostring(child) for child in data)


async def _unlock(
    clients: Mapping[str, NodeClient], states: Mapping[str, _NodeState], timeout_s: float
) -> None:
    async def unlock(node: str, st: _NodeState) -> None:
        c = clients[node]

        async def one(target: str) -> None:
            try:
                await asyncio.wait_for(c.unlock(target), timeout_s)
            except (QsdnError, TimeoutError) as exc:
                log.info("node %s: unlock %s failed: %s", node, target, exc)

        held = [t for t, h in (("candidate", st.locked_candidate), ("running", st.locked_running)) if h]
        await asyncio.gather(*(one(t) for t in held))

    await asyncio.gather(*(unlock(n, st) for n, st in states.items()))
