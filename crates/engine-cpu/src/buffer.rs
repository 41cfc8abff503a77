//! CPU storage: 64-byte-aligned activation buffers and weights that are views into host
//! memory (usually the model file's memory map) or owned copies.

use std::any::Any;

use engine_core::tensor::HostBytes;
use engine_core::DType;
use engine_core::{DeviceBuffer, Error, Result, Tensor, Weight};

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// An owned, zero-initialised, 64-byte-aligned byte buffer.
pub struct CpuBuffer {
    lines: Vec<Line>,
    len: usize,
}

impl CpuBuffer {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Result<CpuBuffer> {
        let n = len.div_ceil(64);
        let mut lines = Vec::new();
        lines.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
            need: len as u64,
            available: 0,
            what: "CPU activation buffer".into(),
        })?;
        lines.resize(n, Line([0; 64]));
        Ok(CpuBuffer { lines, len })
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `lines` is a contiguous array of at least `len` bytes.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u8, self.len) }
    }

    /// The bytes, mutable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut u8, self.len) }
    }

    /// The buffer as f32 values (it is 64-byte aligned).
    pub fn f32s(&self) -> &[f32] {
        // SAFETY: aligned, and every bit pattern is a valid f32.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const f32, self.len / 4) }
    }

    /// The buffer as mutable f32 values.
    pub fn f32s_mut(&mut self) -> &mut [f32] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut f32, self.len / 4) }
    }
}

impl DeviceBuffer for CpuBuffer {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn capacity_bytes(&self) -> usize {
        self.len
    }
}

/// A weight's bytes: a zero-copy view, or an owned aligned copy.
pub enum CpuWeight {
    /// Bytes left where they are (memory-mapped file).
    View(HostBytes),
    /// Bytes copied (alignment or conversion), in the weight's own format.
    Owned(CpuBuffer),
    /// Blocks expanded at load time into another format holding the same values (see
    /// [`crate::kernels::repack`]).
    Repacked {
        /// The expanded blocks.
        buf: CpuBuffer,
        /// Their format.
        layout: DType,
    },
}

impl CpuWeight {
    /// The bytes, in ggml layout of [`CpuWeight::layout`].
    pub fn bytes(&self) -> &[u8] {
        match self {
            CpuWeight::View(h) => h.as_slice(),
            CpuWeight::Owned(b) | CpuWeight::Repacked { buf: b, .. } => b.bytes(),
        }
    }

    /// The block format of [`CpuWeight::bytes`] for a weight of type `dtype`.
    pub fn layout(&self, dtype: DType) -> DType {
        match self {
            CpuWeight::Repacked { layout, .. } => *layout,
            _ => dtype,
        }
    }

    /// The weight as f32 values (F32 weights are always stored aligned).
    pub fn f32s(&self) -> &[f32] {
        let b = self.bytes();
        debug_assert_eq!(b.as_ptr() as usize % 4, 0);
        // SAFETY: F32 weights are made 4-byte aligned at load time (see `load`).
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f32, b.len() / 4) }
    }
}

impl DeviceBuffer for CpuWeight {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn capacity_bytes(&self) -> usize {
        self.bytes().len()
    }
}

/// The CPU buffer behind an activation tensor.
pub fn cpu(t: &Tensor) -> Result<&CpuBuffer> {
    t.buffer()
        .as_any()
        .downcast_ref()
        .ok_or(Error::WrongBackend("CPU"))
}

/// The CPU buffer behind an activation tensor, mutable.
pub fn cpu_mut(t: &mut Tensor) -> Result<&mut CpuBuffer> {
    t.buffer_mut()
        .as_any_mut()
        .downcast_mut()
        .ok_or(Error::WrongBackend("CPU"))
}

/// The CPU storage behind a weight.
pub fn cpu_weight(w: &Weight) -> Result<&CpuWeight> {
    w.buffer()
        .as_any()
        .downcast_ref()
        .ok_or(Error::WrongBackend("CPU"))
}

/// The first `t.shape().numel()` f32 values of an F32 tensor.
pub fn f32s(t: &Tensor) -> Result<&[f32]> {
    let n = t.shape().numel();
    Ok(&cpu(t)?.f32s()[..n])
}

/// Mutable view of the first `numel` f32 values of an F32 tensor.
pub fn f32s_mut(t: &mut Tensor) -> Result<&mut [f32]> {
    let n = t.shape().numel();
    Ok(&mut cpu_mut(t)?.f32s_mut()[..n])
}
