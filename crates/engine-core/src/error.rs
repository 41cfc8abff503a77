//! The error type shared by the core, the backends and the model code.

use crate::dtype::DType;

/// Errors from tensor operations and backends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The type has no codec or kernel here.
    #[error("tensor type {0} is not supported for computation")]
    UnsupportedType(DType),
    /// Shapes or sizes that do not fit together.
    #[error("shape error: {0}")]
    Shape(String),
    /// A tensor made by one backend was handed to another.
    #[error("tensor belongs to another backend (expected {0})")]
    WrongBackend(&'static str),
    /// Not enough memory for an allocation; sizes in bytes.
    #[error("out of memory: need {need} bytes, {available} available ({what})")]
    OutOfMemory {
        /// Bytes asked for.
        need: u64,
        /// Bytes that were free.
        available: u64,
        /// What the memory was for.
        what: String,
    },
    /// A backend-specific failure (driver error, kernel compile error, ...).
    #[error("{0}")]
    Backend(String),
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
