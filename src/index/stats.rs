//! Per-level statistics of a built index, as `rqtree info` reports them.

use serde::Serialize;

use crate::index::Index;

/// Statistics of one depth of the tree.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DepthStats {
    /// 1-based depth.
    pub depth: usize,
    /// Codewords `K_l` at this level.
    pub codewords: usize,
    /// Nodes at this depth.
    pub nodes: usize,
    /// Items per node: minimum, median, maximum.
    pub items_min: usize,
    /// Median items per node.
    pub items_median: usize,
    /// Maximum items per node.
    pub items_max: usize,
    /// Entropy (bits) of the level's code distribution over items; `log2(K)` is perfectly
    /// balanced.
    pub code_entropy_bits: f64,
    /// Codewords of this level no item uses.
    pub empty_codewords: usize,
}

/// Statistics of every depth.
pub fn depth_stats(index: &Index) -> Vec<DepthStats> {
    let n = index.len() as f64;
    index
        .tree
        .depths
        .iter()
        .enumerate()
        .map(|(l, dep)| {
            let mut counts: Vec<usize> = (0..dep.len()).map(|j| dep.count(j)).collect();
            counts.sort_unstable();
            let kk = index.codebooks.level(l).len();
            let mut per_code = vec![0usize; kk];
            for i in 0..index.len() {
                per_code[index.codes.get(l, i) as usize] += 1;
            }
            let entropy = per_code
                .iter()
                .filter(|&&c| c > 0)
                .map(|&c| {
                    let p = c as f64 / n;
                    -p * p.log2()
                })
                .sum();
            DepthStats {
                depth: l + 1,
                codewords: kk,
                nodes: dep.len(),
                items_min: counts[0],
                items_median: counts[counts.len() / 2],
                items_max: counts[counts.len() - 1],
                code_entropy_bits: entropy,
                empty_codewords: per_code.iter().filter(|&&c| c == 0).count(),
            }
        })
        .collect()
}
