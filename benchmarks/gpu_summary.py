r"""One table of issue 14's GPU figures, from the JSON results that ``gpu_check.sh`` writes.

Reads ``cifar_train.json`` (eager rows at the recipe's batch, the fastest configuration at larger
batches, sampling), ``cifar_compile.json`` (compiled rows) and ``train_step.json`` (the 2D step,
eager and compiled) from a results folder, whichever exist, and prints (and writes to
``summary.md`` there) one Markdown table: each measurement with its configuration, its figure,
and the issue's target where it has one:

- CIFAR-10 size, N = 30, batch 100 per GPU: >= 115 images/s (4x today's 28.9);
- the 2D step at batch 5000, N = 30: >= 4x faster than today's 0.085 s, i.e. <= 0.0213 s.

Run ``python benchmarks/gpu_summary.py [RESULTS_DIR]`` (default ``benchmarks/results/gpu``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "gpu"
CIFAR_TARGET = 115.0  # images/s at batch 100 (issue 14)
TODAY_2D = 0.085  # s per 2D step, Backprop, batch 5000, N = 30, before issue 14
STEP_2D_TARGET = TODAY_2D / 4

__all__ = ["summary_rows", "markdown", "main"]


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _config(r: dict[str, Any]) -> str:
    return f"{r.get('variant', 'base')}/{r['precision']}/{r['gradient']}/{r['batch_size']}"


def _cifar_figure(r: dict[str, Any]) -> str:
    if r.get("images_per_s") is None:
        return str(r.get("error") or r.get("skipped") or "no result")
    parts = [f"{r['images_per_s']:.1f} images/s", f"{r['step_seconds']:.3f} s/step"]
    if r.get("peak_memory_gib") is not None:
        parts.append(f"{r['peak_memory_gib']:.1f} GiB")
    if r.get("peak_share") is not None:
        parts.append(f"{r['peak_share']:.1%} of measured peak")
    if r.get("compile_seconds") is not None:
        parts.append(f"compile {r['compile_seconds']:.0f} s")
    return ", ".join(parts)


def summary_rows(results: Path) -> list[tuple[str, str, str, str]]:
    """``(measurement, configuration, figure, target)`` for every result found."""
    out: list[tuple[str, str, str, str]] = []
    cifar_rows: list[dict[str, Any]] = []
    for name in ("cifar_train.json", "cifar_compile.json"):
        data = _load(results / name)
        if data is not None:
            cifar_rows += data.get("rows", [])
    train = [r for r in cifar_rows if r["gradient"] != "sampling"]
    for r in train:
        what = {"today": "CIFAR train, today's configuration",
                "scale-best": "CIFAR train, fastest configuration, larger batch"}.get(
                    r.get("label"), "CIFAR train")
        target = ""
        if r["batch_size"] == 100 and r.get("n_steps") == 30:
            ips = r.get("images_per_s")
            met = "met" if ips is not None and ips >= CIFAR_TARGET else "not met"
            target = f">= {CIFAR_TARGET:g} images/s: {met}"
        out.append((what, _config(r) + f", N = {r['n_steps']}", _cifar_figure(r), target))
    done = [r for r in train if r.get("images_per_s")]
    at_recipe = [r for r in done if r["batch_size"] == 100]
    for what, pool in (("CIFAR train, fastest at batch 100", at_recipe),
                       ("CIFAR train, fastest at any batch", done)):
        if pool:
            best = max(pool, key=lambda r: r["images_per_s"])
            out.append((f"**{what}**", _config(best), _cifar_figure(best), ""))
    for r in cifar_rows:
        if r["gradient"] == "sampling":
            out.append(("CIFAR sampling (no grad)", f"{r.get('variant', 'base')}/"
                        f"{r['precision']}, batch {r['batch_size']}, N = {r['n_steps']}",
                        _cifar_figure(r), ""))
    step = _load(results / "train_step.json")
    if step is not None:
        batch = step.get("config", {}).get("batch")
        for r in step.get("rows", []):
            if r.get("n_steps") != 30:
                continue
            config = f"{r['strategy']}, batch {batch}, N = 30"
            if "error" in r:
                out.append(("2D train step", config, r["error"], ""))
                continue
            target = ""
            if batch == 5000 and r["strategy"] not in ("reference", "reference-adjoint"):
                met = "met" if r["seconds"] <= STEP_2D_TARGET else "not met"
                target = f"<= {STEP_2D_TARGET:.4f} s (4x {TODAY_2D} s): {met}"
            out.append(("2D train step", config, f"{r['seconds']:.4f} s/step", target))
    return out


def markdown(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| measurement | configuration | figure | target (issue 14) |",
             "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, nargs="?", default=RESULTS)
    args = p.parse_args(argv)
    if not args.results.is_dir():
        p.error(f"results must be a folder of gpu_check.sh results, got {args.results}")
    text = markdown(summary_rows(args.results))
    (args.results / "summary.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
