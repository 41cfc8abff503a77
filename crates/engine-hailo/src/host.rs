//! The host process (`engine hailo-host`): it loads the shim, opens the device and answers
//! the [`crate::protocol`] on stdin/stdout until stdin closes. Running the shim here, not
//! in the server, means a shim that crashes (a C++ abort, a segfault in the driver) or hangs
//! takes down only this process; the server reports the failure and starts a new one.

use std::io::{BufRead, Write};
use std::time::Duration;

use serde_json::{json, Value};

use crate::abi::{self, Shim};
use crate::device::{Device, ShimError};
use crate::protocol::{self, Request, Response, WireError};

/// Runs the host loop; returns the process exit code.
pub fn main() -> i32 {
    let out = match protocol_stdout() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("engine hailo-host: {e}");
            return 2;
        }
    };
    let mut out = std::io::BufWriter::new(out);
    let stdin = std::io::stdin();
    let mut device: Option<Device> = None;
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => answer(&mut device, req),
            Err(e) => Response::Err(WireError {
                code: protocol::CODE_PROTOCOL,
                message: format!("malformed request: {e}"),
            }),
        };
        let text = serde_json::to_string(&resp).unwrap_or_else(|e| {
            format!(
                r#"{{"err":{{"code":{},"message":"cannot encode the answer: {e}"}}}}"#,
                protocol::CODE_PROTOCOL
            )
        });
        if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    drop(device);
    0
}

/// The protocol's channel: the original stdout. Descriptor 1 is then pointed at stderr, so
/// that whatever the driver prints cannot corrupt the protocol.
#[cfg(unix)]
fn protocol_stdout() -> Result<std::fs::File, String> {
    use std::os::fd::FromRawFd;
    // SAFETY: dup/dup2 on the process's own standard descriptors; the duplicate is owned by
    // the returned File.
    unsafe {
        let fd = libc::dup(1);
        if fd < 0 {
            return Err("cannot duplicate stdout".into());
        }
        if libc::dup2(2, 1) < 0 {
            return Err("cannot redirect stdout to stderr".into());
        }
        Ok(std::fs::File::from_raw_fd(fd))
    }
}

#[cfg(not(unix))]
fn protocol_stdout() -> Result<std::fs::File, String> {
    Err("the Hailo host runs on Unix only".into())
}

fn err(e: ShimError) -> Response {
    Response::Err(WireError {
        code: e.code,
        message: e.to_string(),
    })
}

fn unavailable(message: String) -> Response {
    Response::Err(WireError {
        code: protocol::CODE_UNAVAILABLE,
        message,
    })
}

fn answer(device: &mut Option<Device>, req: Request) -> Response {
    if let Request::Open {
        shim,
        config,
        hef,
        load_params,
    } = req
    {
        *device = None;
        let path = match shim {
            Some(p) => std::path::PathBuf::from(p),
            None => match abi::find() {
                Ok(p) => p,
                Err(e) => return unavailable(e),
            },
        };
        let shim = match Shim::load(&path) {
            Ok(s) => s,
            Err(e) => return unavailable(e),
        };
        let mut d = match Device::open(shim, &config) {
            Ok(d) => d,
            Err(e) => return err(e),
        };
        if let Err(e) = d.load_hef(&hef, &load_params) {
            return err(e);
        }
        return match d.max_context() {
            Ok(n) => {
                *device = Some(d);
                Response::Ok(json!({ "max_context": n, "abi": abi::ABI_VERSION }))
            }
            Err(e) => err(e),
        };
    }
    let Some(d) = device.as_mut() else {
        return Response::Err(WireError {
            code: abi::ERR_NOT_LOADED,
            message: "the device is not open".into(),
        });
    };
    let r: Result<Value, ShimError> = match req {
        Request::Open { .. } => unreachable!("handled above"),
        Request::StartRaw { prompt, params } => {
            d.generate_raw(&prompt, &params).map(|_| Value::Null)
        }
        Request::StartMessages { messages, params } => {
            d.generate_messages(&messages, &params).map(|_| Value::Null)
        }
        Request::Read { timeout_ms } => d
            .read(Duration::from_millis(timeout_ms))
            .map(|(text, status)| json!({"text": text, "status": status})),
        Request::Abort => d.abort().map(|_| Value::Null),
        Request::Tokenize { text } => d.tokenize(&text).map(|ids| json!(ids)),
        Request::ContextUsage => d.context_usage().map(|n| json!(n)),
        Request::ClearContext => d.clear_context().map(|_| Value::Null),
        Request::SaveContext => d.save_context().map(|b| json!(protocol::to_hex(&b))),
        Request::LoadContext { hex } => match protocol::from_hex(&hex) {
            Ok(b) => d.load_context(&b).map(|_| Value::Null),
            Err(e) => Err(ShimError {
                code: abi::ERR_INVALID,
                message: format!("context blob: {e}"),
            }),
        },
        Request::Temperature => d.chip_temperature().map(|(a, b)| json!([a, b])),
    };
    match r {
        Ok(v) => Response::Ok(v),
        Err(e) => err(e),
    }
}
