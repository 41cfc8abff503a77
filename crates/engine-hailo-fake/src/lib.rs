//! # engine-hailo-fake
//!
//! A fake of the engine's Hailo shim: the C ABI of `shim/hailo/engine_hailo_shim.h`
//! implemented in Rust, with no device. It is built as `libengine_hailo_fake.so` and loaded
//! in place of the real shim by the tests.
//!
//! What it does:
//! * a deterministic tokenizer ([`tokens`]: words with their leading space, single
//!   punctuation marks, `<|...|>` special tokens);
//! * a context that counts tokens: a raw prompt is appended, every generated piece adds one,
//!   an abort adds a two-token recovery sequence, and a prompt that does not fit fails with
//!   `EHS_ERR_CONTEXT_FULL`;
//! * a deterministic reply ([`reply`]): `Fake NPU: wrote W onto C; temperature T, top_k K.`
//!   followed by counting words (` one two three ...`) up to 32 pieces (400 with
//!   `[fake:long]` in the prompt), then the end token (the first stop token given at load,
//!   `<|im_end|>` by default) with the end-of-generation status; `max_generated_tokens`
//!   ends it early with the max-tokens status;
//! * one generation at a time (`EHS_ERR_BUSY` otherwise), as the device.
//!
//! Knobs, read from the environment when the device is opened:
//! * `ENGINE_HAILO_FAKE_ABI`: the ABI version to report (to test the version check);
//! * `ENGINE_HAILO_FAKE_NO_DEVICE=1`: opening fails with `EHS_ERR_NO_DEVICE`;
//! * `ENGINE_HAILO_FAKE_DELAY_MS`: delay before every piece;
//! * `ENGINE_HAILO_FAKE_TEMP`: the chip temperature (default 47.5), or `fail`;
//! * `ENGINE_HAILO_FAKE_MAX_CONTEXT`: the context size (default 2048);
//! * `ENGINE_HAILO_FAKE_LOG`: a file that gets one line per call that changes the device
//!   (`generate raw wrote=W ctx=C`, `clear`, `abort`, ...), so tests can see what was asked.
//!
//! Markers in a prompt trigger failures: `[fake:error]` (generation fails with a device
//! error), `[fake:crash]` (the process aborts when the generation starts),
//! `[fake:crash-read]` (it aborts on the third read), `[fake:stall]` (no piece ever comes;
//! reads time out), `[fake:hang]` (a read never returns, ignoring its timeout) and
//! `[fake:slow]` (150 ms per piece).

use std::ffi::{c_char, CStr, CString};
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

const ABI_VERSION: u32 = 1;
const OK: i32 = 0;
const ERR_INVALID: i32 = 1;
const ERR_NO_DEVICE: i32 = 2;
const ERR_TIMEOUT: i32 = 3;
const ERR_BUSY: i32 = 4;
const ERR_BUFFER_TOO_SMALL: i32 = 5;
const ERR_NOT_LOADED: i32 = 6;
const ERR_DEVICE: i32 = 7;
const ERR_NO_GENERATION: i32 = 8;
const ERR_CONTEXT_FULL: i32 = 9;
const STATUS_GENERATING: i32 = 0;
const STATUS_MAX_TOKENS: i32 = 1;
const STATUS_END: i32 = 2;

/// `ehs_gen_params`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GenParams {
    temperature: f32,
    top_p: f32,
    top_k: u32,
    frequency_penalty: f32,
    max_generated_tokens: u32,
    do_sample: i32,
    seed: u32,
}

/// The fake tokenizer: words with their leading space, single other characters, and
/// `<|...|>` special tokens.
pub fn tokens(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        if rest.starts_with("<|") {
            if let Some(e) = rest.find("|>") {
                out.push(&rest[..e + 2]);
                i += e + 2;
                continue;
            }
        }
        let mut it = rest.char_indices().peekable();
        let (_, c0) = it.next().unwrap_or((0, ' '));
        let mut end = c0.len_utf8();
        let word = if c0 == ' ' {
            match it.peek() {
                Some(&(_, c)) if c.is_alphanumeric() => {
                    it.next();
                    end += c.len_utf8();
                    true
                }
                _ => false,
            }
        } else {
            c0.is_alphanumeric()
        };
        if word {
            for (j, c) in it {
                if !c.is_alphanumeric() {
                    break;
                }
                end = j + c.len_utf8();
            }
        }
        out.push(&rest[..end]);
        i += end;
    }
    out
}

fn token_id(t: &str) -> i32 {
    let mut h: u32 = 2166136261;
    for b in t.bytes() {
        h = (h ^ b as u32).wrapping_mul(16777619);
    }
    (h % 50_000) as i32
}

/// The reply to a generation: its pieces.
pub fn reply(wrote: usize, ctx: usize, p: &GenParams, long: bool) -> Vec<String> {
    let head = format!(
        "Fake NPU: wrote {wrote} onto {ctx}; temperature {:.2}, top_k {}.",
        p.temperature, p.top_k
    );
    let mut out: Vec<String> = tokens(&head).into_iter().map(str::to_string).collect();
    const WORDS: [&str; 10] = [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    ];
    let n = if long { 400 } else { 32 };
    let mut k = 0;
    while out.len() < n {
        out.push(format!(" {}", WORDS[k % WORDS.len()]));
        k += 1;
    }
    out
}

struct Generation {
    pieces: Vec<String>,
    next: usize,
    limit: usize,
    stall: bool,
    hang: bool,
    crash_read: bool,
    delay: Duration,
    pending: Option<(String, i32)>,
}

/// One fake device handle.
pub struct Llm {
    last_error: CString,
    loaded: bool,
    end_token: String,
    context: usize,
    max_context: usize,
    delay: Duration,
    temperature: Option<f32>,
    log: Option<std::path::PathBuf>,
    generation: Option<Generation>,
    saved: Vec<u8>,
}

static CREATE_ERROR: Mutex<Option<CString>> = Mutex::new(None);

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Llm {
    fn fail(&mut self, code: i32, msg: impl Into<String>) -> i32 {
        self.last_error = CString::new(msg.into().replace('\0', " ")).unwrap_or_default();
        code
    }

    fn log(&self, line: &str) {
        if let Some(p) = &self.log {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
            {
                let _ = writeln!(f, "{line}");
            }
        }
    }

    fn start(&mut self, kind: &str, text: &str, p: &GenParams) -> i32 {
        if !self.loaded {
            return self.fail(ERR_NOT_LOADED, "no HEF loaded");
        }
        if self.generation.is_some() {
            return self.fail(ERR_BUSY, "a generator is already active");
        }
        if text.contains("[fake:crash]") {
            self.log("crash");
            std::process::abort();
        }
        if text.contains("[fake:error]") {
            self.log("error");
            return self.fail(ERR_DEVICE, "HAILO_INTERNAL_FAILURE: fake device failure");
        }
        let wrote = tokens(text).len();
        if self.context + wrote >= self.max_context {
            return self.fail(
                ERR_CONTEXT_FULL,
                format!(
                    "the prompt ({wrote} tokens) does not fit the context ({} of {} used)",
                    self.context, self.max_context
                ),
            );
        }
        self.log(&format!(
            "generate {kind} wrote={wrote} ctx={}",
            self.context
        ));
        let before = self.context;
        self.context += wrote;
        let mut pieces = reply(wrote, before, p, text.contains("[fake:long]"));
        pieces.push(self.end_token.clone());
        let limit = match p.max_generated_tokens {
            0 => usize::MAX,
            n => n as usize,
        };
        self.generation = Some(Generation {
            pieces,
            next: 0,
            limit,
            stall: text.contains("[fake:stall]"),
            hang: text.contains("[fake:hang]"),
            crash_read: text.contains("[fake:crash-read]"),
            delay: if text.contains("[fake:slow]") {
                Duration::from_millis(150)
            } else {
                self.delay
            },
            pending: None,
        });
        OK
    }
}

unsafe fn str_arg<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        None
    } else {
        CStr::from_ptr(p).to_str().ok()
    }
}

fn handle<'a>(llm: *mut Llm) -> Option<&'a mut Llm> {
    // SAFETY: the engine passes back pointers made by ehs_create, used by one thread.
    unsafe { llm.as_mut() }
}

/// `ehs_abi_version`.
#[no_mangle]
pub extern "C" fn ehs_abi_version() -> u32 {
    env("ENGINE_HAILO_FAKE_ABI")
        .and_then(|v| v.parse().ok())
        .unwrap_or(ABI_VERSION)
}

/// `ehs_create`.
///
/// # Safety
/// `config` is NULL or a C string; `out` is a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn ehs_create(config: *const c_char, out: *mut *mut Llm) -> i32 {
    let set = |m: &str| {
        *CREATE_ERROR.lock().unwrap_or_else(|e| e.into_inner()) = CString::new(m).ok();
    };
    if out.is_null() {
        set("out is NULL");
        return ERR_INVALID;
    }
    if let Some(c) = str_arg(config) {
        if serde_json::from_str::<serde_json::Value>(c).is_err() {
            set("the configuration is not JSON");
            return ERR_INVALID;
        }
    }
    if env("ENGINE_HAILO_FAKE_NO_DEVICE").as_deref() == Some("1") {
        set("HAILO_OUT_OF_PHYSICAL_DEVICES: fake: no Hailo device found");
        return ERR_NO_DEVICE;
    }
    let temperature = match env("ENGINE_HAILO_FAKE_TEMP").as_deref() {
        Some("fail") => None,
        Some(t) => t.parse().ok(),
        None => Some(47.5),
    };
    let llm = Box::new(Llm {
        last_error: CString::default(),
        loaded: false,
        end_token: "<|im_end|>".into(),
        context: 0,
        max_context: env("ENGINE_HAILO_FAKE_MAX_CONTEXT")
            .and_then(|v| v.parse().ok())
            .unwrap_or(2048),
        delay: Duration::from_millis(
            env("ENGINE_HAILO_FAKE_DELAY_MS")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        ),
        temperature,
        log: env("ENGINE_HAILO_FAKE_LOG").map(Into::into),
        generation: None,
        saved: Vec::new(),
    });
    llm.log("create");
    *out = Box::into_raw(llm);
    OK
}

/// `ehs_release`.
///
/// # Safety
/// `llm` came from `ehs_create` and is released once.
#[no_mangle]
pub unsafe extern "C" fn ehs_release(llm: *mut Llm) {
    if !llm.is_null() {
        let b = Box::from_raw(llm);
        b.log("release");
    }
}

/// `ehs_last_error`.
///
/// # Safety
/// `llm` is NULL or came from `ehs_create`.
#[no_mangle]
pub unsafe extern "C" fn ehs_last_error(llm: *const Llm) -> *const c_char {
    static EMPTY: &CStr = c"";
    match llm.as_ref() {
        Some(l) => l.last_error.as_ptr(),
        None => {
            let g = CREATE_ERROR.lock().unwrap_or_else(|e| e.into_inner());
            match g.as_ref() {
                // the string lives in the static until the next failed create
                Some(s) => s.as_ptr(),
                None => EMPTY.as_ptr(),
            }
        }
    }
}

/// `ehs_load_hef`.
///
/// # Safety
/// Pointers are valid C strings or NULL (`params`).
#[no_mangle]
pub unsafe extern "C" fn ehs_load_hef(
    llm: *mut Llm,
    hef: *const c_char,
    params: *const c_char,
) -> i32 {
    let Some(l) = handle(llm) else {
        return ERR_INVALID;
    };
    let Some(path) = str_arg(hef) else {
        return l.fail(ERR_INVALID, "the HEF path is NULL or not UTF-8");
    };
    if !std::path::Path::new(path).is_file() {
        return l.fail(
            ERR_DEVICE,
            format!("HAILO_OPEN_FILE_FAILURE: cannot open {path}"),
        );
    }
    if let Some(p) = str_arg(params) {
        match serde_json::from_str::<serde_json::Value>(p) {
            Ok(v) => {
                if let Some(t) = v["stop_tokens"]
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(|t| t.as_str())
                {
                    l.end_token = t.to_string();
                }
            }
            Err(_) => return l.fail(ERR_INVALID, "the load parameters are not JSON"),
        }
    }
    l.loaded = true;
    l.log(&format!("load {path}"));
    OK
}

/// `ehs_generate_raw`.
///
/// # Safety
/// Pointers are valid.
#[no_mangle]
pub unsafe extern "C" fn ehs_generate_raw(
    llm: *mut Llm,
    prompt: *const c_char,
    p: *const GenParams,
) -> i32 {
    let Some(l) = handle(llm) else {
        return ERR_INVALID;
    };
    let (Some(text), Some(p)) = (str_arg(prompt), p.as_ref()) else {
        return l.fail(ERR_INVALID, "prompt or params missing");
    };
    l.start("raw", text, p)
}

/// `ehs_generate_messages`.
///
/// # Safety
/// Pointers are valid.
#[no_mangle]
pub unsafe extern "C" fn ehs_generate_messages(
    llm: *mut Llm,
    json: *const c_char,
    p: *const GenParams,
) -> i32 {
    let Some(l) = handle(llm) else {
        return ERR_INVALID;
    };
    let (Some(text), Some(p)) = (str_arg(json), p.as_ref()) else {
        return l.fail(ERR_INVALID, "messages or params missing");
    };
    let Ok(serde_json::Value::Array(msgs)) = serde_json::from_str::<serde_json::Value>(text) else {
        return l.fail(ERR_INVALID, "messages must be a JSON array");
    };
    let mut rendered = String::new();
    for m in &msgs {
        let role = m["role"].as_str().unwrap_or("None");
        let content = m["content"].as_str().unwrap_or("None");
        rendered.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
    }
    rendered.push_str("<|im_start|>assistant\n");
    l.start("messages", &rendered, p)
}

/// `ehs_read`.
///
/// # Safety
/// `buf` has `cap` writable bytes; out pointers are valid.
#[no_mangle]
pub unsafe extern "C" fn ehs_read(
    llm: *mut Llm,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
    timeout_ms: u32,
    status: *mut i32,
) -> i32 {
    let Some(l) = handle(llm) else {
        return ERR_INVALID;
    };
    if len.is_null() || status.is_null() {
        return l.fail(ERR_INVALID, "out pointers are NULL");
    }
    let Some(g) = l.generation.as_mut() else {
        return l.fail(ERR_NO_GENERATION, "no generation is running");
    };
    let (piece, st) = match g.pending.take() {
        Some(x) => x,
        None => {
            let timeout = Duration::from_millis(timeout_ms as u64);
            if g.hang {
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            if g.stall || g.delay > timeout {
                std::thread::sleep(timeout);
                return l.fail(ERR_TIMEOUT, "HAILO_TIMEOUT: no token within the timeout");
            }
            std::thread::sleep(g.delay);
            if g.crash_read && g.next == 2 {
                l.log("crash");
                std::process::abort();
            }
            let piece = g.pieces[g.next].clone();
            g.next += 1;
            let st = if g.next == g.pieces.len() {
                STATUS_END
            } else if g.next >= g.limit {
                STATUS_MAX_TOKENS
            } else {
                STATUS_GENERATING
            };
            l.context += 1;
            (piece, st)
        }
    };
    *len = piece.len();
    if piece.len() > cap || buf.is_null() {
        if let Some(g) = l.generation.as_mut() {
            g.pending = Some((piece, st));
        }
        return l.fail(ERR_BUFFER_TOO_SMALL, "the buffer is too small");
    }
    std::ptr::copy_nonoverlapping(piece.as_ptr(), buf.cast(), piece.len());
    *status = st;
    if st != STATUS_GENERATING {
        l.generation = None;
        l.log(&format!("end status={st} ctx={}", l.context));
    }
    OK
}

/// `ehs_abort`.
///
/// # Safety
/// `llm` came from `ehs_create`.
#[no_mangle]
pub unsafe extern "C" fn ehs_abort(llm: *mut Llm) -> i32 {
    let Some(l) = handle(llm) else {
        return ERR_INVALID;
    };
    if let Some(g) = l.generation.take() {
        // the recovery sequence
        l.context += 2;
        l.log(&format!("abort after={} ctx={}", g.next, l.context));
    }
    OK
}

/// `ehs_tokenize`.
///
/// # Safety
/// `ids` has `cap` writable elements or is NULL; `len` is valid.
#[no_mangle]
pub unsafe extern "C" fn ehs_tokenize(
    llm: *mut Llm,
    text: *const c_char,
    ids: *mut i32,
    cap: usize,
    len: *mut usize,
) -> i32 {
    let Some(l) = handle(llm) else {
        return ERR_INVALID;
    };
    if l.generation.is_some() {
        return l.fail(ERR_BUSY, "a generation is running");
    }
    let (Some(t), false) = (str_arg(text), len.is_null()) else {
        return l.fail(ERR_INVALID, "text or len missing");
    };
    let toks = tokens(t);
    *len = toks.len();
    if ids.is_null() || toks.len() > cap {
        return l.fail(ERR_BUFFER_TOO_SMALL, "the id buffer is too small");
    }
    for (i, tk) in toks.iter().enumerate() {
        *ids.add(i) = token_id(tk);
    }
    OK
}

/// `ehs_max_context`.
///
/// # Safety
/// `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn ehs_max_context(llm: *mut Llm, out: *mut usize) -> i32 {
    let Some(l) = handle(llm) else {
        return ERR_INVALID;
    };
    if !l.loaded {
        return l.fail(ERR_NOT_LOADED, "no HEF loaded");
    }
    *out = l.max_context;
    OK
}

/// `ehs_context_usage`.
///
/// # Safety
/// `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn ehs_context_usage(llm: *mut Llm, out: *mut usize) -> i32 {
    let Some(l) = handle(llm) else {
        return ERR_INVALID;
    };
    *out = l.context;
    OK
}

/// `ehs_clear_context`.
///
/// # Safety
/// `llm` came from `ehs_create`.
#[no_mangle]
pub unsafe extern "C" fn ehs_clear_context(llm: *mut Llm) -> i32 {
    let Some(l) = handle(llm) else {
        return ERR_INVALID;
    };
    if l.generation.is_some() {
        return l.fail(ERR_BUSY, "a generation is running");
    }
    l.context = 0;
    l.log("clear");
    OK
}

/// `ehs_save_context`.
///
/// # Safety
/// `buf` has `cap` writable bytes or is NULL; `len` is valid.
#[no_mangle]
pub unsafe extern "C" fn ehs_save_context(
    llm: *mut Llm,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
) -> i32 {
    let Some(l) = handle(llm) else {
        return ERR_INVALID;
    };
    if buf.is_null() {
        l.saved = format!("fakectx:{}", l.context).into_bytes();
    }
    *len = l.saved.len();
    if buf.is_null() || cap < l.saved.len() {
        return l.fail(ERR_BUFFER_TOO_SMALL, "the buffer is too small");
    }
    std::ptr::copy_nonoverlapping(l.saved.as_ptr(), buf, l.saved.len());
    OK
}

/// `ehs_load_context`.
///
/// # Safety
/// `buf` is readable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ehs_load_context(llm: *mut Llm, buf: *const u8, len: usize) -> i32 {
    let Some(l) = handle(llm) else {
        return ERR_INVALID;
    };
    let blob = std::slice::from_raw_parts(buf, len);
    match std::str::from_utf8(blob)
        .ok()
        .and_then(|s| s.strip_prefix("fakectx:"))
        .and_then(|n| n.parse().ok())
    {
        Some(n) => {
            l.context = n;
            l.log(&format!("load_context ctx={n}"));
            OK
        }
        None => l.fail(ERR_INVALID, "not a context of this model"),
    }
}

/// `ehs_chip_temperature`.
///
/// # Safety
/// Out pointers are valid.
#[no_mangle]
pub unsafe extern "C" fn ehs_chip_temperature(llm: *mut Llm, ts0: *mut f32, ts1: *mut f32) -> i32 {
    let Some(l) = handle(llm) else {
        return ERR_INVALID;
    };
    match l.temperature {
        Some(t) => {
            *ts0 = t;
            *ts1 = t - 1.0;
            OK
        }
        None => l.fail(
            ERR_DEVICE,
            "HAILO_FW_CONTROL_FAILURE: cannot read the temperature sensors",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_splits_words_marks_and_specials() {
        assert_eq!(
            tokens("<|im_start|>user\nHi there, you!"),
            vec![
                "<|im_start|>",
                "user",
                "\n",
                "Hi",
                " there",
                ",",
                " you",
                "!"
            ]
        );
        assert_eq!(tokens("  a"), vec![" ", " a"]);
        assert!(tokens("").is_empty());
        let p = GenParams {
            temperature: 0.5,
            top_p: 1.0,
            top_k: 3,
            frequency_penalty: 0.0,
            max_generated_tokens: 0,
            do_sample: 1,
            seed: 1,
        };
        let r = reply(4, 0, &p, false);
        assert_eq!(r.len(), 32);
        assert_eq!(
            r.concat().split('.').next().unwrap(),
            "Fake NPU: wrote 4 onto 0; temperature 0"
        );
    }
}
