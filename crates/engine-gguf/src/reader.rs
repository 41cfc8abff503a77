//! Parsing one GGUF file: header, metadata, tensor table, and zero-copy tensor data.
//!
//! Every count, length and offset is checked against the bytes actually present before it
//! is used, so a truncated or hostile file yields a [`GgufError`], never a panic or a huge
//! allocation.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use engine_core::tensor::HostBytes;
use engine_core::DType;

use crate::value::{Array, Value, ValueType};
use crate::{GgufError, Result, DEFAULT_ALIGNMENT, MAGIC};

/// Deepest nesting of arrays accepted.
const MAX_ARRAY_DEPTH: usize = 4;
/// Most dimensions a tensor may have (ggml's limit).
const MAX_DIMS: u32 = 4;

/// One tensor's entry in the table.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Storage type.
    pub dtype: DType,
    /// Dimensions in ggml order: `ne[0]` is the row length.
    pub ne: Vec<u64>,
    /// Byte offset of the data from the start of the file.
    pub offset: usize,
    /// Size of the data in bytes.
    pub size: usize,
    /// Which file of a split set holds it (0 for a single file).
    pub file_index: usize,
}

impl TensorInfo {
    /// Shape in row-major order, outermost first (the reverse of `ne`).
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.ne.iter().product()
    }
}

/// A parsed GGUF file and the bytes behind it.
pub struct GgufFile {
    bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
    version: u32,
    metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    alignment: usize,
    data_offset: usize,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated(format!(
                "{what} needs {n} bytes at offset {}, but the file has {} bytes",
                self.pos,
                self.b.len()
            )));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes(s.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let s = self.take(8, what)?;
        Ok(u64::from_le_bytes(s.try_into().unwrap()))
    }

    /// A count that must fit in what is left, given the smallest size of one element.
    fn count(&mut self, what: &str, min_elem: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let max = (self.remaining() / min_elem.max(1)) as u64;
        if n > max {
            return Err(GgufError::Format(format!(
                "{what} is {n}, but only {} bytes remain (at most {max} entries fit)",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(what, 1)?;
        let s = self.take(len, what)?;
        Ok(match std::str::from_utf8(s) {
            Ok(v) => v.to_owned(),
            Err(_) => String::from_utf8_lossy(s).into_owned(),
        })
    }

    fn value(&mut self, ty: ValueType, depth: usize, what: &str) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8(what)?),
            ValueType::I8 => Value::I8(self.u8(what)? as i8),
            ValueType::U16 => Value::U16(self.u16(what)?),
            ValueType::I16 => Value::I16(self.u16(what)? as i16),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(self.u32(what)? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32(what)?)),
            ValueType::Bool => Value::Bool(self.u8(what)? != 0),
            ValueType::String => Value::String(self.string(what)?),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(self.u64(what)? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64(what)?)),
            ValueType::Array => Value::Array(self.array(depth + 1, what)?),
        })
    }

    fn array(&mut self, depth: usize, what: &str) -> Result<Array> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::Format(format!(
                "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
            )));
        }
        let tid = self.u32(what)?;
        let ty = ValueType::from_id(tid).ok_or_else(|| {
            GgufError::Format(format!("{what}: unknown array element type {tid}"))
        })?;
        let min = match ty {
            ValueType::String => 8,
            ValueType::Array => 12,
            t => t.scalar_size().unwrap_or(1),
        };
        let n = self.count(what, min)?;
        macro_rules! fixed {
            ($var:ident, $size:expr, $conv:expr) => {{
                let raw = self.take(n * $size, what)?;
                Array::$var(raw.chunks_exact($size).map($conv).collect())
            }};
        }
        Ok(match ty {
            ValueType::U8 => Array::U8(self.take(n, what)?.to_vec()),
            ValueType::I8 => fixed!(I8, 1, |c: &[u8]| c[0] as i8),
            ValueType::Bool => fixed!(Bool, 1, |c: &[u8]| c[0] != 0),
            ValueType::U16 => fixed!(U16, 2, |c: &[u8]| u16::from_le_bytes([c[0], c[1]])),
            ValueType::I16 => fixed!(I16, 2, |c: &[u8]| i16::from_le_bytes([c[0], c[1]])),
            ValueType::U32 => fixed!(U32, 4, |c: &[u8]| u32::from_le_bytes(c.try_into().unwrap())),
            ValueType::I32 => fixed!(I32, 4, |c: &[u8]| i32::from_le_bytes(c.try_into().unwrap())),
            ValueType::F32 => fixed!(F32, 4, |c: &[u8]| f32::from_le_bytes(c.try_into().unwrap())),
            ValueType::U64 => fixed!(U64, 8, |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap())),
            ValueType::I64 => fixed!(I64, 8, |c: &[u8]| i64::from_le_bytes(c.try_into().unwrap())),
            ValueType::F64 => fixed!(F64, 8, |c: &[u8]| f64::from_le_bytes(c.try_into().unwrap())),
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string(what)?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array(depth + 1, what)?);
                }
                Array::Array(v)
            }
        })
    }
}

impl GgufFile {
    /// Opens and memory-maps a file (or reads it into memory when `mmap` is false).
    pub fn open(path: impl AsRef<Path>, mmap: bool) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |e| GgufError::Io {
            path: path.display().to_string(),
            source: e,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 24 {
            return Err(GgufError::Truncated(format!(
                "{}: {len} bytes is shorter than a GGUF header",
                path.display()
            )));
        }
        let bytes: Arc<dyn AsRef<[u8]> + Send + Sync> = if mmap {
            // SAFETY: the mapping is read-only. As with every mmap-based loader, modifying
            // the file while it is mapped is the user's responsibility.
            Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        } else {
            Arc::new(std::fs::read(path).map_err(io)?)
        };
        Self::parse(bytes).map_err(|e| match e {
            GgufError::Format(m) => GgufError::Format(format!("{}: {m}", path.display())),
            GgufError::Truncated(m) => GgufError::Truncated(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses GGUF from bytes held by `bytes`; tensor data stays in place.
    pub fn parse(bytes: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Result<GgufFile> {
        let b: &[u8] = (*bytes).as_ref();
        let mut c = Cursor { b, pos: 0 };
        let magic = c.u32("magic")?;
        if magic != MAGIC {
            let shown: Vec<u8> = b[..4.min(b.len())].to_vec();
            return Err(GgufError::Format(format!(
                "bad magic {:?} (expected \"GGUF\"); this is not a GGUF file",
                String::from_utf8_lossy(&shown)
            )));
        }
        let version = c.u32("version")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(GgufError::Format(
                    "GGUF version 1 is obsolete; re-convert the model".into(),
                ))
            }
            v if v.swap_bytes() <= 3 => {
                return Err(GgufError::Format(
                    "big-endian GGUF files are not supported".into(),
                ))
            }
            v => return Err(GgufError::Format(format!("unsupported GGUF version {v}"))),
        }
        let n_tensors = c.count("tensor count", 24)?;
        let n_kv = c.count("metadata count", 13)?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = c.string("metadata key")?;
            let tid = c.u32("metadata type")?;
            let ty = ValueType::from_id(tid).ok_or_else(|| {
                GgufError::Format(format!("metadata '{key}' has unknown value type {tid}"))
            })?;
            let value = c.value(ty, 0, &format!("metadata '{key}'"))?;
            if index.insert(key.clone(), i).is_some() {
                return Err(GgufError::Format(format!("duplicate metadata key '{key}'")));
            }
            metadata.push((key, value));
        }

        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_int() {
                Some(a) if a > 0 && (a as u64).is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => {
                    return Err(GgufError::Format(format!(
                        "general.alignment {v} is not a power of two"
                    )))
                }
            },
        };

        let mut raw = Vec::with_capacity(n_tensors);
        let mut names = HashMap::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor dimension count")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Format(format!(
                    "tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(c.u64("tensor dimension")?);
            }
            let tid = c.u32("tensor type")?;
            let offset = c.u64("tensor offset")?;
            let dtype = DType::from_id(tid).ok_or_else(|| GgufError::UnknownType {
                name: name.clone(),
                id: tid,
            })?;
            if names.insert(name.clone(), raw.len()).is_some() {
                return Err(GgufError::Format(format!("duplicate tensor name '{name}'")));
            }
            raw.push((name, dtype, ne, offset));
        }

        let data_offset = c.pos.div_ceil(alignment) * alignment;
        let file_len = b.len();
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dtype, ne, offset) in raw {
            let size = tensor_size(&name, dtype, &ne)?;
            if offset % alignment as u64 != 0 {
                return Err(GgufError::Format(format!(
                    "tensor '{name}' offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            let start = (data_offset as u64).checked_add(offset);
            let end = start.and_then(|s| s.checked_add(size as u64));
            match (start, end) {
                (Some(s), Some(e)) if e <= file_len as u64 => tensors.push(TensorInfo {
                    name,
                    dtype,
                    ne,
                    offset: s as usize,
                    size,
                    file_index: 0,
                }),
                _ => {
                    return Err(GgufError::Truncated(format!(
                        "tensor '{name}' data ({size} bytes at data offset {offset}) lies past the end of the file ({file_len} bytes)"
                    )))
                }
            }
        }

        Ok(GgufFile {
            bytes,
            version,
            metadata,
            index,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// Format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The tensor table in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Alignment of tensor data.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Offset of the data section.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// Total size of the file in bytes.
    pub fn file_size(&self) -> usize {
        (*self.bytes).as_ref().len()
    }

    /// A zero-copy view of a tensor's bytes.
    pub fn tensor_data(&self, t: &TensorInfo) -> HostBytes {
        HostBytes::new(self.bytes.clone(), t.offset, t.size)
            .expect("tensor ranges are validated at parse time")
    }

    /// The raw bytes backing the file.
    pub fn bytes(&self) -> &[u8] {
        (*self.bytes).as_ref()
    }
}

/// Byte size of a tensor, checking block alignment of rows and overflow.
pub fn tensor_size(name: &str, dtype: DType, ne: &[u64]) -> Result<usize> {
    let bs = dtype.block_size() as u64;
    let row = ne[0];
    if !row.is_multiple_of(bs) {
        return Err(GgufError::Format(format!(
            "tensor '{name}': row length {row} is not a multiple of the {dtype} block size {bs}"
        )));
    }
    let mut n: u64 = 1;
    for &d in ne {
        n = n
            .checked_mul(d)
            .filter(|&v| v <= i64::MAX as u64)
            .ok_or_else(|| {
                GgufError::Format(format!("tensor '{name}': dimensions {ne:?} overflow"))
            })?;
    }
    let bytes = (n / bs)
        .checked_mul(dtype.type_size() as u64)
        .filter(|&v| v <= usize::MAX as u64 / 2)
        .ok_or_else(|| GgufError::Format(format!("tensor '{name}': size overflows")))?;
    Ok(bytes as usize)
}
