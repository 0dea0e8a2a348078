"""One libyang context per process: schema loading, validation, and libyang errors as data.

The context is built once at start-up from qsdn's own modules (``yang/`` in the source tree) and the
IETF modules that pyang installs under ``<prefix>/share/yang/modules/ietf``; it is never mutated
afterwards. Callers convert libyang trees to plain data (XML bytes, dicts) at the boundary: no libyang
node outlives the function that created it.

libyang reports validation errors with a data path (``Data location "/mod:a/b[k='v']"``); we keep
them structured (:class:`ValidationError` with one :class:`ErrorInfo` per libyang error) so that the
NETCONF server renders ``<error-path>`` and the RESTCONF server ``error-path`` from the same record.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libyang
from _libyang import ffi, lib  # type: ignore[import-not-found]
from libyang.util import c2str

from qsdn.errors import ErrorInfo, ErrorType, QsdnError, ValidationError

log = logging.getLogger(__name__)

#: qsdn's own modules.
YANG_DIR = Path(os.environ.get("QSDN_YANG_DIR", Path(__file__).resolve().parents[1] / "yang"))


def ietf_module_dirs() -> list[Path]:
    """Directories holding the IETF/IANA modules that pyang ships (installed beside the interpreter)."""
    dirs: list[Path] = []
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix, "/usr", "/usr/local")):
        for sub in ("ietf", "iana"):
            d = Path(prefix) / "share" / "yang" / "modules" / sub
            if d.is_dir():
                dirs.append(d)
    return dirs


#: Modules every qsdn agent context implements, with the features enabled in each.
AGENT_MODULES: tuple[tuple[str, Sequence[str]], ...] = (
    (
        "ietf-netconf",
        (
            "writable-running",
            "candidate",
            "confirmed-commit",
            "rollback-on-error",
            "validate",
            "startup",
            "xpath",
        ),
    ),
    ("ietf-netconf-with-defaults", ()),
    ("ietf-netconf-monitoring", ()),
    ("ietf-netconf-notifications", ()),
    ("notifications", ()),
    ("etsi-qkd-node-types", ()),
    ("etsi-qkd-sdn-node", ()),
    ("qsdn-qkd-emulation", ()),
    ("qsdn-entanglement", ()),
)

# libyang's LY_VECODE values (libyang 2.1 log.h).
_LYVE_REFERENCE = 4
_LYVE_SYNTAX_XML = 7
_LYVE_SYNTAX_JSON = 8

_LOCATION = re.compile(r'(?:Data|Schema) location "([^"]*)"')
_LOG_LOCK = threading.Lock()
_log_configured = False


def _configure_libyang_logging() -> None:
    """Store libyang errors (with their data paths) in the context; never print them."""
    global _log_configured
    with _LOG_LOCK:
        if not _log_configured:
            lib.ly_log_level(lib.LY_LLERR)
            lib.ly_log_options(lib.LY_LOSTORE)
            lib.ly_set_log_clb(lib.lypy_log_cb, True)
            _log_configured = True


def classify(message: str, vecode: int) -> tuple[str, str | None]:
    """Map a libyang message onto NETCONF error-tag and app-tag (RFC 6241 app. A, RFC 7950 sec. 15)."""
    m = message
    if vecode in (_LYVE_SYNTAX_XML, _LYVE_SYNTAX_JSON) and "namespace" not in m:
        return "malformed-message", None
    if "No module with namespace" in m or "No module named" in m or "unknown namespace" in m.lower():
        return "unknown-namespace", None
    if (
        "not found as a child" in m
        or "Unknown element" in m
        or ("not found" in m and vecode == _LYVE_REFERENCE)
    ):
        return "unknown-element", None
    if "When condition" in m:
        # RFC 7950 section 8.3.1: a node whose "when" is false in a request is an unknown element.
        return "unknown-element", None
    if "missing its key" in m or "Missing key" in m:
        return "missing-element", None
    if "Must condition" in m:
        return "operation-failed", "must-violation"
    if "Unique data" in m or ("unique" in m.lower() and "violat" in m.lower()):
        return "operation-failed", "data-not-unique"
    if "Too many" in m:
        return "operation-failed", "too-many-elements"
    if "Too few" in m:
        return "operation-failed", "too-few-elements"
    if "required instance" in m.lower() or ("leafref" in m.lower() and "instance" in m.lower()):
        return "data-missing", "instance-required"
    if "Mandatory choice" in m:
        return "data-missing", "missing-choice"
    if "Mandatory node" in m:
        return "data-missing", None
    if "Duplicate instance" in m:
        return "operation-failed", "data-not-unique"
    return "invalid-value", None


_QUOTED = re.compile(r'"([^"]+)"')


def _error_info(tag: str, message: str, path: str | None) -> dict[str, str]:
    """RFC 6241 appendix A error-info: the element at fault for the element-related tags."""
    if tag not in ("unknown-element", "missing-element", "bad-element"):
        return {}
    name: str | None = None
    if "not found as a child" in message or "missing its key" in message:
        found = _QUOTED.search(message)
        name = found.group(1) if found else None
    elif path:
        last = path.rstrip("/").rsplit("/", 1)[-1]
        name = last.split("[", 1)[0].split(":")[-1]
    return {"bad-element": name} if name else {}


def _ns(m: libyang.Module) -> str:
    return str(c2str(m.cdata.ns))


def _revision(m: libyang.Module) -> str | None:
    for r in m.revisions():
        return str(r.date())
    return None


def _enable_features(ctx: libyang.Context, mod: libyang.Module, name: str, features: Sequence[str]) -> None:
    """Enable a set of features at once (libyang 2: ``lys_set_implemented`` with the whole list)."""
    keep = [ffi.new("char[]", f.encode()) for f in features]
    arr = ffi.new("char *[]", [*keep, ffi.NULL])
    if lib.lys_set_implemented(mod.cdata, arr) != lib.LY_SUCCESS:
        raise QsdnError(
            f"cannot enable features {', '.join(features)} of YANG module {name!r}: {ctx.error('')}"
        )


class _Context(libyang.Context):
    """A libyang context whose errors keep their structure (message, data path, app-tag)."""

    def error(self, msg: str, *args: Any) -> libyang.LibyangError:
        items: list[ErrorInfo] = []
        err = lib.ly_err_first(self.cdata) if self.cdata else None
        while err:
            text = c2str(err.msg) if err.msg else msg % args
            location = c2str(err.path) if err.path else ""
            found = _LOCATION.search(location)
            path = found.group(1) if found else None
            tag, app_tag = classify(text, int(err.vecode))
            if err.apptag:
                app_tag = c2str(err.apptag)
                if app_tag == "must-violation":
                    # A must with its own error-message replaces libyang's "Must condition ..." text;
                    # the app-tag still says what failed (RFC 7950 section 15.2).
                    tag = "operation-failed"
            items.append(
                ErrorInfo(
                    tag=tag,
                    message=text,
                    type=ErrorType.RPC if tag == "malformed-message" else ErrorType.APPLICATION,
                    path=path or None,
                    app_tag=app_tag,
                    info=_error_info(tag, text, path),
                )
            )
            err = err.next
        if self.cdata:
            lib.ly_err_clean(self.cdata, ffi.NULL)
        e = libyang.LibyangError(msg % args if args else msg)
        e.qsdn_errors = items  # type: ignore[attr-defined]
        return e


def to_qsdn_error(exc: libyang.LibyangError, fallback: str = "invalid data") -> ValidationError:
    items: list[ErrorInfo] = list(getattr(exc, "qsdn_errors", []))
    if not items:
        items = [ErrorInfo(tag="invalid-value", message=str(exc) or fallback)]
    return ValidationError(items[0].message, errors=items)


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    revision: str | None
    namespace: str
    prefix: str
    features: tuple[str, ...]
    filepath: Path | None
    implemented: bool


class SchemaContext:
    """The process's libyang context and what protocols need to know about its modules."""

    def __init__(
        self,
        modules: Sequence[tuple[str, Sequence[str]]] = AGENT_MODULES,
        search_dirs: Sequence[Path] | None = None,
        *,
        only_present: bool = False,
    ) -> None:
        """``only_present``: validate only the modules that have data in a tree (a context that carries
        modules for reference, like the controller's copy of the node model, sets it)."""
        self.only_present = only_present
        _configure_libyang_logging()
        dirs = [YANG_DIR, *ietf_module_dirs()] if search_dirs is None else list(search_dirs)
        self.search_dirs = [d for d in dirs if d.is_dir()]
        self.ctx = _Context(":".join(str(d) for d in self.search_dirs), disable_searchdir_cwd=True)
        for name, features in modules:
            try:
                mod = self.ctx.load_module(name)
            except libyang.LibyangError as exc:
                raise QsdnError(
                    f"cannot load YANG module {name!r} from {', '.join(map(str, self.search_dirs))}: {exc}"
                ) from exc
            if features:
                _enable_features(self.ctx, mod, name, features)
        self._ns_to_module: dict[str, str] = {}
        self._module_to_ns: dict[str, str] = {}
        for m in self.ctx:
            self._ns_to_module[_ns(m)] = m.name()
            self._module_to_ns[m.name()] = _ns(m)

    # --- module facts -------------------------------------------------------------------------
    def module_namespace(self, name: str) -> str | None:
        return self._module_to_ns.get(name)

    def namespace_module(self, namespace: str) -> str | None:
        return self._ns_to_module.get(namespace)

    def modules(self) -> list[ModuleInfo]:
        """The context's modules (computed once: the context never changes after start-up)."""
        cached: list[ModuleInfo] | None = getattr(self, "_modules", None)
        if cached is not None:
            return list(cached)
        out: list[ModuleInfo] = []
        for m in self.ctx:
            feats = tuple(f.name() for f in m.features() if f.state())
            fp = self._module_file(m.name(), _revision(m))
            out.append(
                ModuleInfo(
                    name=m.name(),
                    revision=_revision(m),
                    namespace=_ns(m),
                    prefix=m.prefix(),
                    features=feats,
                    filepath=fp,
                    implemented=bool(m.implemented()),
                )
            )
        self._modules = out
        return list(out)

    def _module_file(self, name: str, revision: str | None) -> Path | None:
        candidates = [f"{name}@{revision}.yang"] if revision else []
        candidates.append(f"{name}.yang")
        for d in self.search_dirs:
            for c in candidates:
                p = d / c
                if p.is_file():
                    return p
        return None

    def schema_text(self, name: str, revision: str | None = None) -> str | None:
        """The YANG text of a loaded module (RFC 6022 get-schema), or None when unknown."""
        for m in self.ctx:
            if m.name() == name and (revision in (None, "", _revision(m))):
                fp = self._module_file(name, _revision(m))
                if fp is not None:
                    return fp.read_text(encoding="utf-8")
                return str(m.print_mem("yang"))
        return None

    # --- data -----------------------------------------------------------------------------------
    @contextmanager
    def parsed(
        self, data: bytes | str, fmt: str = "xml", *, config_only: bool = True, validate: bool = True
    ) -> Iterator[libyang.DNode | None]:
        """Parse (and validate) a data tree; the tree is freed when the block exits."""
        try:
            tree = self.ctx.parse_data_mem(
                data,
                fmt,
                no_state=config_only,
                strict=True,
                validate_present=self.only_present or not config_only,
                parse_only=not validate,
            )
        except libyang.LibyangError as exc:
            raise to_qsdn_error(exc) from None
        try:
            yield tree
        finally:
            if tree is not None:
                tree.free()

    def canonical_config(self, data: bytes | str, fmt: str = "xml", out_fmt: str = "xml") -> str:
        """Validate configuration data and return it printed canonically by libyang ("" when empty)."""
        with self.parsed(data, fmt, config_only=True) as tree:
            if tree is None:
                return ""
            text = str(tree.print_mem(out_fmt, with_siblings=True, pretty=False, trim_default_values=False))
            return text

    def validate_data(self, data: bytes | str, fmt: str = "xml") -> None:
        """Validate a full data tree (configuration and state)."""
        with self.parsed(data, fmt, config_only=False):
            pass

    def convert(self, data: bytes | str, fmt: str, out_fmt: str, *, config_only: bool = False) -> str:
        with self.parsed(data, fmt, config_only=config_only) as tree:
            if tree is None:
                return ""
            text = str(tree.print_mem(out_fmt, with_siblings=True, pretty=False))
            return text


_shared: SchemaContext | None = None
_shared_lock = threading.Lock()


def agent_schema() -> SchemaContext:
    """The process-wide agent schema context, built on first use (call it at start-up)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SchemaContext()
        return _shared
