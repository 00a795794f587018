#!/usr/bin/env bash
# Learned codebooks on the gcide set (../shared/data, 60000 x 384, 1000 queries, exact top-100):
# 2 levels x 256 codes, for
#   (a) residual k-means codebooks (`rqtree build` default),
#   (b) learned codebooks (`rqtree learn`, then `rqtree build --codebooks`),
#   (c) FAISS ResidualQuantizer codebooks (max_beam_size 1 and 8), exported to safetensors;
# reconstruction MSE, balance (`rqtree info --json`) and recall@100 (@10) through
# `rqtree eval --rerank exact` on a sweep of beams, reported at three fixed candidate budgets
# (interpolated between the bracketing settings; scripts/learn_gcide_table.py). Writes
# benches/results/learn_gcide.{md,json}. Needs python3 (faiss-cpu and safetensors into
# .venv-bench from scripts/requirements-bench.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
THREADS=${THREADS:-2}
OUT=benches/results
WORK=target/learn_gcide
mkdir -p "$OUT" "$WORK"
cargo build --release --quiet
if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install --quiet -r scripts/requirements-bench.txt
fi
RQ="target/release/rqtree --threads $THREADS"
ITEMS="$DATA/gcide_items_f16.npy"
# The learned run (b): the same residual k-means initialisation as (a), then 2 epochs of joint
# soft training over all 60000 items, nearly hard attention (alpha 2.5e5 -> 1e6). (b2) trains
# longer, harder and with a larger learning rate.
LEARN_ARGS=(--epochs 2 --batch 512 --lr 1e-4 --alpha-max 1e6 --alpha-floor 0.25
            --alpha-power 1 --train-sample 60000 --seed 20240601)
LEARN2_ARGS=(--epochs 8 --batch 512 --lr 2e-4 --alpha-max 1e7 --alpha-floor 0.25
             --alpha-power 1 --train-sample 60000 --seed 20240601)
# The beam sweep: depth-2 beams from 0.75x to 1.25x of 256, 1024 and 4096 (depth-1 beams 16, 32,
# 64), so that every codebook set has measured settings on both sides of each fixed budget.
BEAMS=()
for b1 in 16 32 64; do
  for f in 12 14 16 18 20; do BEAMS+=(--beam "$b1,$((b1 * b1 * f / 16))"); done
done
BUDGETS=750,2750,10000

/usr/bin/time -f %e -o "$WORK/a.time" $RQ build --items "$ITEMS" --levels 2 --codes 256 \
  -o "$WORK/a.rqt" --json > "$WORK/a.build.json"
/usr/bin/time -f %e -o "$WORK/b.time" $RQ learn --items "$ITEMS" --levels 2 --codes 256 \
  "${LEARN_ARGS[@]}" -o "$WORK/b.safetensors" --json > "$WORK/b.learn.json"
/usr/bin/time -f %e -o "$WORK/b2.time" $RQ learn --items "$ITEMS" --levels 2 --codes 256 \
  "${LEARN2_ARGS[@]}" -o "$WORK/b2.safetensors" --json > "$WORK/b2.learn.json"
for v in b b2; do
  $RQ build --items "$ITEMS" --codebooks "$WORK/$v.safetensors" -o "$WORK/$v.rqt" --json \
    > "$WORK/$v.build.json"
done
for beam in 1 8; do
  /usr/bin/time -f %e -o "$WORK/c$beam.time" .venv-bench/bin/python scripts/faiss_rq_codebooks.py \
    --items "$ITEMS" --levels 2 --nbits 8 --beam "$beam" --threads "$THREADS" \
    -o "$WORK/c$beam.safetensors" --json "$WORK/c$beam.faiss.json" > /dev/null
  # FAISS's codebooks encoded as FAISS encodes them: greedy for beam 1, beam 8 for beam 8.
  $RQ build --items "$ITEMS" --codebooks "$WORK/c$beam.safetensors" --encode-beam "$beam" \
    -o "$WORK/c$beam.rqt" --json > "$WORK/c$beam.build.json"
done
for v in a b b2 c1 c8; do
  $RQ info "$WORK/$v.rqt" --json > "$WORK/$v.info.json"
  $RQ eval --index "$WORK/$v.rqt" --queries "$DATA/gcide_queries_f16.npy" \
    --gt "$DATA/gcide_gt_top100.npy" -k 10,100 "${BEAMS[@]}" --rerank exact --json \
    > "$WORK/$v.eval.json"
done
python3 scripts/learn_gcide_table.py "$WORK" "$OUT" "$THREADS" "$BUDGETS" \
  "a=(a) residual k-means (\`rqtree build\`)" \
  "b=(b) learned (\`rqtree learn\`, defaults)" \
  "b2=(b2) learned, 8 epochs, lr 2e-4, alpha 1e7" \
  "c1=(c) FAISS RQ, max_beam_size 1 (greedy encode)" \
  "c8=(c) FAISS RQ, max_beam_size 8 (beam-8 encode)" \
  -- "b=${LEARN_ARGS[*]}" "b2=${LEARN2_ARGS[*]}"
