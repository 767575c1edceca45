#!/usr/bin/env bash
# Train every method's tiny model on one CUDA GPU under a wall-clock cap, then score each with `editkit eval`
# (test split and held-out phrasings), next to the method's own ablation baseline where it has one.
#
#   bash train/tiny_models_gpu.sh                       # on a GPU machine
#   METHODS_ONLY="unic dream" bash train/tiny_models_gpu.sh
#   TRAIN_VAE=1 bash train/tiny_models_gpu.sh           # also retrain the shared VAE first
#   SMOKE=1 bash train/tiny_models_gpu.sh               # a short CPU rehearsal of the same commands
#   EVAL=0 PACK=/some/dir bash train/tiny_models_gpu.sh # train only; each model lands in PACK as NAME.tgz
#                                                       # (with its logs) the moment its training ends
#
# All recipes read the shipped shared VAE (editkit/models/instructcv-tiny/vae); with TRAIN_VAE=1 it is
# retrained and replaced first. The method recipes then run in parallel (tiny models leave the GPU mostly
# idle; the CPUs generate data). On the GPU every recipe runs with a constant learning rate after warm-up
# and a large step budget, cut by `train.max_seconds` (EMA does the annealing); each run's
# train_summary.json records the steps it reached (`final_step`). A multi-stage method (Dream Engine) lists
# its recipes with "+": stage k starts from stage k-1's final folder; the time cap is shared equally, or by the
# weights written as recipe@weight (a@3+b@2: 60 % / 40 %). A fifth field holds extra overrides for every stage.
set -u
PY=${PY:-python3}
WORK=${WORK:-outputs/tiny_gpu}
SMOKE=${SMOKE:-0}
TRAIN_VAE=${TRAIN_VAE:-0}
VAE_SECONDS=${VAE_SECONDS:-75}
METHOD_SECONDS=${METHOD_SECONDS:-300}
EVAL=${EVAL:-1}
PACK=${PACK:-}
EVAL_N=${EVAL_N:-100}
EVAL_SECONDS=${EVAL_SECONDS:-240}
WORKERS=${WORKERS:-2}
VAE_DIR=editkit/models/instructcv-tiny/vae  # the path every recipe reads the shared VAE from

# name | recipe(s) | eval tasks | call args of the ablation baseline ("-": none) | extra overrides (optional)
METHODS=${METHODS:-"
instructcv|configs/train/instructcv_shapes.yaml|cv,edit|-
promptfix|configs/train/promptfix_shapes.yaml|restore|-
pixwizard|configs/train/pixwizard_shapes.yaml|restore,grounding,cv,edit|-
unic|configs/train/unic_shapes_gpu.yaml|control|control_scale=0
dream|configs/train/dream_fusion_from_unic.yaml+configs/train/dream_fusion_from_unic_ema.yaml|interleaved|drop_images=true
"}
METHODS_ONLY=${METHODS_ONLY:-}

common=(log.tensorboard=false validation.every=0)
gpu=(train.lr_scheduler=constant_with_warmup train.max_steps=1000000 checkpoint.every=1000)
evalargs=(--n "$EVAL_N" --steps 20 --batch-size 50 --no-progress)
if [ "$SMOKE" = 1 ]; then
  common+=(train.max_steps=2 data.num_samples=16 train.batch_size=4 checkpoint.every=0)
  gpu=()
  VAE_SECONDS=30 METHOD_SECONDS=60 WORKERS=0 EVAL_SECONDS=900
  evalargs=(--n 1 --steps 2 --batch-size 2 --no-progress)
fi
mkdir -p "$WORK"
[ -z "$PACK" ] || PACK=$(mkdir -p "$PACK" && cd "$PACK" && pwd)  # absolute: the packing runs inside $WORK
say() { echo "[$(date +%T)] $*"; }
wanted() { [ -z "$METHODS_ONLY" ] || [[ " $METHODS_ONLY " == *" $1 "* ]]; }

if [ "$TRAIN_VAE" = 1 ]; then
  say "vae"
  $PY train/train.py --config configs/train/vae_shapes.yaml output_dir="$WORK/vae" train.max_seconds="$VAE_SECONDS" \
    data.num_workers=$((WORKERS * 4)) "${common[@]}" >"$WORK/vae.log" 2>&1 || { tail -20 "$WORK/vae.log"; exit 1; }
  tail -1 "$WORK/vae.log"
  [ "$SMOKE" = 1 ] || { rm -rf "$VAE_DIR" && cp -r "$WORK/vae/final" "$VAE_DIR"; }
fi

# One method's stages, one after the other: stage k > 1 starts from stage k-1's final folder.
train_method() {
  local name=$1 recipes=$2 extra=$3 k=0 prev="" out seconds recipe weight total=0
  IFS='+' read -r -a stages <<<"$recipes"
  local n=${#stages[@]}
  for recipe in "${stages[@]}"; do [[ $recipe == *@* ]] && total=$((total + ${recipe#*@})) || total=$((total + 1)); done
  for recipe in "${stages[@]}"; do
    k=$((k + 1))
    weight=1; [[ $recipe == *@* ]] && { weight=${recipe#*@}; recipe=${recipe%@*}; }
    seconds=$((METHOD_SECONDS * weight / total))
    out="$WORK/$name"; [ "$n" -gt 1 ] && out="$WORK/$name-stage$k"
    local from=(); [ -n "$prev" ] && from=(model.pretrained="$prev/final")
    # shellcheck disable=SC2086  # $extra is a list of overrides
    $PY train/train.py --config "$recipe" output_dir="$out" train.max_seconds="$seconds" data.num_workers="$WORKERS" \
      "${common[@]}" "${gpu[@]}" "${from[@]}" $extra >"$WORK/$name-stage$k.log" 2>&1 || {
      [ -z "$PACK" ] || (cd "$WORK" && tar czf "$PACK/$name-failed.tgz" "$name"-stage*.log)
      return 1
    }
    prev=$out
  done
  [ "$prev" = "$WORK/$name" ] || { rm -rf "$WORK/$name" && mkdir -p "$WORK/$name" && cp -r "$prev/final" "$WORK/$name/final"; }
  [ -z "$PACK" ] || { half "$WORK/$name" && (cd "$WORK" && tar czf "$PACK/$name.tgz" "$name/final" "$name"-stage*.log); }
}

# fp16 weights: half the size, and the pipelines load them back as float32
half() {
  $PY - "$1" <<'EOF'
import glob, sys
from safetensors.torch import load_file, save_file
for f in glob.glob(f"{sys.argv[1]}/final/**/*.safetensors", recursive=True):
    sd = load_file(f)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, f)
EOF
}

pids=()
while IFS='|' read -r name recipes _ _ extra; do
  [ -n "$name" ] && wanted "$name" || continue
  say "train $name"
  train_method "$name" "$recipes" "$extra" &
  pids+=($!)
done <<<"$METHODS"
for p in "${pids[@]}"; do wait "$p"; done

say "trained"
[ "$EVAL" = 1 ] || exit 0
if [ -z "$PACK" ]; then
  for d in "$WORK"/*/final; do half "$(dirname "$d")"; done
fi

pids=()
while IFS='|' read -r name _ tasks baseline _; do
  [ -n "$name" ] && wanted "$name" || continue
  grep -h "exported" "$WORK/$name"-stage*.log
  [ -d "$WORK/$name/final" ] || { say "$name: no final model"; continue; }
  for split in test heldout; do
    extra=(); [ "$split" = heldout ] && extra=(--heldout-phrasings)
    runs=(model)
    [ "$baseline" != "-" ] && runs+=(baseline)
    for run in "${runs[@]}"; do
      args=(); [ "$run" = baseline ] && args=(--call-arg "$baseline")
      timeout "$EVAL_SECONDS" $PY -m editkit.cli eval --method "$name" --model "$WORK/$name/final" --tasks "$tasks" \
        "${evalargs[@]}" "${extra[@]}" "${args[@]}" --out "$WORK/eval-$name-$split-$run.json" \
        >"$WORK/eval-$name-$split-$run.log" 2>&1 &
      pids+=($!)
    done
  done
done <<<"$METHODS"
for p in "${pids[@]}"; do wait "$p"; done
for f in "$WORK"/eval-*-model.json; do
  base=${f%-model.json}
  echo "== $(basename "$base")"
  if [ -f "$base-baseline.json" ]; then
    $PY -m editkit.cli eval-table "model=$f" "ablation=$base-baseline.json" --metrics edit_success,presence,color_accuracy,psnr,edge_f1
  else
    $PY -m editkit.cli eval-table "model=$f"
  fi
done
say "done"
