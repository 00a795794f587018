#!/usr/bin/env bash
# Learned codebooks on the gcide set (../shared/data, 60000 x 384, 1000 queries, exact top-100):
# 2 levels x 256 codes, for
#   (a) residual k-means codebooks (`rqtree build` default),
#   (b) learned codebooks (`rqtree learn`, then `rqtree build --codebooks`), with ablations,
#   (c) FAISS ResidualQuantizer codebooks (max_beam_size 1 and 8), exported to safetensors;
# then (a), (b) and (bs) again with three other seeds, to show the size of seed-to-seed noise.
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
scripts/bench_venv.sh
RQ="target/release/rqtree --threads $THREADS"
ITEMS="$DATA/gcide_items_f16.npy"
# The learned runs: the same residual k-means initialisation as (a), then joint soft training
# over all 60000 items, nearly hard attention (alpha from 2.5e6 to 1e7).
#   (b)  the defaults of `rqtree learn`: reconstruction of the leaves plus, weight 3, of the
#        depth-1 prefixes (the codewords that score the tree's inner nodes), 8 epochs;
#   (bs) (b) plus the supervised index loss on item-neighbour pairs made from the items alone
#        (scripts/neighbour_pairs.py: 5000 items as pseudo-users, positives from their exact
#        top-100, negatives from ranks 100-1000; no query, no ground truth);
#   (b0) the previous defaults: leaves only, 2 epochs, lr 1e-4, alpha 2.5e5 -> 1e6;
#   (b8) leaves only with (b)'s schedule (8 epochs, lr 2e-4, alpha 1e7).
B_ARGS=(--epochs 8 --lr 2e-4 --alpha-max 1e7 --prefix-weight 3 --train-sample 60000)
BS_ARGS=("${B_ARGS[@]}" --users "$WORK/nb_users.npy" --pairs "$WORK/nb_pairs.npy" --index-weight 1)
B0_ARGS=(--epochs 2 --lr 1e-4 --alpha-max 1e6 --prefix-weight 0 --train-sample 60000)
B8_ARGS=(--epochs 8 --lr 2e-4 --alpha-max 1e7 --prefix-weight 0 --train-sample 60000)
# The beam sweep: depth-2 beams from 0.75x to 1.25x of 256, 1024 and 4096 (depth-1 beams 16, 32,
# 64), so that every codebook set has measured settings on both sides of each fixed budget.
BEAMS=()
for b1 in 16 32 64; do
  for f in 12 14 16 18 20; do BEAMS+=(--beam "$b1,$((b1 * b1 * f / 16))"); done
done
BUDGETS=750,2750,10000
SEEDS=(1 2 3)

evaluate() { # NAME: info and the beam sweep of $WORK/NAME.rqt
  $RQ info "$WORK/$1.rqt" --json > "$WORK/$1.info.json"
  $RQ eval --index "$WORK/$1.rqt" --queries "$DATA/gcide_queries_f16.npy" \
    --gt "$DATA/gcide_gt_top100.npy" -k 10,100 "${BEAMS[@]}" --rerank exact --json \
    > "$WORK/$1.eval.json"
}
kmeans() { # NAME SEED: (a) with this seed
  /usr/bin/time -f %e -o "$WORK/$1.time" $RQ build --items "$ITEMS" --levels 2 --codes 256 \
    --seed "$2" -o "$WORK/$1.rqt" --json > "$WORK/$1.build.json"
}
learned() { # NAME SEED ARGS...: learn, then build the index on the learned codebooks
  local name=$1 seed=$2
  shift 2
  /usr/bin/time -f %e -o "$WORK/$name.time" $RQ learn --items "$ITEMS" --levels 2 --codes 256 \
    --seed "$seed" "$@" -o "$WORK/$name.safetensors" --json > "$WORK/$name.learn.json"
  $RQ build --items "$ITEMS" --codebooks "$WORK/$name.safetensors" -o "$WORK/$name.rqt" --json \
    > "$WORK/$name.build.json"
}

.venv-bench/bin/python scripts/neighbour_pairs.py --items "$ITEMS" --users 5000 --seed 7 \
  --users-out "$WORK/nb_users.npy" --pairs-out "$WORK/nb_pairs.npy" > "$WORK/nb.json"
SEED=20240601
kmeans a $SEED
learned b $SEED "${B_ARGS[@]}"
learned bs $SEED "${BS_ARGS[@]}"
learned b0 $SEED "${B0_ARGS[@]}"
learned b8 $SEED "${B8_ARGS[@]}"
for beam in 1 8; do
  /usr/bin/time -f %e -o "$WORK/c$beam.time" .venv-bench/bin/python scripts/faiss_rq_codebooks.py \
    --items "$ITEMS" --levels 2 --nbits 8 --beam "$beam" --threads "$THREADS" \
    -o "$WORK/c$beam.safetensors" --json "$WORK/c$beam.faiss.json" > /dev/null
  # FAISS's codebooks encoded as FAISS encodes them: greedy for beam 1, beam 8 for beam 8.
  $RQ build --items "$ITEMS" --codebooks "$WORK/c$beam.safetensors" --encode-beam "$beam" \
    -o "$WORK/c$beam.rqt" --json > "$WORK/c$beam.build.json"
done
for v in a b bs b0 b8 c1 c8; do evaluate $v; done
# The same comparison with other seeds (k-means initialisation, sampling and batch order).
for s in "${SEEDS[@]}"; do
  kmeans "a_s$s" "$s"
  learned "b_s$s" "$s" "${B_ARGS[@]}"
  learned "bs_s$s" "$s" "${BS_ARGS[@]}"
  for v in a b bs; do evaluate "${v}_s$s"; done
done
python3 scripts/learn_gcide_table.py "$WORK" "$OUT" "$THREADS" "$BUDGETS" "${SEEDS[*]}" \
  "a=(a) residual k-means (\`rqtree build\`)" \
  "b=(b) learned, \`rqtree learn\` defaults (leaves + prefixes)" \
  "bs=(bs) learned, defaults + item-neighbour pairs" \
  "b0=(b0) learned, leaves only, previous defaults (2 epochs)" \
  "b8=(b8) learned, leaves only, 8 epochs" \
  "c1=(c) FAISS RQ, max_beam_size 1 (greedy encode)" \
  "c8=(c) FAISS RQ, max_beam_size 8 (beam-8 encode)" \
  -- "b=${B_ARGS[*]}" "bs=${BS_ARGS[*]}" "b0=${B0_ARGS[*]}" "b8=${B8_ARGS[*]}"
