//! Errors from loading and running models.

use engine_core::Error as CoreError;
use engine_gguf::GgufError;

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file declares an architecture this engine does not implement.
    #[error("unknown model architecture '{arch}'; supported: {}", supported.join(", "))]
    UnknownArchitecture {
        /// Architecture named by the file.
        arch: String,
        /// Architectures this build supports.
        supported: Vec<&'static str>,
    },
    /// A required tensor is absent, or has the wrong shape or type.
    #[error("tensor '{name}': {problem}")]
    Tensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A hyperparameter is missing or out of range.
    #[error("hyperparameter {0}")]
    HParam(String),
    /// The request does not fit the context.
    #[error("context full: {0}")]
    ContextFull(String),
    /// Invalid input (token id, position, sequence).
    #[error("invalid input: {0}")]
    Input(String),
    /// Reading the file failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A backend operation failed.
    #[error(transparent)]
    Backend(#[from] CoreError),
}

/// Result alias for [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
