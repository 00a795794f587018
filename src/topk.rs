//! Top-k results and the one ordering every backend uses: higher score first, equal scores →
//! lower id first. Missing slots are id `-1`, score `-inf` (the FAISS convention).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Id of an empty result slot.
pub const NO_ID: i64 = -1;

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
    /// An all-empty result.
    pub fn empty(rows: usize, k: usize) -> Self {
        TopK {
            rows,
            k,
            ids: vec![NO_ID; rows * k],
            scores: vec![f32::NEG_INFINITY; rows * k],
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
    /// Keeps at most `k` entries.
    pub fn new(k: usize) -> Self {
        TopKHeap {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
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
