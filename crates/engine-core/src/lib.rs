//! Core of the engine: ggml data types and block codecs, tensors, and the device-neutral
//! [`Backend`] trait that model code is written against.
//!
//! * [`dtype`]: the type-traits table (every ggml type, block size, bytes per block).
//! * [`quant`]: reference block codecs to and from f32.
//! * [`tensor`]: [`Tensor`] (activations) and [`Weight`] (immutable model weights).
//! * [`backend`]: the [`Backend`] trait and the parameter types of its operations.
//! * [`hostmem`]: the host's RAM as the OS reports it.

#![warn(missing_docs)]

pub mod backend;
pub mod dtype;
pub mod error;
pub mod hostmem;
pub mod quant;
pub mod tensor;

pub use backend::{
    Activation, AttentionSpec, Backend, ExpertSpan, QueryPos, RopeMode, RopeSpec, SeqRun,
    SsmScanSpec,
};
pub use dtype::DType;
pub use error::{Error, Result};
pub use tensor::{DeviceBuffer, HostBytes, Shape, Tensor, Weight};
