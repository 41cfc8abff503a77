//! llama-server's own endpoints, for scripts written against it: `POST /completion`
//! (streamed as `data:` lines without `[DONE]`, as llama-server does), `POST /tokenize`,
//! `POST /detokenize` and `POST /apply-template`.

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
use super::openai::Stop;
use crate::app::AppState;
use crate::scheduler::{Done, Event, GenParams};
use crate::template::RenderOptions;

const F: Flavor = Flavor::OpenAi;

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

#[derive(Deserialize, Debug)]
struct CompletionRequest {
    /// The model (a multi-model server needs it).
    model: Option<String>,
    prompt: Prompt,
    #[serde(default)]
    stream: bool,
    n_predict: Option<i64>,
    temperature: Option<f32>,
    top_k: Option<i64>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<i32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<i64>,
    stop: Option<Stop>,
    n_probs: Option<usize>,
    cache_prompt: Option<bool>,
    ignore_eos: Option<bool>,
    grammar: Option<String>,
    json_schema: Option<Value>,
}

fn stop_type(d: &Done) -> &'static str {
    match d.reason {
        engine::StopReason::Eog => "eos",
        engine::StopReason::StopString => "word",
        engine::StopReason::Length | engine::StopReason::ContextFull => "limit",
        engine::StopReason::Cancelled => "none",
    }
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

fn final_fields(model: &str, d: &Done) -> serde_json::Map<String, Value> {
    let Value::Object(m) = json!({
        "model": model,
        "stop": true,
        "stop_type": stop_type(d),
        "tokens_predicted": d.timings.predicted_n,
        "tokens_evaluated": d.prompt_n,
        "tokens_cached": d.cached_n,
        "truncated": false,
        "timings": timings(d),
    }) else {
        unreachable!("a JSON object literal")
    };
    m
}

/// `POST /completion` (llama-server's native completion).
pub async fn completion(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let req: CompletionRequest = common::parse_body(body, F, state.cfg.max_body_bytes)?;
    let l = common::loaded(&state, req.model.as_deref(), None, F).await?;
    if req.grammar.is_some() || req.json_schema.is_some() {
        return Err(ApiError::bad_request(
            F,
            "grammar and json_schema are not supported yet; use /v1/chat/completions with response_format json_object",
        ));
    }
    let max_tokens = match req.n_predict {
        None => l.defaults.max_tokens,
        Some(-1) => None,
        Some(n) if n < -1 => {
            return Err(ApiError::bad_request(
                F,
                format!("n_predict must be -1 or more, got {n}"),
            ))
        }
        Some(n) => Some(n as usize),
    };
    let d = l.defaults.sampling.clone();
    let sampling = engine::SamplingParams {
        temperature: req.temperature.unwrap_or(d.temperature),
        top_k: req.top_k.map(|k| k.max(0) as usize).unwrap_or(d.top_k),
        top_p: req.top_p.unwrap_or(d.top_p),
        min_p: req.min_p.unwrap_or(d.min_p),
        repeat_penalty: req.repeat_penalty.unwrap_or(d.repeat_penalty),
        repeat_last_n: req.repeat_last_n.unwrap_or(d.repeat_last_n),
        presence_penalty: req.presence_penalty.unwrap_or(d.presence_penalty),
        frequency_penalty: req.frequency_penalty.unwrap_or(d.frequency_penalty),
        seed: match req.seed {
            Some(s) => common::seed(Some(s)),
            None => d.seed,
        },
    };
    sampling
        .validate()
        .map_err(|e| ApiError::bad_request(F, e))?;
    let params = GenParams {
        max_tokens,
        sampling,
        stop: match req.stop {
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
            None => l.defaults.stop.clone(),
        },
        logprobs: req.n_probs.filter(|&n| n > 0).map(|n| n.min(20)),
        ignore_eos: req.ignore_eos.unwrap_or(false),
        json: false,
        render_special: false,
        cache_prompt: req.cache_prompt.unwrap_or(true),
    };
    let permit = common::admit(&state, F)?;
    let prompt = match req.prompt {
        Prompt::Text(t) => common::text_prompt(&l, t, true, F).await?,
        Prompt::Ids(ids) => common::Prompt::Ids(ids),
    };
    if let common::Prompt::Ids(ids) = &prompt {
        common::check_ids(&l, ids, F)?;
    }
    common::check_prompt(&l, &prompt, F)?;
    let rx = common::submit(&l, prompt, params, arrived, permit, F)?;
    let model = l.names[0].clone();
    if req.stream {
        let framer = CompletionFramer { model };
        return Ok(common::streaming_response(
            common::stream_body(rx, framer),
            "text/event-stream",
        ));
    }
    let c = common::collect(rx, F).await?;
    let mut v =
        json!({"content": c.text, "tokens": c.tokens.iter().map(|t| t.id).collect::<Vec<_>>()});
    if let Value::Object(m) = &mut v {
        m.extend(final_fields(&model, &c.done));
    }
    Ok(Json(v).into_response())
}

struct CompletionFramer {
    model: String,
}

impl Framer for CompletionFramer {
    fn event(&mut self, ev: Event, out: &mut Vec<Bytes>) {
        match ev {
            Event::Token(t) => {
                if !t.text.is_empty() {
                    out.push(common::sse(
                        &json!({"content": t.text, "tokens": [t.id], "stop": false}),
                    ));
                }
            }
            Event::Done(d) => {
                let mut v = json!({"content": ""});
                if let Value::Object(m) = &mut v {
                    m.extend(final_fields(&self.model, &d));
                }
                out.push(common::sse(&v));
            }
            Event::Error(msg) => {
                let status = common::event_error(&msg, F).status;
                out.push(common::sse(&common::error_body(F, status, &msg)));
            }
        }
    }

    fn closed(&mut self, out: &mut Vec<Bytes>) {
        out.push(common::sse(&common::error_body(
            F,
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the generation ended unexpectedly",
        )));
    }
}

#[derive(Deserialize, Debug)]
struct TokenizeRequest {
    model: Option<String>,
    content: String,
    #[serde(default)]
    add_special: bool,
    #[serde(default = "yes")]
    parse_special: bool,
    #[serde(default)]
    with_pieces: bool,
}

fn yes() -> bool {
    true
}

/// `POST /tokenize`: `{"content", "add_special", "parse_special", "with_pieces"}`.
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: TokenizeRequest = common::parse_body(body, F, state.cfg.max_body_bytes)?;
    let l = common::loaded(&state, req.model.as_deref(), None, F).await?;
    let tok = l.native(F, "/tokenize")?.model.tokenizer().clone();
    let (add, parse) = (req.add_special, req.parse_special);
    let ids = tokio::task::spawn_blocking(move || tok.encode(&req.content, add, parse))
        .await
        .map_err(|e| ApiError::internal(F, e.to_string()))?
        .map_err(|e| ApiError::bad_request(F, e.to_string()))?;
    let tokens: Vec<Value> = if req.with_pieces {
        let tok = l.native(F, "/tokenize")?.model.tokenizer();
        ids.iter()
            .map(|&id| {
                let p = tok.token_to_piece(id, true);
                json!({"id": id, "piece": String::from_utf8_lossy(p)})
            })
            .collect()
    } else {
        ids.iter().map(|&id| json!(id)).collect()
    };
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

#[derive(Deserialize, Debug)]
struct DetokenizeRequest {
    model: Option<String>,
    tokens: Vec<u32>,
}

/// `POST /detokenize`: `{"tokens": [ids]}` to `{"content"}`.
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: DetokenizeRequest = common::parse_body(body, F, state.cfg.max_body_bytes)?;
    let l = common::loaded(&state, req.model.as_deref(), None, F).await?;
    common::check_ids(&l, &req.tokens, F)?;
    let n = l.native(F, "/detokenize")?;
    Ok(Json(json!({ "content": n.model.detokenize(&req.tokens, false) })).into_response())
}

#[derive(Deserialize, Debug)]
struct ApplyTemplateRequest {
    model: Option<String>,
    messages: Vec<Value>,
    #[serde(default = "yes")]
    add_generation_prompt: bool,
}

/// `POST /apply-template`: the prompt text the chat template makes of `messages`.
pub async fn apply_template(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ApplyTemplateRequest = common::parse_body(body, F, state.cfg.max_body_bytes)?;
    let l = common::loaded(&state, req.model.as_deref(), None, F).await?;
    let messages = l
        .defaults
        .apply(super::openai::normalize_messages(req.messages)?, None);
    let opts = RenderOptions {
        add_generation_prompt: req.add_generation_prompt,
        ..Default::default()
    };
    let prompt = l
        .template
        .render(&messages, &opts)
        .map_err(|e| ApiError::bad_request(F, e))?;
    Ok(Json(json!({ "prompt": prompt })).into_response())
}
