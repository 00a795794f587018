//! Test-time-training data (DESIGN §7): from (user, item) engagements, the (user, node) pairs
//! at one depth of the tree where the user's interest is concentrated, with each selected
//! node's representative item.
//!
//! For user `u` with engagements `E_u` (every row counts, duplicates included) and a node `j`
//! at depth `D`, `share(u, j) = |{e ∈ E_u : item(e) lies under j}| / |E_u|`; the pair is kept
//! when `share ≥ interest_rate`. Output rows (sorted by user row, then node id):
//! `[user_row, depth, node_id, representative_item_id]` — node ids are the index's per-depth
//! node numbering (lexicographic code-prefix order, DESIGN §2), the representative is given
//! by the caller's item id.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::index::Index;

/// One output row of [`ttt_pairs`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TttPair {
    /// Row of the user in the caller's user matrix.
    pub user_row: i64,
    /// 1-based depth of the node.
    pub depth: i64,
    /// Node id at that depth.
    pub node: i64,
    /// Caller's id of the node's representative item.
    pub representative: i64,
    /// Share of the user's engagements under the node (in `[interest_rate, 1]`).
    pub share: f64,
}

/// The (user, node) pairs of `engagements` (`M × 2`, row-major `[user_row, item_id]`) at
/// `depth` (`1..=L`) whose share is at least `interest_rate` (`0 < rate ≤ 1`); `users` is the
/// number of user rows (each `user_row` must be in `0..users`), item ids are the caller's ids
/// stored in the index.
pub fn ttt_pairs(
    index: &Index,
    users: usize,
    engagements: &[i64],
    depth: usize,
    interest_rate: f64,
) -> Result<Vec<TttPair>> {
    if depth == 0 || depth > index.levels() {
        return Err(Error::param(format!(
            "ttt: depth {depth} outside 1..={} (the index's levels)",
            index.levels()
        )));
    }
    if !(interest_rate > 0.0 && interest_rate <= 1.0) {
        return Err(Error::param(format!(
            "ttt: interest rate {interest_rate} must be in (0, 1]"
        )));
    }
    if engagements.len() % 2 != 0 {
        return Err(Error::shape(format!(
            "ttt: engagements have {} values, expected M x 2 [user_row, item_id]",
            engagements.len()
        )));
    }
    let position: HashMap<i64, usize> = index
        .ids
        .iter()
        .enumerate()
        .map(|(p, &id)| (id, p))
        .collect();
    let dep = &index.tree.depths[depth - 1];
    // Node of each item position at this depth: the last node whose range starts at or
    // before it.
    let node_of = |p: usize| dep.item_start.partition_point(|&s| s as usize <= p) - 1;
    // Per user: engagement count per node (BTreeMap: output in node order).
    let mut per_user: BTreeMap<usize, BTreeMap<usize, usize>> = BTreeMap::new();
    for (m, e) in engagements.chunks_exact(2).enumerate() {
        let (u, item) = (e[0], e[1]);
        if u < 0 || u as usize >= users {
            return Err(Error::param(format!(
                "engagements row {m}: user_row {u} outside 0..{users}"
            )));
        }
        let p = *position.get(&item).ok_or_else(|| {
            Error::param(format!(
                "engagements row {m}: item id {item} is not in the index"
            ))
        })?;
        *per_user
            .entry(u as usize)
            .or_default()
            .entry(node_of(p))
            .or_insert(0) += 1;
    }
    let mut out = Vec::new();
    for (u, nodes) in per_user {
        let total: usize = nodes.values().sum();
        for (j, c) in nodes {
            let share = c as f64 / total as f64;
            if share >= interest_rate {
                out.push(TttPair {
                    user_row: u as i64,
                    depth: depth as i64,
                    node: j as i64,
                    representative: index.ids[dep.representative[j] as usize],
                    share,
                });
            }
        }
    }
    Ok(out)
}

/// The rows of `pairs` as the `.npy` layout: `P × 4` `[user_row, depth, node_id,
/// representative_item_id]`, row-major.
pub fn to_rows(pairs: &[TttPair]) -> Vec<i64> {
    pairs
        .iter()
        .flat_map(|p| [p.user_row, p.depth, p.node, p.representative])
        .collect()
}
