//! What the generic GPU backend needs from a runtime (CUDA, HIP): device memory, copies and
//! kernel launches on one in-order queue. Every call is ordered after the previous ones;
//! `download` returns only when the data (and all work before it) is complete.

use std::ffi::c_void;

use engine_core::Result;

/// A device address.
pub type DevPtr = u64;

/// A loaded kernel function (the runtime's handle, as an integer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FnHandle(pub usize);

/// A GPU runtime with a compiled module of the engine's kernels loaded.
pub trait Driver: Send + Sync + 'static {
    /// Short backend name, e.g. `CUDA`.
    fn name(&self) -> &'static str;
    /// One line: device, architecture, memory.
    fn describe(&self) -> String;
    /// Threads per warp / wavefront the kernels were compiled for.
    fn warp_size(&self) -> u32;
    /// Looks a kernel up by name in the loaded module.
    fn function(&self, name: &str) -> Result<FnHandle>;
    /// Allocates `bytes` of device memory (not initialised).
    fn alloc(&self, bytes: usize) -> Result<DevPtr>;
    /// Frees memory from [`Driver::alloc`].
    ///
    /// # Safety
    /// `ptr` came from `alloc` on this driver and is not used afterwards.
    unsafe fn free(&self, ptr: DevPtr);
    /// Host to device.
    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    /// Device to host; waits for all queued work.
    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()>;
    /// Device to device.
    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()>;
    /// Zero-fills device memory.
    fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()>;
    /// Queues a kernel.
    ///
    /// # Safety
    /// `args` point to values matching the kernel's parameter list, and every device
    /// pointer among them is valid for what the kernel touches.
    unsafe fn launch(
        &self,
        f: FnHandle,
        grid: [u32; 3],
        block: [u32; 3],
        args: &mut [*mut c_void],
    ) -> Result<()>;
    /// Waits until everything queued has finished.
    fn synchronize(&self) -> Result<()>;
    /// Free and total device memory in bytes.
    fn memory(&self) -> Result<(u64, u64)>;
}
