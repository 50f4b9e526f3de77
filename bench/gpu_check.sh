#!/usr/bin/env bash
# The one script a GPU session runs (issue 18), from the repository root, in under 8 minutes (TOTAL_S, default 470):
#
#     bash bench/gpu_check.sh            # everything under $OUT when set, else .bench_scratch/gpu_check
#     STEPS="tests decode suite" SECTIONS=db TOTAL_S=360 bash bench/gpu_check.sh   # some, in that order
#
# Before the session, on a machine with ../shared: `python -m bench.suite --prepare-only`, and carry
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
step versions 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c 'import torch, sys; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else \"NO CUDA\")'"
# STEPS picks and orders what runs (default: all, in this order); the suite's SECTIONS likewise
for s in ${STEPS:-tests decode suite quick train sample study eager_ab}; do
    case $s in
    # the tests that need CUDA (marker cuda; skipped elsewhere) and the GPU engine's decisions (names
    # with cuda, gpu or graph, which run anywhere): -rs lists what was skipped and why
    # (TESTS_MARK="cuda" runs every CUDA test of TESTS, the slow compiled ones included; TESTS_S its limit)
    tests) step tests "${TESTS_S:-90}" "$PY" -m pytest -q -p no:cacheprovider ${TESTS:-tests -k "cuda or gpu or graph"} \
        -m "${TESTS_MARK:-not slow}" -rs ;;
    # batch-1 decoding: every path, then the graph's variants (weights' dtype, the step's attention,
    # compiled) and where a static step's device time goes
    decode) step decode "${DECODE_S:-110}" "$PY" -m bench.decode_gpu --variants --profile ${DECODE_ARGS:-} ;;
    # a (the nanoGPT comparison, MFU), d (sweep wall time), b (other shapes), c (`tformer train`), e
    # (decoding); the suite stops starting sections at its budget
    suite) step suite "${SUITE_S:-250}" "$PY" -m bench.suite --gpu --sections "${SECTIONS:-adbce}" \
        --budget-s "$(( ${SUITE_S:-250} - 10 ))" ${GPU_B:+--gpu-b "$GPU_B"} ;;
    # the quick preset as a user runs it: the summary says whether the step was captured
    quick) step quick 40 "$PY" -m tformer_cli train --preset quick --device cuda --out "$RUN_DIR-quick" --overwrite ;;
    # a real training run on the card (the compile policy decides; vocabulary padded to 64), then decoding
    train) step train 50 "$PY" -m tformer_cli train --preset gpt2_small --steps 15 --device cuda \
        --set train.batch_size=8 --set train.grad_accum=1 --set train.eval_iters=2 --set model.vocab_multiple=64 \
        --out "$RUN_DIR" --overwrite ;;
    sample) step sample_bench 40 "$PY" -m tformer_cli sample "$RUN_DIR" --bench --prompt "def " --max-new-tokens 256 --seed 0 ;;
    # the same in bfloat16 weights (the fastest graph variant; tokens checked against recomputation's)
    sample_bf16) step sample_bench_bf16 40 "$PY" -m tformer_cli sample "$RUN_DIR" --bench --prompt "def " \
        --max-new-tokens 256 --seed 0 --dtype bfloat16 ;;
    # the same with the step compiled (SAMPLE_COMPILE, default whole-gemv), twice: the second process
    # finds inductor's on-disk cache, so its warm-up line says what a compile costs a user the next time
    sample_compiled) for i in 1 2; do step sample_bench_compiled_$i "${SAMPLE_COMPILE_S:-90}" "$PY" -m tformer_cli sample \
        "$RUN_DIR" --bench --prompt "def " --max-new-tokens 256 --seed 0 --dtype bfloat16 \
        --compile-step "${SAMPLE_COMPILE:-whole-gemv}"; done ;;
    # a shipped study on the card (its gpu: budget, members packed onto the GPU): its GPU wall time
    study) rm -rf "$RUN_DIR-study"
        step study_induction 120 "$PY" -m tformer_cli study induction --device cuda --out "$RUN_DIR-study" ;;
    # where the default sweep's wall time goes on the host (members in sequence, in one process):
    # tformer's functions by cumulative time, then everything by own time (a GPU wait shows as a sync)
    sweep_profile) rm -rf "$RUN_DIR-sweep"
        step sweep_profile 90 bash -c "$PY -m cProfile -o '$OUT/sweep.prof' -m tformer_cli sweep-heads --heads 1,2,4,8 \
            --steps ${SWEEP_STEPS:-300} --device ${SWEEP_DEVICE:-cuda} --out '$RUN_DIR-sweep' > '$OUT/sweep_profile_run.txt' 2>&1; tail -n 3 '$OUT/sweep_profile_run.txt'; \
            $PY -c \"import pstats; s = pstats.Stats('$OUT/sweep.prof'); s.sort_stats('cumulative').print_stats('tformer_cli', 45); s.sort_stats('tottime').print_stats(25)\"" ;;
    # whether each cached path (the graph included) gives recomputation's tokens, per weight dtype
    precision) step precision 40 "$PY" -m bench.precision --device cuda --new-tokens 256 ;;
    # the eager B12 T1024 step of tformer against nanoGPT's, kernel by kernel (eager tformer was 10% slower)
    eager_ab) step eager_ab 60 "$PY" -m bench.eager_ab ;;
    # where the B12 T1024 step goes, eager (kernel names read plainly; compiled kernels are fused)
    profile) step op_profile 50 "$PY" -m bench.op_profile train --device cuda --gpt2 --steps 3 --top 15 ;;
    # issue 28, batched seeds on the card (STEPS="tests batched_exact batched heads24 heads24_bf16
    # norm_position study_all" TOTAL_S=560): each seed of a group against its own run, the groups'
    # tokens/s against a single run's, the 24-seed heads study as the study files pin it (float32,
    # TF32 off; goal 20 s) and in bfloat16 autocast with TF32 (what `auto` gave before: is the
    # GPU/CPU disagreement the precision?), post-norm in both, then every study (goal 2 minutes)
    batched_exact) step batched_exact 100 "$PY" -m bench.batched --exactness --device cuda ;;
    batched) step batched 100 "$PY" -m bench.batched --device cuda --seeds 4,24,96 --steps 300 --repeats 1 ;;
    heads24) rm -rf "$RUN_DIR-heads24"
        step heads24 120 "$PY" -m tformer_cli study sweep_heads --seeds 24 --device cuda --out "$RUN_DIR-heads24" ;;
    heads24_bf16) rm -rf "$RUN_DIR-heads24-bf16"
        step heads24_bf16 120 "$PY" -m tformer_cli study sweep_heads --seeds 24 --device cuda \
            --set train.dtype=bfloat16 --set train.tf32=true --out "$RUN_DIR-heads24-bf16" ;;
    norm_position) rm -rf "$RUN_DIR-normpos" "$RUN_DIR-normpos-bf16"
        step norm_position 60 "$PY" -m tformer_cli study modern_norm_position --device cuda --out "$RUN_DIR-normpos"
        step norm_position_bf16 60 "$PY" -m tformer_cli study modern_norm_position --device cuda \
            --set train.dtype=bfloat16 --set train.tf32=true --out "$RUN_DIR-normpos-bf16" ;;
    study_all) rm -rf "$RUN_DIR-all"
        step study_all 240 "$PY" -m tformer_cli study --all --device cuda --out "$RUN_DIR-all" ;;
    # issue 29 on the card (STEPS="tests loss ladder ladder_all"): the chunked loss against the float32
    # copy at GPT-2's shape, one study's whole ladder, then every study's (goal: 10 minutes)
    loss) step loss 60 "$PY" -m bench.loss --device cuda ;;
    ladder) rm -rf "$RUN_DIR-ladder"
        step ladder 200 "$PY" -m tformer_cli study ablate_positions --ladder --device cuda --out "$RUN_DIR-ladder" ;;
    ladder_all) rm -rf "$RUN_DIR-ladder-all"
        step ladder_all 540 "$PY" -m tformer_cli study --all --ladder --device cuda --out "$RUN_DIR-ladder-all" ;;
    *) echo "unknown step $s" | tee -a "$OUT/summary.md" ;;
    esac
done
echo "total $(( $(date +%s) - T0 ))s; files in $OUT" | tee -a "$OUT/summary.md"
