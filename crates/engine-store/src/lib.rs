//! The local model store: where pulled models live, how they get there, and how a name
//! resolves to a file.
//!
//! * [`card`]: model cards (`models/*.toml`), compiled in.
//! * [`device`]: models compiled for a text device; [`hailo`]: Hailo model-zoo GenAI
//!   packages (`manifest.json` with the HEF's sha256, template, stop tokens, defaults).
//! * [`source`]: where weights come from; each kind implements [`source::Source`].
//! * [`remote`]: what `engine pull SOURCE` accepts (card names, `hf:` references, URLs) and
//!   the files a remote source stands for.
//! * [`http`]: resumable, verified HTTP downloads.
//! * [`store`]: the directory of installed models, with a manifest per model, verified and
//!   atomic installs, and name resolution.
//! * [`preset`]: serving settings (system prompt, parameters, keep-alive, ...) and models
//!   files; [`modelfile`]: Ollama Modelfiles.

#![warn(missing_docs)]

pub mod card;
pub mod device;
pub mod hailo;
pub mod http;
pub mod modelfile;
pub mod preset;
pub mod remote;
pub mod source;
pub mod store;

pub use card::{builtin_cards, find_card, ModelCard};
pub use device::DevicePackage;
pub use preset::{KeepAlive, Preset};
pub use store::{Manifest, Store};

/// Errors from the model store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem error, with the path involved.
    #[error("{path}: {source}")]
    Io {
        /// Path involved.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A download failed.
    #[error("download failed: {0}")]
    Download(String),
    /// The downloaded file is not the expected one.
    #[error("checksum mismatch for {what}: expected sha256 {expected}, got {actual}; nothing was installed")]
    Checksum {
        /// What was downloaded.
        what: String,
        /// Expected digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// The name is neither a file, an installed model, nor a known card.
    #[error("unknown model '{0}': not a file, not in the store, and not a known model name (try `engine list`)")]
    UnknownModel(String),
    /// The source does not have the file (HTTP 404, no such repository or file).
    #[error("not found: {0}")]
    NotFound(String),
    /// Not enough free disk space for what remains to download.
    #[error("not enough disk space in {path}: {need} more bytes are needed but only {available} are free; nothing was installed")]
    NoSpace {
        /// The directory.
        path: String,
        /// Bytes still to write.
        need: u64,
        /// Bytes free.
        available: u64,
    },
    /// Writing a download failed (e.g. the disk is full); what was written is kept.
    #[error("cannot write {path}: {source}; nothing was installed ({kept} bytes downloaded so far are kept, and pulling again resumes from there)")]
    Write {
        /// The file.
        path: String,
        /// Bytes on disk.
        kept: u64,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A malformed card or manifest.
    #[error("invalid {what}: {problem}")]
    Invalid {
        /// What was being read.
        what: String,
        /// What is wrong.
        problem: String,
    },
}

/// Result alias for [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}
