//! The error type shared by loading and encoding.

/// Errors building a tokenizer from GGUF metadata or encoding text.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` names a tokenizer this crate does not implement.
    #[error("unsupported tokenizer model '{model}' (tokenizer.ggml.model): {reason}")]
    UnsupportedModel {
        /// The model name found in the metadata.
        model: String,
        /// Why it is not supported.
        reason: String,
    },
    /// `tokenizer.ggml.pre` names a pre-tokenizer llama.cpp does not know either.
    #[error("unknown pre-tokenizer type '{0}' (tokenizer.ggml.pre)")]
    UnknownPreTokenizer(String),
    /// Metadata that is missing, mistyped or inconsistent.
    #[error("tokenizer metadata: {0}")]
    Metadata(String),
    /// The underlying GGUF accessor failed.
    #[error(transparent)]
    Gguf(#[from] engine_gguf::GgufError),
    /// Encoding needs a special token (BOS, EOS, SEP) the vocabulary does not define.
    #[error("the tokenizer is configured to add a {0} token but the vocabulary has none")]
    MissingSpecialToken(&'static str),
    /// SentencePiece byte fallback needed a byte the vocabulary cannot represent.
    #[error("no byte-fallback token for byte 0x{0:02X}")]
    MissingByteToken(u8),
    /// A pre-tokenizer regular expression failed while running (for example its
    /// backtracking limit was exceeded).
    #[error("pre-tokenizer regex failed: {0}")]
    Regex(String),
}
