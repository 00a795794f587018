//! Beam traversal (DESIGN §3): score every depth-1 node, keep the best `W_1`; expand the kept
//! nodes' children, score them, keep the best `W_2`; … Node ip-scores accumulate along the
//! path (`Σ_{m≤l} LUT_m[code_m]`); `l2` adds the centroid norm. Ties → lower node id.

use rayon::prelude::*;

use crate::candidates::Candidates;
use crate::index::Tree;
use crate::tables::QueryTables;
use crate::topk::TopKHeap;

/// Keeps the best `w` of `(node, ip)` pairs at depth index `l`, best first.
fn keep(
    t: &QueryTables,
    tree: &Tree,
    b: usize,
    l: usize,
    nodes: &[(u32, f32)],
    w: usize,
) -> Vec<(u32, f32)> {
    let dep = &tree.depths[l];
    let mut heap = TopKHeap::new(w);
    for (p, &(j, ip)) in nodes.iter().enumerate() {
        let s = t
            .metric
            .score(ip, t.qnorm[b], dep.centroid_norm[j as usize]);
        heap.push(s, j as i64, p as i64);
    }
    heap.into_sorted()
        .into_iter()
        .map(|(_, p)| nodes[p as usize])
        .collect()
}

pub(crate) fn traverse(t: &QueryTables, tree: &Tree, beams: &[usize]) -> Candidates {
    let per_query: Vec<Vec<u32>> = (0..t.queries())
        .into_par_iter()
        .map(|b| {
            let d1 = &tree.depths[0];
            let first: Vec<(u32, f32)> = (0..d1.len())
                .map(|j| (j as u32, t.get(b, 0, d1.code[j])))
                .collect();
            let mut kept = keep(t, tree, b, 0, &first, beams[0]);
            for (l, &w) in beams.iter().enumerate().skip(1) {
                let parent = &tree.depths[l - 1];
                let dep = &tree.depths[l];
                let expanded: Vec<(u32, f32)> = kept
                    .iter()
                    .flat_map(|&(j, ip)| {
                        parent
                            .children(j as usize)
                            .map(move |c| (c as u32, ip + t.get(b, l, dep.code[c])))
                    })
                    .collect();
                kept = keep(t, tree, b, l, &expanded, w);
            }
            kept.into_iter().map(|(j, _)| j).collect()
        })
        .collect();
    let mut offsets = vec![0];
    let mut nodes = Vec::new();
    for q in per_query {
        nodes.extend(q);
        offsets.push(nodes.len());
    }
    Candidates {
        depth: beams.len(),
        offsets,
        nodes,
    }
}
