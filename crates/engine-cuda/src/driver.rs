//! [`CudaDriver`]: the generic GPU backend's [`Driver`] over the CUDA driver API (cudarc's
//! thin `result` layer): the primary context of one device, its legacy default stream
//! (every copy and launch in order), and the module of the engine's kernels.

use std::ffi::{c_void, CString};
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext};
use engine_core::{Error, Result};
use engine_gpu::{DevPtr, Driver, FnHandle};

fn err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Backend(format!("CUDA {what} failed: {e:?}"))
}

/// One CUDA device with the kernels loaded.
pub struct CudaDriver {
    ctx: Arc<CudaContext>,
    module: sys::CUmodule,
    describe: String,
}

// SAFETY: the module handle is used only with the context bound on the calling thread;
// CUDA driver calls are thread-safe.
unsafe impl Send for CudaDriver {}
// SAFETY: as above.
unsafe impl Sync for CudaDriver {}

impl CudaDriver {
    /// Loads `cubin` into device `ctx`'s context.
    pub fn new(ctx: Arc<CudaContext>, cubin: &[u8], describe: String) -> Result<CudaDriver> {
        ctx.bind_to_thread().map_err(|e| err("context bind", e))?;
        // SAFETY: a complete cubin image produced by NVRTC (or read back from the cache,
        // where a corrupt file makes this call fail, not crash).
        let module = unsafe { result::module::load_data(cubin.as_ptr() as *const c_void) }
            .map_err(|e| err("module load", e))?;
        Ok(CudaDriver {
            ctx,
            module,
            describe,
        })
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| err("context bind", e))
    }
}

impl Drop for CudaDriver {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            // SAFETY: the module is loaded once and unloaded here.
            let _ = unsafe { result::module::unload(self.module) };
        }
    }
}

impl Driver for CudaDriver {
    fn name(&self) -> &'static str {
        "CUDA"
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn warp_size(&self) -> u32 {
        32
    }

    fn function(&self, name: &str) -> Result<FnHandle> {
        self.bind()?;
        let c = CString::new(name).map_err(|_| Error::Backend("kernel name with NUL".into()))?;
        // SAFETY: a loaded module.
        let f = unsafe { result::module::get_function(self.module, c) }
            .map_err(|e| err(&format!("kernel lookup of {name}"), e))?;
        Ok(FnHandle(f as usize))
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.bind()?;
        // SAFETY: plain allocation.
        unsafe { result::malloc_sync(bytes) }.map_err(|e| {
            let (free, total) = result::mem_get_info().unwrap_or((0, 0));
            Error::OutOfMemory {
                need: bytes as u64,
                available: free as u64,
                what: format!("CUDA device memory ({total} bytes in all): {e:?}"),
            }
        })
    }

    unsafe fn free(&self, ptr: DevPtr) {
        if self.bind().is_ok() {
            // SAFETY: per the trait's contract.
            let _ = unsafe { result::free_sync(ptr) };
        }
    }

    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: dst holds at least src.len() bytes (checked by the backend).
        unsafe { result::memcpy_htod_sync(dst, src) }.map_err(|e| err("upload", e))
    }

    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: src holds at least dst.len() bytes (checked by the backend).
        unsafe { result::memcpy_dtoh_sync(dst, src) }.map_err(|e| err("download", e))
    }

    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both ranges are inside live allocations (checked by the backend).
        unsafe { result::memcpy_dtod_sync(dst, src, bytes) }.map_err(|e| err("copy", e))
    }

    fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: dst holds `bytes` bytes.
        unsafe { result::memset_d8_sync(dst, 0, bytes) }.map_err(|e| err("memset", e))
    }

    unsafe fn launch(
        &self,
        f: FnHandle,
        grid: [u32; 3],
        block: [u32; 3],
        args: &mut [*mut c_void],
    ) -> Result<()> {
        self.bind()?;
        // SAFETY: per the trait's contract; stream 0 is the legacy default stream.
        unsafe {
            result::launch_kernel(
                f.0 as sys::CUfunction,
                (grid[0], grid[1], grid[2]),
                (block[0], block[1], block[2]),
                0,
                std::ptr::null_mut(),
                args,
            )
        }
        .map_err(|e| err("kernel launch", e))
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        result::ctx::synchronize().map_err(|e| err("synchronize", e))
    }

    fn memory(&self) -> Result<(u64, u64)> {
        self.bind()?;
        let (free, total) = result::mem_get_info().map_err(|e| err("memory query", e))?;
        Ok((free as u64, total as u64))
    }
}
