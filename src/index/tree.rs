//! The code tree of DESIGN §2: a node at depth `l` (1-based) is a distinct code prefix
//! `(code_1..code_l)` present among the items. Items are stored in lexicographic code order,
//! so every node covers one contiguous item range; nodes of one depth are numbered in
//! lexicographic prefix order and a CSR gives each node its children and its items.

use crate::error::{Error, Result};
use crate::index::codebooks::Codebooks;
use crate::index::codes::Codes;
use crate::matrix::norm_sq;

/// The node table of one depth. Arrays are indexed by node id at this depth.
#[derive(Clone, Debug, PartialEq)]
pub struct Depth {
    /// The node's last code (`code_l`), `< K_l`.
    pub code: Vec<u32>,
    /// CSR into the next depth's nodes: children of node `j` are
    /// `child_start[j]..child_start[j+1]`. Length `nodes + 1`; empty at the last depth.
    pub child_start: Vec<u32>,
    /// CSR into item positions: items of node `j` are `item_start[j]..item_start[j+1]`.
    /// Length `nodes + 1`, starts at 0, ends at `N`, strictly increasing.
    pub item_start: Vec<u32>,
    /// `||Σ_{m≤l} C_m[code_m]||²` of the node's centroid.
    pub centroid_norm: Vec<f32>,
    /// Item position of the node's representative item (the item of its subtree nearest to
    /// its centroid; ties → the lowest item id, DESIGN §4's rule).
    pub representative: Vec<u32>,
}

impl Depth {
    /// Number of nodes at this depth.
    pub fn len(&self) -> usize {
        self.code.len()
    }
    /// True when the depth has no nodes (only for an empty index, which is never built).
    pub fn is_empty(&self) -> bool {
        self.code.is_empty()
    }
    /// Items under node `j`.
    pub fn count(&self, j: usize) -> usize {
        (self.item_start[j + 1] - self.item_start[j]) as usize
    }
    /// Item positions under node `j`.
    pub fn items(&self, j: usize) -> std::ops::Range<usize> {
        self.item_start[j] as usize..self.item_start[j + 1] as usize
    }
    /// Children (node ids at the next depth) of node `j`.
    pub fn children(&self, j: usize) -> std::ops::Range<usize> {
        self.child_start[j] as usize..self.child_start[j + 1] as usize
    }
}

/// All depths `1..=L` (stored 0-based: `depths[0]` is depth 1).
#[derive(Clone, Debug, PartialEq)]
pub struct Tree {
    /// Per-depth node tables.
    pub depths: Vec<Depth>,
}

impl Tree {
    /// Builds the tree from codes already in lexicographic order. `ids` are the items' ids
    /// by position (`N`; they break representative ties); `item_vec(i)` must return item
    /// position `i`'s embedding (or reconstruction, when no embeddings are kept) for choosing
    /// representatives by squared L2 distance to the node centroid.
    pub fn build(
        codes: &Codes,
        codebooks: &Codebooks,
        ids: &[i64],
        item_vec: &(dyn Fn(usize) -> Vec<f32> + Sync),
    ) -> Result<Tree> {
        let n = codes.items();
        let levels = codes.levels();
        if n == 0 {
            return Err(Error::param("cannot build a tree over an empty item set"));
        }
        if ids.len() != n {
            return Err(Error::shape(format!("{} ids for {n} items", ids.len())));
        }
        if n > u32::MAX as usize {
            return Err(Error::param(format!(
                "{n} items exceed the u32 item positions"
            )));
        }
        let mut depths: Vec<Depth> = Vec::with_capacity(levels);
        for l in 0..levels {
            // A new node starts where any code of depth ≤ l changes.
            let mut item_start = vec![0u32];
            for i in 1..n {
                if (0..=l).any(|m| codes.get(m, i) != codes.get(m, i - 1)) {
                    item_start.push(i as u32);
                }
            }
            item_start.push(n as u32);
            let nodes = item_start.len() - 1;
            let code: Vec<u32> = (0..nodes)
                .map(|j| codes.get(l, item_start[j] as usize))
                .collect();
            let centroids: Vec<Vec<f32>> = (0..nodes)
                .map(|j| {
                    let path = codes.path(item_start[j] as usize);
                    codebooks.reconstruct(&path[..=l])
                })
                .collect();
            let centroid_norm = centroids.iter().map(|c| norm_sq(c)).collect();
            let representative = (0..nodes)
                .map(|j| {
                    let range = item_start[j] as usize..item_start[j + 1] as usize;
                    let mut best = (f64::INFINITY, range.start);
                    for i in range {
                        let v = item_vec(i);
                        let dd: f64 = v
                            .iter()
                            .zip(&centroids[j])
                            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                            .sum();
                        if dd < best.0 || (dd == best.0 && ids[i] < ids[best.1]) {
                            best = (dd, i);
                        }
                    }
                    best.1 as u32
                })
                .collect();
            depths.push(Depth {
                code,
                child_start: Vec::new(),
                item_start,
                centroid_norm,
                representative,
            });
        }
        // Children CSR: the children of node j at depth l are the nodes of depth l+1 whose
        // item ranges start inside j's range.
        for l in 0..levels.saturating_sub(1) {
            let (upper, lower) = depths.split_at_mut(l + 1);
            let parent = &mut upper[l];
            let child = &lower[0];
            let mut child_start = Vec::with_capacity(parent.len() + 1);
            let mut c = 0usize;
            for j in 0..parent.len() {
                child_start.push(c as u32);
                while c < child.len() && child.item_start[c] < parent.item_start[j + 1] {
                    c += 1;
                }
            }
            child_start.push(c as u32);
            parent.child_start = child_start;
        }
        Ok(Tree { depths })
    }

    /// Checks every structural invariant against the codes and codebook sizes: CSR monotone
    /// and covering, children nested in parents, codes consistent with item ranges,
    /// representatives inside their node. Errors name the depth and node.
    pub fn validate(&self, codes: &Codes, sizes: &[usize]) -> Result<()> {
        let n = codes.items();
        let levels = codes.levels();
        if self.depths.len() != levels {
            return Err(Error::index(format!(
                "tree has {} depths, codes have {levels} levels",
                self.depths.len()
            )));
        }
        if sizes.len() != levels {
            return Err(Error::index(format!(
                "{} codebook sizes for a tree of {levels} depths",
                sizes.len()
            )));
        }
        for (l, dep) in self.depths.iter().enumerate() {
            let nodes = dep.code.len();
            let d = l + 1;
            if dep.item_start.len() != nodes + 1
                || dep.centroid_norm.len() != nodes
                || dep.representative.len() != nodes
            {
                return Err(Error::index(format!(
                    "depth {d}: node table lengths disagree ({nodes} codes, {} item offsets, \
                     {} norms, {} representatives)",
                    dep.item_start.len(),
                    dep.centroid_norm.len(),
                    dep.representative.len()
                )));
            }
            if nodes == 0 || dep.item_start[0] != 0 || dep.item_start[nodes] as usize != n {
                return Err(Error::index(format!(
                    "depth {d}: item offsets must run from 0 to {n}"
                )));
            }
            if let Some(j) = (0..nodes).find(|&j| dep.item_start[j] >= dep.item_start[j + 1]) {
                return Err(Error::index(format!(
                    "depth {d}: item offsets not strictly increasing at node {j}"
                )));
            }
            for j in 0..nodes {
                if dep.code[j] as usize >= sizes[l] {
                    return Err(Error::index(format!(
                        "depth {d} node {j}: code {} out of range (K = {})",
                        dep.code[j], sizes[l]
                    )));
                }
                let r = dep.items(j);
                if !r.contains(&(dep.representative[j] as usize)) {
                    return Err(Error::index(format!(
                        "depth {d} node {j}: representative {} outside its items {r:?}",
                        dep.representative[j]
                    )));
                }
                if !dep.centroid_norm[j].is_finite() || dep.centroid_norm[j] < 0.0 {
                    return Err(Error::index(format!(
                        "depth {d} node {j}: invalid centroid norm {}",
                        dep.centroid_norm[j]
                    )));
                }
                let first = r.start;
                if codes.get(l, first) != dep.code[j] {
                    return Err(Error::index(format!(
                        "depth {d} node {j}: code {} disagrees with item {first}'s code {}",
                        dep.code[j],
                        codes.get(l, first)
                    )));
                }
            }
            // Item codes: a node's items share its prefix; neighbouring nodes differ and are
            // in lexicographic order.
            for j in 0..nodes {
                let r = dep.items(j);
                for i in r.start + 1..r.end {
                    if (0..=l).any(|m| codes.get(m, i) != codes.get(m, r.start)) {
                        return Err(Error::index(format!(
                            "depth {d} node {j}: item {i} does not share the node's code prefix"
                        )));
                    }
                }
                if j > 0 {
                    let a = &codes.path(r.start - 1)[..=l];
                    let b = &codes.path(r.start)[..=l];
                    if a >= b {
                        return Err(Error::index(format!(
                            "depth {d}: nodes {} and {j} are not in increasing code order",
                            j - 1
                        )));
                    }
                }
            }
            if l + 1 < levels {
                let next = &self.depths[l + 1];
                let cs = &dep.child_start;
                if cs.len() != nodes + 1 || cs[0] != 0 || cs[nodes] as usize != next.code.len() {
                    return Err(Error::index(format!(
                        "depth {d}: child offsets must run from 0 to {} over {} entries",
                        next.code.len(),
                        nodes + 1
                    )));
                }
                if let Some(j) = (0..nodes).find(|&j| cs[j] >= cs[j + 1]) {
                    return Err(Error::index(format!(
                        "depth {d}: child offsets not strictly increasing at node {j}"
                    )));
                }
                if next.item_start.len() != next.code.len() + 1 {
                    return Err(Error::index(format!(
                        "depth {}: {} item offsets for {} nodes",
                        d + 1,
                        next.item_start.len(),
                        next.code.len()
                    )));
                }
                for j in 0..nodes {
                    let first = next.item_start[cs[j] as usize];
                    let last = next.item_start[cs[j + 1] as usize];
                    if first != dep.item_start[j] || last != dep.item_start[j + 1] {
                        return Err(Error::index(format!(
                            "depth {d} node {j}: children do not cover the node's items"
                        )));
                    }
                }
            } else if !dep.child_start.is_empty() {
                return Err(Error::index(format!(
                    "depth {d} is the last depth but has child offsets"
                )));
            }
        }
        Ok(())
    }
}
