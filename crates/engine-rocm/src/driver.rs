//! [`RocmDriver`]: the generic GPU backend's [`Driver`] over the HIP runtime: one device
//! (made current on the calling thread before every call), the null stream (every copy and
//! launch in order), the module of the engine's kernels, and the memory pool chosen by
//! [`crate::memory::place`] (device memory, or GPU-mapped system memory on an APU).

use std::ffi::{c_int, c_void, CString};

use engine_core::{Error, Result};
use engine_gpu::{DevPtr, Driver, FnHandle};

use crate::hip::{self, Handle, Hip};
use crate::memory::Pool;

/// One AMD GPU with the kernels loaded.
pub struct RocmDriver {
    hip: &'static Hip,
    ordinal: c_int,
    module: Handle,
    pool: Pool,
    wave: u32,
    describe: String,
}

// SAFETY: the module handle is only used through the thread-safe HIP runtime, with the
// device made current on the calling thread first.
unsafe impl Send for RocmDriver {}
// SAFETY: as above.
unsafe impl Sync for RocmDriver {}

fn err(hip: &Hip, what: &str, e: hip::HipError) -> Error {
    Error::Backend(format!("HIP {what} failed: {}", hip.describe(e)))
}

impl RocmDriver {
    /// Loads `code_object` (built for this device's target, wavefronts of `wave` lanes) on
    /// device `ordinal`, allocating from `pool`.
    pub fn new(
        hip: &'static Hip,
        ordinal: usize,
        code_object: &[u8],
        pool: Pool,
        wave: u32,
        describe: String,
    ) -> Result<RocmDriver> {
        let ordinal = ordinal as c_int;
        // SAFETY: selects a device that probe() enumerated.
        let rc = unsafe { (hip.set_device)(ordinal) };
        if rc != 0 {
            return Err(err(hip, "device selection", rc));
        }
        let mut module: Handle = std::ptr::null_mut();
        // SAFETY: a complete code object from hiprtc (or the cache, where a corrupt file
        // makes the call fail, not crash).
        let rc =
            unsafe { (hip.module_load_data)(&mut module, code_object.as_ptr() as *const c_void) };
        if rc != 0 {
            return Err(err(hip, "module load", rc));
        }
        Ok(RocmDriver {
            hip,
            ordinal,
            module,
            pool,
            wave,
            describe,
        })
    }

    fn bind(&self) -> Result<()> {
        // SAFETY: plain call.
        let rc = unsafe { (self.hip.set_device)(self.ordinal) };
        if rc != 0 {
            return Err(err(self.hip, "device selection", rc));
        }
        Ok(())
    }

    fn call(&self, what: &str, rc: hip::HipError) -> Result<()> {
        if rc != 0 {
            return Err(err(self.hip, what, rc));
        }
        Ok(())
    }

    /// Where allocations go.
    pub fn pool(&self) -> Pool {
        self.pool
    }
}

impl Drop for RocmDriver {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            // SAFETY: the module is loaded once and unloaded here.
            unsafe { (self.hip.module_unload)(self.module) };
        }
    }
}

impl Driver for RocmDriver {
    fn name(&self) -> &'static str {
        "ROCm"
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn warp_size(&self) -> u32 {
        self.wave
    }

    fn function(&self, name: &str) -> Result<FnHandle> {
        self.bind()?;
        let c = CString::new(name).map_err(|_| Error::Backend("kernel name with NUL".into()))?;
        let mut f: Handle = std::ptr::null_mut();
        // SAFETY: a loaded module and a C string.
        let rc = unsafe { (self.hip.module_get_function)(&mut f, self.module, c.as_ptr()) };
        self.call(&format!("kernel lookup of {name}"), rc)?;
        Ok(FnHandle(f as usize))
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.bind()?;
        let mut p: *mut c_void = std::ptr::null_mut();
        let bytes_nz = bytes.max(1);
        // SAFETY: plain allocations; the advice only concerns the range just allocated.
        let rc = unsafe {
            match self.pool {
                Pool::Device => (self.hip.malloc)(&mut p, bytes_nz),
                Pool::Host => {
                    let rc = (self.hip.malloc_managed)(&mut p, bytes_nz, hip::MEM_ATTACH_GLOBAL);
                    if rc == 0 {
                        // Best effort: without it the GPU reads the weights uncached.
                        (self.hip.mem_advise)(p, bytes_nz, hip::ADVISE_COARSE_GRAIN, self.ordinal);
                    }
                    rc
                }
            }
        };
        if rc != 0 {
            let (free, total) = self.memory().unwrap_or((0, 0));
            return Err(Error::OutOfMemory {
                need: bytes as u64,
                available: free,
                what: format!(
                    "ROCm {} ({total} bytes of device memory in all): {}",
                    self.pool,
                    self.hip.describe(rc)
                ),
            });
        }
        Ok(p as DevPtr)
    }

    unsafe fn free(&self, ptr: DevPtr) {
        if self.bind().is_ok() {
            // SAFETY: per the trait's contract (hipFree releases managed memory too).
            unsafe { (self.hip.free)(ptr as *mut c_void) };
        }
    }

    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: dst holds at least src.len() bytes (checked by the backend).
        let rc = unsafe {
            (self.hip.memcpy_htod)(dst as *mut c_void, src.as_ptr() as *const c_void, src.len())
        };
        self.call("upload", rc)
    }

    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: src holds at least dst.len() bytes (checked by the backend); the copy
        // waits for the work queued before it on the null stream.
        let rc = unsafe {
            (self.hip.memcpy_dtoh)(
                dst.as_mut_ptr() as *mut c_void,
                src as *mut c_void,
                dst.len(),
            )
        };
        self.call("download", rc)
    }

    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both ranges are inside live allocations (checked by the backend).
        let rc = unsafe { (self.hip.memcpy_dtod)(dst as *mut c_void, src as *mut c_void, bytes) };
        self.call("copy", rc)
    }

    fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: dst holds `bytes` bytes.
        let rc = unsafe { (self.hip.memset_d8)(dst as *mut c_void, 0, bytes) };
        self.call("memset", rc)
    }

    unsafe fn launch(
        &self,
        f: FnHandle,
        grid: [u32; 3],
        block: [u32; 3],
        args: &mut [*mut c_void],
    ) -> Result<()> {
        self.bind()?;
        // SAFETY: per the trait's contract; a null stream is the device's default stream.
        let rc = unsafe {
            (self.hip.module_launch_kernel)(
                f.0 as Handle,
                grid[0],
                grid[1],
                grid[2],
                block[0],
                block[1],
                block[2],
                0,
                std::ptr::null_mut(),
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        self.call("kernel launch", rc)
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: no arguments; waits for the bound device.
        let rc = unsafe { (self.hip.device_synchronize)() };
        self.call("synchronize", rc)
    }

    fn memory(&self) -> Result<(u64, u64)> {
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: out-parameters.
        let rc = unsafe { (self.hip.mem_get_info)(&mut free, &mut total) };
        self.call("memory query", rc)?;
        Ok((free as u64, total as u64))
    }
}
