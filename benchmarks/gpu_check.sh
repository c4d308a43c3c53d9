#!/usr/bin/env bash
# The one prepared GPU check (issue 14; see DEVELOPERS.md), within about 9 minutes on an H200.
# In order of priority, each step with a time limit taken from what is left of the budget:
#
#   1. the GPU-marked tests;
#   2. CIFAR-10 training rows (benchmarks/cifar_train.py, paper-size U-Nets, N = 30): today's
#      configuration (eager, bf16, stochastic adjoint, batch 100) beside the eager levers at
#      batch 100 (segment checkpointing, fp16, channels_last), then the fastest of them at
#      larger batches until one does not fit, and sampling images/s at N = 100 (bf16, no grad);
#   3. the 2D training step at batch 5000, N = 30, eager beside torch.compile(mode=
#      "reduce-overhead") (CUDA graphs), against the official algorithm (both gradient paths);
#   4. compiled CIFAR-10 rows (torch.compile default, max-autotune-no-cudagraphs,
#      reduce-overhead), the inductor cache kept in outputs/inductor-cache;
#   5. the 2D sampling benchmark (issue 4), if time is left;
#   6. `sdeflow train --preset cifar-b` end to end with the paper-size U-Nets (killed after its
#      first checkpoint, resumed by the same command), if time is left;
#   7. OPTIONAL: `sdeflow sample` and `sdeflow evaluate` of that run folder;
#   8. one summary table (benchmarks/gpu_summary.py), printed last.
#
# It installs nothing heavy: the machine has torch, einops, hypothesis, pytest and torchdiffeq;
# torchsde and pyro-ppl come as wheels carried in .whl/. Results go to benchmarks/results/gpu;
# with $OUT set (the device tool), also $OUT/gpu_check.log, $OUT/summary.md, the results as
# $OUT/gpu_results.tar.gz (unpack with: tar -xzf gpu_results.tar.gz -C benchmarks/results) and
# the inductor cache as $OUT/inductor-cache.tar.gz when it is under 15 MiB: carried back as
# outputs/inductor-cache.tar.gz, it is unpacked first, so the next run compiles little.
#
#   bash benchmarks/gpu_check.sh            # GPU_CHECK_BUDGET=SECONDS changes the 540 s budget
#   python benchmarks/collect.py            # then: the tables into docs/benchmarks.md
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
res=benchmarks/results/gpu
mkdir -p "$res"
log="${OUT:-$res}/gpu_check.log"
exec > >(tee "$log") 2>&1

budget=${GPU_CHECK_BUDGET:-540}
status=0
section() { echo; echo "== $1  [$(date +%T), ${SECONDS}s of ${budget}s]"; }
left() { echo $((budget - SECONDS)); }
limit() {  # limit WANTED [RESERVE]: WANTED, or what is left after RESERVE if less
    local l=$(( $(left) - ${2:-0} ))
    [ "$l" -lt 1 ] && l=1
    [ "$l" -lt "$1" ] && echo "$l" || echo "$1"
}
enough() {  # enough SECONDS: is that much of the budget left? (else say the step is skipped)
    [ "$(left)" -ge "$1" ] && return 0
    echo "-- skipped: $(left) s of the budget left, the step wants $1 s"; return 1
}
check() {  # check SECONDS CMD...: run with a time limit, record a failure, go on
    local limit=$1; shift
    timeout "$limit" "$@"
    local rc=$?
    if [ "$rc" -ne 0 ]; then echo "!! exit $rc: $*"; status=1; fi
}
snapshot() {  # results so far to $OUT (a run stopped from outside keeps them)
    [ -n "${OUT:-}" ] || return 0
    tar -czf "$OUT/gpu_results.tar.gz" -C benchmarks/results gpu 2>/dev/null || true
}

# Inductor's compiled graphs, kept between runs (and machines, through $OUT and carry).
cache="$PWD/outputs/inductor-cache"
if [ -f outputs/inductor-cache.tar.gz ] && [ ! -d "$cache" ]; then
    tar -xzf outputs/inductor-cache.tar.gz -C outputs && echo "inductor cache unpacked"
fi
mkdir -p "$cache"
export TORCHINDUCTOR_CACHE_DIR="$cache" TORCHINDUCTOR_FX_GRAPH_CACHE=1 \
    TORCHINDUCTOR_AUTOGRAD_CACHE=1

section "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader \
    || true
python3 -c "import torch, sys; print('python', sys.version.split()[0], '| torch', \
torch.__version__, '| cuda', torch.version.cuda, '| device', torch.cuda.get_device_name(0) \
if torch.cuda.is_available() else None)"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1

section "1. GPU-marked tests"
# -o addopts=: no doctest collection of the whole package here, only the GPU tests. The slow
# GPU test (a compiled U-Net's adjoint) is left out: run it with -m gpu when there is time.
check "$(limit 120)" python3 -m pytest -q -p no:cacheprovider -o addopts="" \
    -m "gpu and not slow" -rs tests/

section "2. CIFAR-10 training: today's configuration, eager levers, larger batches, sampling"
# Rows in order: today's (base/bf16/adjoint/100) first; --time-limit stops starting rows while
# time is left for the steps below.
if enough 120; then
    check "$(limit 230 170)" python3 benchmarks/cifar_train.py \
        --configs "base/bf16/adjoint/100,base/bf16/checkpointed:5/100,base/bf16/checkpointed:10/100,base/fp16/adjoint/100,channels_last/bf16/adjoint/100" \
        --sample-steps 100 --sample-batch 200 --scale-best 300,800 \
        --warmup 1 --iters 2 --time-limit "$(limit 170 240)" --out "$res/cifar_train.json"
    snapshot
fi

section "3. 2D training step, batch 5000, N = 30: eager and CUDA graphs (reduce-overhead)"
if enough 60; then
    check "$(limit 110 90)" python3 benchmarks/train_step.py --steps 30 --batch 5000 \
        --repeats 5 --strategies "reference,reference-adjoint,Backprop,StochasticAdjoint,Checkpointed(5)" \
        --compile-mode reduce-overhead --out "$res"
    snapshot
fi

section "4. CIFAR-10 training, compiled networks (compile time reported separately)"
if enough 90; then
    check "$(limit 240 30)" python3 benchmarks/cifar_train.py \
        --configs "compile/bf16/adjoint/100,compile-reduce-overhead/bf16/adjoint/100,compile-max-autotune/bf16/adjoint/100" \
        --warmup 2 --iters 2 --time-limit "$(limit 120 120)" --inductor-cache "$cache" \
        --out "$res/cifar_compile.json"
    snapshot
fi

section "5. 2D sampling (issue 4)"
if enough 60; then
    check "$(limit 45 15)" python3 benchmarks/sampling.py --repeats 3 --out "$res"
    snapshot
fi

ex=/tmp/diffflow_cifar_gpu
section "6. sdeflow train --preset cifar-b: paper-size U-Nets, killed after a checkpoint, resumed"
# The same command twice: the second run resumes (SIGKILL after the first checkpoint, as a
# preempted job), then sdeflow sample and sdeflow evaluate read the run folder.
if enough 120; then
    rm -rf "$ex"
    python3 -c "from pathlib import Path; from sdeflow.data import write_tiny_cifar10_archive \
as w; p = Path('$ex/data'); p.mkdir(parents=True); w(p, n_train=256, n_test=16, seed=0)"
    common=(train --preset cifar-b --data-dir "$ex/data" --no-verify --out "$ex/run"
            --set train.iterations=24 --set train.batch_size=32
            --set "schedule.values=[5, 10]" --set "schedule.milestones=[12]"
            --set sample.steps=30 --log-every 4 --plot-every 12 --checkpoint-every 8
            --eval-every 0 --eval-size 4 --fid-samples 0 --no-progress)
    python3 -m sdeflow "${common[@]}" &
    pid=$!
    for _ in $(seq 120); do
        sleep 1
        if [ -f "$ex/run/checkpoint.json" ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
    done
    kill -9 "$pid" 2>/dev/null && echo "killed the first run after its first checkpoint"
    wait "$pid" 2>/dev/null
    check "$(limit 150 20)" python3 -m sdeflow "${common[@]}"
    [ -f "$ex/run/samples.png" ] && cp "$ex/run/samples.png" "$res/cifar_example_samples.png"
    grep '"event"' "$ex/run/metrics.jsonl" || true
    [ -f "$ex/run/metrics.json" ] && cat "$ex/run/metrics.json" || status=1
    snapshot
fi

section "7. OPTIONAL: sdeflow sample and sdeflow evaluate of that run folder"
# a failure here is reported but does not fail the check (FID needs the eval extra, absent here)
if [ -f "$ex/run/metrics.json" ] && enough 60; then
    timeout "$(limit 60 15)" python3 -m sdeflow sample "$ex/run" --steps 30 --n 64 \
        --out "$res/cifar_sample_N30.png" --no-progress \
        || echo "!! optional: sdeflow sample failed (exit $?)"
    timeout "$(limit 90 15)" python3 -m sdeflow evaluate "$ex/run" --no-fid --bpd-images 8 \
        --ode-tol 1e-3 --no-progress || echo "!! optional: sdeflow evaluate failed (exit $?)"
fi

section "8. summary"
for f in "$res/train_step.md" "$res/sampling.md" "$res/cifar_train.md" "$res/cifar_compile.md"; do
    [ -f "$f" ] && { echo; cat "$f"; }
done
if [ -n "${OUT:-}" ]; then
    cp "$log" "$res/gpu_check.log" 2>/dev/null || true
    size=$(du -sm "$cache" 2>/dev/null | cut -f1)
    if [ "${size:-0}" -gt 0 ]; then
        tar -czf "$OUT/inductor-cache.tar.gz" -C outputs inductor-cache
        if [ "$(du -m "$OUT/inductor-cache.tar.gz" | cut -f1)" -ge 15 ]; then
            rm -f "$OUT/inductor-cache.tar.gz"
            echo "inductor cache (${size} MiB) too large to bring back; left out"
        fi
    fi
fi
echo
python3 benchmarks/gpu_summary.py "$res" || status=1
[ -n "${OUT:-}" ] && cp "$res/summary.md" "$OUT/summary.md" 2>/dev/null
snapshot
echo; echo "gpu_check: $([ $status -eq 0 ] && echo passed || echo FAILED) in ${SECONDS}s"
exit "$status"
