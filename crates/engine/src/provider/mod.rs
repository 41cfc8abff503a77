//! Text providers: devices that run a whole model and speak text.
//!
//! The tensor backends ([`crate::Device`]) run this engine's own kernels over GGUF weights.
//! Some accelerators cannot be driven that way: an NPU such as the Hailo-10H runs a model
//! compiled for it, takes a prompt (raw text or chat messages) and returns text pieces, with
//! its own tokenizer on board, no logits out and no token ids in. Such a device is a
//! [`TextProvider`]. Model code never names the device: a server or an application holds a
//! `Box<dyn TextProvider>` and drives it through a [`TextSession`].
//!
//! * this module: the interface ([`TextProvider`]), its inputs and outputs, and how the
//!   engine's sampling settings map onto what such devices accept ([`TextSampling`]);
//! * [`session`]: one generation at a time on a provider, with stop strings, limits,
//!   timeouts, cancellation, usage counted by the device's tokenizer, and reuse of the
//!   device's context when a prompt extends the previous conversation.

pub mod session;

use std::time::Duration;

pub use session::{GenerateText, TextOutcome, TextSession};

use crate::SamplingParams;

/// One chat message, for devices that apply the chat template themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The text.
    pub content: String,
}

/// What a generation starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextInput {
    /// Text written to the device as-is (a chat template already applied, or a plain
    /// completion prompt). It is appended to the device's context.
    Raw(String),
    /// Chat messages; the device applies the model's own template. The device's context is
    /// cleared first.
    Messages(Vec<ChatMessage>),
}

/// The sampling settings text devices accept: temperature, top-p, top-k, a frequency
/// penalty, a seed, and a generation limit.
#[derive(Clone, Debug, PartialEq)]
pub struct TextSampling {
    /// Softmax temperature; `<= 0` means greedy decoding.
    pub temperature: f32,
    /// Nucleus sampling (1 = off).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (0 = all).
    pub top_k: u32,
    /// Frequency penalty (0 = off).
    pub frequency_penalty: f32,
    /// Seed of the device's sampler; `None` = random.
    pub seed: Option<u32>,
    /// Most tokens to generate (`None`: until the context is full).
    pub max_tokens: Option<u32>,
}

impl TextSampling {
    /// True unless decoding is greedy.
    pub fn do_sample(&self) -> bool {
        self.temperature > 0.0
    }

    /// Maps the engine's sampling settings onto a text device's. Settings such devices do
    /// not have (min-p, repeat and presence penalties) must be off; anything else is a
    /// clear error naming the setting, never silently ignored.
    pub fn from_params(
        p: &SamplingParams,
        max_tokens: Option<usize>,
    ) -> Result<TextSampling, String> {
        let mut unsupported = Vec::new();
        if p.min_p != 0.0 {
            unsupported.push(format!("min_p {} (use 0)", p.min_p));
        }
        if p.repeat_penalty != 1.0 {
            unsupported.push(format!("repeat_penalty {} (use 1)", p.repeat_penalty));
        }
        if p.presence_penalty != 0.0 {
            unsupported.push(format!("presence_penalty {} (use 0)", p.presence_penalty));
        }
        if !unsupported.is_empty() {
            return Err(format!(
                "this model runs on a text device that does not support {}; it supports temperature, top_p, top_k, frequency_penalty, seed and the token limit",
                unsupported.join(", ")
            ));
        }
        let seed = match p.seed {
            None => None,
            Some(s) if s < u32::MAX as u64 => Some(s as u32),
            Some(s) => {
                return Err(format!(
                    "seed {s} is too large for this model's device; use 0 to {}",
                    u32::MAX - 1
                ))
            }
        };
        let max_tokens = match max_tokens {
            None => None,
            Some(n) => Some(
                u32::try_from(n)
                    .map_err(|_| format!("max_tokens {n} is too large for this model's device"))?,
            ),
        };
        Ok(TextSampling {
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k.min(u32::MAX as usize) as u32,
            frequency_penalty: p.frequency_penalty,
            seed,
            max_tokens,
        })
    }

    /// The settings of [`TextSampling::from_params`] left neutral where text devices have
    /// nothing (what a server uses as the base of a device model's defaults).
    pub fn neutral_params(mut p: SamplingParams) -> SamplingParams {
        p.min_p = 0.0;
        p.repeat_penalty = 1.0;
        p.presence_penalty = 0.0;
        p
    }
}

/// Why a device's generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The model ended its answer (an end-of-generation token).
    EndOfGeneration,
    /// The generation limit was reached.
    MaxTokens,
    /// [`TextProvider::abort`] stopped it.
    Aborted,
}

/// One read from a running generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// UTF-8 text (may be empty, e.g. for the end-of-generation token, which is not shown).
    pub text: String,
    /// `Some` on the last piece of the generation.
    pub finish: Option<Finish>,
}

/// What a device says about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderInfo {
    /// The device kind (`hailo`).
    pub device: String,
    /// A description of the loaded model (its file).
    pub model: String,
    /// Tokens the device's context holds.
    pub max_context: usize,
}

/// Physical readings of a device.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Telemetry {
    /// Chip temperature in degrees Celsius (the hotter sensor).
    pub temperature_c: Option<f32>,
}

/// A provider's failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The device cannot be used: no driver library, no device, a mismatched shim.
    #[error("{0}")]
    Unavailable(String),
    /// The device did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// The input cannot be run (too long for the context, bad text).
    #[error("{0}")]
    Rejected(String),
    /// The device reported an error.
    #[error("{0}")]
    Failed(String),
    /// The process driving the device died; the device must be opened again.
    #[error("{0}")]
    Crashed(String),
}

impl ProviderError {
    /// True when the provider is unusable until reopened.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ProviderError::Crashed(_) | ProviderError::Unavailable(_)
        )
    }
}

/// A device that runs a whole model and speaks text. It holds one generation at a time:
/// [`TextProvider::start`] begins one, [`TextProvider::read`] returns its pieces until one
/// carries a [`Finish`], and [`TextProvider::abort`] ends it early. Context management and
/// tokenization must not be called while a generation runs.
pub trait TextProvider: Send {
    /// The device and model.
    fn info(&self) -> &ProviderInfo;

    /// Starts a generation. A [`TextInput::Raw`] prompt is appended to the device's
    /// context; [`TextInput::Messages`] starts from a cleared context.
    fn start(&mut self, input: &TextInput, sampling: &TextSampling) -> Result<(), ProviderError>;

    /// The next piece, waiting at most `timeout`.
    fn read(&mut self, timeout: Duration) -> Result<Piece, ProviderError>;

    /// Stops the running generation (no-op when none runs).
    fn abort(&mut self) -> Result<(), ProviderError>;

    /// Token ids of `text` by the device's tokenizer.
    fn tokenize(&mut self, text: &str) -> Result<Vec<u32>, ProviderError>;

    /// Tokens in the device's context now.
    fn context_usage(&mut self) -> Result<usize, ProviderError>;

    /// Empties the device's context.
    fn clear_context(&mut self) -> Result<(), ProviderError>;

    /// The device's context as an opaque blob.
    fn save_context(&mut self) -> Result<Vec<u8>, ProviderError>;

    /// Restores a context saved by [`TextProvider::save_context`] on the same model.
    fn load_context(&mut self, blob: &[u8]) -> Result<(), ProviderError>;

    /// Physical readings (temperature).
    fn telemetry(&mut self) -> Result<Telemetry, ProviderError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_maps_or_names_what_is_missing() {
        let p = TextSampling::neutral_params(SamplingParams {
            temperature: 0.7,
            top_k: 20,
            top_p: 0.8,
            seed: Some(7),
            ..Default::default()
        });
        let s = TextSampling::from_params(&p, Some(12)).unwrap();
        assert_eq!(s.top_k, 20);
        assert_eq!(s.seed, Some(7));
        assert_eq!(s.max_tokens, Some(12));
        assert!(s.do_sample());
        let e = TextSampling::from_params(&SamplingParams::default(), None).unwrap_err();
        assert!(e.contains("min_p"), "{e}");
        let mut q = p.clone();
        q.repeat_penalty = 1.1;
        q.presence_penalty = 0.5;
        let e = TextSampling::from_params(&q, None).unwrap_err();
        assert!(
            e.contains("repeat_penalty") && e.contains("presence_penalty"),
            "{e}"
        );
        q = p.clone();
        q.seed = Some(u64::MAX);
        assert!(TextSampling::from_params(&q, None)
            .unwrap_err()
            .contains("seed"));
        assert!(TextSampling::from_params(&p, Some(usize::MAX)).is_err());
    }
}
