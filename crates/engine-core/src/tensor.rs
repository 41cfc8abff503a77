//! Tensors as the model code sees them: a type, a row-major shape and an opaque device buffer.
//!
//! Two kinds exist. A [`Weight`] is immutable and shared (often a view into a memory-mapped
//! file); a [`Tensor`] is an activation buffer owned by one computation. Neither knows which
//! device holds its bytes: each backend downcasts the [`DeviceBuffer`] it made itself.
//!
//! Shapes are row-major, outermost dimension first (numpy order). A GGUF matrix with ggml
//! `ne = [n_in, n_out]` is a weight of shape `[n_out, n_in]`: one row per output.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Up to four dimensions, stored inline so that reshaping never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; 4],
    ndim: u8,
}

impl Shape {
    /// Makes a shape; at most four dimensions.
    pub fn new(dims: &[usize]) -> Result<Shape> {
        if dims.is_empty() || dims.len() > 4 {
            return Err(Error::Shape(format!(
                "{} dimensions (1 to 4 supported)",
                dims.len()
            )));
        }
        let mut d = [1; 4];
        d[..dims.len()].copy_from_slice(dims);
        Ok(Shape {
            dims: d,
            ndim: dims.len() as u8,
        })
    }

    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.ndim as usize]
    }

    /// Number of elements (saturating, so absurd shapes compare as huge).
    pub fn numel(&self) -> usize {
        self.dims().iter().fold(1usize, |a, &b| a.saturating_mul(b))
    }

    /// Length of the innermost dimension (a row).
    pub fn cols(&self) -> usize {
        self.dims[self.ndim as usize - 1]
    }

    /// Number of rows: every dimension but the innermost, multiplied.
    pub fn rows(&self) -> usize {
        let d = self.dims();
        d[..d.len() - 1].iter().product()
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

/// Bytes a tensor of `dtype` and `shape` takes, or an error for a partial block or overflow.
pub fn tensor_bytes(dtype: DType, shape: &Shape) -> Result<usize> {
    let row = dtype.row_bytes(shape.cols()).ok_or_else(|| {
        Error::Shape(format!(
            "row of {} elements is not a whole number of {dtype} blocks",
            shape.cols()
        ))
    })?;
    row.checked_mul(shape.rows())
        .ok_or_else(|| Error::Shape(format!("tensor {shape:?} of {dtype} overflows")))
}

/// Storage owned by a backend. Backends downcast it back to their own type.
pub trait DeviceBuffer: Any + Send + Sync {
    /// Upcast for downcasting.
    fn as_any(&self) -> &dyn Any;
    /// Upcast for downcasting.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Bytes available in the buffer.
    fn capacity_bytes(&self) -> usize;
}

/// Host bytes with a shared owner: a memory map, a vector, anything that derefs to bytes.
#[derive(Clone)]
pub struct HostBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl HostBytes {
    /// A view of `owner[start..start + len]`; fails if that is out of bounds.
    pub fn new(
        owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
        start: usize,
        len: usize,
    ) -> Result<HostBytes> {
        let total = (*owner).as_ref().len();
        if start.checked_add(len).is_none_or(|end| end > total) {
            return Err(Error::Shape(format!(
                "byte range {start}+{len} is outside a buffer of {total} bytes"
            )));
        }
        Ok(HostBytes { owner, start, len })
    }

    /// Takes ownership of a vector.
    pub fn from_vec(v: Vec<u8>) -> HostBytes {
        let len = v.len();
        HostBytes {
            owner: Arc::new(v),
            start: 0,
            len,
        }
    }

    /// A view of `len` bytes starting `start` bytes into this view (same owner, no copy);
    /// fails if that is out of bounds. Used to address one part of a stacked tensor, e.g.
    /// one expert of an MoE weight or the query rows of a fused QKV matrix.
    pub fn slice(&self, start: usize, len: usize) -> Result<HostBytes> {
        if start.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::Shape(format!(
                "byte range {start}+{len} is outside a view of {} bytes",
                self.len
            )));
        }
        Ok(HostBytes {
            owner: self.owner.clone(),
            start: self.start + start,
            len,
        })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// An activation buffer: mutable, owned by one computation, reshaped freely within capacity.
pub struct Tensor {
    dtype: DType,
    shape: Shape,
    buf: Box<dyn DeviceBuffer>,
}

impl Tensor {
    /// Wraps a backend buffer. Backends call this; model code asks a backend to allocate.
    pub fn from_buffer(dtype: DType, shape: Shape, buf: Box<dyn DeviceBuffer>) -> Result<Tensor> {
        let need = tensor_bytes(dtype, &shape)?;
        if need > buf.capacity_bytes() {
            return Err(Error::Shape(format!(
                "{shape:?} of {dtype} needs {need} bytes, buffer holds {}",
                buf.capacity_bytes()
            )));
        }
        Ok(Tensor { dtype, shape, buf })
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Current shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Number of rows (all dimensions but the last).
    pub fn rows(&self) -> usize {
        self.shape.rows()
    }

    /// Row length.
    pub fn cols(&self) -> usize {
        self.shape.cols()
    }

    /// Changes the shape without moving data; the new size must fit the buffer.
    pub fn reshape(&mut self, dims: &[usize]) -> Result<()> {
        let shape = Shape::new(dims)?;
        let need = tensor_bytes(self.dtype, &shape)?;
        if need > self.buf.capacity_bytes() {
            return Err(Error::Shape(format!(
                "reshape to {shape:?} needs {need} bytes, buffer holds {}",
                self.buf.capacity_bytes()
            )));
        }
        self.shape = shape;
        Ok(())
    }

    /// The backend buffer, for the backend that made it.
    pub fn buffer(&self) -> &dyn DeviceBuffer {
        &*self.buf
    }

    /// The backend buffer, mutable.
    pub fn buffer_mut(&mut self) -> &mut dyn DeviceBuffer {
        &mut *self.buf
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({} {:?})", self.dtype, self.shape)
    }
}

/// An immutable model weight held by a backend; cheap to clone.
#[derive(Clone)]
pub struct Weight {
    name: Arc<str>,
    dtype: DType,
    shape: Shape,
    buf: Arc<dyn DeviceBuffer>,
}

impl Weight {
    /// Wraps a backend buffer. Backends call this from `load_weight`.
    pub fn from_buffer(
        name: &str,
        dtype: DType,
        shape: Shape,
        buf: Arc<dyn DeviceBuffer>,
    ) -> Weight {
        Weight {
            name: name.into(),
            dtype,
            shape,
            buf,
        }
    }

    /// Tensor name in the model file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Storage type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Shape, outermost first.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Number of rows (outputs for a matrix).
    pub fn rows(&self) -> usize {
        self.shape.rows()
    }

    /// Row length (inputs for a matrix).
    pub fn cols(&self) -> usize {
        self.shape.cols()
    }

    /// The backend buffer.
    pub fn buffer(&self) -> &dyn DeviceBuffer {
        &*self.buf
    }
}

impl fmt::Debug for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Weight({} {} {:?})", self.name, self.dtype, self.shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bytes_slice_views_the_same_owner_and_checks_bounds() {
        let h = HostBytes::from_vec((0u8..32).collect());
        let a = h.slice(8, 16).unwrap();
        assert_eq!(a.as_slice(), &(8u8..24).collect::<Vec<_>>()[..]);
        let b = a.slice(4, 4).unwrap();
        assert_eq!(b.as_slice(), &[12, 13, 14, 15]);
        assert!(a.slice(10, 7).is_err());
        assert!(a.slice(usize::MAX, 2).is_err());
        assert!(a.slice(16, 0).unwrap().is_empty());
    }
}
