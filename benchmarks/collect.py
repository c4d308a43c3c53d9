"""Copy the benchmark tables of ``benchmarks/results/*.md`` (CPU) and
``benchmarks/results/gpu/*.md`` (written by ``benchmarks/gpu_check.sh``) into
``docs/benchmarks.md``.

Each table goes between the markers ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``
of the page (NAME: ``toy_nll``, ``digits_bpd``, ``train_step``, ``sampling``, and
``gpu/train_step``, ``gpu/sampling``, ``gpu/cifar_train``), so the prose around the tables
stays as written. Run by ``benchmarks/run_all.sh``.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"


def main() -> None:
    page = PAGE.read_text()
    for table in sorted([*RESULTS.glob("*.md"), *RESULTS.glob("gpu/*.md")]):
        name = table.relative_to(RESULTS).with_suffix("").as_posix()
        pattern = re.compile(rf"(<!-- results:{name} -->\n).*?(<!-- /results:{name} -->)", re.S)
        if not pattern.search(page):
            print(f"no markers for {name} in {PAGE.name}; skipped")
            continue
        body = table.read_text().strip() + "\n"
        page = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), page)
        print(f"{name}: updated")
    PAGE.write_text(page)


if __name__ == "__main__":
    main()
