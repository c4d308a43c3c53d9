r"""Paired before/after benchmark: one benchmark script, two git revisions, alternating processes.

A speed comparison between two revisions measured in two separate runs mixes the change with
whatever else the machine did in between. This runner measures both in one run:

1. it exports each revision into its own temporary directory (``git archive``; the name
   ``WORKTREE`` means the working tree as it is now: tracked and untracked, not ignored, files),
   so that nothing in the repository or its git state changes;
2. with ``--script-from b`` (the default) the ``benchmarks/`` scripts of revision ``b`` (meant to
   be the newer) are copied over those of ``a``, so that both revisions are measured by the same
   script and the same reference implementation; ``--script-from each`` runs each revision's own;
3. it runs the script ``--rounds`` times per revision in fresh processes, alternating
   (``a b``, then ``b a``, ...; the swapped order cancels a linear drift of the machine's
   speed), each with ``PYTHONPATH`` and the working directory set to its revision's tree, so
   that each imports its own ``sdeflow``;
4. it matches the rows of the two revisions' JSON results (train step: strategy and N;
   sampling: method and N; CIFAR: variant, precision, gradient, batch and N) and reports per row
   the median seconds of each revision and the median over rounds of the per-round time ratio
   :math:`r = T_b / T_a` (below 1: ``b`` is faster), with its range.

Results go to ``--out-dir`` (default ``benchmarks/results``): ``paired_<script>.json`` and
``paired_<script>.md``. Example (a quick check; the real measurement wants an idle machine and
the scripts' default sizes)::

    python benchmarks/paired.py --a HEAD~1 --b HEAD --rounds 3 train_step.py -- \
        --steps 30 --repeats 3

Everything after the script's name (an optional ``--`` first) is passed to the script; the
runner sets its ``--out`` itself.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORKTREE = "WORKTREE"

__all__ = ["SCRIPTS", "ScriptSpec", "parse_args", "export_tree", "pair_rows", "markdown", "main"]


@dataclass(frozen=True)
class ScriptSpec:
    """How to run one benchmark script and read its rows."""

    out_is_dir: bool  # ``--out DIR`` (else ``--out FILE``)
    json_name: str  # the JSON file it writes
    key: tuple[str, ...]  # the fields naming a row
    seconds: str  # the field holding a row's time


SCRIPTS: dict[str, ScriptSpec] = {
    "train_step.py": ScriptSpec(True, "train_step.json", ("strategy", "n_steps"), "seconds"),
    "sampling.py": ScriptSpec(True, "sampling.json", ("method", "n_steps"), "seconds"),
    "cifar_train.py": ScriptSpec(False, "cifar_train.json",
                                 ("variant", "precision", "gradient", "batch_size", "n_steps"),
                                 "step_seconds"),
}


def _git(*args: str, stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], stdout=stdout,
                          stderr=subprocess.PIPE, check=False)


def resolve(revision: str) -> str:
    """The commit a revision names, or ``WORKTREE``; ``ValueError`` if git knows no such one."""
    if revision == WORKTREE:
        return WORKTREE
    done = _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    if done.returncode != 0:
        raise ValueError(f"git knows no commit {revision!r}")
    return done.stdout.decode().strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The runner's arguments; errors name the argument and what was expected."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default="HEAD", help="the 'before' revision (default HEAD)")
    p.add_argument("--b", default=WORKTREE,
                   help=f"the 'after' revision (default {WORKTREE}: the working tree as it is)")
    p.add_argument("--rounds", type=int, default=3, help="processes per revision (default 3)")
    p.add_argument("--script-from", choices=("a", "b", "each"), default="b",
                   help="whose benchmarks/ scripts both revisions run (default b)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop one run after this long (it then counts as failed)")
    p.add_argument("--python", default=sys.executable, help="the interpreter of every run")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--keep", action="store_true", help="keep the exported trees (printed)")
    p.add_argument("script", help=f"the benchmark script, one of {sorted(SCRIPTS)}")
    p.add_argument("script_args", nargs=argparse.REMAINDER,
                   help="arguments of the script (after an optional --)")
    args = p.parse_args(argv)
    args.script = Path(args.script).name
    if args.script not in SCRIPTS:
        p.error(f"script must be one of {sorted(SCRIPTS)}, got {args.script!r}")
    if args.script_args[:1] == ["--"]:
        args.script_args = args.script_args[1:]
    if any(a == "--out" or a.startswith("--out=") for a in args.script_args):
        p.error("the script's --out is set by the runner; use --out-dir for the paired results")
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.timeout is not None and not args.timeout > 0:
        p.error(f"--timeout must be > 0 seconds, got {args.timeout}")
    for name in ("a", "b"):
        try:
            setattr(args, f"{name}_commit", resolve(getattr(args, name)))
        except ValueError as err:
            p.error(f"--{name}: {err}")
    return args


def export_tree(revision: str, dest: Path) -> None:
    """Writes the files of ``revision`` (a commit, or ``WORKTREE``) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    if revision == WORKTREE:
        listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
        if listed.returncode != 0:
            raise RuntimeError(f"git ls-files failed: {listed.stderr.decode().strip()}")
        for name in filter(None, listed.stdout.decode().split("\0")):
            src = ROOT / name
            if src.is_file():  # a tracked file deleted in the working tree is left out
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
        return
    done = _git("archive", "--format=tar", revision)
    if done.returncode != 0:
        raise RuntimeError(f"git archive {revision} failed: {done.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12
            tar.extractall(dest, filter="data")
        else:  # our own repository's archive
            tar.extractall(dest)  # noqa: S202


def share_scripts(source: Path, dest: Path) -> None:
    """Copies ``source``'s ``benchmarks/*.py`` over ``dest``'s."""
    (dest / "benchmarks").mkdir(exist_ok=True)
    for script in (source / "benchmarks").glob("*.py"):
        shutil.copy2(script, dest / "benchmarks" / script.name)


def run_once(args: argparse.Namespace, tree: Path, out: Path) -> dict[str, Any]:
    """One fresh process of the script in ``tree``; its JSON result, or an ``error``."""
    spec = SCRIPTS[args.script]
    out.mkdir(parents=True, exist_ok=True)
    target = out if spec.out_is_dir else out / spec.json_name
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    command = [args.python, str(tree / "benchmarks" / args.script), *args.script_args,
               "--out", str(target)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True,
                              timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout:g} s"}
    seconds = time.perf_counter() - started
    (out / "stdout.txt").write_text(done.stdout)
    (out / "stderr.txt").write_text(done.stderr)
    result_file = out / spec.json_name
    if done.returncode != 0 or not result_file.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        return {"error": f"exit {done.returncode}: {tail[0][:300]}", "wall_seconds": seconds}
    result = json.loads(result_file.read_text())
    imported = result.get("machine", {}).get("sdeflow")  # where the run's sdeflow came from
    if imported is not None and not Path(imported).resolve().is_relative_to(tree.resolve()):
        return {"error": f"imported sdeflow from {imported}, not from its tree {tree}",
                "wall_seconds": seconds}
    return {"result": result, "wall_seconds": seconds}


def _row_key(row: dict[str, Any], spec: ScriptSpec) -> str:
    return " / ".join(str(row.get(k, "-")) for k in spec.key)


def pair_rows(script: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row: median seconds of each revision, the median over rounds of the per-round ratio
    ``T_b / T_a``, its range and the number of rounds in which both revisions timed the row.

    ``runs``: one dict per round, ``{"a": run, "b": run}``, each run as :func:`run_once`
    returns it.
    """
    spec = SCRIPTS[script]

    def seconds_by_row(run: dict[str, Any]) -> dict[str, float | None]:
        rows = run.get("result", {}).get("rows", [])
        return {_row_key(r, spec): r.get(spec.seconds) for r in rows}

    tables = [(seconds_by_row(r["a"]), seconds_by_row(r["b"])) for r in runs]
    keys = dict.fromkeys(k for a, b in tables for k in [*a, *b])  # first-seen order
    paired = []
    for key in keys:
        pairs = [(a.get(key), b.get(key)) for a, b in tables]
        ratios = [tb / ta for ta, tb in pairs if ta and tb]
        a_times = [ta for ta, _ in pairs if ta]
        b_times = [tb for _, tb in pairs if tb]
        paired.append({
            "row": key, "rounds": len(ratios),
            "a_seconds": statistics.median(a_times) if a_times else None,
            "b_seconds": statistics.median(b_times) if b_times else None,
            "ratio_b_over_a": statistics.median(ratios) if ratios else None,
            "ratio_min": min(ratios) if ratios else None,
            "ratio_max": max(ratios) if ratios else None,
        })
    return paired


def markdown(result: dict[str, Any]) -> str:
    """The paired table: per row, the two revisions' median seconds and the time ratio."""
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    a, b = result["a"], result["b"]
    lines = [
        f"`benchmarks/{result['script']} {' '.join(result['script_args'])}`, "
        f"{result['rounds']} alternating fresh processes per revision (scripts from "
        f"{result['script_from']}); a = {a['revision']} ({a['commit'][:12]}), b = "
        f"{b['revision']} ({b['commit'][:12]}); {result['machine']}. Ratio: time of b over "
        f"time of a, per round, median and range over rounds (below 1: b is faster).",
        "",
        "| row | a (s, median) | b (s, median) | b / a | range | rounds |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['row']} | {num(r['a_seconds'], '.4f')} | "
                     f"{num(r['b_seconds'], '.4f')} | {num(r['ratio_b_over_a'], '.3f')} | "
                     f"{num(r['ratio_min'], '.3f')}-{num(r['ratio_max'], '.3f')} | "
                     f"{r['rounds']} |")
    failed = [f"round {i + 1} {side}: {run[side]['error']}" for i, run in
              enumerate(result["runs"]) for side in ("a", "b") if "error" in run[side]]
    if failed:
        lines += ["", "Failed runs: " + "; ".join(failed) + "."]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sdeflow-paired-"))
    try:
        trees = {"a": work / "a", "b": work / "b"}
        for side, tree in trees.items():
            export_tree(getattr(args, f"{side}_commit"), tree)
        if args.script_from != "each":
            source = trees[args.script_from]
            other = trees["b" if args.script_from == "a" else "a"]
            share_scripts(source, other)
        for side, tree in trees.items():
            if not (tree / "benchmarks" / args.script).exists():
                raise SystemExit(f"--{side} {getattr(args, side)}: no benchmarks/{args.script}")
        runs: list[dict[str, Any]] = []
        for i in range(args.rounds):
            round_: dict[str, Any] = {}
            for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
                print(f"round {i + 1}/{args.rounds}: {side} ({getattr(args, side)})", flush=True)
                round_[side] = run_once(args, trees[side], work / "runs" / f"{i}{side}")
                if "error" in round_[side]:
                    print(f"  failed: {round_[side]['error']}", flush=True)
            runs.append(round_)
        result = {
            "script": args.script, "script_args": args.script_args, "rounds": args.rounds,
            "script_from": args.script_from,
            "a": {"revision": args.a, "commit": args.a_commit},
            "b": {"revision": args.b, "commit": args.b_commit},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, python "
                       f"{platform.python_version()}",
            "rows": pair_rows(args.script, runs),
            "runs": [{side: {k: v for k, v in run.items() if k != "result"}
                      for side, run in round_.items()} for round_ in runs],
        }
    finally:
        if args.keep:
            print(f"exported trees kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"paired_{Path(args.script).stem}"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    if any("error" in run[side] for run in result["runs"] for side in ("a", "b")):
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
