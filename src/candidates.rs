//! The result of a beam traversal: for each query, the nodes kept at the deepest searched
//! depth. Their item ranges (contiguous in code order) are the query's candidates.

use crate::index::Tree;

/// Per-query kept nodes in CSR form.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Candidates {
    /// 1-based depth of the nodes listed.
    pub depth: usize,
    /// `B + 1` offsets into `nodes`.
    pub offsets: Vec<usize>,
    /// Node ids at `depth`, best-scored first within each query.
    pub nodes: Vec<u32>,
}

impl Candidates {
    /// Number of queries `B`.
    pub fn queries(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
    /// Kept nodes of query `b`.
    pub fn nodes_of(&self, b: usize) -> &[u32] {
        &self.nodes[self.offsets[b]..self.offsets[b + 1]]
    }
    /// Number of candidate items of query `b` (the items under its kept nodes).
    pub fn items_of(&self, b: usize, tree: &Tree) -> usize {
        let dep = &tree.depths[self.depth - 1];
        self.nodes_of(b)
            .iter()
            .map(|&j| dep.count(j as usize))
            .sum()
    }
}
