//! Fetching named tensors from a GGUF model onto a backend, with shape checks; splitting
//! fused and stacked tensors (QKV, gate|up, MoE experts) into per-part views without copying.

use std::sync::Arc;

use engine_core::{Backend, Weight};
use engine_gguf::GgufModel;

use crate::error::{ModelError, Result};

/// Loads tensors by name; remembers the total bytes loaded.
pub struct WeightLoader<'a> {
    gguf: &'a GgufModel,
    backend: &'a Arc<dyn Backend>,
    bytes: u64,
}

impl<'a> WeightLoader<'a> {
    /// A loader for `gguf` onto `backend`.
    pub fn new(gguf: &'a GgufModel, backend: &'a Arc<dyn Backend>) -> Self {
        WeightLoader {
            gguf,
            backend,
            bytes: 0,
        }
    }

    /// Bytes a tensor takes once on the backend (which may repack it).
    fn stored_bytes(&self, t: &engine_gguf::TensorInfo) -> u64 {
        self.backend
            .weight_bytes(t.dtype, &t.shape())
            .map_or(t.size as u64, |b| b as u64)
    }

    /// The row-major shape of a tensor in the file, if present.
    pub fn gguf_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.gguf.tensor(name).map(|t| t.shape())
    }

    /// Bytes of tensor data loaded so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A required tensor with the given row-major shape (`None` = any shape).
    pub fn get(&mut self, name: &str, shape: Option<&[usize]>) -> Result<Weight> {
        self.opt(name, shape)?.ok_or_else(|| ModelError::Tensor {
            name: name.to_string(),
            problem: "required by the architecture but missing from the file".into(),
        })
    }

    /// An optional tensor; present ones must have the given shape.
    pub fn opt(&mut self, name: &str, shape: Option<&[usize]>) -> Result<Option<Weight>> {
        let Some(t) = self.gguf.tensor(name) else {
            return Ok(None);
        };
        let actual = t.shape();
        if let Some(want) = shape {
            // A trailing 1 (e.g. [n, 1] for a vector) is allowed to be omitted by the file.
            let squeeze = |s: &[usize]| -> Vec<usize> {
                let mut v: Vec<usize> = s.to_vec();
                while v.len() > 1 && v[0] == 1 {
                    v.remove(0);
                }
                v
            };
            if squeeze(&actual) != squeeze(want) {
                return Err(ModelError::Tensor {
                    name: name.to_string(),
                    problem: format!("has shape {actual:?}, expected {want:?}"),
                });
            }
        }
        self.check_type(name, t)?;
        self.bytes += self.stored_bytes(t);
        let data = self.gguf.tensor_data(t);
        let w = self
            .backend
            .load_weight(name, t.dtype, &actual, data)
            .map_err(|e| ModelError::Tensor {
                name: name.to_string(),
                problem: e.to_string(),
            })?;
        Ok(Some(w))
    }

    /// Splits a tensor into consecutive blocks of rows, each its own weight (a view of the
    /// same bytes, nothing is copied): `parts` gives each block's row count and they must add
    /// up to the tensor's rows (a matrix's rows are its outputs, so this splits a fused QKV
    /// or gate|up projection). With `shape` the tensor must have that shape. `None` when the
    /// tensor is absent.
    pub fn split_rows(
        &mut self,
        name: &str,
        shape: Option<&[usize]>,
        parts: &[usize],
    ) -> Result<Option<Vec<Weight>>> {
        let Some(t) = self.gguf.tensor(name) else {
            return Ok(None);
        };
        let actual = t.shape();
        // a vector (a fused bias) splits by elements
        let (rows, cols): (usize, usize) = match actual.len() {
            1 => (actual[0], 1),
            d => (actual[..d - 1].iter().product(), actual[d - 1]),
        };
        if let Some(want) = shape {
            if actual != want {
                return Err(ModelError::Tensor {
                    name: name.to_string(),
                    problem: format!("has shape {actual:?}, expected {want:?}"),
                });
            }
        }
        if parts.iter().sum::<usize>() != rows {
            return Err(ModelError::Tensor {
                name: name.to_string(),
                problem: format!("has {rows} rows, expected {}", parts.iter().sum::<usize>()),
            });
        }
        self.check_type(name, t)?;
        let row_bytes = t.dtype.row_bytes(cols).ok_or_else(|| ModelError::Tensor {
            name: name.to_string(),
            problem: format!("rows of {cols} are not whole {} blocks", t.dtype),
        })?;
        self.bytes += self.stored_bytes(t);
        let data = self.gguf.tensor_data(t);
        let mut out = Vec::with_capacity(parts.len());
        let mut first = 0;
        for (i, &n) in parts.iter().enumerate() {
            let err = |e: engine_core::Error| ModelError::Tensor {
                name: name.to_string(),
                problem: e.to_string(),
            };
            let bytes = data.slice(first * row_bytes, n * row_bytes).map_err(err)?;
            let part_shape: Vec<usize> = if actual.len() == 1 {
                vec![n]
            } else {
                vec![n, cols]
            };
            out.push(
                self.backend
                    .load_weight(&format!("{name}[{i}]"), t.dtype, &part_shape, bytes)
                    .map_err(err)?,
            );
            first += n;
        }
        Ok(Some(out))
    }

    /// A stacked tensor of `n` equal blocks of rows (MoE experts: `[n, rows, cols]`, or
    /// per-expert biases `[n, cols]`), one view per block.
    pub fn stacked(&mut self, name: &str, shape: &[usize]) -> Result<Option<Vec<Weight>>> {
        let n = shape[0];
        let per: usize = if shape.len() > 2 {
            shape[1..shape.len() - 1].iter().product()
        } else {
            1
        };
        self.split_rows(name, Some(shape), &vec![per; n])
    }

    /// A small F32 tensor read to the host (e.g. routing biases the host applies).
    pub fn host_f32(&mut self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        let Some(t) = self.gguf.tensor(name) else {
            return Ok(None);
        };
        if t.dtype != engine_core::DType::F32 || t.numel() != len as u64 {
            return Err(ModelError::Tensor {
                name: name.to_string(),
                problem: format!(
                    "expected {len} F32 values, found {} of {} {:?}",
                    t.numel(),
                    t.dtype,
                    t.shape()
                ),
            });
        }
        self.bytes += t.size as u64;
        let data = self.gguf.tensor_data(t);
        Ok(Some(
            data.as_slice()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }

    fn check_type(&self, name: &str, t: &engine_gguf::TensorInfo) -> Result<()> {
        if !self.backend.supports(t.dtype) && t.ne.len() > 1 {
            return Err(ModelError::Tensor {
                name: name.to_string(),
                problem: format!(
                    "type {} is not supported by the {} backend",
                    t.dtype,
                    self.backend.name()
                ),
            });
        }
        Ok(())
    }
}
