//! The GPU backend, written once for every GPU runtime.
//!
//! * [`driver`]: the few things a GPU runtime must do (allocate, copy, compile, launch);
//!   `engine-cuda` implements it over the CUDA driver API, `engine-rocm` over HIP.
//! * [`source`]: the kernel sources (`kernels/cuda`), expanded into one translation unit.
//! * [`rtc`]: the runtime compiler (NVRTC, hiprtc), loaded at run time by one loader.
//! * [`cache`]: the on-disk code-object cache, keyed by source hash, target and toolchain.
//! * [`backend`]: [`GpuBackend`], the `engine_core::Backend` made of kernel launches.
//! * [`profile`]: per-operation timing of a driver (`ENGINE_GPU_PROFILE=1`).

#![warn(missing_docs)]

pub mod backend;
pub mod cache;
pub mod driver;
pub mod profile;
pub mod rtc;
pub mod source;

pub use backend::GpuBackend;
pub use driver::{DevPtr, Driver, FnHandle};
