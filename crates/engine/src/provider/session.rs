//! One generation at a time on a [`TextProvider`]: the loop that turns a prompt into
//! streamed text with stop strings, a token limit that never overruns the device's context,
//! a read timeout, cancellation by the caller, usage counted by the device's own tokenizer,
//! and reuse of the device's context.
//!
//! Context reuse works as Hailo's own server does it: after a generation that ended
//! naturally, the session knows exactly what the device's context holds (the prompt, the
//! answer and the end token). When the next raw prompt begins with that text, only the
//! rest is written and the context is kept; otherwise the context is cleared and the whole
//! prompt written. After an abort, a stop string, a token limit or an error the device may
//! have added a recovery sequence, so the context is treated as unknown and cleared next
//! time.

use std::time::{Duration, Instant};

use super::{Finish, Piece, ProviderError, Telemetry, TextInput, TextProvider, TextSampling};
use crate::stop::{StopCheck, StopMatcher};
use crate::{StopReason, Timings};

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenerateText {
    /// The prompt.
    pub input: TextInput,
    /// Sampling and the token limit.
    pub sampling: TextSampling,
    /// Stop strings (not included in the output).
    pub stop: Vec<String>,
    /// Keep the device's context when the prompt extends the previous conversation.
    pub reuse_context: bool,
}

/// How a generation went.
#[derive(Clone, Debug)]
pub struct TextOutcome {
    /// The text handed to the caller.
    pub text: String,
    /// Why it ended.
    pub reason: StopReason,
    /// Tokens of the whole prompt (by the device's tokenizer).
    pub prompt_n: usize,
    /// Of which were already in the device's context.
    pub cached_n: usize,
    /// Timings: `prompt_n` counts the tokens written, `predicted_n` the tokens of the
    /// generated text by the device's tokenizer.
    pub timings: Timings,
}

/// A provider and what the session knows about its context.
pub struct TextSession {
    provider: Box<dyn TextProvider>,
    /// The device's context as text, when known exactly.
    context: Option<String>,
    read_timeout: Duration,
}

impl TextSession {
    /// A session over `provider`; a read waiting longer than `read_timeout` for the next
    /// piece aborts the generation.
    pub fn new(provider: Box<dyn TextProvider>, read_timeout: Duration) -> TextSession {
        TextSession {
            provider,
            context: None,
            read_timeout,
        }
    }

    /// The provider.
    pub fn provider(&mut self) -> &mut dyn TextProvider {
        self.provider.as_mut()
    }

    /// Tokens the device's context holds.
    pub fn max_context(&self) -> usize {
        self.provider.info().max_context
    }

    /// Token count of `text` by the device's tokenizer.
    pub fn count_tokens(&mut self, text: &str) -> Result<usize, ProviderError> {
        if text.is_empty() {
            return Ok(0);
        }
        Ok(self.provider.tokenize(text)?.len())
    }

    /// The device's physical readings.
    pub fn telemetry(&mut self) -> Result<Telemetry, ProviderError> {
        self.provider.telemetry()
    }

    /// Forgets what the context holds (it is cleared before the next generation).
    pub fn forget_context(&mut self) {
        self.context = None;
    }

    /// Runs one generation. `on_text` is called after every piece with the text that became
    /// final (held back while it could still become a stop string; empty when nothing did)
    /// and returns false to cancel, which aborts the device's generation.
    pub fn generate(
        &mut self,
        req: &GenerateText,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<TextOutcome, ProviderError> {
        let max_ctx = self.max_context();
        let (input, prompt_n, cached_n, written_n, full_prompt) = match &req.input {
            TextInput::Raw(prompt) => self.prepare_raw(prompt, req.reuse_context, max_ctx)?,
            TextInput::Messages(_) => {
                self.provider.clear_context()?;
                self.context = Some(String::new());
                (req.input.clone(), 0, 0, 0, None)
            }
        };
        // the limit never runs past the context
        let room = max_ctx.saturating_sub(cached_n + written_n);
        let mut sampling = req.sampling.clone();
        let limit_is_room = match sampling.max_tokens {
            Some(n) if (n as usize) <= room || written_n == 0 => false,
            _ => {
                sampling.max_tokens = Some(room.min(u32::MAX as usize) as u32);
                true
            }
        };
        self.context = None;
        let t0 = Instant::now();
        self.provider.start(&input, &sampling)?;
        let stops = StopMatcher::new(&req.stop);
        let mut text = String::new();
        let mut emitted = 0usize;
        let mut first: Option<Instant> = None;
        let mut pieces = 0usize;
        let mut hidden = String::new();
        let reason = loop {
            let piece = match self.provider.read(self.read_timeout) {
                Ok(p) => p,
                Err(e) => {
                    if !e.is_fatal() {
                        let _ = self.provider.abort();
                    }
                    return Err(match e {
                        ProviderError::Timeout(_) => ProviderError::Timeout(format!(
                            "the device produced no text for {:.1}s; the generation was aborted",
                            self.read_timeout.as_secs_f64()
                        )),
                        e => e,
                    });
                }
            };
            first.get_or_insert_with(Instant::now);
            pieces += 1;
            let Piece { text: t, finish } = piece;
            match finish {
                Some(Finish::EndOfGeneration) => hidden = t,
                _ => text.push_str(&t),
            }
            match stops.check(&text, emitted) {
                StopCheck::Stop { at } => {
                    let at = at.max(emitted);
                    let keep = on_text(&text[emitted..at]);
                    text.truncate(at);
                    if finish.is_none() {
                        self.provider.abort()?;
                    }
                    break if keep {
                        StopReason::StopString
                    } else {
                        StopReason::Cancelled
                    };
                }
                StopCheck::Continue { safe } => {
                    let safe = if finish.is_some() {
                        text.len()
                    } else {
                        safe.max(emitted)
                    };
                    let keep = on_text(&text[emitted..safe]);
                    emitted = safe;
                    if !keep {
                        if finish.is_none() {
                            self.provider.abort()?;
                        }
                        text.truncate(emitted);
                        break StopReason::Cancelled;
                    }
                }
            }
            match finish {
                None => {}
                Some(Finish::EndOfGeneration) => break StopReason::Eog,
                Some(Finish::MaxTokens) if limit_is_room => break StopReason::ContextFull,
                Some(Finish::MaxTokens) => break StopReason::Length,
                Some(Finish::Aborted) => break StopReason::Cancelled,
            }
        };
        let end = Instant::now();
        let first = first.unwrap_or(end);
        if reason == StopReason::Eog {
            if let Some(p) = full_prompt {
                self.context = Some(format!("{p}{text}{hidden}"));
            }
        }
        let predicted_n = match self.count_tokens(&text) {
            Ok(n) => n,
            Err(e) if e.is_fatal() => return Err(e),
            Err(_) => pieces,
        };
        let prompt_n = if prompt_n == 0 {
            // the device applied its template: what the context holds less the answer
            self.provider
                .context_usage()
                .map(|u| u.saturating_sub(predicted_n + 1))
                .unwrap_or(0)
        } else {
            prompt_n
        };
        let written = if written_n == 0 { prompt_n } else { written_n };
        Ok(TextOutcome {
            text,
            reason,
            prompt_n,
            cached_n,
            timings: Timings {
                prompt_n: written,
                prompt_ms: (first - t0).as_secs_f64() * 1e3,
                predicted_n,
                predicted_ms: (end - first).as_secs_f64() * 1e3,
            },
        })
    }

    /// Decides what to write for a raw prompt: the rest after the device's context when the
    /// prompt extends it, else the whole prompt on a cleared context. Returns the input,
    /// the prompt's tokens, the tokens reused, the tokens written and the full prompt.
    #[allow(clippy::type_complexity)]
    fn prepare_raw(
        &mut self,
        prompt: &str,
        reuse: bool,
        max_ctx: usize,
    ) -> Result<(TextInput, usize, usize, usize, Option<String>), ProviderError> {
        let prompt_n = self.count_tokens(prompt)?;
        if prompt_n == 0 {
            return Err(ProviderError::Rejected("the prompt is empty".into()));
        }
        if prompt_n >= max_ctx {
            return Err(ProviderError::Rejected(format!(
                "the prompt is {prompt_n} tokens, but the context holds {max_ctx} on this device; shorten the prompt (prompts are never truncated)"
            )));
        }
        let extends = match &self.context {
            Some(prev) if reuse && !prev.is_empty() => {
                prompt.len() > prev.len() && prompt.starts_with(prev.as_str())
            }
            _ => false,
        };
        if extends {
            let prev_len = self.context.as_ref().map_or(0, String::len);
            let rest = &prompt[prev_len..];
            let cached = self.provider.context_usage()?;
            let rest_n = self.count_tokens(rest)?;
            if cached + rest_n < max_ctx {
                return Ok((
                    TextInput::Raw(rest.to_string()),
                    prompt_n,
                    cached,
                    rest_n,
                    Some(prompt.to_string()),
                ));
            }
        }
        if self.context.as_deref() != Some("") {
            self.provider.clear_context()?;
        }
        self.context = Some(String::new());
        Ok((
            TextInput::Raw(prompt.to_string()),
            prompt_n,
            0,
            prompt_n,
            Some(prompt.to_string()),
        ))
    }
}
