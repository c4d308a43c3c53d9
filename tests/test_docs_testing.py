"""The docs page "Testing your own discretizer" runs: its ```python blocks, in order, in one
namespace."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "testing_discretizers.md"


def python_blocks(text: str) -> list[str]:
    """The bodies of the fenced ```python blocks of a markdown page, in order."""
    return re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M)


def test_python_blocks_are_found():
    blocks = python_blocks("text\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\n```\n")
    assert blocks == ["a = 1\n", "b = 2\n"]


def test_testing_discretizers_page_runs():
    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) >= 5, "the page lost its examples"
    namespace: dict = {"__name__": "docs_testing_discretizers"}
    for i, block in enumerate(blocks):
        code = compile(block, f"{PAGE.name} [python block {i + 1}]", "exec")
        exec(code, namespace)  # noqa: S102 - running the documentation is the point
    assert namespace["report"] is not None
