//! The facade's error type: every failure a caller can meet, each with a clear message.

/// Errors from loading models and generating text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or parsing the model file failed.
    #[error(transparent)]
    Gguf(#[from] engine_gguf::GgufError),
    /// The model could not be built or run.
    #[error(transparent)]
    Model(#[from] engine_models::ModelError),
    /// The tokenizer could not be built or failed.
    #[error(transparent)]
    Tokenizer(#[from] engine_tokenizer::TokenizerError),
    /// A backend failure.
    #[error(transparent)]
    Backend(#[from] engine_core::Error),
    /// The prompt does not fit the context.
    #[error("the prompt is {prompt} tokens, but the context holds {n_ctx} (raise -c/--ctx-size or shorten the prompt)")]
    PromptTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Context size.
        n_ctx: usize,
    },
    /// Not enough memory for the model and its context.
    #[error("not enough memory: {0}")]
    Memory(String),
    /// An invalid option.
    #[error("invalid option: {0}")]
    Options(String),
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
