//! Top-k results and the one ordering every backend uses: higher score first, equal scores →
//! lower id first. Missing slots are id `-1`, score `-inf` (the FAISS convention).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::error::{Error, Result};

/// Id of an empty result slot.
pub const NO_ID: i64 = -1;

/// Bytes of one result slot: an `i64` id and an `f32` score.
const SLOT_BYTES: usize = std::mem::size_of::<i64>() + std::mem::size_of::<f32>();

/// Heap entries a [`TopKHeap`] reserves up front at most; a heap kept for a larger `k` grows
/// as candidates arrive, so its memory follows `min(k, candidates offered) + 1`, not `k`.
const HEAP_PREALLOC: usize = 4096;

/// The largest result the size check lets through to the allocator: 64 TiB, beyond any
/// machine's memory, so an absurd size is refused even where the allocator would promise it
/// (overcommitted virtual memory) and fail only when touched.
const MAX_RESULT_BYTES: usize = 1 << 46;

/// Checks that a `rows × k` result (`rows · k` slots of `SLOT_BYTES` bytes) can be held:
/// the slot count and byte size must not overflow or exceed `MAX_RESULT_BYTES`, and the
/// allocator must grant both arrays
/// (reserved and released at once, so nothing is touched). An absurd `k` or beam width is
/// then an [`Error::Param`] naming `what`, instead of an abort on allocation or an overflow.
pub fn check_result_size(rows: usize, k: usize, what: &str) -> Result<()> {
    let too_big = || {
        Error::param(format!(
            "{what} = {k} for {rows} rows: a {rows} x {k} result does not fit in memory"
        ))
    };
    let slots = rows.checked_mul(k).ok_or_else(too_big)?;
    match slots.checked_mul(SLOT_BYTES) {
        Some(bytes) if bytes <= MAX_RESULT_BYTES => {}
        _ => return Err(too_big()),
    }
    Vec::<i64>::new()
        .try_reserve_exact(slots)
        .map_err(|_| too_big())?;
    Vec::<f32>::new()
        .try_reserve_exact(slots)
        .map_err(|_| too_big())
}

/// `rows × k` best (id, score) pairs per row, best first, row-major.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TopK {
    /// Number of rows (queries).
    pub rows: usize,
    /// Slots per row.
    pub k: usize,
    /// Ids, `rows * k`; [`NO_ID`] in empty slots.
    pub ids: Vec<i64>,
    /// Scores, `rows * k`; `-inf` in empty slots.
    pub scores: Vec<f32>,
}

impl TopK {
    /// An all-empty `rows × k` result. `rows × k` must have passed [`check_result_size`]
    /// (the caller's validation); an overflowing product is never wrapped into a short result:
    /// it saturates, which makes the allocation fail loudly.
    pub fn empty(rows: usize, k: usize) -> Self {
        let slots = rows.saturating_mul(k);
        TopK {
            rows,
            k,
            ids: vec![NO_ID; slots],
            scores: vec![f32::NEG_INFINITY; slots],
        }
    }
    /// Row `r`'s ids.
    pub fn row_ids(&self, r: usize) -> &[i64] {
        &self.ids[r * self.k..(r + 1) * self.k]
    }
    /// Row `r`'s scores.
    pub fn row_scores(&self, r: usize) -> &[f32] {
        &self.scores[r * self.k..(r + 1) * self.k]
    }
    /// The filled slots (ids `!= -1`, which must be `u32` positions) in CSR form:
    /// `rows + 1` offsets and the ids row after row.
    pub fn to_csr(&self) -> (Vec<usize>, Vec<u32>) {
        let mut offsets = vec![0];
        let mut positions = Vec::new();
        for r in 0..self.rows {
            positions.extend(
                self.row_ids(r)
                    .iter()
                    .filter(|&&p| p != NO_ID)
                    .map(|&p| p as u32),
            );
            offsets.push(positions.len());
        }
        (offsets, positions)
    }
    /// Builds from per-row lists already sorted best first (each at most `k` long), padding.
    pub fn from_rows(k: usize, rows: Vec<Vec<(f32, i64)>>) -> Self {
        let mut out = TopK::empty(rows.len(), k);
        for (r, row) in rows.into_iter().enumerate() {
            for (j, (s, id)) in row.into_iter().take(k).enumerate() {
                out.scores[r * k + j] = s;
                out.ids[r * k + j] = id;
            }
        }
        out
    }
}

/// The crate's total order on (score, id): `Less` means `a` ranks before `b`.
/// Higher score first, then lower id. Scores are finite or `-inf` (never NaN).
#[inline]
pub fn rank_order(a: (f32, i64), b: (f32, i64)) -> Ordering {
    b.0.partial_cmp(&a.0)
        .unwrap_or(Ordering::Equal)
        .then(a.1.cmp(&b.1))
}

/// Heap entry (score, rank id, payload) ordered so that the max-heap's top is the *worst*
/// kept entry; the payload does not take part in the order.
#[derive(Clone, Copy, Debug)]
struct Entry(f32, i64, i64);

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        rank_order((self.0, self.1), (o.0, o.1))
    }
}

/// Bounded selection of the `k` best (score, id) pairs under [`rank_order`], each carrying a
/// payload (the item position when `id` is a caller's id; else equal to `id`).
#[derive(Clone, Debug)]
pub struct TopKHeap {
    k: usize,
    heap: BinaryHeap<Entry>,
}

impl TopKHeap {
    /// Keeps at most `k` entries. Reserves `min(k, HEAP_PREALLOC) + 1` entries (no overflow
    /// for any `k`); beyond that the heap grows with the candidates actually offered, so a huge
    /// `k` or beam width over few candidates costs memory for the candidates only.
    pub fn new(k: usize) -> Self {
        TopKHeap {
            k,
            heap: BinaryHeap::with_capacity(k.min(HEAP_PREALLOC) + 1),
        }
    }
    /// Offers one candidate ranked by (`score`, `id`) and carrying `payload`.
    #[inline]
    pub fn push(&mut self, score: f32, id: i64, payload: i64) {
        if self.heap.len() < self.k {
            self.heap.push(Entry(score, id, payload));
        } else if let Some(worst) = self.heap.peek() {
            if rank_order((score, id), (worst.0, worst.1)) == Ordering::Less {
                self.heap.pop();
                self.heap.push(Entry(score, id, payload));
            }
        }
    }
    /// The kept (score, payload) pairs, best first.
    pub fn into_sorted(self) -> Vec<(f32, i64)> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|e| (e.0, e.2))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heap for a huge `k` (or beam width) reserves little and keeps what is offered; it
    /// used to reserve `k + 1` entries (an abort at 10^12, an overflow at `usize::MAX`).
    #[test]
    fn huge_k_heap_reserves_for_the_candidates_only() {
        for k in [1_000_000_000_000usize, usize::MAX - 1, usize::MAX] {
            let mut h = TopKHeap::new(k);
            assert!(h.heap.capacity() <= HEAP_PREALLOC + 1, "k = {k}");
            for (i, s) in [0.5f32, 2.0, 1.0].into_iter().enumerate() {
                h.push(s, i as i64, i as i64);
            }
            assert_eq!(
                h.into_sorted(),
                vec![(2.0, 1), (1.0, 2), (0.5, 0)],
                "k = {k}"
            );
        }
        let mut h = TopKHeap::new(2);
        for (i, s) in [0.5f32, 2.0, 1.0].into_iter().enumerate() {
            h.push(s, i as i64, i as i64);
        }
        assert_eq!(h.into_sorted(), vec![(2.0, 1), (1.0, 2)]);
    }

    /// Result sizes that overflow or exceed any address space are errors naming the
    /// parameter, never an abort.
    #[test]
    fn absurd_result_sizes_are_errors() {
        for (rows, k) in [
            (2, usize::MAX),
            (usize::MAX, 2),
            (1, usize::MAX / SLOT_BYTES + 1),
            // 3 × 10^13 slots: 360 TB, beyond a 47-bit address space.
            (3, 10_000_000_000_000),
        ] {
            let e = check_result_size(rows, k, "k").unwrap_err().to_string();
            assert!(
                e.contains(&format!("k = {k}")) && e.contains("does not fit"),
                "{rows} x {k}: {e}"
            );
        }
        check_result_size(1000, 100, "k").unwrap();
        check_result_size(0, usize::MAX, "k").unwrap();
    }
}
