//! Fetching named tensors from a GGUF model onto a backend, with shape checks.

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
        self.bytes += t.size as u64;
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
}
