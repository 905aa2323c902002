#!/usr/bin/env bash
# The README's main command (`make demo` runs it after `make setup`): HGLTR end to end, offline,
# on real images (Fashion-MNIST) with real pretrained encoders (EfficientNet-Lite0 + MiniLM from
# PyPI wheels), in about 10 minutes on 2 CPU cores.
#
#   1. the Fashion-MNIST class hierarchy from WordNet 3.0 (Debian's wordnet-base)
#   2. Fashion-MNIST-LT: imbalance factor 100, seed 0, 100 validation images per class held out
#      of train (never test); every class first capped at 1,100 images so the tail has 11
#      (few-shot) and an epoch is 2,727 images
#   3. hgltr train: quickstart-effnet-minilm + residual adapters after each EfficientNet block,
#      logit-adjusted CE + L_mse + L_dis, 64 px inputs
#   4. hgltr eval on the official 10,000-image test set: table, summary.json, per-class CSV, plots
#   5. hgltr predict on one test image per class, hgltr export to an ONNX bundle (parity checked),
#      and predict again from the bundle
#
# Everything goes under demo/ (git-ignored). Knobs (environment): DEMO_DIR, DEMO_EPOCHS,
# DEMO_IMAGE_SIZE, DEMO_PER_CLASS, DEMO_SEED, DEMO_PEFT.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
HGLTR=${HGLTR:-$REPO/.venv/bin/hgltr}
PY=${PY:-$REPO/.venv/bin/python}
OUT=${DEMO_DIR:-$REPO/demo}
EPOCHS=${DEMO_EPOCHS:-6}
SIZE=${DEMO_IMAGE_SIZE:-64}
PER_CLASS=${DEMO_PER_CLASS:-1100}
SEED=${DEMO_SEED:-0}
PEFT=${DEMO_PEFT:-adapter}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # nothing here needs the network

fail() { echo "demo: FAILED: $*" >&2; exit 1; }
trap 'echo "demo: FAILED at line $LINENO (exit $?); see the messages above" >&2' ERR
[ -x "$HGLTR" ] || fail "$HGLTR not found: run \`make setup\` (or \`make demo\`) first"

start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start ))s] $*"; }

mkdir -p "$OUT"
RUN="$OUT/run"
rm -rf "$RUN" "$OUT/data" "$OUT/samples" "$OUT/bundle"   # a fresh run each time (hgltr never overwrites a run dir)

step "1/5 Fashion-MNIST hierarchy from WordNet 3.0"
"$HGLTR" build-hierarchy --source wordnet \
    --classes taxonomies/sources/fashion_mnist_classes.txt \
    --mapping taxonomies/sources/fashion_mnist_synsets.tsv \
    --output "$OUT/fashion_mnist.json" --plot "$OUT/hierarchy_distances.png"

step "2/5 Fashion-MNIST, ${PER_CLASS} images per class (seed $SEED), from Debian's dataset-fashion-mnist"
"$PY" scripts/fashion_mnist_subset.py "$OUT/data" --per-class "$PER_CLASS" --seed "$SEED" --samples "$OUT/samples"

step "3/5 hgltr train: Fashion-MNIST-LT (imbalance 100), quickstart-effnet-minilm + $PEFT, $EPOCHS epochs, ${SIZE}px"
"$HGLTR" train \
    --dataset fashion-mnist-lt --data-root "$OUT/data" --set dataset.imbalance_factor=100 \
    --set dataset.seed="$SEED" --set dataset.val_per_class=100 --set dataset.image_size="$SIZE" \
    --hierarchy "$OUT/fashion_mnist.json" \
    --model quickstart-effnet-minilm --peft "$PEFT" \
    --epochs "$EPOCHS" --batch-size 64 --seed "$SEED" \
    --set train.optimizer=adamw --set train.lr=0.001 --set train.weight_decay=0.01 \
    --set train.precision=fp32 \
    --output "$RUN" --no-progress

step "4/5 hgltr eval on the test set (10,000 images)"
"$HGLTR" eval "$RUN" --split test

EVAL="$RUN/eval/test"
for f in summary.json per_class.csv; do [ -s "$EVAL/$f" ] || fail "$EVAL/$f was not written"; done
shopt -s nullglob
plots=("$EVAL"/*.png)
[ ${#plots[@]} -gt 0 ] || fail "no plots in $EVAL"

step "5/5 hgltr predict (one test image per class; the true class is in the file name), export, predict from the bundle"
"$HGLTR" predict "$RUN" "$OUT/samples" --top-k 3
"$HGLTR" export "$RUN" --format onnx --output "$OUT/bundle"
"$HGLTR" predict "$OUT/bundle" "$OUT/samples" --top-k 3 --json > "$OUT/bundle_predictions.jsonl"
[ "$(wc -l < "$OUT/bundle_predictions.jsonl")" -eq 10 ] || fail "predict from the bundle did not give 10 predictions"

elapsed=$(( $(date +%s) - start ))
echo
echo "== demo finished in ${elapsed}s ($(( elapsed / 60 ))m $(( elapsed % 60 ))s)"
echo "hierarchy      $OUT/fashion_mnist.json  (LCA-distance heatmap: $OUT/hierarchy_distances.png)"
echo "run directory  $RUN  (config.yaml, metrics.jsonl, checkpoints/)"
echo "metrics        $EVAL/summary.json, $EVAL/per_class.csv"
for p in "${plots[@]}"; do echo "plot           $p"; done
echo "bundle         $OUT/bundle  (ONNX; predictions from it: $OUT/bundle_predictions.jsonl)"
