"""Every ```python block of the docs and of the README runs: each page's blocks in order, in
one namespace, in a fresh working directory. (``docs/testing_discretizers.md`` runs in its own test,
``tests/test_docs_testing.py``.)

Blocks fenced as ```bash (commands that need a GPU, several processes or minutes) are not run;
the other checks keep that loophole small: every fence names a language from a short list, so a
python example cannot hide in an unlabelled block, and every relative link between pages
resolves.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
OWN_TEST = {"testing_discretizers.md"}  # tests/test_docs_testing.py runs it
FENCE_LANGUAGES = {"python", "bash", "text", "console", "math"}

README = DOCS.parent / "README.md"
PAGES = sorted(p for p in DOCS.rglob("*.md") if p.name not in OWN_TEST) + [README]
ALL_PAGES = sorted(DOCS.rglob("*.md")) + [README]


def python_blocks(text: str) -> list[str]:
    """The bodies of the fenced ```python blocks of a markdown page, in order."""
    return re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M)


def fence_languages(text: str) -> list[str]:
    """The language tag of every opening fence (``""`` when untagged)."""
    tags, inside = [], False
    for line in text.splitlines():
        m = re.match(r"^```(\S*)\s*$", line)
        if m:
            if not inside:
                tags.append(m.group(1))
            inside = not inside
    return tags


def run_page(page: Path) -> dict:
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(python_blocks(page.read_text())):
        code = compile(block, f"{page.relative_to(DOCS.parent)} [python block {i + 1}]", "exec")
        exec(code, namespace)  # noqa: S102 - running the documentation is the point
    return namespace


def test_helpers_find_blocks_and_fences():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```\nplain\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]
    assert fence_languages(text) == ["python", "bash", "", "python"]


def test_the_docs_exist():
    names = {str(p.relative_to(DOCS)) for p in ALL_PAGES if p != README}
    expected = {"index.md", "concepts.md", "benchmarks.md", "howto/diffflow_from_parts.md",
                "howto/score_diffusion.md", "howto/flow.md", "howto/custom_drift.md",
                "howto/sampling.md", "howto/likelihood.md", "howto/multi_gpu.md",
                "howto/inverse_problem.md", "howto/path_matching.md"}
    assert expected <= names, f"missing pages: {sorted(expected - names)}"
    # the how-to pages and the concepts are examples first: each has code that runs
    for name in expected - {"index.md", "benchmarks.md"}:
        assert python_blocks((DOCS / name).read_text()), f"{name} has no ```python block"


@pytest.mark.parametrize("page", ALL_PAGES, ids=lambda p: str(p.relative_to(DOCS.parent)))
def test_fences_are_labelled_and_links_resolve(page):
    text = page.read_text()
    bad = [t for t in fence_languages(text) if t not in FENCE_LANGUAGES]
    assert not bad, f"{page.name}: fences must be one of {sorted(FENCE_LANGUAGES)}, got {bad}"
    for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (page.parent / target).resolve().is_file(), f"{page.name}: broken link {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS.parent)))
def test_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # pages may write files (checkpoints, PNGs): keep them here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # a page that starts worker processes must not inherit a launcher's environment
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    import torch

    threads = torch.get_num_threads()
    try:
        run_page(page)
    finally:
        torch.set_num_threads(threads)  # a page may set it, as users do
