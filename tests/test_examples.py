"""The examples are short programs a reader copies: each runs as a script (``--smoke``: tiny
networks on a generated data set in the real file format) and writes its picture."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize("script", ["diffflow_cifar.py", "diffflow_mnist.py"])
def test_image_examples_run_as_scripts(script: str, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--smoke", "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained 4 steps" in done.stdout
    assert (tmp_path / "run" / "samples.png").read_bytes()[:8] == PNG
    assert (tmp_path / "run" / "checkpoint.pt").exists()
