#!/usr/bin/env bash
# Learned codebooks on the gcide set (../shared/data, 60000 x 384, 1000 queries, exact top-100):
# 2 levels x 256 codes, for
#   (a) residual k-means codebooks (`rqtree build` default),
#   (b) learned codebooks (`rqtree learn`, then `rqtree build --codebooks`),
#   (c) FAISS ResidualQuantizer codebooks (max_beam_size 1 and 8), exported to safetensors;
# reconstruction MSE, balance (`rqtree info --json`) and recall@100 at three beam settings
# (candidate budgets) through `rqtree eval --rerank exact`. Writes
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
BEAMS=(--beam 16,256 --beam 32,1024 --beam 64,4096)

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
# Budget-matched FAISS rows: FAISS's trees have more, smaller depth-2 nodes, so the same beam
# scans fewer candidates; widen its depth-2 beam by the candidate ratio to (a)'s.
for v in c1 c8; do
  MATCHED=$(python3 - "$WORK/a.eval.json" "$WORK/$v.eval.json" <<'PY'
import json, sys
a, c = (json.load(open(f))["rows"] for f in sys.argv[1:3])
print(" ".join(f"--beam {ra['beam'][0]},{round(ra['beam'][1] * ra['candidates'] / rc['candidates'])}"
               for ra, rc in zip(a, c)))
PY
)
  # shellcheck disable=SC2086
  $RQ eval --index "$WORK/$v.rqt" --queries "$DATA/gcide_queries_f16.npy" \
    --gt "$DATA/gcide_gt_top100.npy" -k 10,100 $MATCHED --rerank exact --json > "$WORK/$v.matched.json"
done
python3 - "$WORK" "$OUT" "${LEARN_ARGS[*]}" "${LEARN2_ARGS[*]}" "$THREADS" <<'PY'
import json, sys, datetime, os
w, out, learn_args, learn2_args, threads = sys.argv[1:6]
names = {"a": "(a) residual k-means (`rqtree build`)",
         "b": "(b) learned (`rqtree learn`, 2 epochs)",
         "b2": "(b2) learned, 8 epochs, lr 2e-4, alpha 1e7",
         "c1": "(c) FAISS RQ, max_beam_size 1 (greedy encode)",
         "c8": "(c) FAISS RQ, max_beam_size 8 (beam-8 encode)"}
res = {}
for v in names:
    info = json.load(open(f"{w}/{v}.info.json"))
    ev = json.load(open(f"{w}/{v}.eval.json"))
    t = float(open(f"{w}/{v}.time").read().split()[-1])
    res[v] = {"info": info, "eval": ev, "train_s": t}
    if v.startswith("c"):
        res[v]["faiss"] = json.load(open(f"{w}/{v}.faiss.json"))
for v in ("b", "b2"):
    res[v]["learn"] = json.load(open(f"{w}/{v}.learn.json"))
json.dump(res, open(f"{out}/learn_gcide.json", "w"), indent=1)
L = []
L.append("# Learned codebooks on gcide (2 levels x 256 codes)\n")
L.append("60000 items x 384 (unit norm, f16), 1000 held-out queries, exact top-100 ground truth "
         "(`../shared/data`). Every index is built by `rqtree build` (metric ip, f32 embeddings "
         "kept) and searched by `rqtree eval --rerank exact` on the reference backend.\n")
L.append("| codebooks | train s | recon. MSE | depth-1 nodes: cv / largest share / entropy bits | depth-2 nodes: count / cv / largest / entropy bits |")
L.append("|---|---:|---:|---|---|")
for v, nm in names.items():
    i = res[v]["info"]; d1, d2 = i["depths"]
    L.append(f"| {nm} | {res[v]['train_s']:.0f} | {i['reconstruction_mse']:.6f} | "
             f"{d1['items_cv']:.3f} / {d1['largest_share']:.4f} / {d1['code_entropy_bits']:.3f} | "
             f"{d2['nodes']} / {d2['items_cv']:.3f} / {d2['largest_share']:.5f} / {d2['code_entropy_bits']:.3f} |")
L.append("")
L.append("train s: wall seconds of `rqtree build` for (a) (k-means, encoding and tree), of `rqtree learn` "
         "for (b) (k-means initialisation and training; the index build is separate), of FAISS's "
         "`ResidualQuantizer.train` for (c). Balance: cv = standard deviation / mean of the items per "
         "node, largest = the largest node's share of the items, entropy of the level's code "
         "distribution (8 bits = perfectly balanced). MSE = mean over items of ||x - x̂||² with the "
         "encoding stored in the index.\n")
L.append("recall@100 (recall@10) at three beam settings; candidates = items scanned per query.\n")
beams = [",".join(map(str, r["beam"])) for r in res["a"]["eval"]["rows"]]
L.append("| codebooks | " + " | ".join(f"beam {b}: candidates | recall@100 (@10)" for b in beams) + " |")
L.append("|---|" + "---:|---:|" * len(beams))
for v, nm in names.items():
    cells = []
    for r in res[v]["eval"]["rows"]:
        cells.append(f"{r['candidates']:.0f} | {r['recall']['100']:.4f} ({r['recall']['10']:.4f})")
    L.append(f"| {nm} | " + " | ".join(cells) + " |")
for v in ("c1", "c8"):
    m = json.load(open(f"{w}/{v}.matched.json"))
    res[v]["matched"] = m
    cells = [f"{r['candidates']:.0f} | {r['recall']['100']:.4f} ({r['recall']['10']:.4f})" for r in m["rows"]]
    L.append(f"| {names[v]}, depth-2 beam widened to (a)'s candidates: "
             + ", ".join(",".join(map(str, r["beam"])) for r in m["rows"]) + " | " + " | ".join(cells) + " |")
json.dump(res, open(f"{out}/learn_gcide.json", "w"), indent=1)
L.append("")
a = res["a"]
ma = a["info"]["reconstruction_mse"]
for v in ("b", "b2"):
    b = res[v]
    mb = b["info"]["reconstruction_mse"]
    L.append(f"{names[v]} vs (a): MSE {mb:.6f} vs {ma:.6f} ({100*(mb-ma)/ma:+.2f} %); recall@100 "
             + ", ".join(f"{rb['recall']['100']-ra['recall']['100']:+.4f} at beam {','.join(map(str, ra['beam']))} "
                         f"({rb['candidates']:.0f} vs {ra['candidates']:.0f} candidates)"
                         for ra, rb in zip(a["eval"]["rows"], b["eval"]["rows"])) + ".")
for v in ("b", "b2"):
    for c in ("c1", "c8"):
        mb, mc = res[v]["info"]["reconstruction_mse"], res[c]["info"]["reconstruction_mse"]
        L.append(f"{names[v]} vs {names[c]}: MSE {mb:.6f} vs {mc:.6f} ({100*(mb-mc)/mc:+.2f} %); recall@100 "
                 "at matched budgets "
                 + ", ".join(f"{rb['recall']['100']-rc['recall']['100']:+.4f} "
                             f"({rb['candidates']:.0f} vs {rc['candidates']:.0f} candidates)"
                             for rc, rb in zip(res[c]["matched"]["rows"], res[v]["eval"]["rows"])) + ".")
for v in ("c1", "c8"):
    f = res[v]["faiss"]
    L.append(f"FAISS beam {f['beam']}: its own encoder's MSE {f['faiss_mse']:.6f}, training {f['train_s']:.0f} s.")
for v, args in (("b", learn_args), ("b2", learn2_args)):
    lr = res[v]["learn"]
    L.append(f"{names[v]}: `rqtree learn {args}` ({lr['steps']} steps, final alpha "
             f"{lr['alpha']:.3g}, soft-training reconstruction loss per epoch "
             + ", ".join(f"{e['recon']:.5f}" for e in lr["epochs"])
             + f"; {lr['learn_s']:.0f} s including the k-means initialisation).")
L.append("")
L.append(f"Command: `THREADS={threads} scripts/learn_gcide.sh` on {os.cpu_count()} cores, "
         f"{datetime.date.today().isoformat()}.")
open(f"{out}/learn_gcide.md", "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
