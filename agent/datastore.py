"""NETCONF configuration datastores: running, candidate and startup (RFC 6241 sections 5, 8.3, 8.4, 8.7).

Each datastore holds its content as canonical XML printed by libyang (top-level data nodes, no
wrapper). Every change goes through the same path: copy, edit (``agent.edit``), validate with
libyang, then a single swap. A change that fails at any step leaves the datastore exactly as it was.

Running and startup are persisted in the node's data directory (atomic rename), so a restart keeps
the configuration. Changes of running are announced to listeners, which may veto them (the node
applies the configuration to its hardware driver and raises when the hardware refuses), and which
emit RFC 6470 ``netconf-config-change`` notifications.

This module does no network I/O; the NETCONF server (``agent.server``) and RPC layer (``agent.rpc``)
call it with the session that asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import libyang
from lxml import etree

from agent.edit import Change, apply_edit
from qsdn.errors import (
    ErrorInfo,
    ErrorType,
    InUseError,
    LockDeniedError,
    OperationNotSupportedError,
    QsdnError,
)
from qsdn.netconf.xml import NC_NS
from qsdn.schema import SchemaIndex
from qsdn.yang import SchemaContext, to_qsdn_error

log = logging.getLogger(__name__)

RUNNING = "running"
CANDIDATE = "candidate"
STARTUP = "startup"
DATASTORES = (RUNNING, CANDIDATE, STARTUP)

_WRAP_OPEN = f'<data xmlns="{NC_NS}">'.encode()
_WRAP_CLOSE = b"</data>"


def wrap(xml: str | bytes) -> etree._Element:
    """Parse top-level data nodes into a ``<data>`` element (trusted input: libyang's own output)."""
    body = xml.encode() if isinstance(xml, str) else xml
    return etree.fromstring(_WRAP_OPEN + body + _WRAP_CLOSE)


def unwrap(root: etree._Element) -> bytes:
    return b"".join(etree.tostring(child) for child in root)


@dataclass(frozen=True)
class SessionInfo:
    """Who asks: used for locks, confirmed commits and RFC 6470 changed-by."""

    session_id: int
    username: str = ""
    source_host: str = ""


@dataclass
class ConfirmedCommit:
    """A confirmed commit in progress (RFC 6241 section 8.4)."""

    rollback_xml: str
    session_id: int
    persist: str | None
    timer: asyncio.TimerHandle | None = None


ChangeListener = Callable[[str, str, list[Change], SessionInfo], Awaitable[None]]


@dataclass
class _Store:
    name: str
    xml: str = ""
    path: Path | None = None


@dataclass
class DatastoreManager:
    schema: SchemaContext
    index: SchemaIndex
    data_dir: Path
    initial_running: str = ""
    confirm_timeout_s: int = 600
    listeners: list[ChangeListener] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stores: dict[str, _Store] = {
            RUNNING: _Store(RUNNING, path=self.data_dir / "running.xml"),
            CANDIDATE: _Store(CANDIDATE),
            STARTUP: _Store(STARTUP, path=self.data_dir / "startup.xml"),
        }
        self.locks: dict[str, int] = {}
        self.lock_times: dict[str, datetime] = {}
        self.candidate_dirty = False
        self.confirmed: ConfirmedCommit | None = None
        self._write_lock = asyncio.Lock()
        self._pending: dict[Path, str | None] = {}
        self._sync_lock = threading.Lock()
        self._sync_task: asyncio.Task[None] | None = None
        running = self._load(self._stores[RUNNING])
        if running is None:
            running = self.schema.canonical_config(self.initial_running) if self.initial_running else ""
            self._stores[RUNNING].xml = running
            self._persist(self._stores[RUNNING])
        startup = self._load(self._stores[STARTUP])
        if startup is None:
            self._stores[STARTUP].xml = running
            self._persist(self._stores[STARTUP])
        self._rollback_file = _Store("confirmed-rollback", path=self.data_dir / "confirmed-rollback.xml")
        pending = self._load(self._rollback_file)
        if pending is not None:
            # The agent stopped while a confirmed commit was unconfirmed (RFC 6241 8.4): undo it.
            log.warning(
                "an unconfirmed commit was pending when the agent stopped; restoring the configuration"
            )
            self._stores[RUNNING].xml = pending
            self._persist(self._stores[RUNNING])
            running = pending
            self._forget_rollback()
        self._stores[CANDIDATE].xml = running

    def _forget_rollback(self) -> None:
        if self._rollback_file.path is not None:
            self._queue(self._rollback_file.path, None)

    # --- persistence ------------------------------------------------------------------------------
    def _load(self, store: _Store) -> str | None:
        if store.path is None or not store.path.exists():
            return None
        text = store.path.read_text(encoding="utf-8")
        try:
            store.xml = self.schema.canonical_config(text) if text.strip() else ""
        except QsdnError as exc:
            raise QsdnError(f"persisted {store.name} datastore {store.path} is invalid: {exc}") from None
        log.info("loaded %s datastore from %s", store.name, store.path)
        return store.xml

    def _persist(self, store: _Store) -> None:
        """Queue the store's content for writing; a background writer saves the latest version.

        The writer (a worker thread) writes a temporary file, fsyncs it and renames it over the old
        one, so the file on disk is always a whole datastore, old or new; a burst of changes costs
        one write. The reply to a client does not wait for the disk: an agent killed within a few
        milliseconds of a change can come back without it (a graceful stop always flushes)."""
        if store.path is not None:
            self._queue(store.path, store.xml)

    def _queue(self, path: Path, content: str | None) -> None:
        with self._sync_lock:
            self._pending[path] = content
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = loop.create_task(self._write_soon(), name="datastore-writer")

    async def _write_soon(self) -> None:
        while self._pending:
            await asyncio.to_thread(self.flush)

    def flush(self) -> None:
        """Write (or remove) every queued file now, durably."""
        with self._sync_lock:
            pending, self._pending = self._pending, {}

        # The rollback file of a confirmed commit goes to disk before the running it protects, and
        # is removed after it, so a crash never leaves an unconfirmed running without its rollback.
        def order(item: tuple[Path, str | None]) -> int:
            rollback = item[0] == self._rollback_file.path
            return 0 if rollback and item[1] is not None else (2 if rollback else 1)

        for path, content in sorted(pending.items(), key=order):
            if content is None:
                path.unlink(missing_ok=True)
                continue
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        if pending:
            fd = os.open(self.data_dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # --- reading ----------------------------------------------------------------------------------
    def get(self, name: str) -> str:
        return self._store(name).xml

    def tree(self, name: str) -> etree._Element:
        return wrap(self._store(name).xml)

    def _store(self, name: str) -> _Store:
        try:
            return self._stores[name]
        except KeyError:
            raise QsdnError(
                f"unknown datastore {name!r}", tag="invalid-value", type=ErrorType.PROTOCOL
            ) from None

    # --- locks (RFC 6241 section 7.5) -------------------------------------------------------------
    def lock(self, name: str, session: SessionInfo) -> None:
        self._store(name)
        holder = self.locks.get(name)
        if holder is not None:
            raise LockDeniedError(
                f"the {name} datastore is locked by session {holder}", info={"session-id": str(holder)}
            )
        if name == CANDIDATE and self.candidate_dirty:
            raise LockDeniedError(
                "the candidate datastore has uncommitted changes; discard or commit them first",
                info={"session-id": "0"},
            )
        if name == RUNNING and self.confirmed is not None and self.confirmed.session_id != session.session_id:
            raise LockDeniedError("a confirmed commit is in progress", info={"session-id": "0"})
        self.locks[name] = session.session_id
        self.lock_times[name] = datetime.now(UTC)

    def unlock(self, name: str, session: SessionInfo) -> None:
        self._store(name)
        holder = self.locks.get(name)
        if holder is None:
            raise QsdnError(f"the {name} datastore is not locked", type=ErrorType.PROTOCOL)
        if holder != session.session_id:
            raise QsdnError(
                f"the {name} datastore is locked by session {holder}, not by this session",
                type=ErrorType.PROTOCOL,
                info={"session-id": str(holder)},
            )
        del self.locks[name]

    def _check_writable(self, name: str, session: SessionInfo) -> None:
        holder = self.locks.get(name)
        if holder is not None and holder != session.session_id:
            raise InUseError(
                f"the {name} datastore is locked by session {holder}",
                info={"session-id": str(holder)},
            )

    async def session_closed(self, session: SessionInfo) -> None:
        """Release the session's locks and undo its unconfirmed, non-persistent commit (RFC 6241 8.4.1)."""
        for name, holder in list(self.locks.items()):
            if holder == session.session_id:
                del self.locks[name]
                if name == CANDIDATE and self.candidate_dirty:
                    # RFC 6241 8.3.5.2: the candidate's uncommitted changes are discarded with the lock.
                    self._stores[CANDIDATE].xml = self._stores[RUNNING].xml
                    self.candidate_dirty = False
        c = self.confirmed
        if c is not None and c.persist is None and c.session_id == session.session_id:
            log.warning("session %d closed with an unconfirmed commit: rolling back", session.session_id)
            await self._rollback_confirmed(session)

    # --- editing ----------------------------------------------------------------------------------
    async def edit(
        self,
        target: str,
        config: etree._Element,
        session: SessionInfo,
        *,
        default_operation: str = "merge",
        test_option: str = "test-then-set",
        error_option: str = "stop-on-error",
    ) -> list[ErrorInfo]:
        """Apply ``<edit-config>``; returns the errors skipped under continue-on-error (else raises)."""
        if target == STARTUP:
            raise OperationNotSupportedError("edit-config on startup is not supported; use copy-config")
        store = self._store(target)
        async with self._write_lock:
            self._check_writable(target, session)
            partial = target == CANDIDATE and test_option == "set"
            skipped: list[ErrorInfo] = []
            if error_option == "continue-on-error":
                config = copy.deepcopy(config)
            while True:
                work = wrap(store.xml)
                result = apply_edit(
                    self.index, work, config, default_operation=default_operation, error_option=error_option
                )
                if result.errors and error_option != "continue-on-error":
                    raise QsdnError(result.errors[0].message, errors=result.errors)
                try:
                    new_xml = self._validated(unwrap(work), partial=partial)
                    break
                except QsdnError as exc:
                    # continue-on-error (RFC 6241 7.2): drop the edit's nodes that fail validation and
                    # apply the rest; anything else is refused whole.
                    if error_option != "continue-on-error" or not _drop_failing(config, exc.errors):
                        raise QsdnError(exc.first.message, errors=[*exc.errors, *result.errors]) from None
                    skipped.extend(exc.errors)
            errors = [*skipped, *result.errors]
            if test_option == "test-only":
                return errors
            await self._commit_store(store, new_xml, result.changes, session)
            return errors

    def _validated(self, xml: bytes, *, partial: bool = False) -> str:
        if not xml.strip():
            return ""
        if partial:
            with self.schema.parsed(xml, "xml", config_only=True, validate=False) as tree:
                return str(tree.print_mem("xml", with_siblings=True, pretty=False)) if tree else ""
        return self.schema.canonical_config(xml)

    async def _commit_store(
        self, store: _Store, new_xml: str, changes: list[Change], session: SessionInfo
    ) -> None:
        old = store.xml
        if new_xml == old:
            return
        if store.name == RUNNING:
            for listener in self.listeners:
                await listener(old, new_xml, changes, session)
        store.xml = new_xml
        self._persist(store)
        if store.name == RUNNING and not self.candidate_dirty:
            # An unmodified candidate is a copy of running (RFC 6241 8.3): it follows running.
            self._stores[CANDIDATE].xml = new_xml
        if store.name == CANDIDATE:
            self.candidate_dirty = new_xml != self._stores[RUNNING].xml

    async def copy_config(
        self, target: str, source: str | None, config: etree._Element | None, session: SessionInfo
    ) -> None:
        """RFC 6241 section 7.3: replace a whole datastore with another or with inline ``<config>``."""
        dst = self._store(target)
        async with self._write_lock:
            self._check_writable(target, session)
            if config is not None:
                new_xml = self._validated(unwrap(config))
            else:
                assert source is not None
                new_xml = self._store(source).xml
            if source == target:
                return
            changes = _diff_changes(dst.xml, new_xml, self.schema.namespace_module)
            await self._commit_store(dst, new_xml, changes, session)

    async def delete_config(self, target: str, session: SessionInfo) -> None:
        """RFC 6241 section 7.4: only startup may be deleted (running cannot)."""
        if target == RUNNING:
            raise QsdnError(
                "the running datastore cannot be deleted",
                tag="operation-not-supported",
                type=ErrorType.PROTOCOL,
            )
        if target == CANDIDATE:
            raise QsdnError(
                "the candidate datastore cannot be deleted; use discard-changes",
                tag="operation-not-supported",
                type=ErrorType.PROTOCOL,
            )
        store = self._store(target)
        async with self._write_lock:
            self._check_writable(target, session)
            store.xml = ""
            self._persist(store)

    def validate(self, source: str | None, config: etree._Element | None) -> None:
        if config is not None:
            self._validated(unwrap(config))
        else:
            assert source is not None
            self._validated(self._store(source).xml.encode())

    def discard_changes(self, session: SessionInfo) -> None:
        self._check_writable(CANDIDATE, session)
        self._stores[CANDIDATE].xml = self._stores[RUNNING].xml
        self.candidate_dirty = False

    # --- commit and confirmed commit (RFC 6241 sections 8.3.4, 8.4) --------------------------------
    async def commit(
        self,
        session: SessionInfo,
        *,
        confirmed: bool = False,
        confirm_timeout_s: int | None = None,
        persist: str | None = None,
        persist_id: str | None = None,
    ) -> None:
        async with self._write_lock:
            self._check_writable(RUNNING, session)
            pending = self.confirmed
            if pending is not None:
                if pending.persist is not None:
                    if persist_id != pending.persist:
                        raise QsdnError(
                            "a persistent confirmed commit is pending; give its persist-id",
                            tag="invalid-value",
                            type=ErrorType.PROTOCOL,
                            info={"bad-element": "persist-id"},
                        )
                elif pending.session_id != session.session_id:
                    raise InUseError(
                        f"a confirmed commit from session {pending.session_id} is pending",
                        info={"session-id": str(pending.session_id)},
                    )
            elif persist_id is not None:
                raise QsdnError(
                    "no confirmed commit with this persist-id is pending",
                    tag="invalid-value",
                    type=ErrorType.PROTOCOL,
                    info={"bad-element": "persist-id"},
                )
            running = self._stores[RUNNING]
            candidate_xml = self._validated(self._stores[CANDIDATE].xml.encode())
            before = running.xml
            changes = _diff_changes(before, candidate_xml, self.schema.namespace_module)
            await self._commit_store(running, candidate_xml, changes, session)
            self._stores[CANDIDATE].xml = running.xml
            self.candidate_dirty = False
            if pending is not None and pending.timer is not None:
                pending.timer.cancel()
            if confirmed:
                timeout = confirm_timeout_s or self.confirm_timeout_s
                rollback = pending.rollback_xml if pending is not None else before
                c = ConfirmedCommit(rollback_xml=rollback, session_id=session.session_id, persist=persist)
                loop = asyncio.get_running_loop()
                c.timer = loop.call_later(timeout, self._confirm_timeout_expired, c)
                self.confirmed = c
                if pending is None:
                    self._rollback_file.xml = rollback
                    self._persist(self._rollback_file)
                log.info("confirmed commit by session %d, timeout %d s", session.session_id, timeout)
            else:
                self.confirmed = None
                self._forget_rollback()

    async def cancel_commit(self, session: SessionInfo, persist_id: str | None = None) -> None:
        c = self.confirmed
        if c is None:
            raise QsdnError(
                "no confirmed commit is in progress", tag="operation-failed", type=ErrorType.PROTOCOL
            )
        if c.persist is not None:
            if persist_id != c.persist:
                raise QsdnError(
                    "the pending confirmed commit is persistent; give its persist-id",
                    tag="invalid-value",
                    type=ErrorType.PROTOCOL,
                    info={"bad-element": "persist-id"},
                )
        elif c.session_id != session.session_id:
            raise QsdnError(
                f"the pending confirmed commit belongs to session {c.session_id}",
                tag="operation-failed",
                type=ErrorType.PROTOCOL,
            )
        async with self._write_lock:
            await self._rollback_confirmed(session)

    def _confirm_timeout_expired(self, c: ConfirmedCommit) -> None:
        if self.confirmed is not c:
            return
        log.warning("confirmed commit timed out: rolling back running")
        task = asyncio.get_running_loop().create_task(self._timeout_rollback(c))
        self._rollback_task = task

    async def _timeout_rollback(self, c: ConfirmedCommit) -> None:
        async with self._write_lock:
            if self.confirmed is c:
                await self._rollback_confirmed(SessionInfo(session_id=0, username="system"))

    async def _rollback_confirmed(self, session: SessionInfo) -> None:
        c = self.confirmed
        if c is None:
            return
        if c.timer is not None:
            c.timer.cancel()
        self.confirmed = None
        running = self._stores[RUNNING]
        changes = _diff_changes(running.xml, c.rollback_xml, self.schema.namespace_module)
        try:
            await self._commit_store(running, c.rollback_xml, changes, session)
        except QsdnError:
            log.exception("rollback of an unconfirmed commit failed")
            raise
        self._stores[CANDIDATE].xml = running.xml
        self.candidate_dirty = False
        self._forget_rollback()

    async def close(self) -> None:
        if self._sync_task is not None and not self._sync_task.done():
            await self._sync_task
        self.flush()
        if self.confirmed is not None and self.confirmed.timer is not None:
            self.confirmed.timer.cancel()
        task = getattr(self, "_rollback_task", None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- filters ----------------------------------------------------------------------------------
    def xpath_select(self, xml: str, select: str, nsmap: dict[str | None, str], *, config_only: bool) -> str:
        """RFC 6241 section 8.9 XPath filter: nodes selected by ``select`` with their ancestors."""
        expr = _xml_prefixes_to_modules(select, nsmap, self.schema)
        if not xml.strip():
            return ""
        with self.schema.parsed(xml, "xml", config_only=config_only, validate=False) as tree:
            if tree is None:
                return ""
            result: libyang.DNode | None = None
            try:
                found = list(tree.find_all(expr))
            except libyang.LibyangError as exc:
                err = to_qsdn_error(exc)
                raise QsdnError(
                    f"invalid XPath filter {select!r}: {err.first.message}",
                    tag="invalid-value",
                    type=ErrorType.PROTOCOL,
                    info={"bad-attribute": "select", "bad-element": "filter"},
                ) from None
            try:
                for node in found:
                    dup = node.duplicate(with_parents=True, recursive=True)
                    top = dup
                    parent = top.parent()
                    while parent is not None:
                        top, parent = parent, parent.parent()
                    if result is None:
                        result = top
                    else:
                        result.merge(top, with_siblings=True, destruct=True)
                if result is None:
                    return ""
                return str(result.print_mem("xml", with_siblings=True, pretty=False))
            finally:
                if result is not None:
                    result.free()


_STEP = re.compile(r"^(?:[\w.\-]+:)?([\w.\-]+)((?:\[[^\]]*\])*)$")
_PRED = re.compile(r"\[(?:[\w.\-]+:)?([\w.\-]+)=(?:'([^']*)'|\"([^\"]*)\")\]")


def _drop_failing(config: etree._Element, errors: list[ErrorInfo]) -> bool:
    """Remove from an edit the deepest element each error path points at; whether any was removed."""
    removed = False
    for err in errors:
        if not err.path:
            continue
        node: etree._Element | None = config
        for step in _split_path(err.path):
            m = _STEP.match(step)
            if m is None or node is None:
                node = None
                break
            name, preds = m.group(1), dict((k, a or b) for k, a, b in _PRED.findall(m.group(2)))
            nxt = None
            for child in node:
                if not isinstance(child.tag, str) or etree.QName(child).localname != name:
                    continue
                if all(
                    any(etree.QName(k).localname == key and (k.text or "").strip() == val for k in child)
                    for key, val in preds.items()
                ):
                    nxt = child
                    break
            if nxt is None:
                break
            node = nxt
        if node is not None and node is not config and node.getparent() is not None:
            node.getparent().remove(node)  # type: ignore[union-attr]
            removed = True
    return removed


def _split_path(path: str) -> list[str]:
    steps, cur, quote = [], "", ""
    for ch in path.strip("/"):
        if quote:
            cur += ch
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            cur += ch
        elif ch == "/":
            steps.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        steps.append(cur)
    return steps


def _diff_changes(old: str, new: str, ns_module: Callable[[str], str | None]) -> list[Change]:
    """Coarse RFC 6470 edit list for whole-datastore changes (commit, rollback): per top-level node."""
    if old == new:
        return []
    old_root, new_root = wrap(old), wrap(new)
    olds = {c.tag: etree.tostring(c) for c in old_root}
    news = {c.tag: etree.tostring(c) for c in new_root}
    changes: list[Change] = []
    for tag in sorted(set(olds) | set(news)):
        ns = etree.QName(tag).namespace or ""
        name = etree.QName(tag).localname
        path = f"/{ns_module(ns) or ns}:{name}"
        if tag not in olds:
            changes.append(Change("create", path))
        elif tag not in news:
            changes.append(Change("delete", path))
        elif olds[tag] != news[tag]:
            changes.append(Change("replace", path))
    return changes


_PREFIXED = re.compile(r"(?<![\w\-.'\"])([A-Za-z_][\w\-.]*):(?=[A-Za-z_*])")


def _xml_prefixes_to_modules(expr: str, nsmap: dict[str | None, str], schema: SchemaContext) -> str:
    """Rewrite XML namespace prefixes in an XPath into libyang's module-name prefixes."""

    def repl(m: re.Match[str]) -> str:
        prefix = m.group(1)
        ns = nsmap.get(prefix)
        if ns is None:
            if schema.module_namespace(prefix) is not None:
                return m.group(0)
            raise QsdnError(
                f"XPath filter uses undeclared prefix {prefix!r}",
                tag="invalid-value",
                type=ErrorType.PROTOCOL,
                info={"bad-attribute": "select", "bad-element": "filter"},
            )
        module = schema.namespace_module(ns)
        if module is None:
            raise QsdnError(
                f"XPath filter prefix {prefix!r} names an unknown namespace {ns}",
                tag="unknown-namespace",
                type=ErrorType.PROTOCOL,
                info={"bad-namespace": ns, "bad-element": "filter"},
            )
        return f"{module}:"

    # Leave string literals untouched.
    parts = re.split(r"('[^']*'|\"[^\"]*\")", expr)
    return "".join(p if p[:1] in ("'", '"') else _PREFIXED.sub(repl, p) for p in parts)
