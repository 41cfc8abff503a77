//! The remote drafting protocol, version 1: `POST /v1/draft` on the drafter node.
//!
//! The verifier keeps one drafting *session* per sequence. The drafter node remembers each
//! session's token history, so a request only carries what is new: the length `base` of the
//! prefix both sides already share (with a hash of it, so that a drafter that restarted or
//! evicted the session cannot silently draft from a different text), the tokens to `append`,
//! and how many tokens to draft. The drafter extends its history, decodes `n_draft` tokens
//! greedily (its KV cache keeps the shared prefix, so only the new tokens are evaluated) and
//! returns them. When it cannot vouch for the prefix it answers 409 and the verifier resends
//! the whole history with `base` 0.
//!
//! ```text
//! request  {"v": 1, "session": "a1b2-3", "base": 120, "base_hash": "9f3a...", "append": [1, 2], "n_draft": 8}
//! response {"v": 1, "tokens": [5, 6, 7]}            200: up to n_draft tokens (fewer at the end of the context or text)
//!          {"error": {"type": "resync", ...}}        409: resend with base 0
//! ```
//!
//! Everything is bounded: `n_draft <= MAX_DRAFT`, session ids are short and plain, the
//! history never exceeds the drafter's context, responses are read up to
//! `MAX_RESPONSE_BYTES`, and the server's body limit applies to requests. Authentication is
//! the server's bearer API key, as for every other endpoint.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
/// Most tokens drafted per request.
pub const MAX_DRAFT: usize = 64;
/// Longest session id.
pub const MAX_SESSION_ID: usize = 64;
/// Largest response a client reads.
pub const MAX_RESPONSE_BYTES: usize = 64 << 10;
/// The path of the endpoint.
pub const PATH: &str = "/v1/draft";

/// A drafting request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DraftRequest {
    /// Protocol version ([`VERSION`]).
    pub v: u32,
    /// The verifier's session id (letters, digits, `-` and `_`).
    pub session: String,
    /// Tokens of the history both sides already share.
    pub base: usize,
    /// [`prefix_hash`] of those tokens, as 16 hex digits.
    pub base_hash: String,
    /// Tokens that follow the shared prefix.
    pub append: Vec<u32>,
    /// Tokens to draft.
    pub n_draft: usize,
    /// Which of the drafter server's models drafts (its name or alias); absent: the one
    /// model of a `-m` server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A drafting response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DraftResponse {
    /// Protocol version ([`VERSION`]).
    pub v: u32,
    /// The drafted tokens.
    pub tokens: Vec<u32>,
}

/// FNV-1a (64 bit) of the tokens' little-endian bytes: cheap, stable across builds and
/// platforms, and enough to tell two histories apart (it guards against mistakes, not
/// attacks: both sides are authenticated).
pub fn prefix_hash(tokens: &[u32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for t in tokens {
        for b in t.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// [`prefix_hash`] as the 16 hex digits the protocol carries.
pub fn prefix_hash_hex(tokens: &[u32]) -> String {
    format!("{:016x}", prefix_hash(tokens))
}

/// Checks a session id: 1 to [`MAX_SESSION_ID`] letters, digits, `-` or `_`.
pub fn valid_session_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SESSION_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_ids() {
        assert_eq!(prefix_hash(&[]), 0xcbf2_9ce4_8422_2325);
        assert_ne!(prefix_hash(&[1, 2]), prefix_hash(&[2, 1]));
        assert_eq!(prefix_hash_hex(&[7]).len(), 16);
        assert!(valid_session_id("abc-12_x"));
        assert!(!valid_session_id(""));
        assert!(!valid_session_id("a b"));
        assert!(!valid_session_id(&"x".repeat(65)));
        let r = DraftRequest {
            v: 1,
            session: "s".into(),
            base: 0,
            base_hash: prefix_hash_hex(&[]),
            append: vec![2, 3],
            n_draft: 4,
            model: None,
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<DraftRequest>(&j).unwrap(), r);
        assert!(serde_json::from_str::<DraftRequest>(r#"{"v":1,"extra":0}"#).is_err());
    }
}
