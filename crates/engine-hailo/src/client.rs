//! [`HailoProvider`]: the [`TextProvider`] for a Hailo-10H. It starts the host process
//! (`engine hailo-host`), which loads the shim, and talks to it over the
//! [`crate::protocol`]. A host that stops answering is killed; one that dies is reported as
//! [`ProviderError::Crashed`] and the provider is dead (open a new one).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use engine::provider::{
    Finish, Piece, ProviderError, ProviderInfo, Telemetry, TextInput, TextProvider, TextSampling,
};
use serde_json::{json, Value};

use crate::abi::{self, GenParams};
use crate::protocol::{self, Request, Response, WireError};

/// How to start the host process.
#[derive(Clone, Debug)]
pub struct HostCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables (HailoRT's logging settings, say).
    pub env: Vec<(String, String)>,
}

impl HostCommand {
    /// The running program with the `hailo-host` subcommand (the `engine` binary).
    pub fn current_exe() -> Result<HostCommand, String> {
        Ok(HostCommand {
            program: std::env::current_exe()
                .map_err(|e| format!("cannot find the running program: {e}"))?,
            args: vec!["hailo-host".into()],
            env: Vec::new(),
        })
    }
}

/// What to open.
#[derive(Clone, Debug)]
pub struct HailoOptions {
    /// The HEF file.
    pub hef: PathBuf,
    /// The shim (`None`: `ENGINE_HAILO_SHIM`, next to the program, the library directories).
    pub shim: Option<PathBuf>,
    /// The host process.
    pub host: HostCommand,
    /// `ehs_create`'s configuration (JSON).
    pub config_json: String,
    /// Texts of the model's end-of-generation tokens (the manifest's stop tokens): set on
    /// the device, and never shown.
    pub end_tokens: Vec<String>,
    /// How long opening (loading the HEF) may take.
    pub open_timeout: Duration,
    /// How long any other call may take beyond its own timeout before the host is deemed
    /// hung and killed.
    pub grace: Duration,
}

impl HailoOptions {
    /// Options for `hef` with the defaults: the shim searched for, the host started from the
    /// running program, 5 minutes to load, 15 s of grace.
    pub fn new(hef: PathBuf, host: HostCommand) -> HailoOptions {
        HailoOptions {
            hef,
            shim: None,
            host,
            config_json: "{}".into(),
            end_tokens: Vec::new(),
            open_timeout: Duration::from_secs(300),
            grace: Duration::from_secs(15),
        }
    }
}

/// A Hailo device running one HEF model, through the host process.
pub struct HailoProvider {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    info: ProviderInfo,
    opts: HailoOptions,
    dead: Option<String>,
    /// The device ended on a piece with text: the end is reported by the next read.
    end_pending: Option<Finish>,
}

impl HailoProvider {
    /// Starts the host, loads the shim, opens the device and loads the HEF.
    pub fn open(opts: HailoOptions) -> Result<HailoProvider, ProviderError> {
        if !opts.hef.is_file() {
            return Err(ProviderError::Unavailable(format!(
                "the HEF file {} does not exist",
                opts.hef.display()
            )));
        }
        let mut child = Command::new(&opts.host.program)
            .args(&opts.host.args)
            .envs(opts.host.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                ProviderError::Unavailable(format!(
                    "cannot start the Hailo host process {}: {e}",
                    opts.host.program.display()
                ))
            })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        if let Some(out) = stdout {
            std::thread::Builder::new()
                .name("hailo-host-reader".into())
                .spawn(move || {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| ProviderError::Unavailable(format!("cannot start a thread: {e}")))?;
        }
        let mut p = HailoProvider {
            child,
            stdin,
            lines: rx,
            info: ProviderInfo {
                device: "hailo".into(),
                model: opts.hef.display().to_string(),
                max_context: 0,
            },
            opts,
            dead: None,
            end_pending: None,
        };
        let load_params = json!({
            "lora": "",
            "optimize_memory_on_device": false,
            "stop_tokens": p.opts.end_tokens,
        })
        .to_string();
        let open = Request::Open {
            shim: p.opts.shim.as_ref().map(|s| s.display().to_string()),
            config: p.opts.config_json.clone(),
            hef: p.opts.hef.display().to_string(),
            load_params,
        };
        let v = p.call(&open, p.opts.open_timeout).map_err(|e| match e {
            ProviderError::Crashed(m) | ProviderError::Failed(m) | ProviderError::Timeout(m) => {
                ProviderError::Unavailable(format!("cannot open the Hailo device: {m}"))
            }
            e => e,
        })?;
        p.info.max_context = v
            .get("max_context")
            .and_then(Value::as_u64)
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                ProviderError::Unavailable(format!(
                    "the Hailo shim reported no context size for {}",
                    p.info.model
                ))
            })? as usize;
        Ok(p)
    }

    /// Process id of the host (for diagnostics).
    pub fn host_pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The host is gone: how it ended.
    fn died(&mut self) -> ProviderError {
        self.stdin = None;
        let t0 = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if t0.elapsed() < Duration::from_secs(2) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => break None,
            }
        };
        if status.is_none() {
            self.kill();
        }
        let how = match status {
            Some(s) => describe_exit(&s),
            None => "stopped answering".into(),
        };
        let msg = format!(
            "the Hailo shim process {how}; the device will be opened again for the next request"
        );
        self.dead = Some(msg.clone());
        ProviderError::Crashed(msg)
    }

    fn call(&mut self, req: &Request, timeout: Duration) -> Result<Value, ProviderError> {
        if let Some(d) = &self.dead {
            return Err(ProviderError::Crashed(d.clone()));
        }
        let line = serde_json::to_string(req)
            .map_err(|e| ProviderError::Failed(format!("cannot encode a request: {e}")))?;
        let sent = match self.stdin.as_mut() {
            Some(w) => writeln!(w, "{line}").and_then(|_| w.flush()).is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.died());
        }
        match self.lines.recv_timeout(timeout) {
            Ok(text) => match serde_json::from_str::<Response>(&text) {
                Ok(Response::Ok(v)) => Ok(v),
                Ok(Response::Err(e)) => Err(wire_error(e)),
                Err(e) => {
                    self.kill();
                    let msg =
                        format!("the Hailo shim process answered nonsense ({e}); it was stopped");
                    self.dead = Some(msg.clone());
                    Err(ProviderError::Crashed(msg))
                }
            },
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                let msg = format!(
                    "the Hailo shim did not answer within {:.0}s and was stopped; the device will be opened again for the next request",
                    timeout.as_secs_f64()
                );
                self.dead = Some(msg.clone());
                Err(ProviderError::Crashed(msg))
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.died()),
        }
    }

    fn quick(&mut self, req: Request) -> Result<Value, ProviderError> {
        let t = self.opts.grace.max(Duration::from_secs(30));
        self.call(&req, t)
    }
}

fn describe_exit(s: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = s.signal() {
            return format!("was killed by signal {sig}");
        }
    }
    match s.code() {
        Some(c) => format!("exited with status {c}"),
        None => "exited".into(),
    }
}

fn wire_error(e: WireError) -> ProviderError {
    let m = e.message;
    match e.code {
        abi::ERR_TIMEOUT => ProviderError::Timeout(m),
        abi::ERR_CONTEXT_FULL | abi::ERR_INVALID => ProviderError::Rejected(m),
        abi::ERR_NO_DEVICE | protocol::CODE_UNAVAILABLE => ProviderError::Unavailable(m),
        _ => ProviderError::Failed(format!("Hailo device: {m}")),
    }
}

fn gen_params(s: &TextSampling) -> GenParams {
    GenParams {
        temperature: s.temperature.max(0.0),
        top_p: s.top_p,
        top_k: s.top_k,
        frequency_penalty: s.frequency_penalty,
        max_generated_tokens: s.max_tokens.unwrap_or(0),
        do_sample: i32::from(s.do_sample()),
        seed: s.seed.unwrap_or(abi::RANDOM_SEED),
    }
}

impl TextProvider for HailoProvider {
    fn info(&self) -> &ProviderInfo {
        &self.info
    }

    fn start(&mut self, input: &TextInput, sampling: &TextSampling) -> Result<(), ProviderError> {
        self.end_pending = None;
        let params = gen_params(sampling);
        let req = match input {
            TextInput::Raw(prompt) => Request::StartRaw {
                prompt: prompt.clone(),
                params,
            },
            TextInput::Messages(m) => Request::StartMessages {
                messages: Value::Array(
                    m.iter()
                        .map(|m| json!({"role": m.role, "content": m.content}))
                        .collect(),
                )
                .to_string(),
                params,
            },
        };
        self.quick(req).map(|_| ())
    }

    fn read(&mut self, timeout: Duration) -> Result<Piece, ProviderError> {
        if let Some(f) = self.end_pending.take() {
            return Ok(Piece {
                text: String::new(),
                finish: Some(f),
            });
        }
        let req = Request::Read {
            timeout_ms: timeout.as_millis().min(u32::MAX as u128 - 1) as u64,
        };
        let v = self.call(&req, timeout + self.opts.grace)?;
        let text = v
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let status = v.get("status").and_then(Value::as_i64).unwrap_or(-1) as i32;
        let is_end_token = self.opts.end_tokens.contains(&text);
        let finish = match status {
            abi::STATUS_GENERATING if is_end_token => {
                // the device did not stop on its end token: stop it (its context is then
                // not what the text says, so it is reported as aborted)
                self.abort()?;
                return Ok(Piece {
                    text: String::new(),
                    finish: Some(Finish::Aborted),
                });
            }
            abi::STATUS_GENERATING => None,
            abi::STATUS_MAX_TOKENS => Some(Finish::MaxTokens),
            abi::STATUS_END if is_end_token || text.is_empty() => Some(Finish::EndOfGeneration),
            abi::STATUS_END => {
                self.end_pending = Some(Finish::EndOfGeneration);
                None
            }
            abi::STATUS_ABORTED => Some(Finish::Aborted),
            other => {
                return Err(ProviderError::Failed(format!(
                    "the Hailo shim reported an unknown generation status {other}"
                )))
            }
        };
        Ok(Piece { text, finish })
    }

    fn abort(&mut self) -> Result<(), ProviderError> {
        self.end_pending = None;
        self.quick(Request::Abort).map(|_| ())
    }

    fn tokenize(&mut self, text: &str) -> Result<Vec<u32>, ProviderError> {
        let v = self.quick(Request::Tokenize { text: text.into() })?;
        serde_json::from_value(v)
            .map_err(|e| ProviderError::Failed(format!("bad token ids from the Hailo shim: {e}")))
    }

    fn context_usage(&mut self) -> Result<usize, ProviderError> {
        let v = self.quick(Request::ContextUsage)?;
        v.as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| ProviderError::Failed("bad context usage from the Hailo shim".into()))
    }

    fn clear_context(&mut self) -> Result<(), ProviderError> {
        self.quick(Request::ClearContext).map(|_| ())
    }

    fn save_context(&mut self) -> Result<Vec<u8>, ProviderError> {
        let v = self.quick(Request::SaveContext)?;
        protocol::from_hex(v.as_str().unwrap_or("")).map_err(|e| {
            ProviderError::Failed(format!("bad context blob from the Hailo shim: {e}"))
        })
    }

    fn load_context(&mut self, blob: &[u8]) -> Result<(), ProviderError> {
        self.quick(Request::LoadContext {
            hex: protocol::to_hex(blob),
        })
        .map(|_| ())
    }

    fn telemetry(&mut self) -> Result<Telemetry, ProviderError> {
        let v = self.quick(Request::Temperature)?;
        let t: Vec<f32> = serde_json::from_value(v).map_err(|e| {
            ProviderError::Failed(format!("bad temperature from the Hailo shim: {e}"))
        })?;
        Ok(Telemetry {
            temperature_c: t.into_iter().filter(|x| x.is_finite()).reduce(f32::max),
        })
    }
}

impl Drop for HailoProvider {
    fn drop(&mut self) {
        // closing stdin ends the host; give it a moment to release the device
        self.stdin = None;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }
}
