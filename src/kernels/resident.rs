//! Device copies of host data kept across calls, so that an index (codes, ids, norms, tree
//! tables, embeddings) and its codebooks cross PCIe once, not once per call.
//!
//! Two ways an input is found on the device again:
//!
//! - **Pinned** (`Residency::pin`): the caller hands over an `Arc` of the host data (an
//!   [`Index`] or a [`Matrix`]). While the residency holds that `Arc` the data can neither be
//!   freed nor mutated (the values have no interior mutability; only the memos of their
//!   finiteness and largest magnitude do), so a slice at the same address with the same
//!   length *is* that data: the lookup itself costs no host work. (Inputs the host derives
//!   per call from pinned data are not pinned: with f16/bf16 codebook storage the codebooks
//!   are rounded and go through the content cache on every call.)
//! - **Content cache** (index and codebook inputs of every call, and the small per-call shape
//!   arrays such as a batch's list starts and the tables' level offsets): keyed by the
//!   bytes' length and their 128-bit XXH3 hash. A modified index hashes differently and is
//!   uploaded again, so results are never stale; the price is one host hashing pass over the
//!   input (several times faster than the copy, and no device allocation). Entries are
//!   evicted least-recently-used beyond a byte budget; an input larger than the budget is
//!   not cached (pin it).
//!
//! Per-query inputs (queries, tables, candidate lists) are uploaded every call unless pinned.

use std::any::Any;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use xxhash_rust::xxh3::xxh3_128;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::index::{CodeData, Embeddings, Index};
use crate::matrix::Matrix;

/// Default byte budget of the content cache (pinned data is not counted).
pub const DEFAULT_CACHE_BYTES: usize = 4 << 30;

/// How an input may be found on the device again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Index or codebook data: pinned copy, else the content cache.
    Content,
    /// Large per-call data: pinned copy, else a fresh upload (hashing would cost as much as
    /// it saves when the data changes every call).
    PinnedOnly,
}

/// How a device copy lays out the host bytes it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Layout {
    /// Byte for byte.
    AsIs,
    /// The host bytes are `rows` rows of equal length; the device copy starts each row at a
    /// multiple of `ld` bytes (`ld` ≥ the row length), zero-filled past the row's end, so a
    /// kernel can read a row in aligned 16-byte pieces (`rq_fused_scan`'s codes).
    PaddedRows { rows: usize, ld: usize },
}

impl Layout {
    /// `bytes` laid out for the device.
    fn apply<'a>(self, bytes: &'a [u8]) -> Result<Cow<'a, [u8]>> {
        match self {
            Layout::AsIs => Ok(Cow::Borrowed(bytes)),
            Layout::PaddedRows { rows, ld } => {
                let cols = bytes.len().checked_div(rows).unwrap_or(0);
                if cols * rows != bytes.len() || cols > ld {
                    return Err(Error::shape(format!(
                        "residency: {} bytes as {rows} rows padded to {ld} bytes",
                        bytes.len()
                    )));
                }
                let mut out = vec![0u8; rows * ld];
                if cols > 0 {
                    for (dst, src) in out.chunks_exact_mut(ld).zip(bytes.chunks_exact(cols)) {
                        dst[..cols].copy_from_slice(src);
                    }
                }
                Ok(Cow::Owned(out))
            }
        }
    }
}

/// A device buffer owned by one call or shared with the residency.
pub(crate) enum Held<B> {
    /// Uploaded for this call only.
    Owned(B),
    /// A resident copy.
    Shared(Arc<B>),
}

impl<B> std::ops::Deref for Held<B> {
    type Target = B;
    fn deref(&self) -> &B {
        match self {
            Held::Owned(b) => b,
            Held::Shared(b) => b,
        }
    }
}

/// Counters of the residency (for tests and the bench).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResidencyStats {
    /// Host-to-device copies made through the residency (resident or not).
    pub uploads: u64,
    /// Bytes of those copies.
    pub uploaded_bytes: u64,
    /// Inputs served by a resident copy.
    pub hits: u64,
}

struct Cached<B> {
    buf: Arc<B>,
    bytes: usize,
    last_use: u64,
}

struct Inner<B> {
    owners: Vec<Arc<dyn Any + Send + Sync>>,
    trusted: HashSet<(usize, usize)>,
    pinned: HashMap<((usize, usize), Layout), Arc<B>>,
    cached: HashMap<(usize, u128, Layout), Cached<B>>,
    cached_bytes: usize,
    tick: u64,
    stats: ResidencyStats,
}

/// The resident copies of one device (see the module docs).
pub struct Residency<D: Device> {
    inner: Mutex<Inner<D::Buffer>>,
    budget: usize,
}

/// `(address, byte length)` of a slice: the identity of pinned data.
fn key_of<T>(data: &[T]) -> (usize, usize) {
    (data.as_ptr() as usize, std::mem::size_of_val(data))
}

/// The host slices of `index` that kernels read.
fn index_slices(ix: &Index) -> Vec<(usize, usize)> {
    let mut v = vec![key_of(&ix.ids), key_of(&ix.item_norms)];
    v.push(match ix.codes.data() {
        CodeData::U8(c) => key_of(c),
        CodeData::U16(c) => key_of(c),
    });
    for cb in ix.codebooks.iter() {
        v.push(key_of(cb.words().data()));
        v.push(key_of(cb.norms()));
    }
    for d in &ix.tree.depths {
        v.extend([
            key_of(&d.code),
            key_of(&d.child_start),
            key_of(&d.item_start),
            key_of(&d.centroid_norm),
        ]);
    }
    match &ix.embeddings {
        Some(Embeddings::F32(m)) => v.push(key_of(m.data())),
        Some(Embeddings::F16(h)) => v.push(key_of(h.data())),
        Some(Embeddings::Bf16(h)) => v.push(key_of(h.data())),
        None => {}
    }
    v
}

impl<D: Device> Default for Residency<D> {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_BYTES)
    }
}

impl<D: Device> Residency<D> {
    /// An empty residency whose content cache holds at most `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Residency {
            inner: Mutex::new(Inner {
                owners: Vec::new(),
                trusted: HashSet::new(),
                pinned: HashMap::new(),
                cached: HashMap::new(),
                cached_bytes: 0,
                tick: 0,
                stats: ResidencyStats::default(),
            }),
            budget,
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner<D::Buffer>>> {
        self.inner
            .lock()
            .map_err(|_| Error::Device("residency lock poisoned".into()))
    }

    /// Keeps `index` alive and immutable; its slices are then served from device copies made
    /// on first use, without hashing.
    pub fn pin_index(&self, index: Arc<Index>) -> Result<()> {
        let slices = index_slices(&index);
        self.pin(index, slices)
    }

    /// Keeps `m` alive and immutable; its data is then served from a device copy.
    pub fn pin_matrix(&self, m: Arc<Matrix>) -> Result<()> {
        let slices = vec![key_of(m.data())];
        self.pin(m, slices)
    }

    fn pin(&self, owner: Arc<dyn Any + Send + Sync>, slices: Vec<(usize, usize)>) -> Result<()> {
        let mut g = self.lock()?;
        g.trusted
            .extend(slices.into_iter().filter(|&(_, bytes)| bytes > 0));
        g.owners.push(owner);
        Ok(())
    }

    /// Drops every pinned owner and its device copies, and empties the content cache.
    pub fn release(&self) -> Result<()> {
        let mut g = self.lock()?;
        g.owners.clear();
        g.trusted.clear();
        g.pinned.clear();
        g.cached.clear();
        g.cached_bytes = 0;
        Ok(())
    }

    /// The counters so far.
    pub fn stats(&self) -> Result<ResidencyStats> {
        Ok(self.lock()?.stats)
    }

    /// A device buffer holding `data`: a resident copy when there is one (or one is made, for
    /// [`Reuse::Content`]), else a fresh upload.
    pub(crate) fn input<T: bytemuck::Pod>(
        &self,
        dev: &D,
        data: &[T],
        reuse: Reuse,
    ) -> Result<Held<D::Buffer>> {
        self.input_laid(dev, data, reuse, Layout::AsIs)
    }

    /// [`Residency::input`] with the device copy laid out as `layout` (resident copies of
    /// one host slice in different layouts are distinct entries).
    ///
    /// The lock is held only to look entries up and to record them: hashing, laying out and
    /// copying run without it, so concurrent callers overlap there. Two callers missing the
    /// same entry at once both copy; the first to record its copy wins, the other's is
    /// used once and freed.
    pub(crate) fn input_laid<T: bytemuck::Pod>(
        &self,
        dev: &D,
        data: &[T],
        reuse: Reuse,
        layout: Layout,
    ) -> Result<Held<D::Buffer>> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let key = key_of(bytes);
        let pinned = !bytes.is_empty() && {
            let mut g = self.lock()?;
            if g.trusted.contains(&key) {
                if let Some(b) = g.pinned.get(&(key, layout)) {
                    let b = Arc::clone(b);
                    g.stats.hits += 1;
                    return Ok(Held::Shared(b));
                }
                true
            } else {
                false
            }
        };
        if pinned {
            let b = Arc::new(self.copy(dev, &layout.apply(bytes)?)?);
            let mut g = self.lock()?;
            // Still pinned (no `release` since the lookup): the slice, borrowed by this call
            // all along, is the pinned data, so its copy may be kept.
            if !g.trusted.contains(&key) {
                return Ok(Held::Shared(b));
            }
            let kept = g.pinned.entry((key, layout)).or_insert(b);
            return Ok(Held::Shared(Arc::clone(kept)));
        }
        if reuse == Reuse::PinnedOnly || bytes.is_empty() {
            return Ok(Held::Owned(self.copy(dev, &layout.apply(bytes)?)?));
        }
        let ckey = (bytes.len(), xxh3_128(bytes), layout);
        {
            let mut g = self.lock()?;
            g.tick += 1;
            let tick = g.tick;
            if let Some(c) = g.cached.get_mut(&ckey) {
                c.last_use = tick;
                let b = Arc::clone(&c.buf);
                g.stats.hits += 1;
                return Ok(Held::Shared(b));
            }
        }
        let laid = layout.apply(bytes)?;
        let b = Arc::new(self.copy(dev, &laid)?);
        if laid.len() > self.budget {
            return Ok(Held::Shared(b));
        }
        let mut g = self.lock()?;
        g.tick += 1;
        let tick = g.tick;
        if let Some(c) = g.cached.get_mut(&ckey) {
            c.last_use = tick;
            return Ok(Held::Shared(Arc::clone(&c.buf)));
        }
        g.cached_bytes += laid.len();
        g.cached.insert(
            ckey,
            Cached {
                buf: Arc::clone(&b),
                bytes: laid.len(),
                last_use: tick,
            },
        );
        while g.cached_bytes > self.budget {
            let oldest = g
                .cached
                .iter()
                .filter(|(k, _)| **k != ckey)
                .min_by_key(|(_, c)| c.last_use)
                .map(|(k, c)| (*k, c.bytes));
            let Some((k, n)) = oldest else { break };
            g.cached.remove(&k);
            g.cached_bytes -= n;
        }
        Ok(Held::Shared(b))
    }

    /// A fresh device buffer holding `bytes` (counted in the stats; the lock is taken only
    /// for the count, after the copy).
    fn copy(&self, dev: &D, bytes: &[u8]) -> Result<D::Buffer> {
        let mut buf = dev.alloc(bytes.len())?;
        dev.upload(&mut buf, bytes)?;
        let mut g = self.lock()?;
        g.stats.uploads += 1;
        g.stats.uploaded_bytes += bytes.len() as u64;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_rows_start_at_multiples_of_the_stride() {
        let bytes: Vec<u8> = (1..=6).collect();
        let laid = Layout::PaddedRows { rows: 2, ld: 4 }.apply(&bytes).unwrap();
        assert_eq!(&*laid, &[1, 2, 3, 0, 4, 5, 6, 0]);
        let empty = Layout::PaddedRows { rows: 3, ld: 16 }.apply(&[]).unwrap();
        assert_eq!(&*empty, &[0u8; 48][..]);
        assert!(Layout::PaddedRows { rows: 4, ld: 4 }.apply(&bytes).is_err());
        assert!(Layout::PaddedRows { rows: 1, ld: 4 }.apply(&bytes).is_err());
        assert_eq!(&*Layout::AsIs.apply(&bytes).unwrap(), &bytes[..]);
    }

    #[cfg(feature = "emu")]
    #[test]
    fn a_layout_is_its_own_resident_copy() {
        let dev = crate::device::emu::EmuDevice::new();
        let res = Residency::<crate::device::emu::EmuDevice>::default();
        let bytes: Vec<u8> = (0..10).collect();
        let padded = Layout::PaddedRows { rows: 2, ld: 16 };
        let a = res.input(&dev, &bytes, Reuse::Content).unwrap();
        let p = res
            .input_laid(&dev, &bytes, Reuse::Content, padded)
            .unwrap();
        let p2 = res
            .input_laid(&dev, &bytes, Reuse::Content, padded)
            .unwrap();
        assert_eq!(a.len(), 10);
        assert_eq!(p.len(), 32);
        let s = res.stats().unwrap();
        assert_eq!((s.uploads, s.uploaded_bytes, s.hits), (2, 42, 1));
        drop((a, p2));
        let mut back = vec![0u8; 32];
        dev.download(&p, &mut back).unwrap();
        assert_eq!(&back[..5], &bytes[..5]);
        assert_eq!(&back[16..21], &bytes[5..]);
        assert!(back[5..16].iter().chain(&back[21..]).all(|&v| v == 0));
    }

    /// Callers racing on one residency (content misses of the same data, pinned first uses,
    /// a `release` in between, a budget that evicts) each get a copy of their own data; the
    /// cache's byte count stays the sum of its entries, and a pinned entry made after a
    /// release is not kept (its address could later name other data).
    #[cfg(feature = "emu")]
    #[test]
    fn concurrent_inputs_get_their_own_data() {
        use crate::device::emu::EmuDevice;
        let dev = EmuDevice::new();
        let res = Residency::<EmuDevice>::new(3000);
        let blobs: Vec<Arc<Vec<u8>>> = (0..6u8)
            .map(|i| Arc::new((0..1000).map(|j| (j as u8).wrapping_mul(i + 1)).collect()))
            .collect();
        res.pin(Arc::new(blobs[0].clone()), vec![key_of(&blobs[0][..])])
            .unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (dev, res, blobs) = (&dev, &res, &blobs);
                s.spawn(move || {
                    for round in 0..40 {
                        let data = &blobs[(t + round) % blobs.len()];
                        let reuse = if round % 7 == 3 {
                            Reuse::PinnedOnly
                        } else {
                            Reuse::Content
                        };
                        let held = res.input(dev, &data[..], reuse).unwrap();
                        let mut back = vec![0u8; data.len()];
                        dev.download(&held, &mut back).unwrap();
                        assert_eq!(&back, &data[..], "thread {t}, round {round}");
                        if t == 0 && round == 20 {
                            res.release().unwrap();
                        }
                    }
                });
            }
        });
        let g = res.lock().unwrap();
        let held: usize = g.cached.values().map(|c| c.bytes).sum();
        assert_eq!(g.cached_bytes, held);
        assert!(g.cached_bytes <= 3000);
        assert!(g.pinned.is_empty() && g.trusted.is_empty());
    }
}
