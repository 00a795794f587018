//! The crate's one error type. Every failure a caller can cause (bad shapes, non-finite values,
//! out-of-range codes, corrupted files, impossible parameters) is an [`Error`] whose message
//! says what is wrong and where; nothing in the library panics on user input.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in rqtree.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor has the wrong shape for the operation (`what` names it and the expectation).
    #[error("shape error: {0}")]
    Shape(String),
    /// A NaN or infinite value in an input tensor, named with its row.
    #[error("non-finite value in {tensor}, row {row}, column {col}: {value}")]
    NonFinite {
        /// The tensor's name as the caller knows it (`items`, `queries`, `codebook.1`, …).
        tensor: String,
        /// Row of the first offending value.
        row: usize,
        /// Column of the first offending value.
        col: usize,
        /// The value itself.
        value: f32,
    },
    /// A parameter out of its valid range (`k = 0`, a zero beam width, `K > 65536`, …).
    #[error("invalid parameter: {0}")]
    Param(String),
    /// Finite inputs so large that the operation's scores could overflow `f32` (and become
    /// infinite or NaN), named with the tensor or query and the bound that was exceeded.
    #[error("values out of range: {0}")]
    Range(String),
    /// An index or codebook file that is truncated, corrupted or inconsistent.
    #[error("invalid file {path}: {msg}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// An index whose in-memory invariants do not hold (codes out of range, a non-monotone
    /// CSR, …). Also used by the loader, wrapped in [`Error::File`].
    #[error("invalid index: {0}")]
    Index(String),
    /// An operating-system I/O error on `path`.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The requested backend cannot run here (no device, no compiled kernels, feature off).
    #[error("backend unavailable: {0}")]
    BackendUnavailable(String),
    /// The CUDA backend was built without kernels (no `nvcc` at build time).
    #[error("CUDA kernels unavailable: {0}")]
    KernelsUnavailable(String),
    /// A kernel launch or device operation failed.
    #[error("device error: {0}")]
    Device(String),
}

impl Error {
    /// Shorthand for [`Error::Shape`].
    pub fn shape(msg: impl Into<String>) -> Self {
        Error::Shape(msg.into())
    }
    /// Shorthand for [`Error::Param`].
    pub fn param(msg: impl Into<String>) -> Self {
        Error::Param(msg.into())
    }
    /// Shorthand for [`Error::Index`].
    pub fn index(msg: impl Into<String>) -> Self {
        Error::Index(msg.into())
    }
    /// Shorthand for [`Error::File`].
    pub fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.into(),
        }
    }
    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
