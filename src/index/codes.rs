//! Item codes, stored level-major (`L × N`) so that consecutive items of one level are
//! contiguous (a warp's loads coalesce on the GPU). `u8` when every `K_l ≤ 256`, else `u16`.

use crate::error::{Error, Result};

/// The storage width of codes.
#[derive(Clone, Debug, PartialEq)]
pub enum CodeData {
    /// Every `K_l ≤ 256`.
    U8(Vec<u8>),
    /// Some `K_l > 256`.
    U16(Vec<u16>),
}

/// `L × N` codes, level-major: code of item `i` at level `l` is at `l * N + i`.
#[derive(Clone, Debug, PartialEq)]
pub struct Codes {
    levels: usize,
    items: usize,
    data: CodeData,
}

impl Codes {
    /// Wraps level-major data; errors when its length is not `levels * items`.
    pub fn new(levels: usize, items: usize, data: CodeData) -> Result<Self> {
        let len = match &data {
            CodeData::U8(v) => v.len(),
            CodeData::U16(v) => v.len(),
        };
        if levels.checked_mul(items) != Some(len) {
            return Err(Error::shape(format!(
                "codes: {levels} levels x {items} items needs {} codes, got {len}",
                levels.saturating_mul(items)
            )));
        }
        Ok(Codes {
            levels,
            items,
            data,
        })
    }

    /// Packs item-major `N × L` codes (`u32`) into level-major storage of the narrowest width
    /// that holds codebook sizes `sizes`.
    pub fn from_item_major(item_major: &[u32], sizes: &[usize]) -> Result<Self> {
        let levels = sizes.len();
        if levels == 0 || item_major.len() % levels != 0 {
            return Err(Error::shape("codes: length is not a multiple of L"));
        }
        let items = item_major.len() / levels;
        for (i, row) in item_major.chunks(levels).enumerate() {
            for (l, (&c, &k)) in row.iter().zip(sizes).enumerate() {
                if c as usize >= k {
                    return Err(Error::index(format!(
                        "code {c} of item {i} at level {l} is out of range (K = {k})"
                    )));
                }
            }
        }
        let at = |l: usize, i: usize| item_major[i * levels + l];
        let data = if sizes.iter().all(|&k| k <= 256) {
            CodeData::U8(
                (0..levels)
                    .flat_map(|l| (0..items).map(move |i| at(l, i) as u8))
                    .collect(),
            )
        } else {
            CodeData::U16(
                (0..levels)
                    .flat_map(|l| (0..items).map(move |i| at(l, i) as u16))
                    .collect(),
            )
        };
        Codes::new(levels, items, data)
    }

    /// Number of levels `L`.
    pub fn levels(&self) -> usize {
        self.levels
    }
    /// Number of items `N`.
    pub fn items(&self) -> usize {
        self.items
    }
    /// The raw level-major storage.
    pub fn data(&self) -> &CodeData {
        &self.data
    }
    /// Code of item `i` (position in code order) at level `l`.
    #[inline]
    pub fn get(&self, l: usize, i: usize) -> u32 {
        let p = l * self.items + i;
        match &self.data {
            CodeData::U8(v) => v[p] as u32,
            CodeData::U16(v) => v[p] as u32,
        }
    }
    /// The code path of item `i`, length `L`.
    pub fn path(&self, i: usize) -> Vec<u32> {
        (0..self.levels).map(|l| self.get(l, i)).collect()
    }
    /// Errors unless every code at level `l` is `< sizes[l]`.
    pub fn check_range(&self, sizes: &[usize]) -> Result<()> {
        if sizes.len() != self.levels {
            return Err(Error::index(format!(
                "codes have {} levels, codebooks {}",
                self.levels,
                sizes.len()
            )));
        }
        for (l, &k) in sizes.iter().enumerate() {
            if let Some(i) = (0..self.items).find(|&i| self.get(l, i) as usize >= k) {
                return Err(Error::index(format!(
                    "code {} of item position {i} at level {l} is out of range (K = {k})",
                    self.get(l, i)
                )));
            }
        }
        Ok(())
    }
}
