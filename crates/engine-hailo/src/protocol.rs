//! The line protocol between the engine and its Hailo host process: one JSON request per
//! line on the host's stdin, one JSON answer per line on its stdout (`{"ok": ...}` or
//! `{"err": {"code", "message"}}`), in order. Byte blobs travel as hex.

use serde::{Deserialize, Serialize};

use crate::abi::GenParams;

/// A code for failures before the shim is usable (no shim, ABI mismatch).
pub const CODE_UNAVAILABLE: i32 = -1;
/// A code for a malformed request.
pub const CODE_PROTOCOL: i32 = -2;

/// What the engine asks the host.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Load the shim, open the device and load the HEF; answers `{"max_context": n}`.
    Open {
        /// The shim library (`None`: search for it).
        shim: Option<String>,
        /// `ehs_create`'s configuration (JSON).
        config: String,
        /// The HEF file.
        hef: String,
        /// `ehs_load_hef`'s parameters (JSON).
        load_params: String,
    },
    /// `ehs_generate_raw`.
    StartRaw {
        /// The prompt.
        prompt: String,
        /// Sampling.
        params: GenParams,
    },
    /// `ehs_generate_messages`.
    StartMessages {
        /// A JSON array of messages.
        messages: String,
        /// Sampling.
        params: GenParams,
    },
    /// `ehs_read`; answers `{"text", "status"}`.
    Read {
        /// Milliseconds to wait.
        timeout_ms: u64,
    },
    /// `ehs_abort`.
    Abort,
    /// `ehs_tokenize`; answers the ids.
    Tokenize {
        /// The text.
        text: String,
    },
    /// `ehs_context_usage`.
    ContextUsage,
    /// `ehs_clear_context`.
    ClearContext,
    /// `ehs_save_context`; answers the blob in hex.
    SaveContext,
    /// `ehs_load_context`.
    LoadContext {
        /// The blob in hex.
        hex: String,
    },
    /// `ehs_chip_temperature`; answers `[ts0, ts1]`.
    Temperature,
}

/// A failure, as the host reports it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WireError {
    /// An `EHS_ERR_*` code, or [`CODE_UNAVAILABLE`] / [`CODE_PROTOCOL`].
    pub code: i32,
    /// What went wrong.
    pub message: String,
}

/// The host's answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Success, with a result.
    Ok(serde_json::Value),
    /// Failure.
    Err(WireError),
}

/// Bytes as lowercase hex.
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hex back to bytes.
pub fn from_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd-length hex".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad hex at {i}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes_round_trip() {
        let r = Request::Read { timeout_ms: 5 };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"read","timeout_ms":5}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let e = Response::Err(WireError {
            code: 3,
            message: "x".into(),
        });
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(s, r#"{"err":{"code":3,"message":"x"}}"#);
        assert_eq!(
            from_hex(&to_hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
    }
}
