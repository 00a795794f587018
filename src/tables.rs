//! Per-query lookup tables `LUT_l[k] = <q, C_l[k]>` (DESIGN §3).

use crate::matrix::Matrix;
use crate::metric::Metric;

/// Lookup tables of a query batch: one `B × K_l` matrix per level, plus `||q||²`.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryTables {
    /// The metric scores are computed for.
    pub metric: Metric,
    /// `||q||²` per query, length `B`.
    pub qnorm: Vec<f32>,
    /// `levels[l]` is `B × K_l`: `<q_b, C_l[k]>`. A caller-supplied level-1 score matrix is
    /// folded into `levels[0]` (see [`crate::search`]).
    pub levels: Vec<Matrix>,
}

impl QueryTables {
    /// Number of queries `B`.
    pub fn queries(&self) -> usize {
        self.qnorm.len()
    }
    /// `LUT_l[k]` of query `b`.
    #[inline]
    pub fn get(&self, b: usize, l: usize, k: u32) -> f32 {
        let m = &self.levels[l];
        m.data()[b * m.cols() + k as usize]
    }
}
