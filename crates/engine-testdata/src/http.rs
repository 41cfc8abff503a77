//! A small HTTP/1.1 file server for download tests, with the faults downloads must survive:
//! `Range` requests (`bytes=N-`, answered 206 with `Content-Range`, or 416 past the end),
//! `ETag`/`If-Range`, 404 for unknown paths, connections cut after a number of body bytes,
//! throttled bodies (to interrupt a download from outside), a required `Authorization`
//! header, redirects, and a log of every request. It also answers JSON documents (a Hugging Face tree
//! listing). Each connection is served on its own thread and closed after one response.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Something to do to the next responses of one path.
#[derive(Clone, Debug, Default)]
pub struct Fault {
    /// Close the connection after sending this many body bytes (the headers announce all).
    pub cut_after: Option<u64>,
    /// How many responses to cut (then they are whole again).
    pub cuts: usize,
    /// Send the body in chunks of this many bytes with this pause between them.
    pub throttle: Option<(usize, Duration)>,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    /// The path (without the query).
    pub path: String,
    /// The `Range` header.
    pub range: Option<String>,
    /// The `If-Range` header.
    pub if_range: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// Status answered.
    pub status: u16,
    /// Body bytes actually sent.
    pub sent: u64,
}

impl Logged {
    /// The first byte asked for by `Range: bytes=N-`.
    pub fn range_start(&self) -> Option<u64> {
        self.range
            .as_deref()?
            .strip_prefix("bytes=")?
            .split('-')
            .next()?
            .parse()
            .ok()
    }
}

#[derive(Default)]
struct State {
    files: HashMap<String, (Arc<Vec<u8>>, String)>,
    json: HashMap<String, String>,
    redirects: HashMap<String, String>,
    faults: HashMap<String, Fault>,
    log: Vec<Logged>,
    require_auth: Option<String>,
}

/// A running file server, stopped on drop.
pub struct FileServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    /// Starts on a free loopback port.
    pub fn start() -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || {
                        let _ = serve(conn, &state);
                    });
                }
            });
        }
        FileServer { addr, state, stop }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `bytes` at `path`.
    pub fn add(&self, path: &str, bytes: Vec<u8>) {
        let etag = format!("\"{:x}-{}\"", fnv(&bytes), bytes.len());
        self.state()
            .files
            .insert(path.to_string(), (Arc::new(bytes), etag));
    }

    /// Serves a JSON document at `path`.
    pub fn add_json(&self, path: &str, json: &serde_json::Value) {
        self.state().json.insert(path.to_string(), json.to_string());
    }

    /// Answers `path` with `302 Found` to `location`.
    pub fn redirect(&self, path: &str, location: &str) {
        self.state()
            .redirects
            .insert(path.to_string(), location.to_string());
    }

    /// Applies `f` to the next responses of `path`.
    pub fn fault(&self, path: &str, f: Fault) {
        self.state().faults.insert(path.to_string(), f);
    }

    /// Removes the fault on `path`.
    pub fn clear_fault(&self, path: &str) {
        self.state().faults.remove(path);
    }

    /// Answers 401 unless `Authorization` equals `value`.
    pub fn require_authorization(&self, value: &str) {
        self.state().require_auth = Some(value.to_string());
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.state().log.clone()
    }

    /// Requests for `path`.
    pub fn requests(&self, path: &str) -> Vec<Logged> {
        self.log().into_iter().filter(|l| l.path == path).collect()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
    }
}

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let path = target.split('?').next().unwrap_or("/").to_string();
    let mut out = conn;
    let (status, sent) = respond(&method, &path, &headers, state, &mut out)?;
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    st.log.push(Logged {
        path,
        range: headers.get("range").cloned(),
        if_range: headers.get("if-range").cloned(),
        authorization: headers.get("authorization").cloned(),
        status,
        sent,
    });
    Ok(())
}

fn head(out: &mut TcpStream, status: &str, extra: &[(String, String)]) -> std::io::Result<()> {
    let mut h = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    out.write_all(h.as_bytes())
}

fn respond(
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
    state: &Mutex<State>,
    out: &mut TcpStream,
) -> std::io::Result<(u16, u64)> {
    let (file, json, redirect, fault, auth_ok) = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        let auth_ok = st
            .require_auth
            .as_ref()
            .is_none_or(|want| headers.get("authorization") == Some(want));
        let file = st.files.get(path).cloned();
        let json = st.json.get(path).cloned();
        let redirect = st.redirects.get(path).cloned();
        let fault = match st.faults.get_mut(path) {
            Some(f) if file.is_some() => {
                let now = f.clone();
                if f.cuts > 0 {
                    f.cuts -= 1;
                    if f.cuts == 0 {
                        f.cut_after = None;
                    }
                }
                Some(now)
            }
            _ => None,
        };
        (file, json, redirect, fault, auth_ok)
    };
    if method != "GET" && method != "HEAD" {
        head(
            out,
            "405 Method Not Allowed",
            &[("Content-Length".into(), "0".into())],
        )?;
        return Ok((405, 0));
    }
    if !auth_ok {
        head(
            out,
            "401 Unauthorized",
            &[("Content-Length".into(), "0".into())],
        )?;
        return Ok((401, 0));
    }
    if let Some(to) = redirect {
        head(
            out,
            "302 Found",
            &[
                ("Location".into(), to),
                ("Content-Length".into(), "0".into()),
            ],
        )?;
        return Ok((302, 0));
    }
    if let Some(j) = json {
        head(
            out,
            "200 OK",
            &[
                ("Content-Type".into(), "application/json".into()),
                ("Content-Length".into(), j.len().to_string()),
            ],
        )?;
        out.write_all(j.as_bytes())?;
        return Ok((200, j.len() as u64));
    }
    let Some((bytes, etag)) = file else {
        let body = b"<html>404 Not Found</html>";
        head(
            out,
            "404 Not Found",
            &[("Content-Length".into(), body.len().to_string())],
        )?;
        out.write_all(body)?;
        return Ok((404, 0));
    };
    let len = bytes.len() as u64;
    let if_range_ok = headers.get("if-range").is_none_or(|v| *v == etag);
    let start = headers
        .get("range")
        .filter(|_| if_range_ok)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<u64>().ok());
    let (status, from) = match start {
        Some(s) if s >= len => {
            head(
                out,
                "416 Range Not Satisfiable",
                &[
                    ("Content-Range".into(), format!("bytes */{len}")),
                    ("Content-Length".into(), "0".into()),
                ],
            )?;
            return Ok((416, 0));
        }
        Some(s) => {
            head(
                out,
                "206 Partial Content",
                &[
                    ("Content-Length".into(), (len - s).to_string()),
                    (
                        "Content-Range".into(),
                        format!("bytes {s}-{}/{len}", len - 1),
                    ),
                    ("ETag".into(), etag.clone()),
                    ("Accept-Ranges".into(), "bytes".into()),
                ],
            )?;
            (206, s)
        }
        None => {
            head(
                out,
                "200 OK",
                &[
                    ("Content-Length".into(), len.to_string()),
                    ("ETag".into(), etag.clone()),
                    ("Accept-Ranges".into(), "bytes".into()),
                ],
            )?;
            (200, 0)
        }
    };
    if method == "HEAD" {
        return Ok((status, 0));
    }
    let body = &bytes[from as usize..];
    let limit = fault
        .as_ref()
        .and_then(|f| f.cut_after)
        .map(|c| c.min(body.len() as u64) as usize)
        .unwrap_or(body.len());
    let (chunk, pause) = fault
        .as_ref()
        .and_then(|f| f.throttle)
        .unwrap_or((64 << 10, Duration::ZERO));
    let mut sent = 0usize;
    while sent < limit {
        let n = chunk.min(limit - sent);
        if out.write_all(&body[sent..sent + n]).is_err() {
            break;
        }
        sent += n;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    let _ = out.flush();
    let _ = out.shutdown(std::net::Shutdown::Both);
    Ok((status, sent as u64))
}
