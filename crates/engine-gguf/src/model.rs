//! A model stored as one GGUF file or as a split set (`name-00001-of-00003.gguf`, ...).
//!
//! Metadata comes from the first file; tensors from all of them. Typed getters turn a
//! missing or mistyped key into a clear [`GgufError::Metadata`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use engine_core::tensor::HostBytes;

use crate::reader::{GgufFile, TensorInfo};
use crate::value::{Array, Value};
use crate::{GgufError, Result};

/// One model: its files, merged metadata view, and merged tensor table.
pub struct GgufModel {
    files: Vec<GgufFile>,
    paths: Vec<PathBuf>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

/// If `path` names a split part (`prefix-00002-of-00005.gguf`), returns (prefix, count).
pub fn split_parts(path: &Path) -> Option<(String, u32)> {
    let s = path.to_str()?;
    let stem = s.strip_suffix(".gguf")?;
    let (rest, total) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    if no.len() != 5 || total.len() != 5 {
        return None;
    }
    let _: u32 = no.parse().ok()?;
    let total: u32 = total.parse().ok()?;
    Some((prefix.to_string(), total))
}

/// The path of part `no` (1-based) of a split set.
pub fn split_path(prefix: &str, no: u32, count: u32) -> PathBuf {
    PathBuf::from(format!("{prefix}-{no:05}-of-{count:05}.gguf"))
}

impl GgufModel {
    /// Opens a model. A split part opens the whole set, whichever part is named.
    pub fn open(path: impl AsRef<Path>, mmap: bool) -> Result<GgufModel> {
        let path = path.as_ref();
        let paths: Vec<PathBuf> = match split_parts(path) {
            Some((prefix, count)) if count > 1 => {
                (1..=count).map(|i| split_path(&prefix, i, count)).collect()
            }
            _ => vec![path.to_path_buf()],
        };
        let mut files = Vec::with_capacity(paths.len());
        for p in &paths {
            files.push(GgufFile::open(p, mmap)?);
        }
        let declared = files[0]
            .get("split.count")
            .and_then(Value::as_int)
            .unwrap_or(1);
        if declared > 1 && files.len() == 1 {
            return Err(GgufError::Format(format!(
                "{} is part of a {declared}-file split set, but its name does not follow the -0000N-of-0000M.gguf pattern",
                path.display()
            )));
        }
        Self::from_files(files, paths)
    }

    /// Builds a model from already parsed files (first file's metadata wins).
    pub fn from_files(files: Vec<GgufFile>, paths: Vec<PathBuf>) -> Result<GgufModel> {
        let mut tensors = Vec::new();
        let mut by_name = HashMap::new();
        for (fi, f) in files.iter().enumerate() {
            for t in f.tensors() {
                let mut t = t.clone();
                t.file_index = fi;
                if by_name.insert(t.name.clone(), tensors.len()).is_some() {
                    return Err(GgufError::Format(format!(
                        "tensor '{}' appears in more than one split file",
                        t.name
                    )));
                }
                tensors.push(t);
            }
        }
        if let Some(expected) = files[0].get("split.tensors.count").and_then(Value::as_int) {
            if files.len() > 1 && expected as usize != tensors.len() {
                return Err(GgufError::Format(format!(
                    "split set declares {expected} tensors but its files hold {}",
                    tensors.len()
                )));
            }
        }
        Ok(GgufModel {
            files,
            paths,
            tensors,
            by_name,
        })
    }

    /// The files, in split order.
    pub fn files(&self) -> &[GgufFile] {
        &self.files
    }

    /// Paths of the files, in split order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Metadata of the first file.
    pub fn metadata(&self) -> &[(String, Value)] {
        self.files[0].metadata()
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.files[0].get(key)
    }

    /// All tensors.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Zero-copy bytes of a tensor.
    pub fn tensor_data(&self, t: &TensorInfo) -> HostBytes {
        self.files[t.file_index].tensor_data(t)
    }

    /// Total bytes of tensor data.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.size as u64).sum()
    }

    /// Total bytes on disk.
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.file_size() as u64).sum()
    }

    fn missing(key: &str, problem: &str) -> GgufError {
        GgufError::Metadata {
            key: key.to_string(),
            problem: problem.to_string(),
        }
    }

    /// An integer value, if present and integral.
    pub fn get_int(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_int()
                .map(Some)
                .ok_or_else(|| Self::missing(key, &format!("expected an integer, found {v}"))),
        }
    }

    /// A required non-negative integer that fits `usize`.
    pub fn require_usize(&self, key: &str) -> Result<usize> {
        match self.get_int(key)? {
            Some(v) if v >= 0 => Ok(v as usize),
            Some(v) => Err(Self::missing(
                key,
                &format!("must not be negative (found {v})"),
            )),
            None => Err(Self::missing(key, "required but missing")),
        }
    }

    /// An optional non-negative integer.
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get_int(key)? {
            Some(v) if v >= 0 => Ok(Some(v as usize)),
            Some(v) => Err(Self::missing(
                key,
                &format!("must not be negative (found {v})"),
            )),
            None => Ok(None),
        }
    }

    /// A float value, if present and numeric.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_float()
                .map(|f| Some(f as f32))
                .ok_or_else(|| Self::missing(key, &format!("expected a number, found {v}"))),
        }
    }

    /// A bool value, if present.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| Self::missing(key, &format!("expected a bool, found {v}"))),
        }
    }

    /// A string value, if present.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| Self::missing(key, &format!("expected a string, found {v}"))),
        }
    }

    /// A required string value.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        self.get_str(key)?
            .ok_or_else(|| Self::missing(key, "required but missing"))
    }

    /// An array value, if present.
    pub fn get_array(&self, key: &str) -> Result<Option<&Array>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .map(Some)
                .ok_or_else(|| Self::missing(key, &format!("expected an array, found {v}"))),
        }
    }
}
