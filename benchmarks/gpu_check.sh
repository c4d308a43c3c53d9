#!/usr/bin/env bash
# GPU check for a session that has a CUDA machine (see DEVELOPERS.md), in about 5 minutes:
#
#   1. the GPU-marked tests (CUDA contract, adjoint == backprop on the GPU, bf16 training);
#   2. the CIFAR-10 training benchmark: images/s and peak memory of the paper-size U-Nets at
#      N = 30, bf16 and fp32, backprop and the memory-saving adjoint (benchmarks/cifar_train.py);
#   3. the 2D training-step and sampling benchmarks of issue 4 on the GPU;
#   4. examples/diffflow_cifar.py end to end on the GPU with the paper-size U-Nets (a few steps
#      on a generated archive in the real format), killed after its first checkpoint and resumed.
#
# It prints the tables last. It installs nothing heavy: the machine has torch, einops,
# hypothesis, pytest and torchdiffeq; torchsde and pyro-ppl come as wheels carried in .whl/.
#
#   bash benchmarks/gpu_check.sh     # everything to $OUT when set, else benchmarks/results/gpu
#   python benchmarks/collect.py     # then: its tables (copied to benchmarks/results/gpu) into
#                                    # docs/benchmarks.md
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1

status=0
section() { echo; echo "== $1  [$(date +%T)]"; }
check() {  # check SECONDS CMD...: run with a time limit, record a failure, go on
    local limit=$1; shift
    timeout "$limit" "$@"
    local rc=$?
    if [ "$rc" -ne 0 ]; then echo "!! exit $rc: $*"; status=1; fi
}

section "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader \
    || true
python3 -c "import torch, sys; print('python', sys.version.split()[0], '| torch', \
torch.__version__, '| cuda', torch.version.cuda, '| device', torch.cuda.get_device_name(0) \
if torch.cuda.is_available() else None)"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1

section "GPU-marked tests"
# -o addopts=: no doctest collection of the whole package here, only the GPU tests. The slow
# GPU test (a compiled U-Net's adjoint) is left out: compiling takes minutes on that machine;
# run it with -m gpu when there is time.
check 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" -m "gpu and not slow" -rs tests/

section "CIFAR-10 training benchmark (paper-size U-Nets, N = 30)"
check 210 python3 benchmarks/cifar_train.py --out "$out/cifar_train.json"

section "2D training step (issue 4) on the GPU"
check 90 python3 benchmarks/train_step.py --repeats 5 --out "$out"

section "2D sampling (issue 4) on the GPU"
check 60 python3 benchmarks/sampling.py --repeats 5 --out "$out"

section "examples/diffflow_cifar.py: paper-size U-Nets, killed after a checkpoint, resumed"
ex=/tmp/diffflow_cifar_gpu
rm -rf "$ex"
python3 -c "from pathlib import Path; from sdeflow.data import write_tiny_cifar10_archive as w; \
p = Path('$ex/data'); p.mkdir(parents=True); w(p, n_train=256, n_test=16, seed=0)"
common=(--data-dir "$ex/data" --no-verify --no-download --out-dir "$ex/run" --steps 24
        --batch-size 32 --n-start 5 --n-end 10 --ramp-steps 12 --sample-steps 30
        --log-every 4 --plot-every 12 --checkpoint-every 8 --eval-every 0 --eval-size 4
        --ode-tol 1e-3 --no-progress)
# First run: stopped once its step-8 checkpoint exists (SIGKILL, as a preempted job would be).
python3 examples/diffflow_cifar.py "${common[@]}" &
pid=$!
for _ in $(seq 120); do
    sleep 1
    if [ -f "$ex/run/checkpoint.pt" ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
done
kill -9 "$pid" 2>/dev/null && echo "killed the first run after its first checkpoint"
wait "$pid" 2>/dev/null
check 150 python3 examples/diffflow_cifar.py "${common[@]}" --resume
last=$(ls "$ex/run/samples"/*.png 2>/dev/null | tail -1)
[ -n "$last" ] && cp "$last" "$out/cifar_example_samples.png"
grep '"event"' "$ex/run/metrics.jsonl" || true
[ -f "$ex/run/results.json" ] && cat "$ex/run/results.json" || status=1

section "tables"
for f in "$out/train_step.md" "$out/sampling.md" "$out/cifar_train.md"; do
    [ -f "$f" ] && { echo; cat "$f"; }
done
echo; echo "gpu_check: $([ $status -eq 0 ] && echo passed || echo FAILED)"
exit "$status"
