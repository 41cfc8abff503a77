//! The Ollama-compatible API on the same port: `/api/generate` and `/api/chat` (NDJSON
//! streaming by default), `/api/tags`, `/api/show`, `/api/ps`, `/api/version`,
//! `/api/embed` and the older `/api/embeddings`, with Ollama's nanosecond timing fields.

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
use super::openai::{self, Stop};
use engine_store::KeepAlive;

use crate::app::{AppState, Loaded};
use crate::models::Entry;
use crate::reasoning::ReasoningParser;
use crate::scheduler::{Done, Event, GenParams};
use crate::template::{ReasoningSyntax, RenderOptions};

const F: Flavor = Flavor::Ollama;

/// Ollama's `options` (unknown ones are ignored, as Ollama does).
#[derive(Deserialize, Debug, Default)]
struct Options {
    num_ctx: Option<i64>,
    num_predict: Option<i64>,
    temperature: Option<f32>,
    top_k: Option<i64>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    seed: Option<i64>,
    stop: Option<Stop>,
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<i32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
}

#[derive(Deserialize, Debug)]
struct GenerateRequest {
    model: String,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    template: Option<String>,
    suffix: Option<String>,
    context: Option<Vec<u32>>,
    stream: Option<bool>,
    #[serde(default)]
    raw: bool,
    format: Option<Value>,
    options: Option<Options>,
    images: Option<Vec<Value>>,
    think: Option<Value>,
    logprobs: Option<bool>,
    top_logprobs: Option<usize>,
    keep_alive: Option<Value>,
}

#[derive(Deserialize, Debug)]
struct ChatRequest {
    model: String,
    #[serde(default)]
    messages: Vec<Value>,
    stream: Option<bool>,
    format: Option<Value>,
    options: Option<Options>,
    tools: Option<Value>,
    think: Option<Value>,
    keep_alive: Option<Value>,
}

fn params(
    l: &Loaded,
    options: Option<Options>,
    format: Option<&Value>,
    logprobs: Option<usize>,
) -> Result<GenParams, ApiError> {
    let o = options.unwrap_or_default();
    if let Some(n) = o.num_ctx {
        if n > l.n_ctx as i64 {
            tracing::debug!(
                requested = n,
                served = l.n_ctx,
                "num_ctx above the server's context; prompts beyond it are refused"
            );
        }
    }
    let max_tokens = match o.num_predict {
        None => l.defaults.max_tokens,
        Some(-1) | Some(-2) => None,
        Some(n) if n < 0 => {
            return Err(ApiError::bad_request(
                F,
                format!("num_predict must be -1, -2 or at least 0, got {n}"),
            ))
        }
        Some(n) => Some(n as usize),
    };
    let d = l.defaults.sampling.clone();
    let sampling = engine::SamplingParams {
        temperature: o.temperature.unwrap_or(d.temperature),
        top_k: o.top_k.map(|k| k.max(0) as usize).unwrap_or(d.top_k),
        top_p: o.top_p.unwrap_or(d.top_p),
        min_p: o.min_p.unwrap_or(d.min_p),
        repeat_penalty: o.repeat_penalty.unwrap_or(d.repeat_penalty),
        repeat_last_n: o.repeat_last_n.unwrap_or(d.repeat_last_n),
        presence_penalty: o.presence_penalty.unwrap_or(d.presence_penalty),
        frequency_penalty: o.frequency_penalty.unwrap_or(d.frequency_penalty),
        seed: match o.seed {
            Some(s) => common::seed(Some(s)),
            None => d.seed,
        },
    };
    sampling
        .validate()
        .map_err(|e| ApiError::bad_request(F, e))?;
    let json = match format {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s.is_empty() => false,
        Some(Value::String(s)) if s == "json" => true,
        Some(Value::Object(_)) => {
            return Err(ApiError::bad_request(
                F,
                "format with a JSON schema is not supported yet; use \"json\"",
            ))
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                F,
                format!("format must be \"json\", got {other}"),
            ))
        }
    };
    Ok(GenParams {
        max_tokens,
        sampling,
        stop: o
            .stop
            .map(|s| match s {
                Stop::One(s) => vec![s],
                Stop::Many(v) => v,
            })
            .unwrap_or_else(|| l.defaults.stop.clone()),
        logprobs,
        ignore_eos: false,
        json,
        render_special: l.template.reasoning == ReasoningSyntax::Harmony,
        cache_prompt: true,
    })
}

fn think_flag(v: &Option<Value>) -> Option<bool> {
    match v {
        Some(Value::Bool(b)) => Some(*b),
        // "low"/"medium"/"high" (GPT-OSS) mean thinking on.
        Some(Value::String(_)) => Some(true),
        _ => None,
    }
}

fn effort(v: &Option<Value>) -> Option<String> {
    v.as_ref().and_then(Value::as_str).map(str::to_string)
}

fn now_rfc3339() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.{:09}Z",
        crate::template::strftime_utc("%Y-%m-%dT%H:%M:%S", t.as_secs() as i64),
        t.subsec_nanos()
    )
}

fn rfc3339(unix: u64) -> String {
    format!(
        "{}Z",
        crate::template::strftime_utc("%Y-%m-%dT%H:%M:%S", unix as i64)
    )
}

fn durations(d: &Done, arrived: Instant) -> serde_json::Map<String, Value> {
    let ns = |ms: f64| (ms * 1e6) as u64;
    let mut m = serde_json::Map::new();
    m.insert(
        "total_duration".into(),
        json!(crate::app::nanos_since(arrived)),
    );
    m.insert("load_duration".into(), json!(ns(d.queue_ms)));
    m.insert("prompt_eval_count".into(), json!(d.prompt_n));
    m.insert(
        "prompt_eval_duration".into(),
        json!(ns(d.timings.prompt_ms)),
    );
    m.insert("eval_count".into(), json!(d.timings.predicted_n));
    m.insert("eval_duration".into(), json!(ns(d.timings.predicted_ms)));
    m
}

fn done_reason(d: &Done) -> &'static str {
    d.reason.finish_reason()
}

/// `POST /api/generate`.
pub async fn generate(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let req: GenerateRequest = common::parse_body(body, F, state.cfg.max_body_bytes)?;
    let context = req.context.clone().unwrap_or_default();
    if req.prompt.is_empty() && context.is_empty() {
        // Ollama's "load the model" request, or with keep_alive 0 "unload it"
        return load_or_unload(&state, &req.model, req.keep_alive.as_ref(), false).await;
    }
    let l = common::loaded(&state, Some(&req.model), req.keep_alive.as_ref(), F).await?;
    if req.images.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request(
            F,
            "images are not supported by this model",
        ));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(
            F,
            "suffix (fill-in-the-middle) is not supported",
        ));
    }
    if req.template.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(
            F,
            "per-request template overrides are not supported; start the server with --chat-template-file",
        ));
    }
    let stream = req.stream.unwrap_or(true);
    let logprobs = if req.logprobs.unwrap_or(false) {
        Some(req.top_logprobs.unwrap_or(0).min(20))
    } else {
        None
    };
    let params = params(&l, req.options, req.format.as_ref(), logprobs)?;
    let thinking = think_flag(&req.think);
    let syntax = if req.raw {
        ReasoningSyntax::None
    } else {
        openai::reasoning_syntax(&state, &l, None, F)?
    };
    let permit = common::admit(&state, F)?;
    if !context.is_empty() && l.device().is_some() {
        l.native(F, "context (token ids of an earlier answer); use /api/chat")?;
    }
    let (mut prompt, open) = if req.raw {
        let p = common::text_prompt(&l, req.prompt, context.is_empty(), F).await?;
        (p, false)
    } else {
        // the request's `system` replaces the model's SYSTEM
        let msgs = l.defaults.apply(
            vec![json!({"role": "user", "content": req.prompt})],
            req.system.filter(|s| !s.is_empty()),
        );
        let opts = RenderOptions {
            add_generation_prompt: true,
            enable_thinking: thinking,
            reasoning_effort: effort(&req.think),
            ..Default::default()
        };
        openai::chat_prompt(&l, &msgs, &opts, F).await?
    };
    if let (false, common::Prompt::Ids(ids)) = (context.is_empty(), &mut prompt) {
        common::check_ids(&l, &context, F)?;
        let tok = l.native(F, "context")?.model.tokenizer();
        // A continuation: the new turn follows the old tokens without a second BOS.
        if ids.first().is_some_and(|&t| Some(t) == tok.bos()) {
            ids.remove(0);
        }
        let mut all = context;
        all.extend_from_slice(ids);
        *ids = all;
    }
    common::check_prompt(&l, &prompt, F)?;
    // `context` is token ids: a device model has none to give
    let prompt_ids = match &prompt {
        common::Prompt::Ids(ids) => Some(ids.clone()),
        common::Prompt::Text(_) => None,
    };
    let rx = common::submit(&l, prompt, params, arrived, permit, F)?;
    let parser = ReasoningParser::new(syntax, open);
    let show_thinking = thinking != Some(false);
    let model = l.names[0].clone();
    if stream {
        let framer = NdFramer {
            model,
            arrived,
            parser,
            chat: false,
            show_thinking,
            context: prompt_ids,
        };
        return Ok(common::streaming_response(
            common::stream_body(rx, framer),
            "application/x-ndjson",
        ));
    }
    let c = common::collect(rx, F).await?;
    let mut parser = parser;
    let mut s = parser.push(&c.text);
    let f = parser.finish();
    s.reasoning.push_str(&f.reasoning);
    s.content.push_str(&f.content);
    let mut v = json!({
        "model": model,
        "created_at": now_rfc3339(),
        "response": s.content,
        "done": true,
        "done_reason": done_reason(&c.done),
    });
    if let Some(mut ctx) = prompt_ids {
        ctx.extend(c.tokens.iter().map(|t| t.id));
        v["context"] = json!(ctx);
    }
    if show_thinking && !s.reasoning.is_empty() {
        v["thinking"] = json!(s.reasoning);
    }
    if let Value::Object(m) = &mut v {
        m.extend(durations(&c.done, arrived));
    }
    Ok(Json(v).into_response())
}

/// `POST /api/chat`.
pub async fn chat(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let req: ChatRequest = common::parse_body(body, F, state.cfg.max_body_bytes)?;
    if req.messages.is_empty() {
        return load_or_unload(&state, &req.model, req.keep_alive.as_ref(), true).await;
    }
    let l = common::loaded(&state, Some(&req.model), req.keep_alive.as_ref(), F).await?;
    let stream = req.stream.unwrap_or(true);
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        let Value::Object(mut o) = m else {
            return Err(ApiError::bad_request(
                F,
                format!("messages[{i}] must be an object"),
            ));
        };
        if !matches!(o.get("role"), Some(Value::String(_))) {
            return Err(ApiError::bad_request(
                F,
                format!("messages[{i}].role must be a string"),
            ));
        }
        match o.get("content") {
            None | Some(Value::Null) => {
                o.insert("content".into(), json!(""));
            }
            Some(Value::String(_)) => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    F,
                    format!("messages[{i}].content must be a string"),
                ))
            }
        }
        if o.get("images")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            return Err(ApiError::bad_request(
                F,
                "images are not supported by this model",
            ));
        }
        messages.push(Value::Object(o));
    }
    let messages = l.defaults.apply(messages, None);
    let params = params(&l, req.options, req.format.as_ref(), None)?;
    let thinking = think_flag(&req.think);
    let syntax = openai::reasoning_syntax(&state, &l, None, F)?;
    let permit = common::admit(&state, F)?;
    let opts = RenderOptions {
        add_generation_prompt: true,
        tools: req.tools,
        enable_thinking: thinking,
        reasoning_effort: effort(&req.think),
        ..Default::default()
    };
    let (prompt, open) = openai::chat_prompt(&l, &messages, &opts, F).await?;
    common::check_prompt(&l, &prompt, F)?;
    let rx = common::submit(&l, prompt, params, arrived, permit, F)?;
    let parser = ReasoningParser::new(syntax, open);
    let show_thinking = thinking != Some(false);
    let model = l.names[0].clone();
    if stream {
        let framer = NdFramer {
            model,
            arrived,
            parser,
            chat: true,
            show_thinking,
            context: None,
        };
        return Ok(common::streaming_response(
            common::stream_body(rx, framer),
            "application/x-ndjson",
        ));
    }
    let c = common::collect(rx, F).await?;
    let mut parser = parser;
    let mut s = parser.push(&c.text);
    let f = parser.finish();
    s.reasoning.push_str(&f.reasoning);
    s.content.push_str(&f.content);
    let mut message = json!({"role": "assistant", "content": s.content});
    if show_thinking && !s.reasoning.is_empty() {
        message["thinking"] = json!(s.reasoning);
    }
    let mut v = json!({
        "model": model,
        "created_at": now_rfc3339(),
        "message": message,
        "done": true,
        "done_reason": done_reason(&c.done),
    });
    if let Value::Object(m) = &mut v {
        m.extend(durations(&c.done, arrived));
    }
    Ok(Json(v).into_response())
}

/// NDJSON frames for `/api/generate` and `/api/chat`.
struct NdFramer {
    model: String,
    arrived: Instant,
    parser: ReasoningParser,
    chat: bool,
    show_thinking: bool,
    /// Prompt ids, extended with generated ids (`/api/generate`'s final `context`).
    context: Option<Vec<u32>>,
}

impl NdFramer {
    fn line(v: &Value) -> Bytes {
        Bytes::from(format!("{v}\n"))
    }

    fn piece(&self, s: crate::reasoning::Split, out: &mut Vec<Bytes>) {
        let thinking = self.show_thinking && !s.reasoning.is_empty();
        if s.content.is_empty() && !thinking {
            return;
        }
        let mut v = if self.chat {
            let mut m = json!({"role": "assistant", "content": s.content});
            if thinking {
                m["thinking"] = json!(s.reasoning);
            }
            json!({"model": self.model, "created_at": now_rfc3339(), "message": m, "done": false})
        } else {
            let mut v = json!({"model": self.model, "created_at": now_rfc3339(), "response": s.content, "done": false});
            if thinking {
                v["thinking"] = json!(s.reasoning);
            }
            v
        };
        if v.is_null() {
            v = json!({});
        }
        out.push(Self::line(&v));
    }
}

impl Framer for NdFramer {
    fn event(&mut self, ev: Event, out: &mut Vec<Bytes>) {
        match ev {
            Event::Token(t) => {
                if let Some(c) = self.context.as_mut() {
                    c.push(t.id);
                }
                let s = self.parser.push(&t.text);
                self.piece(s, out);
            }
            Event::Done(d) => {
                let s = self.parser.finish();
                self.piece(s, out);
                let mut v = if self.chat {
                    json!({"model": self.model, "created_at": now_rfc3339(),
                        "message": {"role": "assistant", "content": ""},
                        "done": true, "done_reason": done_reason(&d)})
                } else {
                    let mut v = json!({"model": self.model, "created_at": now_rfc3339(), "response": "",
                        "done": true, "done_reason": done_reason(&d)});
                    if let Some(c) = self.context.take() {
                        v["context"] = json!(c);
                    }
                    v
                };
                if let Value::Object(m) = &mut v {
                    m.extend(durations(&d, self.arrived));
                }
                out.push(Self::line(&v));
            }
            Event::Error(msg) => out.push(Self::line(&json!({ "error": msg }))),
        }
    }

    fn closed(&mut self, out: &mut Vec<Bytes>) {
        out.push(Self::line(
            &json!({"error": "the generation ended unexpectedly"}),
        ));
    }
}

fn details(e: &Entry) -> Value {
    match e.facts() {
        Ok(f) => json!({
            "parent_model": "",
            "format": "gguf",
            "family": f.arch,
            "families": [f.arch],
            "parameter_size": human_params(f.n_params),
            "quantization_level": f.quant,
        }),
        Err(_) => json!({"parent_model": "", "format": "gguf"}),
    }
}

fn human_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.1}B", n as f64 / 1e9)
    } else {
        format!("{:.0}M", n as f64 / 1e6)
    }
}

/// llama.cpp's `general.file_type` codes.
pub(crate) fn file_type_name(t: i64) -> &'static str {
    match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        25 => "IQ4_NL",
        30 => "IQ4_XS",
        32 => "BF16",
        38 => "MXFP4",
        _ => "unknown",
    }
}

/// A name as Ollama lists it: with a tag (`:latest` unless it has one).
fn tagged(name: &str) -> String {
    if name.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

fn model_entry(e: &Entry) -> Value {
    let modified = std::fs::metadata(&e.spec.path)
        .and_then(|m| m.modified())
        .map(rfc3339_system)
        .unwrap_or_else(|_| rfc3339(0));
    let digest = e.spec.digest.clone().unwrap_or_else(|| {
        crate::app::file_digest(&e.spec.path, std::fs::metadata(&e.spec.path).ok().as_ref())
    });
    json!({
        "name": tagged(&e.names[0]),
        "model": tagged(&e.names[0]),
        "modified_at": modified,
        "size": e.facts().map(|f| f.file_size).unwrap_or(0),
        "digest": digest,
        "details": details(e),
    })
}

/// RFC 3339 in UTC for a system time.
pub(crate) fn rfc3339_system(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// `GET /api/tags`: every served model.
pub async fn tags(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    if !state.ready.load(std::sync::atomic::Ordering::Acquire) {
        common::loaded(&state, None, None, F).await?;
    }
    let models: Vec<Value> = state.registry.entries().iter().map(model_entry).collect();
    Ok(Json(json!({ "models": models })).into_response())
}

/// `GET /api/ps`: the loaded models, their memory and when they unload (Ollama's shape:
/// `size` is the estimated memory, `expires_at` far in the future for "never").
pub async fn ps(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    if !state.ready.load(std::sync::atomic::Ordering::Acquire) {
        common::loaded(&state, None, None, F).await?;
    }
    let entries = state.registry.entries();
    let models: Vec<Value> = state
        .registry
        .status()
        .into_iter()
        .map(|s| {
            let mut m = model_entry(&entries[s.index]);
            m["size"] = json!(s.bytes);
            m["size_vram"] = json!(0);
            m["expires_at"] = json!(match s.expires_at {
                Some(t) => rfc3339_system(t),
                None => "2318-11-24T00:00:00Z".to_string(),
            });
            m["context_length"] = json!(s.loaded.n_ctx);
            m["busy"] = json!(s.busy);
            m
        })
        .collect();
    Ok(Json(json!({ "models": models })).into_response())
}

/// Ollama's empty `/api/generate` or `/api/chat`: load the model (`done_reason: "load"`),
/// or with `keep_alive: 0` unload it (`"unload"`, at once if idle, else after its running
/// requests).
async fn load_or_unload(
    state: &Arc<AppState>,
    model: &str,
    keep_alive: Option<&Value>,
    chat: bool,
) -> Result<Response, ApiError> {
    let ka = common::keep_alive_of(keep_alive, F)?;
    let name;
    let reason = if ka == Some(KeepAlive::Unload) {
        let idx = state
            .registry
            .find(Some(model))
            .map_err(|e| e.into_api(F, state.cfg.retry_after_secs))?;
        name = state.registry.entries()[idx].names[0].clone();
        state.registry.unload(idx).await;
        "unload"
    } else {
        let l = common::loaded(state, Some(model), keep_alive, F).await?;
        name = l.names[0].clone();
        "load"
    };
    let mut v = json!({
        "model": name, "created_at": now_rfc3339(), "done": true, "done_reason": reason,
    });
    if chat {
        v["message"] = json!({"role": "assistant", "content": ""});
    } else {
        v["response"] = json!("");
    }
    Ok(Json(v).into_response())
}

/// `GET /api/version`.
pub async fn version() -> Response {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") })).into_response()
}

#[derive(Deserialize, Debug)]
struct ShowRequest {
    model: Option<String>,
    name: Option<String>,
    #[serde(default)]
    verbose: bool,
}

/// `POST /api/show`: details, metadata, template, the Modelfile and capabilities. A model that
/// is not loaded is described from its file (it is not loaded for this).
pub async fn show(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ShowRequest = common::parse_body(body, F, state.cfg.max_body_bytes)?;
    if !state.ready.load(std::sync::atomic::Ordering::Acquire) {
        common::loaded(&state, None, None, F).await?;
    }
    let name = req.model.or(req.name).unwrap_or_default();
    if name.trim().is_empty() {
        return Err(ApiError::bad_request(F, "model is required"));
    }
    let idx = state
        .registry
        .find(Some(&name))
        .map_err(|e| e.into_api(F, state.cfg.retry_after_secs))?;
    let entry = &state.registry.entries()[idx];
    let loaded = state
        .registry
        .status()
        .into_iter()
        .find(|s| s.index == idx)
        .map(|s| s.loaded);
    let path = entry.spec.path.clone();
    let verbose = req.verbose;
    let (info, license, gguf_template) = tokio::task::spawn_blocking(move || {
        let g = engine_gguf::GgufModel::open(&path, true).map_err(|e| e.to_string())?;
        let mut info = serde_json::Map::new();
        for (k, v) in g.metadata() {
            if k == "tokenizer.chat_template" {
                continue;
            }
            let value = match v.as_array() {
                // Ollama leaves large arrays (the vocabulary) out unless asked to be verbose.
                Some(_) if !verbose => Value::Null,
                Some(_) => json!(v.to_string()),
                None => match (v.as_str(), v.as_bool(), v.as_int(), v.as_float()) {
                    (Some(s), ..) => json!(s),
                    (_, Some(b), ..) => json!(b),
                    (_, _, Some(i), _) => json!(i),
                    (_, _, _, Some(f)) => json!(f),
                    _ => continue,
                },
            };
            info.insert(k.clone(), value);
        }
        let license = g
            .get_str("general.license")
            .ok()
            .flatten()
            .unwrap_or("")
            .to_string();
        let tmpl = g
            .get_str("tokenizer.chat_template")
            .ok()
            .flatten()
            .map(str::to_string);
        Ok::<_, String>((info, license, tmpl))
    })
    .await
    .map_err(|e| ApiError::internal(F, e.to_string()))?
    .map_err(|e| {
        ApiError::internal(F, format!("cannot read {}: {e}", entry.spec.path.display()))
    })?;
    let mut info = info;
    if let Ok(f) = entry.facts() {
        info.insert("general.parameter_count".into(), json!(f.n_params));
    }
    let preset = &entry.spec.preset;
    let template = match &loaded {
        Some(l) => l.template.source.clone(),
        None => preset
            .template
            .clone()
            .or(gguf_template)
            .unwrap_or_default(),
    };
    let parameters: Vec<String> = preset
        .parameters
        .modelfile_lines()
        .into_iter()
        .map(|l| l.trim_start_matches("PARAMETER ").to_string())
        .chain(preset.num_ctx.map(|n| format!("num_ctx {n}")))
        .collect();
    let from = entry.spec.path.display().to_string();
    let mut v = json!({
        "license": license,
        "modelfile": engine_store::modelfile::render(&from, preset),
        "parameters": parameters.join("\n"),
        "template": template,
        "details": details(entry),
        "model_info": info,
        "capabilities": ["completion", "embedding"],
        "modified_at": model_entry(entry)["modified_at"],
    });
    if let Some(sys) = &preset.system {
        v["system"] = json!(sys);
    }
    if !preset.messages.is_empty() {
        v["messages"] = json!(preset.messages);
    }
    Ok(Json(v).into_response())
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug)]
struct EmbedRequest {
    model: String,
    input: EmbedInput,
    truncate: Option<bool>,
    dimensions: Option<usize>,
    keep_alive: Option<Value>,
}

/// `POST /api/embed`. Inputs longer than the context are refused unless the request says
/// `truncate: true` explicitly.
pub async fn embed(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let req: EmbedRequest = common::parse_body(body, F, state.cfg.max_body_bytes)?;
    let l = common::loaded(&state, Some(&req.model), req.keep_alive.as_ref(), F).await?;
    let texts = match req.input {
        EmbedInput::One(s) => vec![s],
        EmbedInput::Many(v) => v,
    };
    let inputs = openai::embed_inputs(&l, texts, req.truncate == Some(true), F).await?;
    let out = openai::run_embed(&state, &l, inputs, arrived, F).await?;
    Ok(Json(json!({
        "model": l.names[0],
        "embeddings": openai::shorten(out.embeddings, req.dimensions),
        "total_duration": crate::app::nanos_since(arrived),
        "load_duration": 0,
        "prompt_eval_count": out.prompt_n,
    }))
    .into_response())
}

#[derive(Deserialize, Debug)]
struct LegacyEmbedRequest {
    model: String,
    prompt: String,
    keep_alive: Option<Value>,
}

/// `POST /api/embeddings` (Ollama's older endpoint): one vector.
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let req: LegacyEmbedRequest = common::parse_body(body, F, state.cfg.max_body_bytes)?;
    let l = common::loaded(&state, Some(&req.model), req.keep_alive.as_ref(), F).await?;
    let inputs = openai::embed_inputs(&l, vec![req.prompt], false, F).await?;
    let mut out = openai::run_embed(&state, &l, inputs, arrived, F).await?;
    Ok(Json(json!({ "embedding": out.embeddings.pop().unwrap_or_default() })).into_response())
}
