//! The OpenAI-compatible API: `/v1/chat/completions`, `/v1/completions` (streamed as SSE
//! ending in `data: [DONE]`), `/v1/models` and `/v1/embeddings`, with llama-server's
//! `timings` and `reasoning_content`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::{self, ApiError, Flavor, Framer};
use super::ollama;
use crate::app::{AppState, Loaded};
use crate::config::ReasoningFormat;
use crate::models::Defaults;
use crate::reasoning::ReasoningParser;
use crate::scheduler::{Done, Event, GenParams, TokenOut};
use crate::template::{ReasoningSyntax, RenderOptions};

const F: Flavor = Flavor::OpenAi;

/// `stop`: one string or several.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Debug, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Sampling and length fields shared by both completion endpoints.
#[derive(Deserialize, Debug, Default)]
struct Common {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    n_predict: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<i32>,
    seed: Option<i64>,
    stop: Option<Stop>,
    n: Option<u32>,
    response_format: Option<Value>,
    cache_prompt: Option<bool>,
    ignore_eos: Option<bool>,
    /// Ollama's keep-alive, accepted here too.
    keep_alive: Option<Value>,
}

impl Common {
    fn params(
        self,
        logprobs: Option<usize>,
        defaults: &Defaults,
    ) -> Result<(GenParams, bool, bool), ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_request(F, "only n = 1 is supported"));
        }
        let max = self
            .max_completion_tokens
            .or(self.max_tokens)
            .or(self.n_predict);
        let max_tokens = match max {
            None => defaults.max_tokens,
            Some(n) if n < -1 => {
                return Err(ApiError::bad_request(
                    F,
                    format!("max_tokens must be -1 (no limit) or at least 0, got {n}"),
                ))
            }
            Some(-1) => None,
            Some(n) => Some(n as usize),
        };
        let d = defaults.sampling.clone();
        let top_k = match self.top_k {
            Some(k) if k < 0 => 0,
            Some(k) => k as usize,
            None => d.top_k,
        };
        let sampling = engine::SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k,
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            repeat_last_n: self.repeat_last_n.unwrap_or(d.repeat_last_n),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            seed: match self.seed {
                Some(s) => common::seed(Some(s)),
                None => d.seed,
            },
        };
        sampling
            .validate()
            .map_err(|e| ApiError::bad_request(F, e))?;
        let json = match &self.response_format {
            None => false,
            Some(v) => match v.get("type").and_then(Value::as_str) {
                Some("text") => false,
                Some("json_object") => true,
                Some("json_schema") => {
                    return Err(ApiError::bad_request(
                        F,
                        "response_format json_schema is not supported yet; use json_object",
                    ))
                }
                _ => {
                    return Err(ApiError::bad_request(
                        F,
                        "response_format.type must be text or json_object",
                    ))
                }
            },
        };
        let stop = self
            .stop
            .map(Stop::into_vec)
            .unwrap_or_else(|| defaults.stop.clone());
        if stop.len() > 16 {
            return Err(ApiError::bad_request(
                F,
                "at most 16 stop strings are allowed",
            ));
        }
        let include_usage = self.stream_options.is_some_and(|o| o.include_usage);
        Ok((
            GenParams {
                max_tokens,
                sampling,
                stop,
                logprobs,
                ignore_eos: self.ignore_eos.unwrap_or(false),
                json,
                render_special: false,
                cache_prompt: self.cache_prompt.unwrap_or(true),
            },
            self.stream,
            include_usage,
        ))
    }
}

#[derive(Deserialize, Debug)]
struct ChatRequest {
    messages: Vec<Value>,
    #[serde(flatten)]
    common: Common,
    logprobs: Option<bool>,
    top_logprobs: Option<usize>,
    tools: Option<Value>,
    reasoning_format: Option<String>,
    reasoning_effort: Option<String>,
    chat_template_kwargs: Option<serde_json::Map<String, Value>>,
}

/// The prompt of `/v1/completions`: text or token ids, one prompt only.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Deserialize, Debug)]
struct CompletionRequest {
    prompt: PromptInput,
    #[serde(flatten)]
    common: Common,
    logprobs: Option<usize>,
    echo: Option<bool>,
    suffix: Option<String>,
}

/// `GET /v1/models`: every served model; loaded ones say so (llama-server's router `status`)
/// with their memory, context and expiry.
pub async fn models(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    if !state.ready.load(std::sync::atomic::Ordering::Acquire) {
        // the -m model while it loads: as before, 503
        common::loaded(&state, None, None, F).await?;
    }
    let reg = &state.registry;
    let status = reg.status();
    let mut data = Vec::new();
    for (i, e) in reg.entries().iter().enumerate() {
        let loaded = status.iter().find(|s| s.index == i);
        let facts = e.facts().ok();
        let mut meta = json!({
            "size": facts.map(|f| f.file_size),
            "n_params": facts.map(|f| f.n_params),
            "n_ctx_train": facts.and_then(|f| f.n_ctx_train),
            "architecture": facts.map(|f| f.arch.clone()),
            "quantization": facts.map(|f| f.quant.clone()),
        });
        let mut created = std::fs::metadata(&e.spec.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let st = match loaded {
            Some(s) => {
                created = s.loaded.created;
                meta["n_ctx"] = json!(s.loaded.n_ctx);
                match &s.loaded.runner {
                    crate::app::Runner::Native(n) => {
                        let info = n.model.info();
                        meta["n_ctx_train"] = json!(info.n_ctx_train);
                        meta["n_vocab"] = json!(info.n_vocab);
                        meta["n_embd"] = json!(info.n_embd);
                        meta["n_params"] = json!(info.n_params);
                    }
                    crate::app::Runner::Device(d) => meta["device"] = json!(d.device),
                }
                meta["memory"] = json!(s.bytes);
                meta["expires_at"] = json!(s.expires_at.map(ollama::rfc3339_system));
                "loaded"
            }
            None => reg.state_name(i),
        };
        data.push(json!({
            "id": e.names[0],
            "object": "model",
            "created": created,
            "owned_by": "engine",
            "aliases": e.names[1..],
            "status": {"value": st},
            "meta": meta,
        }));
    }
    Ok(Json(json!({ "object": "list", "data": data })).into_response())
}

/// Normalises chat messages for templates: `content` as a string (text parts joined); 400
/// for anything else.
pub fn normalize_messages(messages: Vec<Value>) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request(F, "messages must not be empty"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, mut m) in messages.into_iter().enumerate() {
        let Some(obj) = m.as_object_mut() else {
            return Err(ApiError::bad_request(
                F,
                format!("messages[{i}] must be an object"),
            ));
        };
        match obj.get("role") {
            Some(Value::String(_)) => {}
            _ => {
                return Err(ApiError::bad_request(
                    F,
                    format!("messages[{i}].role must be a string"),
                ))
            }
        }
        let content = match obj.remove("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s,
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => s.push_str(t),
                        (Some(kind), _) => {
                            return Err(ApiError::bad_request(
                                F,
                                format!("messages[{i}]: content parts of type '{kind}' are not supported (text only)"),
                            ))
                        }
                        _ => {
                            return Err(ApiError::bad_request(
                                F,
                                format!("messages[{i}].content parts must be objects with a type"),
                            ))
                        }
                    }
                }
                s
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    F,
                    format!("messages[{i}].content must be a string or an array of parts"),
                ))
            }
        };
        obj.insert("content".into(), Value::String(content));
        out.push(m);
    }
    Ok(out)
}

/// Renders and tokenizes a chat, returning the prompt and whether it opened reasoning. A
/// device model gets the rendered text, or the messages themselves when the device applies
/// its own template.
pub async fn chat_prompt(
    l: &Loaded,
    messages: &[Value],
    opts: &RenderOptions,
    flavor: Flavor,
) -> Result<(common::Prompt, bool), ApiError> {
    if l.device().is_some_and(|d| !d.host_template) {
        return Ok((
            common::Prompt::Text(crate::device::messages(messages)),
            false,
        ));
    }
    let mut text = l
        .template
        .render(messages, opts)
        .map_err(|e| ApiError::bad_request(flavor, e))?;
    let open = l.template.opens_reasoning(&text);
    if l.device().is_some() {
        return Ok((common::text_prompt(l, text, false, flavor).await?, open));
    }
    let tok = l.native(flavor, "token ids")?.model.tokenizer();
    // The template writes BOS itself; the tokenizer would add another.
    let add_special = match tok.bos().and_then(|b| tok.token_text(b)) {
        Some(bos) if tok.add_bos() && !bos.is_empty() && text.starts_with(bos) => {
            text.drain(..bos.len());
            true
        }
        _ => tok.add_bos(),
    };
    let ids = common::tokenize(l, text, add_special, flavor).await?;
    Ok((common::Prompt::Ids(ids), open))
}

/// The reasoning split a request asks for.
pub fn reasoning_syntax(
    state: &AppState,
    l: &Loaded,
    override_: Option<&str>,
    flavor: Flavor,
) -> Result<ReasoningSyntax, ApiError> {
    let format = match override_ {
        Some(s) => s
            .parse::<ReasoningFormat>()
            .map_err(|e| ApiError::bad_request(flavor, e))?,
        None => state.cfg.reasoning_format,
    };
    Ok(match format {
        ReasoningFormat::None => ReasoningSyntax::None,
        ReasoningFormat::Deepseek => l.template.reasoning,
    })
}

/// `POST /v1/chat/completions`.
pub async fn chat(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let req: ChatRequest = common::parse_body(body, F, state.cfg.max_body_bytes)?;
    let l = common::loaded(
        &state,
        req.common.model.as_deref(),
        req.common.keep_alive.as_ref(),
        F,
    )
    .await?;
    let messages = l.defaults.apply(normalize_messages(req.messages)?, None);
    let logprobs = if req.logprobs.unwrap_or(false) {
        Some(req.top_logprobs.unwrap_or(0).min(20))
    } else {
        None
    };
    let syntax = reasoning_syntax(&state, &l, req.reasoning_format.as_deref(), F)?;
    let (mut params, stream, include_usage) = req.common.params(logprobs, &l.defaults)?;
    params.render_special = l.template.reasoning == ReasoningSyntax::Harmony;
    let mut extra = req.chat_template_kwargs.unwrap_or_default();
    let enable_thinking = extra.remove("enable_thinking").and_then(|v| v.as_bool());
    let opts = RenderOptions {
        add_generation_prompt: true,
        tools: req.tools,
        enable_thinking,
        reasoning_effort: req.reasoning_effort,
        extra,
    };
    let permit = common::admit(&state, F)?;
    let (prompt, open) = chat_prompt(&l, &messages, &opts, F).await?;
    common::check_prompt(&l, &prompt, F)?;
    let rx = common::submit(&l, prompt, params, arrived, permit, F)?;
    let parser = ReasoningParser::new(syntax, open);
    let meta = Meta::new("chatcmpl", &l, include_usage, logprobs.is_some());
    if stream {
        let framer = ChatFramer {
            meta,
            parser,
            sent_role: false,
            tok: tokenizer(&l),
        };
        return Ok(common::streaming_response(
            common::stream_body(rx, framer),
            "text/event-stream",
        ));
    }
    let c = common::collect(rx, F).await?;
    let mut parser = parser;
    let mut s = parser.push(&c.text);
    let f = parser.finish();
    s.reasoning.push_str(&f.reasoning);
    s.content.push_str(&f.content);
    let mut message = json!({"role": "assistant", "content": s.content});
    if !s.reasoning.is_empty() {
        message["reasoning_content"] = json!(s.reasoning);
    }
    let lp = match (logprobs, tokenizer(&l)) {
        (Some(_), Some(tok)) => json!({"content": chat_logprobs(&tok, &c.tokens)}),
        _ => Value::Null,
    };
    Ok(Json(json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": meta.fingerprint,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": lp,
            "finish_reason": c.done.reason.finish_reason(),
        }],
        "usage": usage(&c.done),
        "timings": timings(&c.done),
    }))
    .into_response())
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let req: CompletionRequest = common::parse_body(body, F, state.cfg.max_body_bytes)?;
    let l = common::loaded(
        &state,
        req.common.model.as_deref(),
        req.common.keep_alive.as_ref(),
        F,
    )
    .await?;
    if req.echo.unwrap_or(false) {
        return Err(ApiError::bad_request(F, "echo is not supported"));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(
            F,
            "suffix (fill-in-the-middle) is not supported",
        ));
    }
    let logprobs = req.logprobs.map(|k| k.min(20));
    let (params, stream, include_usage) = req.common.params(logprobs, &l.defaults)?;
    let permit = common::admit(&state, F)?;
    let one = |n: usize| {
        if n == 1 {
            Ok(())
        } else {
            Err(ApiError::bad_request(
                F,
                "exactly one prompt is supported per request",
            ))
        }
    };
    let prompt = match req.prompt {
        PromptInput::Text(t) => common::text_prompt(&l, t, true, F).await?,
        PromptInput::Texts(mut v) => {
            one(v.len())?;
            common::text_prompt(&l, v.remove(0), true, F).await?
        }
        PromptInput::Ids(ids) => common::Prompt::Ids(ids),
        PromptInput::IdLists(mut v) => {
            one(v.len())?;
            common::Prompt::Ids(v.remove(0))
        }
    };
    if let common::Prompt::Ids(ids) = &prompt {
        common::check_ids(&l, ids, F)?;
    }
    common::check_prompt(&l, &prompt, F)?;
    let rx = common::submit(&l, prompt, params, arrived, permit, F)?;
    let meta = Meta::new("cmpl", &l, include_usage, logprobs.is_some());
    if stream {
        let framer = CompletionFramer {
            meta,
            tok: tokenizer(&l),
        };
        return Ok(common::streaming_response(
            common::stream_body(rx, framer),
            "text/event-stream",
        ));
    }
    let c = common::collect(rx, F).await?;
    let lp = match (logprobs, tokenizer(&l)) {
        (Some(_), Some(tok)) => completion_logprobs(&tok, &c.tokens, 0),
        _ => Value::Null,
    };
    Ok(Json(json!({
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": meta.fingerprint,
        "choices": [{
            "index": 0,
            "text": c.text,
            "logprobs": lp,
            "finish_reason": c.done.reason.finish_reason(),
        }],
        "usage": usage(&c.done),
        "timings": timings(&c.done),
    }))
    .into_response())
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum EmbedInput {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Deserialize, Debug)]
struct EmbeddingRequest {
    input: EmbedInput,
    model: Option<String>,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
    keep_alive: Option<Value>,
}

/// Tokenizes embedding inputs, refusing (never truncating) any longer than the context.
pub async fn embed_inputs(
    l: &Loaded,
    texts: Vec<String>,
    truncate: bool,
    flavor: Flavor,
) -> Result<Vec<Vec<u32>>, ApiError> {
    if texts.is_empty() {
        return Err(ApiError::bad_request(flavor, "input must not be empty"));
    }
    if texts.len() > 2048 {
        return Err(ApiError::bad_request(
            flavor,
            "at most 2048 inputs per request",
        ));
    }
    let mut out = Vec::with_capacity(texts.len());
    for (i, t) in texts.into_iter().enumerate() {
        let mut ids = common::tokenize(l, t, true, flavor).await?;
        if ids.is_empty() {
            return Err(ApiError::bad_request(flavor, format!("input {i} is empty")));
        }
        if ids.len() > l.n_ctx {
            if truncate {
                ids.truncate(l.n_ctx);
            } else {
                return Err(ApiError::bad_request(
                    flavor,
                    format!(
                        "input {i} is {} tokens, but the context holds {}; shorten it (inputs are never truncated unless the request sets truncate: true)",
                        ids.len(),
                        l.n_ctx
                    ),
                ));
            }
        }
        out.push(ids);
    }
    Ok(out)
}

/// Runs an embedding job and waits for it.
pub async fn run_embed(
    state: &AppState,
    l: &Loaded,
    inputs: Vec<Vec<u32>>,
    arrived: Instant,
    flavor: Flavor,
) -> Result<crate::scheduler::EmbedOut, ApiError> {
    let mut permit = common::admit(state, flavor)?;
    permit.hold(l.busy());
    let rx = l
        .native(flavor, "embeddings")?
        .sched
        .embed(inputs, arrived, Some(permit))
        .map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                flavor,
                "the server is shutting down",
            )
        })?;
    match rx.await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(msg)) => Err(common::event_error(&msg, flavor)),
        Err(_) => Err(ApiError::internal(
            flavor,
            "the embedding request was dropped",
        )),
    }
}

/// Cuts vectors to `dims` and renormalises (Matryoshka-style `dimensions`).
pub fn shorten(mut v: Vec<Vec<f32>>, dims: Option<usize>) -> Vec<Vec<f32>> {
    if let Some(d) = dims.filter(|&d| d > 0) {
        for e in &mut v {
            if d < e.len() {
                e.truncate(d);
                let n = e.iter().map(|x| x * x).sum::<f32>().sqrt();
                if n > 0.0 {
                    e.iter_mut().for_each(|x| *x /= n);
                }
            }
        }
    }
    v
}

/// `POST /v1/embeddings`: mean-pooled, L2-normalised final hidden states.
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let req: EmbeddingRequest = common::parse_body(body, F, state.cfg.max_body_bytes)?;
    let l = common::loaded(&state, req.model.as_deref(), req.keep_alive.as_ref(), F).await?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(o) => {
            return Err(ApiError::bad_request(
                F,
                format!("encoding_format must be float or base64, got '{o}'"),
            ))
        }
    };
    let inputs = match req.input {
        EmbedInput::Text(t) => embed_inputs(&l, vec![t], false, F).await?,
        EmbedInput::Texts(v) => embed_inputs(&l, v, false, F).await?,
        EmbedInput::Ids(ids) => vec![ids],
        EmbedInput::IdLists(v) => v,
    };
    for ids in &inputs {
        common::check_ids(&l, ids, F)?;
        if ids.is_empty() || ids.len() > l.n_ctx {
            return Err(ApiError::bad_request(
                F,
                format!(
                    "an input is {} tokens; 1 to {} are allowed",
                    ids.len(),
                    l.n_ctx
                ),
            ));
        }
    }
    let out = run_embed(&state, &l, inputs, arrived, F).await?;
    let data: Vec<Value> = shorten(out.embeddings, req.dimensions)
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let emb = if base64 {
                let bytes: Vec<u8> = e.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(common::base64(&bytes))
            } else {
                json!(e)
            };
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": l.names[0],
        "usage": {"prompt_tokens": out.prompt_n, "total_tokens": out.prompt_n},
    }))
    .into_response())
}

/// Response fields every chunk repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    include_usage: bool,
    logprobs: bool,
}

impl Meta {
    fn new(prefix: &str, l: &Loaded, include_usage: bool, logprobs: bool) -> Meta {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let created = common::unix_time();
        Meta {
            id: format!("{prefix}-{created:x}{n:06x}"),
            created,
            model: l.names[0].clone(),
            fingerprint: format!("engine-{}", env!("CARGO_PKG_VERSION")),
            include_usage,
            logprobs,
        }
    }
}

fn usage(d: &Done) -> Value {
    let completion = d.timings.predicted_n;
    json!({
        "prompt_tokens": d.prompt_n,
        "completion_tokens": completion,
        "total_tokens": d.prompt_n + completion,
        "prompt_tokens_details": {"cached_tokens": d.cached_n},
    })
}

fn timings(d: &Done) -> Value {
    let t = &d.timings;
    json!({
        "prompt_n": t.prompt_n,
        "prompt_ms": t.prompt_ms,
        "prompt_per_token_ms": if t.prompt_n > 0 { t.prompt_ms / t.prompt_n as f64 } else { 0.0 },
        "prompt_per_second": t.prompt_per_second(),
        "predicted_n": t.predicted_n,
        "predicted_ms": t.predicted_ms,
        "predicted_per_token_ms": if t.predicted_n > 0 { t.predicted_ms / t.predicted_n as f64 } else { 0.0 },
        "predicted_per_second": t.predicted_per_second(),
        "cache_n": d.cached_n,
    })
}

/// The tokenizer of a GGUF model (a device model has none here).
fn tokenizer(l: &Loaded) -> Option<Arc<engine::Tokenizer>> {
    match &l.runner {
        crate::app::Runner::Native(n) => Some(n.model.tokenizer().clone()),
        crate::app::Runner::Device(_) => None,
    }
}

fn piece(tok: &engine::Tokenizer, id: u32) -> (String, Vec<u8>) {
    let b = tok.token_to_piece(id, false).to_vec();
    (String::from_utf8_lossy(&b).into_owned(), b)
}

fn chat_logprobs(tok: &engine::Tokenizer, tokens: &[TokenOut]) -> Vec<Value> {
    tokens
        .iter()
        .filter_map(|t| {
            let lp = t.logprob.as_ref()?;
            let (text, bytes) = piece(tok, t.id);
            let top: Vec<Value> = lp
                .top
                .iter()
                .map(|&(id, l)| {
                    let (s, b) = piece(tok, id);
                    json!({"token": s, "logprob": l, "bytes": b})
                })
                .collect();
            Some(json!({"token": text, "logprob": lp.logprob, "bytes": bytes, "top_logprobs": top}))
        })
        .collect()
}

fn completion_logprobs(tok: &engine::Tokenizer, tokens: &[TokenOut], offset0: usize) -> Value {
    let mut toks = Vec::new();
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    let mut offs = Vec::new();
    let mut off = offset0;
    for t in tokens {
        let Some(lp) = &t.logprob else { continue };
        let (s, _) = piece(tok, t.id);
        offs.push(off);
        off += t.text.len();
        toks.push(json!(s));
        lps.push(json!(lp.logprob));
        let mut m = serde_json::Map::new();
        for &(id, l) in &lp.top {
            m.insert(piece(tok, id).0, json!(l));
        }
        tops.push(Value::Object(m));
    }
    json!({"tokens": toks, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs})
}

fn done_frame() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

fn error_frame(msg: &str) -> Bytes {
    let status = common::event_error(msg, F).status;
    common::sse(&common::error_body(F, status, msg))
}

struct ChatFramer {
    meta: Meta,
    parser: ReasoningParser,
    sent_role: bool,
    tok: Option<Arc<engine::Tokenizer>>,
}

impl ChatFramer {
    fn chunk(&self, delta: Value, finish: Option<&str>, logprobs: Value) -> Bytes {
        common::sse(&json!({
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": self.meta.fingerprint,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        }))
    }

    fn role(&mut self, out: &mut Vec<Bytes>) {
        if !self.sent_role {
            self.sent_role = true;
            out.push(self.chunk(
                json!({"role": "assistant", "content": ""}),
                None,
                Value::Null,
            ));
        }
    }

    fn deltas(&self, s: crate::reasoning::Split, lp: Value, out: &mut Vec<Bytes>) {
        let has_lp = !lp.is_null();
        if !s.reasoning.is_empty() {
            out.push(self.chunk(json!({"reasoning_content": s.reasoning}), None, Value::Null));
        }
        if !s.content.is_empty() || has_lp {
            out.push(self.chunk(json!({"content": s.content}), None, lp));
        }
    }
}

impl Framer for ChatFramer {
    fn event(&mut self, ev: Event, out: &mut Vec<Bytes>) {
        self.role(out);
        match ev {
            Event::Token(t) => {
                let s = self.parser.push(&t.text);
                let lp = match &self.tok {
                    Some(tok) if self.meta.logprobs && t.logprob.is_some() => {
                        json!({"content": chat_logprobs(tok, std::slice::from_ref(&t))})
                    }
                    _ => Value::Null,
                };
                self.deltas(s, lp, out);
            }
            Event::Done(d) => {
                let s = self.parser.finish();
                self.deltas(s, Value::Null, out);
                let mut last = json!({
                    "id": self.meta.id,
                    "object": "chat.completion.chunk",
                    "created": self.meta.created,
                    "model": self.meta.model,
                    "system_fingerprint": self.meta.fingerprint,
                    "choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": d.reason.finish_reason()}],
                    "timings": timings(&d),
                });
                if self.meta.include_usage {
                    out.push(common::sse(&last));
                    last = json!({
                        "id": self.meta.id,
                        "object": "chat.completion.chunk",
                        "created": self.meta.created,
                        "model": self.meta.model,
                        "system_fingerprint": self.meta.fingerprint,
                        "choices": [],
                        "usage": usage(&d),
                    });
                }
                out.push(common::sse(&last));
                out.push(done_frame());
            }
            Event::Error(msg) => {
                out.push(error_frame(&msg));
                out.push(done_frame());
            }
        }
    }

    fn closed(&mut self, out: &mut Vec<Bytes>) {
        out.push(error_frame("the generation ended unexpectedly"));
        out.push(done_frame());
    }
}

struct CompletionFramer {
    meta: Meta,
    tok: Option<Arc<engine::Tokenizer>>,
}

impl CompletionFramer {
    fn chunk(&self, text: &str, finish: Option<&str>, logprobs: Value) -> Value {
        json!({
            "id": self.meta.id,
            "object": "text_completion",
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": self.meta.fingerprint,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
        })
    }
}

impl Framer for CompletionFramer {
    fn event(&mut self, ev: Event, out: &mut Vec<Bytes>) {
        match ev {
            Event::Token(t) => {
                let lp = match &self.tok {
                    Some(tok) if self.meta.logprobs && t.logprob.is_some() => {
                        completion_logprobs(tok, std::slice::from_ref(&t), 0)
                    }
                    _ => Value::Null,
                };
                if !t.text.is_empty() || !lp.is_null() {
                    out.push(common::sse(&self.chunk(&t.text, None, lp)));
                }
            }
            Event::Done(d) => {
                let mut last = self.chunk("", Some(d.reason.finish_reason()), Value::Null);
                last["timings"] = timings(&d);
                if self.meta.include_usage {
                    out.push(common::sse(&last));
                    last = json!({
                        "id": self.meta.id,
                        "object": "text_completion",
                        "created": self.meta.created,
                        "model": self.meta.model,
                        "choices": [],
                        "usage": usage(&d),
                    });
                }
                out.push(common::sse(&last));
                out.push(done_frame());
            }
            Event::Error(msg) => {
                out.push(error_frame(&msg));
                out.push(done_frame());
            }
        }
    }

    fn closed(&mut self, out: &mut Vec<Bytes>) {
        out.push(error_frame("the generation ended unexpectedly"));
        out.push(done_frame());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_normalised_and_checked() {
        let m = normalize_messages(vec![json!({"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})])
        .unwrap();
        assert_eq!(m[0]["content"], "ab");
        for bad in [
            json!("x"),
            json!({"content": "no role"}),
            json!({"role": 3, "content": "x"}),
            json!({"role": "user", "content": 5}),
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}),
        ] {
            assert!(normalize_messages(vec![bad.clone()]).is_err(), "{bad}");
        }
        assert!(normalize_messages(vec![]).is_err());
    }

    #[test]
    fn sampling_fields_are_validated() {
        let c: Common =
            serde_json::from_value(json!({"temperature": 0, "max_tokens": 5, "stop": "x"}))
                .unwrap();
        let (p, stream, usage) = c.params(None, &Defaults::default()).unwrap();
        assert_eq!(p.max_tokens, Some(5));
        assert_eq!(p.stop, vec!["x"]);
        assert_eq!(p.sampling.temperature, 0.0);
        assert!(!stream && !usage);
        for bad in [
            json!({"top_p": 2.0}),
            json!({"max_tokens": -5}),
            json!({"n": 3}),
            json!({"response_format": {"type": "json_schema"}}),
            json!({"response_format": {"type": "yaml"}}),
        ] {
            let c: Common = serde_json::from_value(bad.clone()).unwrap();
            assert!(c.params(None, &Defaults::default()).is_err(), "{bad}");
        }
        let c: Common = serde_json::from_value(json!({"response_format": {"type": "json_object"}, "max_completion_tokens": 1000000000})).unwrap();
        let (p, _, _) = c.params(Some(2), &Defaults::default()).unwrap();
        assert!(p.json);
        assert_eq!(p.max_tokens, Some(1_000_000_000));
        assert_eq!(p.logprobs, Some(2));
        assert!(serde_json::from_value::<Common>(json!({"temperature": "hot"})).is_err());
    }
}
