//! The CUDA backend: NVIDIA GPUs through the driver API, loaded at run time.
//!
//! Nothing links CUDA: [`probe`] checks for the driver library before cudarc may touch it
//! (cudarc panics when it finds none), and NVRTC is loaded only to compile. The kernels are
//! the shared sources of `kernels/cuda` ([`engine_gpu::source`]), compiled by NVRTC to a
//! cubin for the device's SM ([`arch::target`]) and kept in the code-object cache keyed by
//! source hash, target, NVRTC and driver versions. The backend itself is
//! [`engine_gpu::GpuBackend`] over [`driver::CudaDriver`].
//!
//! **Status:** the kernels compile for every CI target and NVRTC's path is exercised
//! without a GPU; running them needs a GPU and is not verified in CI.

#![warn(missing_docs)]

pub mod arch;
pub mod driver;
pub mod nvrtc;

use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext};
use engine_gpu::cache::{CacheKey, CodeCache};
use engine_gpu::GpuBackend;

/// A CUDA device as the driver reports it.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Ordinal.
    pub ordinal: usize,
    /// Marketing name.
    pub name: String,
    /// Compute capability.
    pub capability: (i32, i32),
    /// Total memory in bytes.
    pub total_memory: u64,
    /// Whether the device shares memory with the CPU (Jetson, GB10).
    pub integrated: bool,
}

/// Why CUDA cannot be used, in words for the user.
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: only tries to open the library.
    if !unsafe { sys::is_culib_present() } {
        return Some(
            "CUDA is not available: the NVIDIA driver library (libcuda.so) was not found. \
             Install the NVIDIA driver, or run on the CPU (--device cpu)."
                .into(),
        );
    }
    if let Err(e) = result::init() {
        return Some(format!(
            "CUDA is not available: the driver failed to start ({e:?})"
        ));
    }
    match result::device::get_count() {
        Ok(0) => Some("CUDA is not available: the driver reports no GPU".into()),
        Ok(_) => None,
        Err(e) => Some(format!("CUDA is not available: {e:?}")),
    }
}

/// The CUDA devices, or why there are none.
pub fn probe() -> Result<Vec<DeviceInfo>, String> {
    if let Some(why) = unavailable_reason() {
        return Err(why);
    }
    let n = result::device::get_count().map_err(|e| format!("{e:?}"))?;
    let mut out = Vec::new();
    for i in 0..n.max(0) as usize {
        let ctx = CudaContext::new(i).map_err(|e| format!("CUDA device {i}: {e:?}"))?;
        let integrated = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_INTEGRATED)
            .unwrap_or(0)
            != 0;
        out.push(DeviceInfo {
            ordinal: i,
            name: ctx.name().unwrap_or_else(|_| "unknown".into()),
            capability: ctx.compute_capability().map_err(|e| format!("{e:?}"))?,
            total_memory: ctx.total_mem().unwrap_or(0) as u64,
            integrated,
        });
    }
    Ok(out)
}

/// Compiles the kernel program for `target` through NVRTC (no GPU needed) and returns the
/// cubin: what `engine kernels --check cuda` and CI run for every target.
pub fn compile(target: &str) -> Result<Vec<u8>, String> {
    let src = engine_gpu::source::program()?;
    let nv = nvrtc::Nvrtc::load()?;
    nv.compile_cubin(&src, target, &[])
}

fn driver_version() -> i32 {
    let mut v = 0;
    // SAFETY: out-parameter; the library is present (checked by the caller).
    unsafe { sys::cuDriverGetVersion(&mut v) };
    v
}

/// Opens device `ordinal` with the kernels compiled (or read from `cache`).
pub fn open(ordinal: usize, cache: &CodeCache) -> Result<GpuBackend, String> {
    let devices = probe()?;
    let info = devices.get(ordinal).ok_or_else(|| {
        format!(
            "CUDA device {ordinal} does not exist ({} device(s) found)",
            devices.len()
        )
    })?;
    if info.capability < arch::MIN_CAPABILITY {
        return Err(format!(
            "{} has compute capability {}.{}; the CUDA kernels need {}.{} or newer",
            info.name,
            info.capability.0,
            info.capability.1,
            arch::MIN_CAPABILITY.0,
            arch::MIN_CAPABILITY.1
        ));
    }
    let target = arch::target(info.capability.0, info.capability.1);
    let src = engine_gpu::source::program()?;
    let nv = nvrtc::Nvrtc::load();
    let toolchain = format!(
        "nvrtc {:?} / driver {}",
        nv.as_ref().map(|n| n.version()).ok(),
        driver_version()
    );
    let key = CacheKey {
        source_hash: engine_gpu::source::hash(&src),
        target: target.clone(),
        toolchain,
    };
    let (cubin, _cached) = cache.get_or_compile(&key, "cubin", || {
        nv.as_ref()
            .map_err(|e| e.clone())?
            .compile_cubin(&src, &target, &[])
    })?;
    let ctx = CudaContext::new(ordinal).map_err(|e| format!("CUDA device {ordinal}: {e:?}"))?;
    let describe = format!(
        "CUDA {} ({}, {} GiB{})",
        info.name,
        target,
        info.total_memory / (1 << 30),
        if info.integrated {
            ", unified memory"
        } else {
            ""
        }
    );
    let drv = driver::CudaDriver::new(ctx, &cubin, describe).map_err(|e| e.to_string())?;
    GpuBackend::new(Arc::new(drv)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_a_driver_the_reason_is_clear_and_nothing_panics() {
        match super::unavailable_reason() {
            Some(why) => assert!(why.starts_with("CUDA is not available"), "{why}"),
            None => {
                eprintln!("a CUDA driver is present here: the no-driver message was not checked")
            }
        }
    }
}
