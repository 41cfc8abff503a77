//! The drafter node's side: `POST /v1/draft`. Any `engine serve` answers it, so a small
//! model served on another machine becomes a drafter for a verifier started with
//! `--draft-remote`.
//!
//! Sessions ([`DraftSessions`]) map a verifier's session id to the token history it holds,
//! so requests carry only new tokens (see [`protocol`](super::protocol)). The drafting
//! itself is an ordinary greedy generation of `n_draft` tokens through the scheduler: it is
//! batched with whatever else the node runs, admitted through the same bounded queue, and
//! its slot's KV cache keeps the shared prefix (prompt caching), so each request evaluates
//! only the tokens appended since the last one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::protocol::{self, DraftRequest, DraftResponse};
use crate::api::common::{self, ApiError, Flavor};
use crate::app::AppState;
use crate::scheduler::GenParams;

const F: Flavor = Flavor::OpenAi;

/// Sessions kept at most; the least recently used is forgotten beyond this (its verifier
/// then gets a 409 and resends its history).
pub const MAX_SESSIONS: usize = 256;

struct Entry {
    tokens: Vec<u32>,
    used: u64,
}

/// The token history of each drafting session.
#[derive(Default)]
pub struct DraftSessions {
    inner: Mutex<(HashMap<String, Entry>, u64)>,
}

impl DraftSessions {
    /// The full history `req` describes, stored as the session's new history; a 409 when the
    /// shared prefix it claims is not what the session holds.
    fn resolve(&self, req: &DraftRequest, n_ctx: usize) -> Result<Vec<u32>, ApiError> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, clock) = &mut *g;
        *clock += 1;
        let mut tokens =
            if req.base == 0 {
                Vec::with_capacity(req.append.len())
            } else {
                let held = map.get(&req.session).map(|e| &e.tokens);
                match held {
                    Some(t)
                        if t.len() >= req.base
                            && protocol::prefix_hash_hex(&t[..req.base]) == req.base_hash =>
                    {
                        t[..req.base].to_vec()
                    }
                    _ => return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        F,
                        "unknown draft session or a different history: resend it whole (base 0)",
                    )),
                }
            };
        tokens.extend_from_slice(&req.append);
        if tokens.is_empty() {
            return Err(ApiError::bad_request(F, "the history is empty"));
        }
        if tokens.len() >= n_ctx {
            return Err(ApiError::bad_request(
                F,
                format!(
                    "the history is {} tokens, but the drafter's context holds {n_ctx}",
                    tokens.len()
                ),
            ));
        }
        map.insert(
            req.session.clone(),
            Entry {
                tokens: tokens.clone(),
                used: *clock,
            },
        );
        if map.len() > MAX_SESSIONS {
            if let Some(old) = map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            {
                map.remove(&old);
            }
        }
        Ok(tokens)
    }
}

/// `POST /v1/draft`.
pub async fn draft(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(&state, body).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn handle(
    state: &Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<DraftResponse, ApiError> {
    let arrived = Instant::now();
    let req: DraftRequest = common::parse_body(body, F, state.cfg.max_body_bytes)?;
    if req.v != protocol::VERSION {
        return Err(ApiError::bad_request(
            F,
            format!(
                "unsupported draft protocol version {}; this server speaks {}",
                req.v,
                protocol::VERSION
            ),
        ));
    }
    if !protocol::valid_session_id(&req.session) {
        return Err(ApiError::bad_request(
            F,
            format!(
                "a session id is 1 to {} letters, digits, '-' or '_'",
                protocol::MAX_SESSION_ID
            ),
        ));
    }
    if req.n_draft == 0 || req.n_draft > protocol::MAX_DRAFT {
        return Err(ApiError::bad_request(
            F,
            format!("n_draft must be between 1 and {}", protocol::MAX_DRAFT),
        ));
    }
    let loaded = common::loaded(state, req.model.as_deref(), None, F).await?;
    common::check_ids(&loaded, &req.append, F)?;
    let tokens = state.drafts.resolve(&req, loaded.n_ctx)?;
    let room = loaded.n_ctx - 1 - tokens.len();
    let n_draft = req.n_draft.min(room);
    if n_draft == 0 {
        return Ok(DraftResponse {
            v: protocol::VERSION,
            tokens: vec![],
        });
    }
    let permit = common::admit(state, F)?;
    let params = GenParams {
        max_tokens: Some(n_draft),
        sampling: engine::SamplingParams::greedy(),
        cache_prompt: true,
        ..Default::default()
    };
    let rx = common::submit(
        &loaded,
        common::Prompt::Ids(tokens),
        params,
        arrived,
        permit,
        F,
    )?;
    let c = common::collect(rx, F).await?;
    // a final event may repeat the last id to flush held-back text: keep one per token
    let mut ids: Vec<u32> = c.tokens.iter().map(|t| t.id).collect();
    ids.truncate(c.done.timings.predicted_n);
    Ok(DraftResponse {
        v: protocol::VERSION,
        tokens: ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(session: &str, base: usize, held: &[u32], append: &[u32]) -> DraftRequest {
        DraftRequest {
            v: 1,
            session: session.into(),
            base,
            base_hash: protocol::prefix_hash_hex(&held[..base]),
            append: append.to_vec(),
            n_draft: 4,
            model: None,
        }
    }

    #[test]
    fn sessions_extend_and_resync() {
        let s = DraftSessions::default();
        assert_eq!(
            s.resolve(&req("a", 0, &[], &[1, 2, 3]), 64).unwrap(),
            [1, 2, 3]
        );
        // shares 2 tokens, appends 9
        assert_eq!(
            s.resolve(&req("a", 2, &[1, 2, 3], &[9]), 64).unwrap(),
            [1, 2, 9]
        );
        // a claim about a history it does not hold: 409
        let e = s.resolve(&req("a", 3, &[1, 2, 3], &[4]), 64).unwrap_err();
        assert_eq!(e.status, StatusCode::CONFLICT);
        let e = s.resolve(&req("b", 1, &[1], &[4]), 64).unwrap_err();
        assert_eq!(e.status, StatusCode::CONFLICT);
        // bounded by the context
        let e = s.resolve(&req("c", 0, &[], &[1; 64]), 64).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        for i in 0..MAX_SESSIONS + 10 {
            s.resolve(&req(&format!("s{i}"), 0, &[], &[1]), 64).unwrap();
        }
        assert!(s.inner.lock().unwrap().0.len() <= MAX_SESSIONS);
    }
}
