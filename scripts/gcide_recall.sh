#!/usr/bin/env bash
# Recall and speed on the gcide set (../shared/data): rqtree (2 levels x 256 codes, reference
# backend, exact re-rank) against FAISS IndexIVFFlat (nlist 256) at equal candidates scanned.
# Writes benches/results/gcide_recall.{md,json}. Needs python3 (installs faiss-cpu into
# .venv-bench from scripts/requirements-bench.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
THREADS=${THREADS:-2}
OUT=benches/results
WORK=target/gcide
mkdir -p "$OUT" "$WORK"
cargo build --release --quiet
scripts/bench_venv.sh
RQ=target/release/rqtree
$RQ --threads "$THREADS" build --items "$DATA/gcide_items_f16.npy" --levels 2 --codes 256 \
  --keep-embeddings f32 -o "$WORK/gcide.rqt" --json > "$WORK/build.json"
$RQ info "$WORK/gcide.rqt" > "$WORK/info.txt"
BEAMS=(--beam 8,64 --beam 16,256 --beam 32,512 --beam 32,1024 --beam 64,2048 --beam 64,4096 --beam 128,8192)
$RQ --threads "$THREADS" eval --index "$WORK/gcide.rqt" --queries "$DATA/gcide_queries_f16.npy" \
  --gt "$DATA/gcide_gt_top100.npy" -k 10,100 "${BEAMS[@]}" --rerank exact --repeats 3 --json \
  > "$WORK/rqtree.json"
.venv-bench/bin/python scripts/faiss_baseline.py --items "$DATA/gcide_items_f16.npy" \
  --queries "$DATA/gcide_queries_f16.npy" --gt "$DATA/gcide_gt_top100.npy" \
  --threads "$THREADS" --json "$WORK/faiss.json" > "$WORK/faiss.txt"
python3 scripts/recall_table.py "$WORK/rqtree.json" "$WORK/faiss.json" \
  --build-json "$WORK/build.json" > "$OUT/gcide_recall.md"
{
  echo
  echo '```'
  cat "$WORK/info.txt"
  echo '```'
  echo
  echo "Command: \`THREADS=$THREADS scripts/gcide_recall.sh\` on $(nproc) cores, $(date -u +%Y-%m-%d)."
} >> "$OUT/gcide_recall.md"
python3 - "$WORK" "$OUT/gcide_recall.json" <<'PY'
import json, sys
w = sys.argv[1]
json.dump({k: json.load(open(f"{w}/{k}.json")) for k in ("build", "rqtree", "faiss")},
          open(sys.argv[2], "w"), indent=1)
PY
cat "$OUT/gcide_recall.md"
