#!/usr/bin/env bash
# GPU check for a session that has a CUDA machine (see DEVELOPERS.md): the GPU-marked tests,
# then the timed CIFAR-10 training benchmark (images/s and peak GPU memory of the paper-size
# networks at N = 30, bf16 and fp32, backprop vs the memory-saving adjoint), in about 8 minutes,
# printing the table last. Installs nothing heavy: the machine has torch, einops, hypothesis and
# torchdiffeq; torchsde and pyro-ppl come as wheels carried in .whl/ (when present).
#
#   bash benchmarks/gpu_check.sh            # JSON and logs to $OUT when set, else benchmarks/results
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
out="${OUT:-benchmarks/results}"
mkdir -p "$out"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, \
'| device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"

status=0
if python3 -c "import pytest" 2>/dev/null; then
    echo "== GPU-marked tests"
    # -o addopts=: no doctest collection of the whole package here, only the GPU tests
    timeout 180 python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/ \
        2>&1 | tee "$out/gpu_tests.log"
    test "${PIPESTATUS[0]}" -eq 0 || status=1
else
    echo "pytest is not installed on this machine: GPU tests skipped"
    status=1
fi

echo "== CIFAR-10 training benchmark"
timeout 300 python3 benchmarks/cifar_train.py --out "$out/cifar_train.json" \
    2>&1 | tee "$out/cifar_train.log"
test "${PIPESTATUS[0]}" -eq 0 || status=1
exit "$status"
