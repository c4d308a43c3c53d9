r"""The FID-against-N table (markdown) and plot (PNG) of an evaluation, beside the paper's.

The paper (Zhang & Chen, 2021) reports DiffFlow's CIFAR-10 FID by the number of
sampling steps :math:`N`: 28.51, 22.66, 19.05, 17.72, 16.14 at :math:`N` = 5, 10, 20, 50, 100
(:data:`PAPER_CIFAR10_FID`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PAPER_CIFAR10_FID", "fid_table", "plot_fid_vs_steps", "lam_label"]

#: DiffFlow's CIFAR-10 FID by sampling steps N in the paper (DESIGN.md section 4).
PAPER_CIFAR10_FID: dict[int, float] = {5: 28.51, 10: 22.66, 20: 19.05, 50: 17.72, 100: 16.14}


def lam_label(lam: float) -> str:
    r"""``"λ=1 (SDE)"``, ``"λ=0 (ODE)"`` or ``"λ=0.5"``.

    Example:
        >>> lam_label(1.0), lam_label(0.0), lam_label(0.5)
        ('λ=1 (SDE)', 'λ=0 (ODE)', 'λ=0.5')
    """
    kind = {1.0: " (SDE)", 0.0: " (ODE)"}.get(float(lam), "")
    return f"λ={float(lam):g}{kind}"


def _fmt(value: Any) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else \
        f"{value:.2f}"


def fid_table(rows: Sequence[Mapping[str, Any]], *,
              paper: Mapping[int, float] | None = None) -> str:
    r"""A markdown table of FID by :math:`N` (rows) and :math:`\lambda` (columns).

    Arguments:
        rows: ``{"n_steps", "lam", "fid", ...}`` entries, one per setting.
        paper: FID by :math:`N` from the paper, shown in a last column (``None``: no column).

    Example:
        >>> print(fid_table([{"n_steps": 5, "lam": 1.0, "fid": 30.0},
        ...                  {"n_steps": 5, "lam": 0.0, "fid": 40.0}], paper={5: 28.51}))
        | N | λ=1 (SDE) | λ=0 (ODE) | paper |
        |---:|---:|---:|---:|
        | 5 | 30.00 | 40.00 | 28.51 |
    """
    steps = sorted({int(r["n_steps"]) for r in rows})
    lams = list(dict.fromkeys(float(r["lam"]) for r in rows))
    by = {(int(r["n_steps"]), float(r["lam"])): r.get("fid") for r in rows}
    head = ["N", *(lam_label(lam) for lam in lams)] + (["paper"] if paper is not None else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for n in steps:
        cells = [str(n), *(_fmt(by.get((n, lam))) for lam in lams)]
        if paper is not None:
            cells.append(_fmt(paper.get(n)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_fid_vs_steps(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *,
                      paper: Mapping[int, float] | None = None,
                      title: str | None = None) -> Path:
    """Plot FID against :math:`N` (log axis), one line per :math:`\\lambda`, the paper's
    dashed; write a PNG to ``path``.

    Example:
        >>> import tempfile
        >>> out = plot_fid_vs_steps([{"n_steps": 5, "lam": 1.0, "fid": 30.0},
        ...                          {"n_steps": 10, "lam": 1.0, "fid": 20.0}],
        ...                         tempfile.mkdtemp() + "/fid.png")
        >>> out.exists()
        True
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    try:
        for lam in dict.fromkeys(float(r["lam"]) for r in rows):
            points = sorted((int(r["n_steps"]), r["fid"]) for r in rows
                            if float(r["lam"]) == lam and r.get("fid") is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=lam_label(lam))
        if paper:
            ax.plot(*zip(*sorted(paper.items())), "k--", marker="x", label="paper")
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps N")
        ax.set_ylabel("FID")
        ax.set_title(title or "FID against the number of sampling steps")
        ax.legend()
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out
