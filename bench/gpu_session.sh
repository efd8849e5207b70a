#!/usr/bin/env bash
# One call on a lent GPU machine (10 minutes at most, no network), run from the repository root:
#   OUT=<folder that comes back> bash bench/gpu_session.sh
# It needs .devdata/ beside the code: the offline files of ../shared/data that the runs read, with the CIFAR-10
# training set xz-compressed (the call carries 64 MiB at most: the tracked files are 40 MiB, .devdata 18 MiB), and
# their SHA256SUMS. Make it with
#   bash bench/gpu_session.sh --pack
# In BUDGET seconds it runs, first alone on the GPU (SAMPLING_S seconds, 0 skips it): the GPU sampling benchmark
# (bench/bench_gpu_sampling.py, issue 18: eager fp32 / eager bf16 / compile_for_cuda per batch size, into
# $OUT/gpu_sampling.json and .md); then, all at once on the one GPU, in what is left of BUDGET:
#   foreground  the CUDA tests (CHECKS=0 skips them) and the GPU batch-size benchmark, then the n = 10,000 and
#               n = 100,000 evaluations of the default checkpoint (continuing results/NAME_n10000.jsonl, ...);
#   background  the paper's recipe: ResNet-110, e = 50, 200 epochs, constant lr 0.01 (the randomized-ablation
#               reference's), continuing checkpoints/state/cifar10_resnet110_e50.state.pt; once finished, its
#               n = 100,000 evaluation. Stopped when the budget ends and exported as an unfinished snapshot.
# Everything resumes, so whatever the budget cuts off continues in a later call: copy the files that come back into
# results/ and checkpoints/ (state/ for the state). At most 8 files come back: checkpoint, state, three results,
# gpu_sampling.json and .md (figures for bench/RESULTS.md), and logs.tar.gz with every log. On 2026-11-26 an earlier
# version of this script (see git log) also finished the distilled ResNet-20's training. A CPU dry run:
#   DEVICE=cpu BUDGET=150 NUM_IMAGES=9 EXTRA_TRAIN="--train-limit 512 --val-size 64" SAMPLING_S=0 OUT=/tmp/out \
#   bash bench/gpu_session.sh
# and the benchmark's part of it alone (about a minute on 2 CPU cores):
#   python bench/bench_gpu_sampling.py --device cpu --tiny --out /tmp/out
set -u
REPO=$(pwd)
if [ "${1:-}" = --pack ]; then
  SHARED=${CERTCORE_SHARED_DATA:-$REPO/../shared/data}
  mkdir -p .devdata
  grep -qx "/.devdata/" .git/info/exclude 2>/dev/null || echo "/.devdata/" >>.git/info/exclude
  xz -9e -T2 -c "$SHARED/cifar10/cifar10_train_jpeg.npz" >.devdata/cifar10_train_jpeg.npz.xz
  cp "$SHARED/cifar10/cifar10_test_first1000_lossless.npz" .devdata/
  (cd "$SHARED" && sha256sum cifar10/cifar10_train_jpeg.npz cifar10/cifar10_test_first1000_lossless.npz) \
    >.devdata/SHA256SUMS
  exit
fi
: "${OUT:?set OUT to the folder whose files come back}"
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-390}            # seconds after the start at which the background runs are stopped
NUM_IMAGES=${NUM_IMAGES:-500}
BATCH=${BATCH:-10000}            # ablated samples per forward pass in the evaluations
EXTRA_TRAIN=${EXTRA_TRAIN:-}     # extra options for the ResNet-110 run (dry runs)
SAMPLING_S=${SAMPLING_S:-150}    # seconds of BUDGET for the sampling benchmark, before anything else uses the GPU
SAMPLING_EXTRA=${SAMPLING_EXTRA:-} # extra options for it (--tiny on a CPU)
W=/tmp/gpu_session
rm -rf $W && mkdir -p $W "$OUT"
START=$SECONDS
left() { echo $((BUDGET - (SECONDS - START))); }
log() { echo "[$((SECONDS - START)) s] $*" | tee -a $W/session.log; }
export PYTHONUNBUFFERED=1
set -m # each background run in its own process group, so that stopping it stops its children

log "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
python3 -c 'import torch, torchvision, scipy; print("torch", torch.__version__, "torchvision", torchvision.__version__,
  "scipy", scipy.__version__, "cuda", torch.cuda.is_available())' >>$W/session.log 2>&1

export CERTCORE_SHARED_DATA=$W/shared
mkdir -p $CERTCORE_SHARED_DATA/cifar10 $CERTCORE_SHARED_DATA/checkpoints
python3 - <<'EOF'
import lzma, os, shutil
dst = os.environ["CERTCORE_SHARED_DATA"]
with lzma.open(".devdata/cifar10_train_jpeg.npz.xz") as f, open(f"{dst}/cifar10/cifar10_train_jpeg.npz", "wb") as g:
    shutil.copyfileobj(f, g)
shutil.copy(".devdata/cifar10_test_first1000_lossless.npz", f"{dst}/cifar10/")
EOF
(cd $CERTCORE_SHARED_DATA && sha256sum -c "$REPO/.devdata/SHA256SUMS") >>$W/session.log 2>&1 || log "DATA CHECK FAILED"
log "data unpacked"

if [ "$SAMPLING_S" -gt 0 ]; then # no measurement starts in its last 60 s; timeout ends one that runs over
  timeout "$SAMPLING_S" python3 bench/bench_gpu_sampling.py --device "$DEVICE" --out "$OUT" \
    --budget $((SAMPLING_S > 60 ? SAMPLING_S - 60 : 0)) $SAMPLING_EXTRA >$W/bench_gpu_sampling.log 2>&1
  log "GPU sampling benchmark: exit $?"
fi

evaluate() { # seconds checkpoint n out
  timeout "$1" python3 -m certcore.evaluate --dataset cifar10 --checkpoint "$2" --num-images "$NUM_IMAGES" \
    --k 1 2 3 --n "$3" --alpha 0.001 --seed 0 --batch-size "$BATCH" --device "$DEVICE" --threads 2 --out "$4"
}

DEFAULT=$(python3 -c "from certcore.views.default_result import DEFAULT_NAME; print(DEFAULT_NAME)")
R110=cifar10_resnet110_e50
# Each run continues from what the repository holds: results files and the ResNet-110 state.
for f in results/${DEFAULT}_n10000.jsonl results/${DEFAULT}_n100000.jsonl results/${R110}_n100000.jsonl \
  checkpoints/state/$R110.state.pt; do
  [ -f "$f" ] && cp "$f" "$OUT/"
done
R110_TRAIN=(python3 -m certcore.train --dataset cifar10 --arch resnet110 --init none --e 50 --epochs 200
  --batch-size 128 --lr 0.01 --lr-schedule constant --weight-decay 5e-4 --seed 0 --val-size 5000 --device "$DEVICE"
  --threads 2 --save-every-steps 100 --log-every 100 --out "$OUT/$R110.pt" --state "$OUT/$R110.state.pt"
  $EXTRA_TRAIN)
R110_RESUME=$([ -f "$OUT/$R110.state.pt" ] && echo --resume)
(
  "${R110_TRAIN[@]}" $R110_RESUME >$W/r110_train.log 2>&1 &&
    python3 -c "import sys; from certcore.models.checkpoints import load_checkpoint as L
sys.exit(L(sys.argv[1])[1]['training']['status'] != 'finished')" "$OUT/$R110.pt" &&
    evaluate 3600 "$OUT/$R110.pt" 100000 "$OUT/${R110}_n100000.jsonl" >$W/r110_eval.log 2>&1
) &
R110_PID=$!
log "ResNet-110 training started (pid $R110_PID)"

if [ "${CHECKS:-1}" = 1 ]; then # CHECKS=0: a call that only continues the runs
  OMP_NUM_THREADS=4 timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    tests/test_train.py::test_cuda_training_smoke >$W/tests.log 2>&1
  log "CUDA tests: exit $? ($(tail -1 $W/tests.log))"
  timeout 90 python3 bench/bench_batch_size.py --device "$DEVICE" --threads 2 --rounds 3 --samples 100000 \
    --sizes 1000 2500 5000 10000 20000 --reference 1000 >$W/bench_batch_size.log 2>&1
  log "batch-size benchmark: exit $?"
fi

for n in 10000 100000; do
  [ "$(left)" -gt 10 ] || break
  evaluate "$(left)" "checkpoints/$DEFAULT.pt" $n "$OUT/${DEFAULT}_n$n.jsonl" >>$W/default_eval.log 2>&1
  log "$DEFAULT, n = $n: exit $?, $(wc -l <"$OUT/${DEFAULT}_n$n.jsonl") images"
done

while [ "$(left)" -gt 0 ]; do sleep 2; done
kill -TERM -- -$R110_PID 2>/dev/null
wait
if [ -f "$OUT/$R110.state.pt" ] && [ ! -f "$OUT/$R110.pt" ]; then
  timeout 120 "${R110_TRAIN[@]}" --resume --snapshot >>$W/r110_train.log 2>&1
  log "ResNet-110 snapshot: exit $?"
fi
nvidia-smi >>$W/session.log 2>&1
log "done"
tar czf "$OUT/logs.tar.gz" -C $W $(cd $W && ls ./*.log)
