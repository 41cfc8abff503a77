//! GGUF files: reading (v2 and v3, memory-mapped, zero-copy tensor views, split files) and
//! writing.
//!
//! * [`value`]: metadata values and their wire types.
//! * [`reader`]: parsing one file, with every size and offset checked against the file.
//! * [`model`]: a model made of one file or a `-0000N-of-0000M` split set.
//! * [`writer`]: building a GGUF file (tests, the quantizer).

#![warn(missing_docs)]

pub mod ftype;
pub mod model;
pub mod reader;
pub mod value;
pub mod writer;

pub use ftype::file_type_name;
pub use model::GgufModel;
pub use reader::{GgufFile, TensorInfo};
pub use value::{Array, Value, ValueType};
pub use writer::GgufWriter;

/// Errors reading or writing GGUF.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Operating-system error, with the path involved.
    #[error("{path}: {source}")]
    Io {
        /// File involved.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a valid GGUF file.
    #[error("invalid GGUF: {0}")]
    Format(String),
    /// The file ends before a structure it declares.
    #[error("truncated GGUF: {0}")]
    Truncated(String),
    /// A tensor type id this engine does not know.
    #[error("tensor '{name}' has unknown type id {id}")]
    UnknownType {
        /// Tensor name.
        name: String,
        /// The type id found.
        id: u32,
    },
    /// A metadata key that is missing or has the wrong type.
    #[error("metadata key '{key}': {problem}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// Result alias for [`GgufError`].
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// The default alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// File magic, `GGUF` read as a little-endian u32.
pub const MAGIC: u32 = 0x4655_4747;
