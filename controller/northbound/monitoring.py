"""The RESTCONF server's own state data: the YANG library and restconf-state.

* ``ietf-yang-library`` (RFC 8525, and the deprecated RFC 7895 ``modules-state``) comes from libyang's
  ``ly_ctx_get_yanglib_data``. libyang fills ``location`` with the files it loaded
  (``file:///...``), which is useless to a client and tells it the server's file system; each module
  the server can serve instead points at ``<origin>/yang/<module>@<revision>`` on this server.
* ``ietf-restconf-monitoring`` (RFC 8040 section 9.1) lists the capabilities; there are no streams.

Both are state data: ``content=nonconfig`` or ``all``. The library does not change during the life of
the process (the schema context never does), so its text is built once, with a placeholder for the
origin of the request, which comes from the request and is therefore not used as a cache key.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from lxml import etree

from controller.northbound import datatree
from controller.northbound.datatree import Tree
from controller.northbound.render import load_xml
from qsdn.yang import SchemaContext

YANG_LIBRARY = "ietf-yang-library"
YANG_LIBRARY_NS = "urn:ietf:params:xml:ns:yang:ietf-yang-library"
MONITORING = "ietf-restconf-monitoring"
MONITORING_NS = "urn:ietf:params:xml:ns:yang:ietf-restconf-monitoring"
CAPABILITIES = (
    "urn:ietf:params:restconf:capability:defaults:1.0?basic-mode=explicit",
    "urn:ietf:params:restconf:capability:depth:1.0",
    "urn:ietf:params:restconf:capability:fields:1.0",
    "urn:ietf:params:restconf:capability:with-defaults:1.0",
)
_ORIGIN = "{origin}"


class ServerState:
    """Builds the server's state data for one schema context."""

    def __init__(self, schema: SchemaContext) -> None:
        self.schema = schema
        self._library: str | None = None

    def has(self, module: str) -> bool:
        return self.schema.module_namespace(module) is not None

    def yang_library_version(self) -> str:
        """The revision of ietf-yang-library the server implements (RFC 8040 section 3.3.3)."""
        for info in self.schema.modules():
            if info.name == YANG_LIBRARY and info.revision:
                return info.revision
        return "2019-01-04"

    def merge_into(self, tree: Tree, module: str | None, origin: str) -> None:
        """Add the state data of ``module`` (``None``: all of it) to ``tree``."""
        if module in (None, YANG_LIBRARY) and self.has(YANG_LIBRARY):
            text = self._library_template().replace(_ORIGIN, escape(origin))
            with datatree.parse(self.schema, text, "xml", config_only=False, validate=False) as library:
                tree.merge(library)
        if module in (None, MONITORING) and self.has(MONITORING):
            caps = "".join(f"<capability>{c}</capability>" for c in CAPABILITIES)
            text = f'<restconf-state xmlns="{MONITORING_NS}"><capabilities>{caps}</capabilities>'
            text += "</restconf-state>"
            with datatree.parse(self.schema, text, "xml", config_only=False, validate=False) as state:
                tree.merge(state)

    def _library_template(self) -> str:
        if self._library is None:
            self._library = self._build_library()
        return self._library

    def _build_library(self) -> str:
        node = self.schema.ctx.get_yanglib_data("%u")  # type: ignore[no-untyped-call]
        with Tree(self.schema, node.cdata) as tree:
            text = tree.print("xml")
        root = load_xml(f"<wrap>{text}</wrap>".encode())
        ns = {"yl": YANG_LIBRARY_NS}
        for module in root.findall(".//yl:module", ns) + root.findall(".//yl:import-only-module", ns):
            parent = module.getparent()
            in_state = parent is not None and etree.QName(parent).localname == "modules-state"
            for old in module.findall("yl:location", ns) + module.findall("yl:schema", ns):
                module.remove(old)
            name = module.findtext("yl:name", namespaces=ns)
            revision = module.findtext("yl:revision", namespaces=ns) or None
            if name is None or self.schema.schema_text(name, revision) is None:
                continue
            leaf = etree.Element(f"{{{YANG_LIBRARY_NS}}}{'schema' if in_state else 'location'}")
            leaf.text = f"{_ORIGIN}/yang/{name}" + (f"@{revision}" if revision else "")
            # Node order: location after namespace (RFC 8525), schema after revision (RFC 7895).
            anchor = module.find("yl:revision" if in_state else "yl:namespace", ns)
            if anchor is not None:
                anchor.addnext(leaf)
            else:
                module.append(leaf)
        return "".join(etree.tostring(child, encoding="unicode") for child in root)
