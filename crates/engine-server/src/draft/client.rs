//! The verifier's side of remote drafting: [`RemoteDrafter`], an [`engine::Drafter`] that
//! asks a drafter engine on another node (`engine serve` with a small model) for the next
//! tokens of each sequence over the [`protocol`](super::protocol).
//!
//! It speaks plain HTTP/1.1 over `std::net` with keep-alive connections, one per sequence
//! (the scheduler asks for several sequences at once, in parallel threads), `TCP_NODELAY`,
//! and a deadline on every exchange: connect, write and read together take at most the
//! configured timeout. Any failure (refused, reset, timeout, bad status, malformed answer)
//! makes that step decode plainly; the drafter is then left alone for a back-off that
//! doubles from 0.5 s to 30 s while it keeps failing, so a dead drafter costs one failed
//! attempt per back-off period, never a hang.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use engine::{Draft, DraftRequest, Drafter, DrafterKind};

use super::protocol::{self, DraftResponse};

/// First back-off after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Largest response head read.
const MAX_HEAD_BYTES: usize = 16 << 10;

/// Where and how to reach the drafter.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// `http://host:port[/prefix]` of the drafter's `engine serve`.
    pub url: String,
    /// Its API key, if it requires one.
    pub api_key: Option<String>,
    /// Deadline of one exchange (connect, send, draft, answer).
    pub timeout: Duration,
    /// Drafting cost per token relative to a target step, for choosing the draft length
    /// (the drafter runs elsewhere: this mostly stands for its latency).
    pub relative_cost: f64,
}

impl RemoteConfig {
    /// The defaults for `url`: no key, a 1 s deadline, cost 0.1.
    pub fn new(url: impl Into<String>) -> RemoteConfig {
        RemoteConfig {
            url: url.into(),
            api_key: None,
            timeout: Duration::from_millis(1000),
            relative_cost: 0.1,
        }
    }
}

/// A parsed `http://` URL.
#[derive(Clone, Debug)]
struct Endpoint {
    /// `host:port`, resolved on each new connection.
    authority: String,
    /// The `Host` header.
    host: String,
    /// The path of the draft endpoint (the URL's path prefix + `/v1/draft`).
    path: String,
}

fn parse_url(url: &str) -> Result<Endpoint, String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") {
        return Err(format!(
            "--draft-remote {url}: https is not supported; use http:// on a trusted network \
             (or a TLS tunnel) and protect the drafter with --api-key"
        ));
    } else {
        return Err(format!(
            "--draft-remote {url}: expected http://HOST:PORT of the drafter's engine serve"
        ));
    };
    let (auth, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if auth.is_empty() {
        return Err(format!("--draft-remote {url}: no host"));
    }
    let has_port = auth
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !auth.ends_with(']');
    let authority = if has_port {
        auth.to_string()
    } else {
        format!("{auth}:80")
    };
    Ok(Endpoint {
        authority,
        host: auth.to_string(),
        path: format!("{prefix}{}", protocol::PATH),
    })
}

/// One sequence's drafting session.
#[derive(Default)]
struct Session {
    /// The id the drafter knows it by.
    id: String,
    /// The history the drafter holds for it (what was last sent).
    shared: Vec<u32>,
    /// The keep-alive connection.
    conn: Option<TcpStream>,
}

/// Drafts on another node (see the module documentation).
pub struct RemoteDrafter {
    ep: Endpoint,
    cfg: RemoteConfig,
    sessions: Vec<Session>,
    prefix: String,
    down_until: Option<Instant>,
    backoff: Duration,
    last_error: Option<String>,
}

impl RemoteDrafter {
    /// A drafter talking to `cfg.url`. Nothing is contacted yet: a drafter that is down at
    /// startup only means plain decoding until it comes up.
    pub fn new(cfg: RemoteConfig) -> Result<RemoteDrafter, String> {
        let ep = parse_url(&cfg.url)?;
        if cfg.timeout.is_zero() {
            return Err("--draft-remote-timeout must be positive".into());
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(RemoteDrafter {
            ep,
            prefix: format!("{:x}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff),
            cfg,
            sessions: Vec::new(),
            down_until: None,
            backoff: BACKOFF_MIN,
            last_error: None,
        })
    }

    /// The last failure, if the last exchange failed.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    fn session(&mut self, seq: usize) {
        while self.sessions.len() <= seq {
            let id = format!("{}-{}", self.prefix, self.sessions.len());
            self.sessions.push(Session {
                id,
                ..Default::default()
            });
        }
    }

    fn record(&mut self, ok: bool, err: Option<String>) {
        if ok {
            self.down_until = None;
            self.backoff = BACKOFF_MIN;
            self.last_error = None;
        } else {
            if self.down_until.is_none() {
                tracing::warn!(
                    drafter = %self.cfg.url,
                    error = err.as_deref().unwrap_or(""),
                    backoff_ms = self.backoff.as_millis() as u64,
                    "remote drafter unavailable; decoding without it"
                );
            }
            self.down_until = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            self.last_error = err;
        }
    }
}

/// Drafts one request over `s`'s connection (the work of one thread).
fn request_one(
    ep: &Endpoint,
    cfg: &RemoteConfig,
    s: &mut Session,
    req: &DraftRequest<'_>,
) -> Result<Vec<u32>, String> {
    let deadline = Instant::now() + cfg.timeout;
    let n_draft = req.max.min(protocol::MAX_DRAFT);
    let history = req.history;
    let lcp = s
        .shared
        .iter()
        .zip(history)
        .take_while(|(a, b)| a == b)
        .count();
    for base in [lcp, 0] {
        let body = serde_json::to_vec(&protocol::DraftRequest {
            v: protocol::VERSION,
            session: s.id.clone(),
            base,
            base_hash: protocol::prefix_hash_hex(&history[..base]),
            append: history[base..].to_vec(),
            n_draft,
            model: None,
        })
        .map_err(|e| e.to_string())?;
        let (status, resp) = exchange(ep, cfg, &mut s.conn, &body, deadline).map_err(|e| {
            s.shared.clear();
            match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
                    "{}: no answer within {} ms (--draft-remote-timeout)",
                    cfg.url,
                    cfg.timeout.as_millis()
                ),
                _ => format!("{}: {e}", cfg.url),
            }
        })?;
        match status {
            200 => {
                let r: DraftResponse = serde_json::from_slice(&resp)
                    .map_err(|e| format!("malformed draft response: {e}"))?;
                if r.v != protocol::VERSION {
                    return Err(format!("drafter speaks protocol version {}", r.v));
                }
                s.shared.clear();
                s.shared.extend_from_slice(history);
                let mut t = r.tokens;
                t.truncate(n_draft);
                return Ok(t);
            }
            409 if base > 0 => {
                s.shared.clear();
                continue; // the drafter lost the session: resend everything
            }
            _ => {
                s.shared.clear();
                let text = String::from_utf8_lossy(&resp[..resp.len().min(300)]).into_owned();
                return Err(format!("drafter answered {status}: {text}"));
            }
        }
    }
    Err("the drafter refused the full history".into())
}

fn remaining(deadline: Instant) -> std::io::Result<Duration> {
    let now = Instant::now();
    if now >= deadline {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "deadline passed",
        ));
    }
    Ok(deadline - now)
}

fn connect(ep: &Endpoint, deadline: Instant) -> std::io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = ep.authority.to_socket_addrs()?.collect();
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, remaining(deadline)?) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the drafter")
    }))
}

/// Sends one request (reusing the keep-alive connection, or opening one) and reads the
/// answer: `(status, body)`. A reused connection that the drafter closed meanwhile is
/// retried once on a fresh one.
fn exchange(
    ep: &Endpoint,
    cfg: &RemoteConfig,
    conn: &mut Option<TcpStream>,
    body: &[u8],
    deadline: Instant,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        ep.path,
        ep.host,
        body.len()
    );
    if let Some(k) = &cfg.api_key {
        head.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    head.push_str("\r\n");
    for attempt in 0..2 {
        let reused = conn.is_some();
        if conn.is_none() {
            *conn = Some(connect(ep, deadline)?);
        }
        let s = conn.as_mut().expect("just connected");
        let sent = (|| {
            s.set_write_timeout(Some(remaining(deadline)?))?;
            s.write_all(head.as_bytes())?;
            s.write_all(body)?;
            s.flush()
        })();
        let result = sent.and_then(|()| read_response(s, deadline));
        match result {
            Ok((status, close, body)) => {
                if close {
                    *conn = None;
                }
                return Ok((status, body));
            }
            Err(e) => {
                *conn = None;
                let stale = reused
                    && attempt == 0
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::ConnectionAborted
                    );
                if !stale {
                    return Err(e);
                }
            }
        }
    }
    Err(std::io::Error::other("the drafter closed the connection"))
}

/// Reads a response: status, whether the server closes the connection, and the body
/// (`Content-Length` or chunked), all within the deadline and the size bounds.
fn read_response(s: &mut TcpStream, deadline: Instant) -> std::io::Result<(u16, bool, Vec<u8>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(bad("response head too large"));
        }
        s.set_read_timeout(Some(remaining(deadline)?))?;
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad("no status line"))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = v.parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v.contains("close"),
                _ => {}
            }
        }
    }
    let mut body = buf[head_end..].to_vec();
    let mut fill = |body: &mut Vec<u8>, want: usize| -> std::io::Result<()> {
        while body.len() < want {
            s.set_read_timeout(Some(remaining(deadline)?))?;
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed inside the response",
                ));
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    };
    if let Some(n) = length {
        if n > protocol::MAX_RESPONSE_BYTES {
            return Err(bad("response too large"));
        }
        fill(&mut body, n)?;
        body.truncate(n);
        return Ok((status, close, body));
    }
    if !chunked {
        return Err(bad("response without a length"));
    }
    // chunked: size line, data, CRLF ... until a zero-size chunk
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let line_end = loop {
            if let Some(i) = body[at..].windows(2).position(|w| w == b"\r\n") {
                break at + i;
            }
            if body.len() - at > 64 {
                return Err(bad("bad chunk header"));
            }
            let want = body.len() + 1;
            fill(&mut body, want)?;
        };
        let size_text = std::str::from_utf8(&body[at..line_end]).map_err(|_| bad("bad chunk"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("bad chunk size"))?;
        if out.len() + size > protocol::MAX_RESPONSE_BYTES {
            return Err(bad("response too large"));
        }
        let data = line_end + 2;
        fill(&mut body, data + size + 2)?;
        if size == 0 {
            return Ok((status, close, out));
        }
        out.extend_from_slice(&body[data..data + size]);
        at = data + size + 2;
    }
}

impl Drafter for RemoteDrafter {
    fn kind(&self) -> DrafterKind {
        DrafterKind::Remote
    }

    fn draft(&mut self, req: &DraftRequest<'_>, out: &mut Draft) -> engine::Result<()> {
        let mut r = self.draft_many(std::slice::from_ref(req), std::slice::from_mut(out));
        r.pop().unwrap_or(Ok(()))
    }

    fn draft_many(
        &mut self,
        reqs: &[DraftRequest<'_>],
        outs: &mut [Draft],
    ) -> Vec<engine::Result<()>> {
        for o in outs.iter_mut() {
            o.clear();
        }
        if let Some(t) = self.down_until {
            if Instant::now() < t {
                let msg = self.last_error.clone().unwrap_or_default();
                return reqs
                    .iter()
                    .map(|_| {
                        Err(engine::Error::Options(format!(
                            "remote drafter unavailable: {msg}"
                        )))
                    })
                    .collect();
            }
        }
        let max_seq = reqs.iter().map(|r| r.seq).max().unwrap_or(0);
        self.session(max_seq);
        let (ep, cfg) = (&self.ep, &self.cfg);
        let mut slots: Vec<Option<&mut Session>> = self.sessions.iter_mut().map(Some).collect();
        let mut jobs = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            // a sequence asked twice in one call: the first ask wins
            if let Some(s) = slots[r.seq].take() {
                jobs.push((i, s, r));
            }
        }
        let mut results: Vec<Result<Vec<u32>, String>> =
            reqs.iter().map(|_| Ok(Vec::new())).collect();
        if jobs.len() == 1 {
            let (i, s, r) = jobs.pop().expect("one job");
            results[i] = request_one(ep, cfg, s, r);
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = jobs
                    .into_iter()
                    .map(|(i, s, r)| (i, scope.spawn(move || request_one(ep, cfg, s, r))))
                    .collect();
                for (i, h) in handles {
                    results[i] = h
                        .join()
                        .unwrap_or_else(|_| Err("drafting thread panicked".into()));
                }
            });
        }
        let mut first_error = None;
        let mut any_ok = false;
        let out: Vec<engine::Result<()>> = results
            .into_iter()
            .zip(outs.iter_mut())
            .map(|(r, o)| match r {
                Ok(t) => {
                    any_ok = true;
                    o.tokens = t;
                    Ok(())
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| e.clone());
                    Err(engine::Error::Options(format!("remote drafter: {e}")))
                }
            })
            .collect();
        match first_error {
            Some(e) if !any_ok => self.record(false, Some(e)),
            _ => self.record(true, None),
        }
        out
    }

    fn release(&mut self, seq: usize) {
        // the drafter evicts idle sessions itself; forgetting ours makes the next sequence
        // in this slot start a fresh history (with the shared prefix still matched)
        if let Some(s) = self.sessions.get_mut(seq) {
            s.shared.clear();
        }
    }

    fn relative_cost(&self) -> f64 {
        self.cfg.relative_cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = parse_url("http://10.0.0.2:8081").unwrap();
        assert_eq!(e.authority, "10.0.0.2:8081");
        assert_eq!(e.path, "/v1/draft");
        let e = parse_url("http://drafter/prefix/").unwrap();
        assert_eq!(e.authority, "drafter:80");
        assert_eq!(e.path, "/prefix/v1/draft");
        assert!(parse_url("https://x:1").unwrap_err().contains("https"));
        assert!(parse_url("x:1").is_err());
        assert!(parse_url("http://").is_err());
    }

    #[test]
    fn a_dead_drafter_fails_fast_and_backs_off() {
        // a port nobody listens on
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut d =
            RemoteDrafter::new(RemoteConfig::new(format!("http://127.0.0.1:{port}"))).unwrap();
        let sp = engine::SamplingParams::greedy();
        let req = DraftRequest {
            seq: 0,
            history: &[1, 2, 3],
            max: 4,
            sampling: &sp,
        };
        let mut out = Draft::default();
        let t0 = Instant::now();
        assert!(d.draft(&req, &mut out).is_err());
        assert!(out.is_empty());
        assert!(d.draft(&req, &mut out).is_err(), "backing off");
        assert!(t0.elapsed() < Duration::from_millis(900));
        assert!(d.last_error().is_some());
    }
}
