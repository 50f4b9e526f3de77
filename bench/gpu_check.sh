#!/usr/bin/env bash
# The one script a GPU session runs (issue 18), from the repository root, in under 8 minutes (TOTAL_S, default 470):
#
#     bash bench/gpu_check.sh            # everything under $OUT when set, else .bench_scratch/gpu_check
#
# Before the session, on a machine with ../shared: `python bench/suite.py --prepare-only`, and carry
# .bench_scratch/nanogpt and .bench_scratch/shakespeare_char along (nanoGPT's model.py is not part of the repository).
# Each step has its own time limit, so one that hangs costs its limit and not the session; every
# step's output goes to its own file ($OUT/NAME.txt, .err) and summary.md gathers them all.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-.bench_scratch/gpu_check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
T0=$(date +%s)
RUN_DIR=.bench_scratch/gpu_check_run

TOTAL=${TOTAL_S:-470}  # the whole script's limit: a step is cut to what is left of it
step() {  # step NAME LIMIT_S CMD...: run CMD under a time limit, output to $OUT/NAME.txt and the console
    local name=$1 limit=$2; shift 2
    local t=$(date +%s) left=$(( TOTAL - ($(date +%s) - T0) ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 15 ]; then echo "== $name skipped: ${left}s left" | tee -a "$OUT/summary.md"; return; fi
    echo "== $name (limit ${limit}s, $(( t - T0 ))s in)" | tee -a "$OUT/summary.md"
    timeout -k 5 "$limit" "$@" 2> "$OUT/$name.err" | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -ne 0 ] && tail -n 5 "$OUT/$name.err"
    cat "$OUT/$name.txt" >> "$OUT/summary.md"
    echo "   -> exit $rc after $(( $(date +%s) - t ))s$([ "$rc" -eq 124 ] && echo ' (time limit)')" \
        | tee -a "$OUT/summary.md"
}

: > "$OUT/summary.md"
step versions 30 bash -c "nvidia-smi; $PY -c 'import torch, sys; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else \"NO CUDA\")'"
# the tests that need CUDA (marker cuda; skipped elsewhere) and the GPU engine's decisions (names with
# cuda or gpu, which run anywhere): -rs lists what was skipped and why
step tests 90 "$PY" -m pytest -q -p no:cacheprovider tests -k "cuda or gpu" -m "not slow" -rs
# the figures the issue asks for first: a (the nanoGPT comparison, MFU), e (decoding), d (sweep wall
# time), b (other shapes for MFU), c (`tformer train`); the suite stops starting sections at its budget
step suite "${SUITE_S:-250}" "$PY" bench/suite.py --gpu --sections "${SECTIONS:-aedbc}" --budget-s "$(( ${SUITE_S:-250} - 10 ))"
# a real training run on the card (the compile policy decides; vocabulary padded to 64), then decoding
step train 50 "$PY" -m tformer_cli train --preset gpt2_small --steps 15 --device cuda --set train.batch_size=8 \
    --set train.grad_accum=1 --set train.eval_iters=2 --set model.vocab_multiple=64 --out "$RUN_DIR" --overwrite
step sample_bench 40 "$PY" -m tformer_cli sample "$RUN_DIR" --bench --prompt "def " --max-new-tokens 256 --seed 0
# a shipped study on the card (its gpu: budget, members packed onto the GPU): the GPU wall time that
# experiments/studies/induction.yaml leaves open, and the verdict at that budget
rm -rf "$RUN_DIR-study"
step study_induction 120 "$PY" -m tformer_cli study induction --device cuda --out "$RUN_DIR-study"
# where the B12 T1024 step goes, eager (kernel names read plainly; compiled kernels are fused)
step op_profile 50 "$PY" bench/op_profile.py train --device cuda --gpt2 --steps 3 --top 15
echo "total $(( $(date +%s) - T0 ))s; files in $OUT" | tee -a "$OUT/summary.md"
