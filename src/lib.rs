//! rqtree: a GPU compute-kernel engine for learned hierarchical (residual-quantization tree)
//! retrieval indexes. See `DESIGN.md` in the shared folder and the README for the model:
//! codebooks → item codes → code tree → beam search with lookup tables → top-k.
//!
//! The kernel-level operations live behind [`backend::Backend`]; [`ops`] validates inputs
//! and dispatches; [`search`] is the serving pipeline; [`index`] builds, validates and
//! persists indexes.

pub mod backend;
pub mod bench;
pub mod candidates;
pub mod demo;
pub mod device;
pub mod error;
pub mod eval;
pub mod index;
pub mod kernels;
pub mod learn;
pub mod matrix;
pub mod metric;
pub mod npy;
pub mod ops;
pub mod progress;
pub mod range;
pub mod reference;
pub mod search;
pub mod synthetic;
pub mod tables;
pub mod topk;
pub mod ttt;

pub use backend::{Backend, BackendKind};
pub use error::{Error, Result};
pub use index::Index;
pub use matrix::Matrix;
pub use metric::Metric;
pub use topk::TopK;
