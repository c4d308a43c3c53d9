"""``retain_freed_memory``: after it, memory freed by one round of large tensors is reused by the
next round without page faults (glibc); without it, glibc hands it back to the OS and the next
round faults it in again. Each case runs in a fresh interpreter (the setting is process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sdeflow.training import retain_freed_memory

SCRIPT = r"""
import json, resource, sys
import torch
from sdeflow.training import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else None
faults = []
for _ in range(4):  # a training step's pattern: many mid-sized tensors, kept, then all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(4 * 2**20 // 4) for _ in range(64)]  # 64 x 4 MiB, touched
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del blocks
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _faults(mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_reused_without_page_faults() -> None:
    retained = _faults("retain")
    if not retained["applied"]:
        pytest.skip("this C library has no mallopt")
    pages = 64 * 4 * 2**20 // 4096  # what one round touches
    assert retained["faults"][0] > pages // 2  # the first round faults its pages in
    assert max(retained["faults"][1:]) < pages // 20  # later rounds reuse them
    default = _faults("default")
    assert max(default["faults"][1:]) > pages // 2  # glibc's default: faulted in every round


def test_bad_threshold_is_named() -> None:
    with pytest.raises(ValueError, match="trim_threshold must be an int"):
        retain_freed_memory(0)
    with pytest.raises(ValueError, match="trim_threshold must be an int"):
        retain_freed_memory(2**40)
