r"""DiffFlow on MNIST with the official recipe: ``examples/diffflow_cifar.py --preset mnist``.

Every option of ``diffflow_cifar.py`` applies (``--help``); ``--preset`` is fixed to ``mnist``
(DESIGN §4: digits resized to 32x32 as the official code does, lucidrains-style U-Nets of
dim 64, N = 30 on a power-0.5 grid over [1e-3, 0.1], batch 64, 100 epochs). The paper reports
0.93 bits/dim.

Run::

    python examples/diffflow_mnist.py --data-dir data/mnist --out-dir runs/mnist
    python examples/diffflow_mnist.py --smoke                     # tiny model, CPU, seconds
    sdeflow evaluate runs/mnist --steps 30 --lam 1,0              # FID and bits/dim
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any


def _cifar_example():
    path = Path(__file__).resolve().with_name("diffflow_cifar.py")
    spec = importlib.util.spec_from_file_location("diffflow_cifar_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--preset" or a.startswith("--preset=") for a in argv):
        raise SystemExit("diffflow_mnist.py: the preset is mnist; use diffflow_cifar.py "
                         "--preset NAME for the others")
    return _cifar_example().main(["--preset", "mnist", *argv])


if __name__ == "__main__":
    main()
