//! What both API flavours share: errors in each flavour's shape, reading JSON bodies without
//! trusting them, model-name checks, admission, tokenizing off the async threads, and
//! turning a request's event channel into a streamed body or a collected result.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedReceiver;

use engine_store::KeepAlive;

use crate::admission::{Permit, Refusal};
use crate::app::{AppState, Loaded};
use crate::models::Lease;
use crate::scheduler::{Done, Event, GenParams, TokenOut};

/// Which API's error shape to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `{"error": {"message", "type", "code"}}`
    OpenAi,
    /// `{"error": "message"}`
    Ollama,
}

/// An error answered with a status code and a message.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// Error shape.
    pub flavor: Flavor,
    /// Seconds for `Retry-After` (503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, flavor: Flavor, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            flavor,
            retry_after: None,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(flavor: Flavor, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, flavor, message)
    }

    /// 500 Internal Server Error.
    pub fn internal(flavor: Flavor, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, flavor, message)
    }
}

/// The OpenAI `type` of an error status.
fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        400 | 413 | 422 => "invalid_request_error",
        503 => "unavailable_error",
        _ => "server_error",
    }
}

/// The JSON body of an error.
pub fn error_body(flavor: Flavor, status: StatusCode, message: &str) -> serde_json::Value {
    match flavor {
        Flavor::OpenAi => serde_json::json!({
            "error": {
                "message": message,
                "type": openai_type(status),
                "code": status.as_u16(),
            }
        }),
        Flavor::Ollama => serde_json::json!({ "error": message }),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(status = self.status.as_u16(), error = %self.message, "request failed");
        } else {
            tracing::debug!(status = self.status.as_u16(), error = %self.message, "request refused");
        }
        let body = error_body(self.flavor, self.status, &self.message);
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// Parses a request body as JSON of type `T`, whatever its content type; size, syntax and
/// type errors become 413/400 with serde's description of what was wrong and where.
pub fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    flavor: Flavor,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                flavor,
                format!(
                    "the request body is larger than the limit of {limit} bytes (--max-body-size)"
                ),
            )
        } else {
            ApiError::bad_request(flavor, format!("cannot read the request body: {e}"))
        }
    })?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request(
            flavor,
            "the request body is empty; a JSON object is expected",
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(flavor, format!("invalid JSON body: {e}")))
}

/// The model a request names (or the only one served), loaded and held for the request:
/// 503 while the `-m` model loads at startup, 404 for a name no served model answers to,
/// and the load's own errors (a model over the memory budget, a failed load). A request's
/// `keep_alive` (Ollama's: a duration string or seconds; 0 unloads after the request,
/// negative keeps the model forever) replaces the model's.
pub async fn loaded(
    state: &Arc<AppState>,
    name: Option<&str>,
    keep_alive: Option<&serde_json::Value>,
    flavor: Flavor,
) -> Result<Lease, ApiError> {
    if !state.ready.load(std::sync::atomic::Ordering::Acquire) {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            flavor,
            "the model is loading",
        );
        e.retry_after = Some(state.cfg.retry_after_secs);
        return Err(e);
    }
    let keep_alive = keep_alive_of(keep_alive, flavor)?;
    state
        .registry
        .acquire(name, keep_alive)
        .await
        .map_err(|e| e.into_api(flavor, state.cfg.retry_after_secs))
}

/// Parses a request's `keep_alive` (`null` = not given).
pub fn keep_alive_of(
    v: Option<&serde_json::Value>,
    flavor: Flavor,
) -> Result<Option<KeepAlive>, ApiError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => KeepAlive::from_json(v)
            .map(Some)
            .map_err(|e| ApiError::bad_request(flavor, e)),
    }
}

/// Takes a place in the queue, or 503 with `Retry-After`.
pub fn admit(state: &AppState, flavor: Flavor) -> Result<Permit, ApiError> {
    state.admission.try_acquire().map_err(|r| {
        let msg = match r {
            Refusal::QueueFull => {
                state
                    .metrics
                    .rejected_queue_full
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!(
                    "the server is busy: {} requests are running or waiting (--parallel plus --queue-size); retry later",
                    state.admission.inflight()
                )
            }
            Refusal::ShuttingDown => "the server is shutting down".to_string(),
        };
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, flavor, msg);
        e.retry_after = Some(state.cfg.retry_after_secs);
        e
    })
}

/// A prompt ready to run: token ids for a GGUF model, text for a device model (which
/// tokenizes it itself).
#[derive(Debug)]
pub enum Prompt {
    /// Token ids (BOS included when wanted).
    Ids(Vec<u32>),
    /// Text for a device.
    Text(crate::device::TextPrompt),
}

/// A text prompt as the model takes it: tokenized for a GGUF model, as-is for a device.
pub async fn text_prompt(
    loaded: &Loaded,
    text: String,
    add_special: bool,
    flavor: Flavor,
) -> Result<Prompt, ApiError> {
    match loaded.device() {
        Some(_) => {
            if text.is_empty() {
                return Err(ApiError::bad_request(flavor, "the prompt is empty"));
            }
            Ok(Prompt::Text(engine::provider::TextInput::Raw(text)))
        }
        None => Ok(Prompt::Ids(
            tokenize(loaded, text, add_special, flavor).await?,
        )),
    }
}

/// Tokenizes on a blocking thread (prompts can be megabytes).
pub async fn tokenize(
    loaded: &Loaded,
    text: String,
    add_special: bool,
    flavor: Flavor,
) -> Result<Vec<u32>, ApiError> {
    let tok = loaded
        .native(flavor, "token ids")?
        .model
        .tokenizer()
        .clone();
    tokio::task::spawn_blocking(move || tok.encode(&text, add_special, true))
        .await
        .map_err(|e| ApiError::internal(flavor, format!("tokenizer task failed: {e}")))?
        .map_err(|e| ApiError::bad_request(flavor, format!("cannot tokenize the prompt: {e}")))
}

/// Refuses an empty prompt or one that leaves no room to generate (never truncates). A
/// device's prompt is checked by the device's own tokenizer when it runs.
pub fn check_prompt(loaded: &Loaded, prompt: &Prompt, flavor: Flavor) -> Result<(), ApiError> {
    match prompt {
        Prompt::Ids(ids) => check_prompt_len(loaded, ids.len(), flavor),
        Prompt::Text(_) => Ok(()),
    }
}

/// Refuses an empty prompt or one that leaves no room to generate (never truncates).
pub fn check_prompt_len(loaded: &Loaded, n: usize, flavor: Flavor) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::bad_request(flavor, "the prompt is empty"));
    }
    if n >= loaded.n_ctx {
        return Err(ApiError::bad_request(
            flavor,
            format!(
                "the prompt is {n} tokens, but the context holds {} per sequence; shorten the prompt or restart the server with a larger -c/--ctx-size (prompts are never truncated)",
                loaded.n_ctx
            ),
        ));
    }
    Ok(())
}

/// Checks token ids given directly by a client.
pub fn check_ids(loaded: &Loaded, ids: &[u32], flavor: Flavor) -> Result<(), ApiError> {
    let n_vocab = loaded.native(flavor, "token ids")?.model.info().n_vocab;
    match ids.iter().find(|&&t| t as usize >= n_vocab) {
        Some(bad) => Err(ApiError::bad_request(
            flavor,
            format!("token id {bad} is outside the vocabulary of {n_vocab}"),
        )),
        None => Ok(()),
    }
}

/// Submits a generation to the model's scheduler or device, mapping a stopped one to 503.
/// A device model refuses what devices cannot do (log-probabilities, JSON mode, ignoring
/// end-of-generation, sampling settings it lacks) with a 400 naming it.
pub fn submit(
    loaded: &Loaded,
    prompt: Prompt,
    params: GenParams,
    arrived: Instant,
    mut permit: Permit,
    flavor: Flavor,
) -> Result<UnboundedReceiver<Event>, ApiError> {
    let stopped = |_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            flavor,
            "the server is shutting down",
        )
    };
    match (prompt, &loaded.runner) {
        (Prompt::Ids(ids), crate::app::Runner::Native(n)) => {
            // the job keeps its model loaded until it is done
            permit.hold(loaded.busy());
            n.sched
                .generate(ids, params, arrived, Some(permit))
                .map_err(stopped)
        }
        (Prompt::Text(text), crate::app::Runner::Device(d)) => {
            check_device_params(loaded, &params, flavor)?;
            permit.hold(loaded.busy());
            d.generate(text, params, arrived, Some(permit))
                .map_err(stopped)
        }
        (Prompt::Ids(_), crate::app::Runner::Device(_)) => Err(loaded
            .native(flavor, "a prompt of token ids")
            .err()
            .unwrap_or_else(|| {
                ApiError::bad_request(flavor, "this model takes text prompts only")
            })),
        (Prompt::Text(_), crate::app::Runner::Native(_)) => Err(ApiError::internal(
            flavor,
            "a text prompt reached a GGUF model without being tokenized",
        )),
    }
}

/// What a text device cannot do, refused before the request is queued.
fn check_device_params(loaded: &Loaded, p: &GenParams, flavor: Flavor) -> Result<(), ApiError> {
    let what = if p.logprobs.is_some() {
        Some("logprobs")
    } else if p.json {
        Some("JSON mode (response_format / format)")
    } else if p.ignore_eos {
        Some("ignore_eos")
    } else {
        None
    };
    if let Some(what) = what {
        return Err(loaded
            .native(flavor, what)
            .err()
            .unwrap_or_else(|| ApiError::bad_request(flavor, format!("{what} is not supported"))));
    }
    engine::provider::TextSampling::from_params(&p.sampling, p.max_tokens)
        .map(|_| ())
        .map_err(|e| ApiError::bad_request(flavor, e))
}

/// Everything a non-streaming response needs.
pub struct Collected {
    /// Every token event, in order.
    pub tokens: Vec<TokenOut>,
    /// The generated text.
    pub text: String,
    /// The end.
    pub done: Done,
}

/// Waits for the whole generation. A failure becomes 503 (shutdown) or 500.
pub async fn collect(
    mut rx: UnboundedReceiver<Event>,
    flavor: Flavor,
) -> Result<Collected, ApiError> {
    let mut tokens = Vec::new();
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token(t) => {
                text.push_str(&t.text);
                tokens.push(t);
            }
            Event::Done(done) => return Ok(Collected { tokens, text, done }),
            Event::Error(msg) => return Err(event_error(&msg, flavor)),
        }
    }
    Err(ApiError::internal(
        flavor,
        "the generation ended unexpectedly",
    ))
}

/// The status of an error reported by the scheduler.
pub fn event_error(msg: &str, flavor: Flavor) -> ApiError {
    if msg.contains("shutting down") || msg.contains("device is unavailable") {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, flavor, msg)
    } else if msg.contains("device timed out") {
        ApiError::new(StatusCode::GATEWAY_TIMEOUT, flavor, msg)
    } else if msg.contains("context holds") || msg.contains("device refused") {
        ApiError::bad_request(flavor, msg)
    } else {
        ApiError::internal(flavor, msg)
    }
}

/// Turns events into frames of a streamed body.
pub trait Framer: Send + 'static {
    /// Frames for one event.
    fn event(&mut self, ev: Event, out: &mut Vec<Bytes>);
    /// Frames when the channel closed without a final event.
    fn closed(&mut self, out: &mut Vec<Bytes>);
}

/// A streamed response body: frames produced by `framer` from the request's events. When the
/// client goes away the body is dropped, which drops the receiver and cancels the request.
pub fn stream_body<F: Framer>(rx: UnboundedReceiver<Event>, framer: F) -> Body {
    struct St<F> {
        rx: UnboundedReceiver<Event>,
        framer: F,
        queue: VecDeque<Bytes>,
        done: bool,
        scratch: Vec<Bytes>,
    }
    let st = St {
        rx,
        framer,
        queue: VecDeque::new(),
        done: false,
        scratch: Vec::new(),
    };
    let s = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(b) = st.queue.pop_front() {
                return Some((Ok::<Bytes, Infallible>(b), st));
            }
            if st.done {
                return None;
            }
            match st.rx.recv().await {
                Some(ev) => {
                    st.done = matches!(ev, Event::Done(_) | Event::Error(_));
                    st.framer.event(ev, &mut st.scratch);
                }
                None => {
                    st.done = true;
                    st.framer.closed(&mut st.scratch);
                }
            }
            st.queue.extend(st.scratch.drain(..));
        }
    });
    Body::from_stream(s)
}

/// A streaming response with `content_type`.
pub fn streaming_response(body: Body, content_type: &'static str) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Seconds since the Unix epoch.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A JSON value as one SSE `data:` frame.
pub fn sse(v: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Builds a sampling seed from a client's value (negative = random).
pub fn seed(v: Option<i64>) -> Option<u64> {
    v.filter(|s| *s >= 0).map(|s| s as u64)
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn error_shapes() {
        let v = error_body(Flavor::OpenAi, StatusCode::NOT_FOUND, "nope");
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["code"], 404);
        let v = error_body(Flavor::Ollama, StatusCode::BAD_REQUEST, "bad");
        assert_eq!(v, serde_json::json!({"error": "bad"}));
    }
}
