#!/usr/bin/env bash
# One go on a GPU machine, within ten minutes: tracing overhead on the GPU (vs raw hooks and the peers that are
# installed), harvest tokens/s, SAE training tokens/s (each with its absolute figure and model FLOP utilisation),
# the DDP paths of harvest and SAE training under torchrun (nccl with 2+ GPUs), and EAP-IG old vs new path.
#
#   bash benchmarks/gpu.sh                  # on the GPU machine; results in $OUT (default benchmarks/gpu_results)
#   DRY=1 bash benchmarks/gpu.sh            # on a CPU: the same steps, tiny sizes, torchrun with 2 gloo ranks
#
# Environment: PY (python with torch + transformers, default python3), OUT, MODEL (default smollm2; where its
# weights are absent a random model of SmolLM2-135M's exact shape is used: speed does not depend on the values),
# PEAK_TFLOPS (the accelerator's dense peak for the dtype measured; default 989 = H100/H200 bfloat16), DRY.
# Every step has its own time limit; a step that fails is recorded in $OUT/status.txt and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-benchmarks/gpu_results}
DRY=${DRY:-0}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD/benchmarks:${PYTHONPATH:-}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
: > "$OUT/status.txt"

if [ "$DRY" = 1 ]; then
    export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1
    DEVICE=cpu; BENCH_MODEL=random:llama; CLI_MODEL=random:llama; DTYPE=float32; PEAK_TFLOPS=${PEAK_TFLOPS:-0.05}
    ROUNDS=2; SHAPES=1x16,2x32; HTOKENS=2048; SITE=resid_post.1; SAE_STEPS=3; SAE_BATCH=256; D_IN=64; D_SAE=512
    NPROC=2; STEP_LIMIT=300
else
    DEVICE=cuda; DTYPE=bfloat16; PEAK_TFLOPS=${PEAK_TFLOPS:-989}
    ROUNDS=50; SHAPES=1x16,1x512,4x128,32x512; HTOKENS=2000000; SITE=resid_post.12; SAE_STEPS=300
    SAE_BATCH=4096; D_IN=576; D_SAE=4608; STEP_LIMIT=150
    NPROC=$(nvidia-smi -L 2>/dev/null | wc -l); [ "$NPROC" -ge 1 ] || NPROC=1
    if $PY -c "import lmscope; lmscope.load('${MODEL:-smollm2}')" >/dev/null 2>&1; then
        BENCH_MODEL=${MODEL:-smollm2}; CLI_MODEL=$BENCH_MODEL
    else
        BENCH_MODEL=random:smollm2-size; CLI_MODEL=random:llama
    fi
fi

step() {  # step NAME LIMIT COMMAND...: run with a time limit, keep stdout/stderr, record the status
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$OUT/status.txt"
}

{ date -u; nvidia-smi 2>/dev/null || echo "no nvidia-smi"; $PY -c "import torch, transformers; print('torch', \
torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"; \
echo "bench model $BENCH_MODEL, cli model $CLI_MODEL, dtype $DTYPE, nproc $NPROC, peak $PEAK_TFLOPS TFLOP/s"; } \
    > "$OUT/env.txt" 2>&1

# 1. tracing overhead on the device: float32 (exactness) and the fast dtype
step trace_fp32 "$STEP_LIMIT" $PY benchmarks/trace_overhead.py --model "$BENCH_MODEL" --device "$DEVICE" \
    --rounds "$ROUNDS" --shapes "$SHAPES" --json "$OUT/trace_fp32.json"
step trace_fast "$STEP_LIMIT" $PY benchmarks/trace_overhead.py --model "$BENCH_MODEL" --device "$DEVICE" \
    --dtype "$DTYPE" --rounds "$ROUNDS" --shapes "$SHAPES" --peers hooks,lmscope --json "$OUT/trace_fast.json"
# 2. harvest tokens/s against a bare forward (python stdlib corpus: present on every machine)
step harvest "$STEP_LIMIT" $PY benchmarks/harvest_throughput.py --model "$BENCH_MODEL" --device "$DEVICE" \
    --model-dtype "$DTYPE" --corpus python --site "$SITE" --tokens "$HTOKENS" --batch-size 64
# 3. SAE training step tokens/s (lmscope and the installed peers, same batches)
step sae "$STEP_LIMIT" $PY benchmarks/sae_peers.py --device "$DEVICE" --steps "$SAE_STEPS" --batch "$SAE_BATCH" \
    --d-in "$D_IN" --d-sae "$D_SAE" --json "$OUT/sae.json"
# 4. DDP paths: harvest and SAE training under torchrun (nccl between GPUs; gloo on CPU in the dry run)
rm -rf "$OUT/ddp_harvest" "$OUT/ddp_sae"
step ddp_harvest "$STEP_LIMIT" $PY -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m lmscope.cli \
    harvest --model "$CLI_MODEL" --corpus python --sites "$SITE" --tokens $((HTOKENS / 4)) --out "$OUT/ddp_harvest" \
    --seq-len 128 --batch-size 16 --shard-tokens $((HTOKENS / 16 / NPROC)) --json
step ddp_sae "$STEP_LIMIT" $PY -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m lmscope.cli \
    sae train --model "$CLI_MODEL" --harvest "$OUT/ddp_harvest" --site "$SITE" --n-tokens $((HTOKENS / 4)) --batch-size "$SAE_BATCH" \
    --k 32 --d-sae "$D_SAE" --out "$OUT/ddp_sae" --json
# 5. EAP-IG old path vs new path on the device (float32; the default model: IOI needs its tokenizer's names)
if [ "$DRY" = 1 ]; then EAP_ARGS="--rounds 1 --prompts 2 --only eap-ig,eap-ig-edges"
else EAP_ARGS="--rounds 3 --prompts 4 --only eap-ig,eap-ig-cli,eap-ig-edges,eap-ig-edges-cli"; fi
step eapig "$STEP_LIMIT" $PY benchmarks/experiments_speed.py --model smollm2 --device "$DEVICE" $EAP_ARGS \
    --json "$OUT/eapig.json"
# 6. one table: absolute figures and model FLOP utilisation
$PY benchmarks/gpu_summary.py "$OUT" --peak-tflops "$PEAK_TFLOPS" | tee "$OUT/summary.md"
