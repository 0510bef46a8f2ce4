"""docs/claims.md names the test that proves each published figure and promise; every test it names must exist.

Read with ast (no import, no collection run): a test renamed, moved or deleted fails here until the list says
where the claim is proved now. Every claim row names at least one test, or says with "—" why none can.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from tests.support import REPO

CLAIMS = REPO / "docs" / "claims.md"
NODE_ID = re.compile(r"`(tests/[^`\s]+?\.py::[^`\s]+)`")
ROW = re.compile(r"^\| ([RPFDG]\d+) \|")


@cache
def _defined(path: Path) -> frozenset[str]:
    """``name`` for each top-level test function, ``Class::name`` for each test method."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return frozenset(names)


def missing(node_ids: list[str], root: Path = REPO) -> list[str]:
    """The node ids whose file or test function does not exist (a parametrize suffix ``[...]`` is ignored)."""
    out = []
    for node_id in node_ids:
        file, _, name = node_id.partition("::")
        path = root / file
        if not path.is_file() or name.split("[", 1)[0] not in _defined(path):
            out.append(node_id)
    return out


def claim_rows(text: str) -> dict[str, str]:
    return {m.group(1): line for line in text.splitlines() if (m := ROW.match(line))}


def test_every_test_named_in_the_claims_list_exists() -> None:
    text = CLAIMS.read_text(encoding="utf-8")
    ids = NODE_ID.findall(text)
    assert len(ids) > 100, "the claims list names too few tests: the pattern no longer matches it?"
    assert missing(ids) == [], "docs/claims.md names tests that do not exist"


def test_every_claim_names_a_test_or_says_why_none() -> None:
    rows = claim_rows(CLAIMS.read_text(encoding="utf-8"))
    assert len(rows) >= 80, len(rows)
    for key, line in rows.items():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 5, (key, cells)
        proved_by = cells[3]
        assert NODE_ID.search(proved_by) or proved_by.startswith("—"), (key, proved_by)
        if not NODE_ID.search(proved_by):
            assert len(cells[4]) > 20, f"{key}: a claim without a test must say why"


def test_the_check_catches_a_test_that_does_not_exist() -> None:
    """Positive control: a renamed test, a missing file and a parametrized id are told apart."""
    real = "tests/test_claims_index.py::test_every_test_named_in_the_claims_list_exists"
    assert missing([real, real + "[x-1]"]) == []
    assert missing([real + "_renamed", "tests/no_such_file.py::test_x"]) == [
        real + "_renamed",
        "tests/no_such_file.py::test_x",
    ]
