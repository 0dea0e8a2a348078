"""qsdn's ETSI GS QKD 015 modules against the official ETSI texts (read from ../shared at test time).

* `pyang -f tree` of ours and of the official modules are identical;
* statement by statement, the modules differ only in prose (descriptions, references, contact,
  organization) and in the declared deviations: the three `when` conditions and yang-version 1.1;
* every instance document gets the same verdict, for the same reason, from qsdn's modules and from the
  official module with the `when` fix applied here, in a temporary folder (a test-time transformation of
  the reference text; nothing of it is copied into the repository);
* the unfixed official module rejects a valid PHYS link (the defect), TeraFlowSDN's patched copy fixes
  only two of the three conditions;
* TeraFlowSDN's mock-node data are rejected for strings in uint32 leaves, and accepted once converted.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libyang
import pytest
from pyang import context as pyang_context
from pyang import repository as pyang_repository

from tests.conformance.yangpaths import (
    EMULATION_MODULE,
    ENTANGLEMENT_MODULE,
    IETF_DIR,
    INVALID_DIR,
    INVALID_INSTANCES,
    NODE_MODULE,
    NOTIFICATIONS_MODULE,
    OFFICIAL_MISSING_REASON,
    OFFICIAL_YANG_DIR,
    TFS_INSTANCES_DIR,
    TFS_MISSING_REASON,
    TYPES_MODULE,
    VALID_DIR,
    VALID_INSTANCES,
    YANG_DIR,
    make_context,
    validate_instance,
)

pytestmark = pytest.mark.skipif(not OFFICIAL_YANG_DIR.is_dir(), reason=OFFICIAL_MISSING_REASON)

TFS_VARIANT_DIR = OFFICIAL_YANG_DIR / "variants" / "tfs-mock-qkd-node"

# The fix, as (official text, qsdn text) pairs: each must occur exactly once in the official module.
WHEN_FIX = (
    ("when \"qkdl_type = 'VIRT'\"", "when \"derived-from-or-self(qkdl_type, 'etsi-qkdn-types:VIRT')\""),
    ("when \"qkdl_type = 'PHYS'\"", "when \"derived-from-or-self(qkdl_type, 'etsi-qkdn-types:PHYS')\""),
    ("when \"../qkdl_type = 'PHYS'\"", "when \"derived-from-or-self(../qkdl_type, 'etsi-qkdn-types:PHYS')\""),
    # derived-from-or-self() is a YANG 1.1 XPath function.
    ('yang-version "1";', 'yang-version "1.1";'),
)

# libyang reports the first failing condition, on a phys_*, virt_* or phys_perf node.
UNFIXED_WHEN_FAILURE = re.compile(r"When condition \"(\.\./)?qkdl_type = '(PHYS|VIRT)'\" not satisfied")


def pyang_exe() -> str:
    candidate = Path(sys.executable).parent / "pyang"
    return str(candidate) if candidate.exists() else "pyang"


def official_with_when_fix() -> str:
    text = (OFFICIAL_YANG_DIR / NODE_MODULE).read_text(encoding="utf-8")
    for old, new in WHEN_FIX:
        assert text.count(old) == 1, f"official text changed: {old!r} found {text.count(old)} times"
        text = text.replace(old, new)
    return text


# ------------------------------------------------------------------------------------------------
# Schema equality
# ------------------------------------------------------------------------------------------------
def pyang_tree(module: Path, search_dir: Path) -> str:
    result = subprocess.run(
        [pyang_exe(), "-f", "tree", "-p", str(search_dir), "-p", str(IETF_DIR), str(module)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_pyang_tree_identical() -> None:
    """(The types module has no data nodes, hence an empty tree: it is compared statement by statement.)"""
    ours = pyang_tree(YANG_DIR / NODE_MODULE, YANG_DIR)
    official = pyang_tree(OFFICIAL_YANG_DIR / NODE_MODULE, OFFICIAL_YANG_DIR)
    assert ours.startswith("module: etsi-qkd-sdn-node\n")
    assert ours == official, "\n".join(
        difflib.unified_diff(official.splitlines(), ours.splitlines(), "official", "qsdn", lineterm="")
    )


PROSE = frozenset({"description", "reference", "organization", "contact"})


def statement_lines(path: Path, search_dir: Path) -> list[str]:
    """Every statement of a module as `/keyword arg/keyword arg...`, prose statements left out."""
    ctx = pyang_context.Context(pyang_repository.FileRepository(f"{search_dir}:{IETF_DIR}", use_env=False))
    module = ctx.add_module(str(path), path.read_text(encoding="utf-8"))
    assert module is not None, [e for e in ctx.errors]
    lines: list[str] = []

    def walk(stmt: Any, prefix: str) -> None:
        for sub in stmt.substmts:
            if sub.keyword in PROSE:
                continue
            keyword = sub.keyword if isinstance(sub.keyword, str) else ":".join(sub.keyword)
            line = f"{prefix}/{keyword} {sub.arg}"
            lines.append(line)
            walk(sub, line)

    walk(module, "")
    return lines


def test_types_module_statements_identical_but_prose() -> None:
    ours = statement_lines(YANG_DIR / TYPES_MODULE, YANG_DIR)
    official = statement_lines(OFFICIAL_YANG_DIR / TYPES_MODULE, OFFICIAL_YANG_DIR)
    assert ours == official
    identities = [line for line in ours if line.startswith("/identity ") and line.count("/") == 1]
    assert len(identities) == 41


def test_node_module_differs_only_by_declared_deviations() -> None:
    ours = statement_lines(YANG_DIR / NODE_MODULE, YANG_DIR)
    official = statement_lines(OFFICIAL_YANG_DIR / NODE_MODULE, OFFICIAL_YANG_DIR)
    assert len(ours) == len(official)
    differences = sorted((o, q) for o, q in zip(official, ours, strict=True) if o != q)
    link = "/grouping qkd_links/container qkd_links/list qkd_link"
    assert differences == sorted(
        [
            ("/yang-version 1", "/yang-version 1.1"),
            (
                f"{link}/uses virtual_link_spec/when qkdl_type = 'VIRT'",
                f"{link}/uses virtual_link_spec/when derived-from-or-self(qkdl_type, 'etsi-qkdn-types:VIRT')",
            ),
            (
                f"{link}/uses physical_link_spec/when qkdl_type = 'PHYS'",
                f"{link}/uses physical_link_spec/when derived-from-or-self(qkdl_type, 'etsi-qkdn-types:PHYS')",
            ),
            (
                f"{link}/container qkdl_performance/uses physical_link_perf/when ../qkdl_type = 'PHYS'",
                f"{link}/container qkdl_performance/uses physical_link_perf/when "
                "derived-from-or-self(../qkdl_type, 'etsi-qkdn-types:PHYS')",
            ),
        ]
    )


def test_our_when_conditions_equal_the_test_time_fix() -> None:
    """The fixed official text used below has exactly our conditions."""
    ours = [line for line in statement_lines(YANG_DIR / NODE_MODULE, YANG_DIR) if "/when " in line]
    fixed = official_with_when_fix()
    assert len(ours) == 3
    for line in ours:
        assert f'when "{line.split("/when ", 1)[1]}"' in fixed


# ------------------------------------------------------------------------------------------------
# Cross-validation: qsdn modules vs official module with the when fix
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fixed_official_ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[libyang.Context]:
    folder = tmp_path_factory.mktemp("official-when-fixed")
    (folder / NODE_MODULE).write_text(official_with_when_fix(), encoding="utf-8")
    shutil.copy(OFFICIAL_YANG_DIR / TYPES_MODULE, folder / TYPES_MODULE)
    # qsdn's own modules on top, so that every instance document can be checked.
    shutil.copy(YANG_DIR / EMULATION_MODULE, folder / EMULATION_MODULE)
    shutil.copy(YANG_DIR / ENTANGLEMENT_MODULE, folder / ENTANGLEMENT_MODULE)
    shutil.copy(YANG_DIR / NOTIFICATIONS_MODULE, folder / NOTIFICATIONS_MODULE)
    ctx = make_context(folder, IETF_DIR)
    assert Path(ctx.get_module("etsi-qkd-sdn-node").filepath()).parent == folder
    yield ctx
    ctx.destroy()


@pytest.fixture(scope="module")
def unfixed_official_ctx() -> Iterator[libyang.Context]:
    ctx = make_context(OFFICIAL_YANG_DIR, IETF_DIR, modules=("etsi-qkd-node-types", "etsi-qkd-sdn-node"))
    assert Path(ctx.get_module("etsi-qkd-sdn-node").filepath()).parent == OFFICIAL_YANG_DIR
    yield ctx
    ctx.destroy()


@pytest.fixture(scope="module")
def tfs_variant_ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[libyang.Context]:
    if not TFS_VARIANT_DIR.is_dir():
        pytest.skip(f"TFS variant not found at {TFS_VARIANT_DIR}")
    # The variant folder holds only the node module; the types module is the official one.  Both go
    # into a folder of their own: libyang would otherwise pick the official node module.
    folder = tmp_path_factory.mktemp("tfs-variant")
    shutil.copy(TFS_VARIANT_DIR / NODE_MODULE, folder / NODE_MODULE)
    shutil.copy(OFFICIAL_YANG_DIR / TYPES_MODULE, folder / TYPES_MODULE)
    ctx = make_context(folder, IETF_DIR, modules=("etsi-qkd-node-types", "etsi-qkd-sdn-node"))
    assert Path(ctx.get_module("etsi-qkd-sdn-node").filepath()).parent == folder
    yield ctx
    ctx.destroy()


@pytest.fixture(scope="module")
def ours_ctx() -> Iterator[libyang.Context]:
    ctx = make_context(YANG_DIR, IETF_DIR)
    yield ctx
    ctx.destroy()


@pytest.mark.parametrize(("name", "kind"), sorted(VALID_INSTANCES.items()))
def test_valid_instance_valid_under_fixed_official(
    fixed_official_ctx: libyang.Context, name: str, kind: str
) -> None:
    validate_instance(fixed_official_ctx, VALID_DIR / name, kind)


@pytest.mark.parametrize("name", sorted(INVALID_INSTANCES))
def test_invalid_instance_invalid_under_fixed_official(
    fixed_official_ctx: libyang.Context, name: str
) -> None:
    rejection = INVALID_INSTANCES[name]
    with pytest.raises(libyang.LibyangError) as excinfo:
        validate_instance(fixed_official_ctx, INVALID_DIR / name, rejection.kind)
    assert rejection.message in str(excinfo.value)


# ------------------------------------------------------------------------------------------------
# The defect, documented
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["phys-link-full.xml", "session-abc-node-a.xml", "session-abc-node-b.xml"])
def test_unfixed_official_rejects_valid_links(
    ours_ctx: libyang.Context, unfixed_official_ctx: libyang.Context, name: str
) -> None:
    kind = VALID_INSTANCES[name]
    validate_instance(ours_ctx, VALID_DIR / name, kind)
    with pytest.raises(libyang.LibyangError) as excinfo:
        validate_instance(unfixed_official_ctx, VALID_DIR / name, kind)
    assert UNFIXED_WHEN_FAILURE.search(str(excinfo.value)), str(excinfo.value)


def test_unfixed_official_accepts_node_without_dependent_leaves(
    unfixed_official_ctx: libyang.Context,
) -> None:
    """Only the dependent leaves trip the condition: a bare node is fine, so the defect is the `when`."""
    validate_instance(unfixed_official_ctx, VALID_DIR / "node-minimal.xml", "config")


def test_tfs_patch_fixes_link_leaves_but_not_phys_perf(tfs_variant_ctx: libyang.Context) -> None:
    # phys_* and virt_* leaves: accepted by TeraFlowSDN's patched copy ...
    validate_instance(tfs_variant_ctx, VALID_DIR / "session-abc-node-b.xml", "config")
    # ... but its unpatched third condition still rejects a PHYS link's physical performance.
    with pytest.raises(libyang.LibyangError) as excinfo:
        validate_instance(tfs_variant_ctx, VALID_DIR / "phys-link-full.xml", "data")
    assert "When condition \"../qkdl_type = 'PHYS'\" not satisfied" in str(excinfo.value)


# ------------------------------------------------------------------------------------------------
# Third-party data: TeraFlowSDN mock QKD nodes
# ------------------------------------------------------------------------------------------------
TFS_NODES = ["qkd-node-01.json", "qkd-node-02.json", "qkd-node-03.json"]
INTEGER_TYPES = frozenset({"int8", "int16", "int32", "uint8", "uint16", "uint32"})  # 64-bit: strings


def tfs_node_document(name: str) -> dict[str, Any]:
    """The 015 part of a TFS (freeconf) startup file, as an RFC 7951 document."""
    if not TFS_INSTANCES_DIR.is_dir():
        pytest.skip(TFS_MISSING_REASON)
    raw = json.loads((TFS_INSTANCES_DIR / name).read_text(encoding="utf-8"))
    # freeconf nests by module name; RFC 7951 qualifies the top-level member instead.
    return {"etsi-qkd-sdn-node:qkd_node": raw["etsi-qkd-sdn-node"]["qkd_node"]}


def numbers_from_strings(value: Any, schema: libyang.SNode | None) -> Any:
    """Turn JSON strings into numbers where the schema leaf is an integer of at most 32 bits."""
    if isinstance(value, list):
        return [numbers_from_strings(item, schema) for item in value]
    if isinstance(value, dict):
        assert schema is not None
        children = {child.name(): child for child in schema.children()}
        return {
            key: numbers_from_strings(item, children.get(key.rsplit(":", 1)[-1]))
            for key, item in value.items()
        }
    if (
        isinstance(value, str)
        and isinstance(schema, libyang.SLeaf | libyang.SLeafList)
        and schema.type().basename() in INTEGER_TYPES
    ):
        return int(value)
    return value


@pytest.mark.parametrize("name", TFS_NODES)
def test_tfs_node_data_rejected_for_strings_in_numbers(ours_ctx: libyang.Context, name: str) -> None:
    document = tfs_node_document(name)
    with pytest.raises(libyang.LibyangError, match="Invalid non-number-encoded uint32 value"):
        ours_ctx.parse_data_mem(
            json.dumps(document), "json", strict=True, no_state=True, validate_present=True
        )


@pytest.mark.parametrize("name", TFS_NODES)
def test_tfs_node_data_accepted_with_numbers(ours_ctx: libyang.Context, name: str) -> None:
    document = tfs_node_document(name)
    node = next(ours_ctx.find_path("/etsi-qkd-sdn-node:qkd_node"))
    fixed = {"etsi-qkd-sdn-node:qkd_node": numbers_from_strings(document["etsi-qkd-sdn-node:qkd_node"], node)}
    assert fixed != document
    tree = ours_ctx.parse_data_mem(
        json.dumps(fixed), "json", strict=True, no_state=True, validate_present=True
    )
    assert tree is not None
    try:
        interfaces = json.loads(tree.print_mem("json", with_siblings=True))["etsi-qkd-sdn-node:qkd_node"][
            "qkd_interfaces"
        ]["qkd_interface"]
        assert all(isinstance(itf["qkdi_id"], int) for itf in interfaces)
    finally:
        tree.free()
