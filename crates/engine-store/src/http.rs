//! Resumable HTTP(S) downloads for the store.
//!
//! A file is downloaded into `<file>.part` beside a small `<file>.part.json` recording the
//! URL and the server's validators (ETag, Last-Modified). A later attempt — a retry after a
//! dropped connection, or a new `engine pull` after Ctrl-C, a full disk or a crash — asks for
//! the missing bytes only (`Range: bytes=N-` with `If-Range`), re-hashing the bytes already
//! on disk, and starts from zero only when the server no longer has the same file. Transport
//! errors are retried with backoff; HTTP errors (404, 401, ...) are not. Before writing,
//! the free space of the target filesystem is checked against what remains to download.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::source::{hex, Progress};
use crate::{io_err, Result, StoreError};

/// Transport failures in a row (without any byte of progress) before giving up.
const MAX_ATTEMPTS: u32 = 6;

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 10;

/// An HTTP agent with the store's settings: no automatic decompression (bytes are hashed as
/// served), status codes returned rather than raised, redirects left to [`get`] (which keeps
/// a token only on the same origin), and timeouts that catch a stalled connection without
/// limiting a long download.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .user_agent(format!("engine/{}", env!("CARGO_PKG_VERSION")))
        .max_redirects(0)
        .build()
        .into()
}

/// One file to download.
pub struct Target<'a> {
    /// Where from.
    pub url: &'a str,
    /// Extra request headers (e.g. `Authorization`).
    pub headers: &'a [(String, String)],
    /// The `.part` file to write (its directory must exist).
    pub dest: &'a Path,
    /// Size the file must have, when known in advance.
    pub expected_size: Option<u64>,
    /// Shown in progress messages.
    pub label: &'a str,
}

/// A finished download.
#[derive(Clone, Debug)]
pub struct Downloaded {
    /// sha256 of the whole file, lower-case hex.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// Bytes that were already on disk from an earlier attempt when this call started.
    pub resumed_from: u64,
}

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
struct PartMeta {
    url: String,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    last_modified: Option<String>,
    #[serde(default)]
    total: Option<u64>,
}

fn meta_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

fn read_meta(dest: &Path) -> Option<PartMeta> {
    let text = std::fs::read_to_string(meta_path(dest)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_meta(dest: &Path, m: &PartMeta) -> Result<()> {
    let p = meta_path(dest);
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(m).expect("meta serializes")).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &p).map_err(io_err(&p))
}

/// Removes a `.part` file and its metadata.
pub fn discard(dest: &Path) {
    let _ = std::fs::remove_file(dest);
    let _ = std::fs::remove_file(meta_path(dest));
}

/// Bytes free for an unprivileged user on the filesystem holding `dir`.
pub fn available_space(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        if rc != 0 {
            return None;
        }
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// `bytes START-END/TOTAL` or `bytes */TOTAL` → (start, total).
fn content_range(v: &str) -> Option<(Option<u64>, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim();
    let (range, total) = rest.split_once('/')?;
    let total = total.trim().parse().ok();
    let start = if range.trim() == "*" {
        None
    } else {
        Some(range.split_once('-')?.0.trim().parse().ok()?)
    };
    Some((start, total))
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> &str {
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            &url[..i + 3 + end]
        }
        None => "",
    }
}

/// A redirect's `Location` resolved against the URL that answered it.
fn resolve_location(base: &str, loc: &str) -> String {
    if loc.contains("://") {
        loc.to_string()
    } else if loc.starts_with("//") {
        let scheme = base.split("://").next().unwrap_or("https");
        format!("{scheme}:{loc}")
    } else if loc.starts_with('/') {
        format!("{}{loc}", origin(base))
    } else {
        let dir = base.split(['?', '#']).next().unwrap_or(base);
        let dir = &dir[..dir.rfind('/').map(|i| i + 1).unwrap_or(dir.len())];
        format!("{dir}{loc}")
    }
}

/// GETs `url` with `headers`, following redirects. `Authorization` is sent only to the
/// origin it was meant for: a redirect to another host, port or scheme (a CDN's signed
/// URL) goes without it.
pub fn get(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(String, String)],
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let first = origin(url).to_string();
    let mut url = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let mut req = agent.get(&url);
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("authorization") && origin(&url) != first {
                continue;
            }
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.call()?;
        let redirect = matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308);
        match header(&resp, "location") {
            Some(loc) if redirect => url = resolve_location(&url, &loc),
            _ => return Ok(resp),
        }
    }
    Err(ureq::Error::TooManyRedirects)
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Hashes the first `len` bytes of `path`.
fn hash_prefix(path: &Path, len: u64, h: &mut Sha256) -> Result<()> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut r = f.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = r.read(&mut buf).map_err(io_err(path))?;
        if k == 0 {
            return Ok(());
        }
        h.update(&buf[..k]);
    }
}

/// Why one attempt stopped.
enum Attempt {
    /// The whole file is on disk.
    Complete,
    /// The transport failed; retrying may help.
    Transient(String),
}

/// Downloads `t.url` into `t.dest`, resuming what an earlier attempt left there.
pub fn download(
    agent: &ureq::Agent,
    t: &Target,
    progress: &mut dyn Progress,
) -> Result<Downloaded> {
    let mut meta = match read_meta(t.dest) {
        Some(m) if m.url == t.url && t.dest.exists() => m,
        _ => {
            // a different file, or no record of what the bytes are: start clean
            discard(t.dest);
            PartMeta {
                url: t.url.to_string(),
                ..Default::default()
            }
        }
    };
    let mut have = std::fs::metadata(t.dest).map(|m| m.len()).unwrap_or(0);
    if let (Some(total), Some(exp)) = (meta.total, t.expected_size) {
        if total != exp || have > exp {
            discard(t.dest);
            meta = PartMeta {
                url: t.url.to_string(),
                ..Default::default()
            };
            have = 0;
        }
    }
    let resumed_from = have;
    let mut hasher = Sha256::new();
    if have > 0 {
        hash_prefix(t.dest, have, &mut hasher)?;
    }
    let mut failures = 0u32;
    loop {
        let before = have;
        match attempt(agent, t, &mut meta, &mut have, &mut hasher, progress)? {
            Attempt::Complete => break,
            Attempt::Transient(why) => {
                if have > before {
                    failures = 0;
                }
                failures += 1;
                if failures >= MAX_ATTEMPTS {
                    return Err(StoreError::Download(format!(
                        "{}: {why}; gave up after {MAX_ATTEMPTS} attempts with {have} bytes downloaded (run the pull again to resume)",
                        t.url
                    )));
                }
                let wait =
                    Duration::from_millis(250u64 << failures.min(5)).min(Duration::from_secs(8));
                progress.phase(
                    &format!("{}: {why}; retrying in {:.1}s", t.label, wait.as_secs_f64()),
                    None,
                );
                std::thread::sleep(wait);
            }
        }
    }
    Ok(Downloaded {
        sha256: hex(&hasher.finalize()),
        size: have,
        resumed_from,
    })
}

fn attempt(
    agent: &ureq::Agent,
    t: &Target,
    meta: &mut PartMeta,
    have: &mut u64,
    hasher: &mut Sha256,
    progress: &mut dyn Progress,
) -> Result<Attempt> {
    if t.expected_size.is_some_and(|e| e == *have) && *have > 0 {
        return Ok(Attempt::Complete);
    }
    let mut headers = t.headers.to_vec();
    if *have > 0 {
        headers.push(("Range".into(), format!("bytes={}-", *have)));
        let validator = meta
            .etag
            .clone()
            .filter(|e| !e.starts_with("W/"))
            .or_else(|| meta.last_modified.clone());
        if let Some(v) = validator {
            headers.push(("If-Range".into(), v));
        }
    }
    let resp = match get(agent, t.url, &headers) {
        Ok(r) => r,
        Err(e) => return Ok(Attempt::Transient(e.to_string())),
    };
    let status = resp.status().as_u16();
    let etag = header(&resp, "etag");
    let last_modified = header(&resp, "last-modified");
    let length: Option<u64> = header(&resp, "content-length").and_then(|v| v.trim().parse().ok());
    let total = match status {
        206 => {
            let (start, total) = header(&resp, "content-range")
                .as_deref()
                .and_then(content_range)
                .unwrap_or((None, None));
            if start != Some(*have) {
                // not the range we asked for: start over
                restart(t.dest, have, hasher)?;
                return Ok(Attempt::Transient(
                    "the server answered a different range; starting over".into(),
                ));
            }
            total.or(length.map(|l| l + *have))
        }
        200 => {
            if *have > 0 {
                // the server ignored the range or the file changed: start from zero
                restart(t.dest, have, hasher)?;
            }
            length
        }
        416 => {
            let total = header(&resp, "content-range")
                .as_deref()
                .and_then(content_range)
                .and_then(|(_, t)| t);
            if total == Some(*have) && *have > 0 {
                return Ok(Attempt::Complete);
            }
            restart(t.dest, have, hasher)?;
            return Ok(Attempt::Transient(
                "the partial download is longer than the file; starting over".into(),
            ));
        }
        404 | 410 => {
            return Err(StoreError::NotFound(format!(
                "{} answered {status} Not Found",
                t.url
            )))
        }
        401 | 403 => {
            return Err(StoreError::Download(format!(
                "{} answered {status}: access denied (for a gated or private Hugging Face repository, set HF_TOKEN)",
                t.url
            )))
        }
        408 | 429 | 500..=599 => {
            return Ok(Attempt::Transient(format!("the server answered {status}")))
        }
        _ => {
            return Err(StoreError::Download(format!(
                "{} answered HTTP {status}",
                t.url
            )))
        }
    };
    if let (Some(total), Some(exp)) = (total, t.expected_size) {
        if total != exp {
            discard(t.dest);
            return Err(StoreError::Download(format!(
                "{}: the server has {total} bytes but {exp} were expected",
                t.url
            )));
        }
    }
    let total = total.or(t.expected_size);
    meta.etag = etag;
    meta.last_modified = last_modified;
    meta.total = total;
    write_meta(t.dest, meta)?;
    if let (Some(total), Some(dir)) = (total, t.dest.parent()) {
        let need = total.saturating_sub(*have);
        if let Some(avail) = available_space(dir) {
            if need > avail {
                return Err(StoreError::NoSpace {
                    path: dir.display().to_string(),
                    need,
                    available: avail,
                });
            }
        }
    }
    progress.phase(&format!("downloading {}", t.label), total);
    progress.advance(*have);
    let mut out = File::options()
        .create(true)
        .append(true)
        .open(t.dest)
        .map_err(io_err(t.dest))?;
    let mut body = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = match body.read(&mut buf) {
            Ok(k) => k,
            Err(e) => return Ok(Attempt::Transient(format!("connection lost: {e}"))),
        };
        if k == 0 {
            break;
        }
        if let Err(e) = out.write_all(&buf[..k]) {
            // the bytes written so far stay for a later resume; a partial chunk is cut off
            let _ = out.set_len(*have);
            return Err(write_error(t.dest, *have, e));
        }
        hasher.update(&buf[..k]);
        *have += k as u64;
        progress.advance(k as u64);
    }
    if let Err(e) = out.sync_all() {
        return Err(write_error(t.dest, *have, e));
    }
    match total {
        Some(total) if *have < total => Ok(Attempt::Transient(format!(
            "the connection closed after {} of {total} bytes",
            *have
        ))),
        Some(total) if *have > total => {
            restart(t.dest, have, hasher)?;
            Ok(Attempt::Transient(
                "the server sent more bytes than announced; starting over".into(),
            ))
        }
        _ => Ok(Attempt::Complete),
    }
}

fn write_error(dest: &Path, have: u64, e: std::io::Error) -> StoreError {
    StoreError::Write {
        path: dest.display().to_string(),
        kept: have,
        source: e,
    }
}

fn restart(dest: &Path, have: &mut u64, hasher: &mut Sha256) -> Result<()> {
    let f = File::options()
        .create(true)
        .write(true)
        .truncate(true)
        .open(dest)
        .map_err(io_err(dest))?;
    drop(f);
    *have = 0;
    *hasher = Sha256::new();
    Ok(())
}

/// GETs a small JSON document (at most 64 MiB), mapping HTTP errors like [`download`].
pub fn get_json(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(String, String)],
) -> Result<serde_json::Value> {
    let mut resp =
        get(agent, url, headers).map_err(|e| StoreError::Download(format!("{url}: {e}")))?;
    let status = resp.status().as_u16();
    match status {
        200 => {}
        404 => return Err(StoreError::NotFound(format!("{url} answered 404 Not Found"))),
        401 | 403 => {
            return Err(StoreError::Download(format!(
                "{url} answered {status}: access denied (for a gated or private repository, set HF_TOKEN)"
            )))
        }
        _ => return Err(StoreError::Download(format!("{url} answered HTTP {status}"))),
    }
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .map_err(|e| StoreError::Download(format!("{url}: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Download(format!("{url}: not a JSON answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(
            content_range("bytes 100-199/1000"),
            Some((Some(100), Some(1000)))
        );
        assert_eq!(content_range("bytes */1000"), Some((None, Some(1000))));
        assert_eq!(content_range("bytes 5-9/*"), Some((Some(5), None)));
        assert_eq!(content_range("items 1-2/3"), None);
    }

    #[test]
    fn origins_and_locations() {
        assert_eq!(
            origin("https://h.invalid:8443/a/b?c"),
            "https://h.invalid:8443"
        );
        assert_eq!(origin("http://h.invalid"), "http://h.invalid");
        let base = "https://h.invalid/org/repo/resolve/main/x.gguf?download=1";
        assert_eq!(
            resolve_location(base, "https://cdn.invalid/blob?sig=1"),
            "https://cdn.invalid/blob?sig=1"
        );
        assert_eq!(
            resolve_location(base, "/other/y"),
            "https://h.invalid/other/y"
        );
        assert_eq!(
            resolve_location(base, "//cdn.invalid/z"),
            "https://cdn.invalid/z"
        );
        assert_eq!(
            resolve_location(base, "y.gguf"),
            "https://h.invalid/org/repo/resolve/main/y.gguf"
        );
    }

    #[test]
    fn free_space_is_known_for_the_temp_dir() {
        assert!(available_space(&std::env::temp_dir()).is_some_and(|n| n > 0));
    }
}
