#!/usr/bin/env bash
# Retrain every shipped tiny model on one CUDA GPU in a few minutes, then score each with `editkit eval`.
#
#   bash train/tiny_models_gpu.sh                 # on a GPU machine (this is how the shipped models were made)
#   SMOKE=1 bash train/tiny_models_gpu.sh         # a seconds-long CPU rehearsal of the same commands
#
# Order: the shared VAE first (every method's tiny model encodes with it), then all method recipes in
# parallel (tiny models leave the GPU mostly idle; the CPUs generate data), then the evaluations.
# Recipes run with `train.max_seconds` as a wall-clock cap; each run's train_summary.json records the
# steps it reached (`final_step`), which is the max_steps to give for an exact rerun on the same hardware.
set -u
PY=${PY:-python3}
WORK=${WORK:-outputs/tiny_gpu}
SMOKE=${SMOKE:-0}
VAE_SECONDS=${VAE_SECONDS:-75}
METHOD_SECONDS=${METHOD_SECONDS:-200}
EVAL_N=${EVAL_N:-200}
EVAL_SECONDS=${EVAL_SECONDS:-120}
WORKERS=${WORKERS:-3}
VAE_DIR=editkit/models/instructcv-tiny/vae  # the path every recipe reads the shared VAE from

# name | recipe | eval method | eval tasks
METHODS=${METHODS:-"
instructcv|configs/train/instructcv_shapes.yaml|instructcv|cv,edit
"}

common=(log.tensorboard=false validation.every=0)
evalargs=(--n "$EVAL_N" --steps 20 --batch-size 50 --no-progress)
if [ "$SMOKE" = 1 ]; then
  common+=(train.max_steps=2 data.num_samples=16 train.batch_size=4 checkpoint.every=0)
  VAE_SECONDS=30 METHOD_SECONDS=60 WORKERS=0
  evalargs=(--n 1 --steps 2 --batch-size 2 --no-progress)
fi
mkdir -p "$WORK"
say() { echo "[$(date +%T)] $*"; }

say "vae"
$PY train/train.py --config configs/train/vae_shapes.yaml output_dir=outputs/vae_shapes train.max_seconds="$VAE_SECONDS" \
  data.num_workers=$((WORKERS * 4)) "${common[@]}" >"$WORK/vae.log" 2>&1 || { tail -20 "$WORK/vae.log"; exit 1; }
tail -1 "$WORK/vae.log"
# the instructcv recipe reads outputs/vae_shapes/final; the other recipes read the shipped copy
[ "$SMOKE" = 1 ] || { rm -rf "$VAE_DIR" && cp -r outputs/vae_shapes/final "$VAE_DIR"; }

pids=()
while IFS='|' read -r name recipe _ _; do
  [ -n "$name" ] || continue
  say "train $name"
  $PY train/train.py --config "$recipe" output_dir="$WORK/$name" train.max_seconds="$METHOD_SECONDS" \
    data.num_workers="$WORKERS" "${common[@]}" >"$WORK/$name.log" 2>&1 &
  pids+=($!)
done <<<"$METHODS"
for p in "${pids[@]}"; do wait "$p"; done

# fp16 weights: half the size, and the pipelines load them back as float32
$PY - "$WORK" <<'EOF'
import glob, sys
from safetensors.torch import load_file, save_file
for f in glob.glob(f"{sys.argv[1]}/*/final/**/*.safetensors", recursive=True):
    sd = load_file(f)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, f)
EOF

pids=()
while IFS='|' read -r name _ method tasks; do
  [ -n "$name" ] || continue
  tail -1 "$WORK/$name.log"
  [ -d "$WORK/$name/final" ] || { say "$name: no final model"; continue; }
  for split in test heldout; do
    extra=(); [ "$split" = heldout ] && extra=(--heldout-phrasings)
    timeout "$EVAL_SECONDS" $PY -m editkit.cli eval --method "$method" --model "$WORK/$name/final" --tasks "$tasks" \
      "${evalargs[@]}" "${extra[@]}" --out "$WORK/eval-$name-$split.json" >"$WORK/eval-$name-$split.log" 2>&1 &
    pids+=($!)
  done
done <<<"$METHODS"
for p in "${pids[@]}"; do wait "$p"; done
say "done"
