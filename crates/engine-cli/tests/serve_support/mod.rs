//! Test support for `engine serve`: start the real binary on a free loopback port, wait for
//! it to be ready, and talk to it with a minimal HTTP/1.1 client (so tests can also send
//! malformed or oversized requests and hang up mid-stream).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `engine serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
    /// The `--api-key` the server was started with, sent by [`Server::get`].
    pub key: Option<String>,
}

impl Server {
    /// Starts `engine serve -m <default model> --port 0 <args>` and waits for `/health`.
    pub fn start(args: &[&str]) -> Server {
        let model = engine_testdata::gemma3_model().expect("default model");
        Self::start_model(&model, args)
    }

    /// Starts `engine serve -m <model> --port 0 <args>` and waits for `/health`.
    pub fn start_model(model: &std::path::Path, args: &[&str]) -> Server {
        let mut all = vec!["-m".to_string(), model.to_string_lossy().into_owned()];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        Server::start_with(&all, &[])
    }

    /// Starts `engine serve --port 0 <args>` with extra environment variables (e.g. a
    /// model store in `ENGINE_MODELS`) and waits for `/health`.
    pub fn start_with(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
            .arg("serve")
            .args(["--host", "127.0.0.1", "--port", "0", "-t", "2"])
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn engine serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stderr);
                let mut line = String::new();
                let mut tx = Some(tx);
                while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if let Some(rest) = line
                        .trim()
                        .strip_prefix("engine serve: listening on http://")
                    {
                        if let Some(t) = tx.take() {
                            let _ = t.send(rest.parse::<SocketAddr>().unwrap());
                        }
                    }
                    log.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start: {}", log.lock().unwrap());
            }
        };
        let key = args
            .iter()
            .position(|a| *a == "--api-key")
            .map(|i| args[i + 1].to_string());
        let s = Server {
            child,
            addr,
            log,
            key,
        };
        let t0 = Instant::now();
        loop {
            if let Ok(r) = s.try_request("GET", "/health", &[], b"") {
                if r.status == 200 {
                    break;
                }
                assert_eq!(r.status, 503, "health while loading: {}", r.text());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "not ready: {}",
                s.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Resident memory of the server process (VmRSS), in bytes.
    pub fn rss(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line["VmRSS:".len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends a request; panics on transport errors.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\nserver log:\n{}", self.logs()))
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let mut s = TcpStream::connect(self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        Ok(Resp::parse(&raw))
    }

    /// POSTs JSON.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Resp {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    pub fn get(&self, path: &str) -> Resp {
        match &self.key {
            Some(k) => {
                let h = format!("Bearer {k}");
                self.request("GET", path, &[("Authorization", &h)], b"")
            }
            None => self.request("GET", path, &[], b""),
        }
    }

    /// The Prometheus exposition parsed into (name with labels, value).
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    pub fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .into_iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("no metric {name}"))
            .1
    }

    /// Waits until the server has no running or waiting request.
    pub fn wait_idle(&self) {
        let t0 = Instant::now();
        loop {
            if self.metric("engine:num_requests_running") == 0.0
                && self.metric("engine:num_requests_waiting") == 0.0
            {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "server never went idle"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn parse(raw: &[u8]) -> Resp {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
        {
            body = dechunk(&body);
        }
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The JSON payloads of SSE `data:` lines (without `[DONE]`) and whether `[DONE]` ended it.
    pub fn sse(&self) -> (Vec<serde_json::Value>, bool) {
        let mut out = Vec::new();
        let mut done = false;
        for l in self.text().lines() {
            if let Some(d) = l.strip_prefix("data: ") {
                if d == "[DONE]" {
                    done = true;
                } else {
                    out.push(serde_json::from_str(d).unwrap());
                }
            }
        }
        (out, done)
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        let end = (start + size).min(b.len());
        out.extend_from_slice(&b[start..end]);
        b = &b[(end + 2).min(b.len())..];
    }
}

/// `engine run --json` greedy output for `prompt`.
pub fn engine_run(prompt: &str, n: usize) -> serde_json::Value {
    let model = engine_testdata::gemma3_model().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .arg("run")
        .arg("-m")
        .arg(&model)
        .args([
            "-p",
            prompt,
            "-n",
            &n.to_string(),
            "--temp",
            "0",
            "-t",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Serialises the server tests of one binary (they are CPU-bound on a 2-core machine).
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
