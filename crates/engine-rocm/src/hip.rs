//! The HIP runtime (`libamdhip64`), loaded at run time: only the C functions the backend
//! calls, looked up by name, so the workspace builds and runs with no ROCm installed. The
//! library is found through `ENGINE_HIP_LIB` (a path), else the sonames of ROCm 7 down to
//! 5. Loaded once per process.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

/// `hipError_t`.
pub type HipError = c_int;
/// `hipModule_t`, `hipFunction_t`, `hipStream_t`: opaque handles.
pub type Handle = *mut c_void;

/// `hipDeviceAttributeIntegrated` (the same value from ROCm 5 to 7).
pub const ATTR_INTEGRATED: c_int = 16;
/// `hipDeviceAttributeManagedMemory`.
pub const ATTR_MANAGED_MEMORY: c_int = 24;
/// `hipDeviceAttributeMultiprocessorCount`.
pub const ATTR_MULTIPROCESSOR_COUNT: c_int = 63;
/// `hipDeviceAttributeWarpSize`.
pub const ATTR_WARP_SIZE: c_int = 87;
/// `hipMemAttachGlobal`.
pub const MEM_ATTACH_GLOBAL: c_uint = 1;
/// `hipMemAdviseSetCoarseGrain`: the GPU may cache managed memory (it is not shared
/// word-by-word with the CPU while kernels run).
pub const ADVISE_COARSE_GRAIN: c_int = 100;

/// Library names tried, newest first.
pub const CANDIDATES: &[&str] = &[
    "libamdhip64.so",
    "libamdhip64.so.7",
    "libamdhip64.so.6",
    "libamdhip64.so.5",
    "amdhip64_7.dll",
    "amdhip64_6.dll",
];

macro_rules! hip_api {
    ($($field:ident = $name:literal : fn($($arg:ty),*) -> $ret:ty;)*) => {
        /// The loaded runtime's entry points.
        #[allow(missing_docs)]
        pub struct Hip {
            _lib: libloading::Library,
            /// The library that was loaded.
            pub path: String,
            $(pub $field: unsafe extern "C" fn($($arg),*) -> $ret,)*
        }

        impl Hip {
            fn from_lib(lib: libloading::Library, path: &str) -> Result<Hip, String> {
                Ok(Hip {
                    $($field: sym(&lib, $name)?,)*
                    path: path.to_string(),
                    _lib: lib,
                })
            }
        }
    };
}

hip_api! {
    init = "hipInit": fn(c_uint) -> HipError;
    runtime_version = "hipRuntimeGetVersion": fn(*mut c_int) -> HipError;
    driver_version = "hipDriverGetVersion": fn(*mut c_int) -> HipError;
    device_count = "hipGetDeviceCount": fn(*mut c_int) -> HipError;
    device_name = "hipDeviceGetName": fn(*mut c_char, c_int, c_int) -> HipError;
    device_attribute = "hipDeviceGetAttribute": fn(*mut c_int, c_int, c_int) -> HipError;
    device_total_mem = "hipDeviceTotalMem": fn(*mut usize, c_int) -> HipError;
    set_device = "hipSetDevice": fn(c_int) -> HipError;
    mem_get_info = "hipMemGetInfo": fn(*mut usize, *mut usize) -> HipError;
    malloc = "hipMalloc": fn(*mut *mut c_void, usize) -> HipError;
    malloc_managed = "hipMallocManaged": fn(*mut *mut c_void, usize, c_uint) -> HipError;
    mem_advise = "hipMemAdvise": fn(*const c_void, usize, c_int, c_int) -> HipError;
    free = "hipFree": fn(*mut c_void) -> HipError;
    memcpy_htod = "hipMemcpyHtoD": fn(*mut c_void, *const c_void, usize) -> HipError;
    memcpy_dtoh = "hipMemcpyDtoH": fn(*mut c_void, *mut c_void, usize) -> HipError;
    memcpy_dtod = "hipMemcpyDtoD": fn(*mut c_void, *mut c_void, usize) -> HipError;
    memset_d8 = "hipMemsetD8": fn(*mut c_void, u8, usize) -> HipError;
    module_load_data = "hipModuleLoadData": fn(*mut Handle, *const c_void) -> HipError;
    module_unload = "hipModuleUnload": fn(Handle) -> HipError;
    module_get_function = "hipModuleGetFunction": fn(*mut Handle, Handle, *const c_char) -> HipError;
    module_launch_kernel = "hipModuleLaunchKernel": fn(
        Handle, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, Handle,
        *mut *mut c_void, *mut *mut c_void
    ) -> HipError;
    device_synchronize = "hipDeviceSynchronize": fn() -> HipError;
    error_string = "hipGetErrorString": fn(HipError) -> *const c_char;
}

fn sym<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
    // SAFETY: each field's type is the HIP C API's signature for that name.
    unsafe {
        lib.get::<T>(name.as_bytes())
            .map(|s| *s)
            .map_err(|e| format!("the HIP runtime has no {name}: {e}"))
    }
}

impl Hip {
    /// The process's HIP runtime, loaded on first use, or why it cannot be.
    pub fn get() -> Result<&'static Hip, String> {
        static HIP: OnceLock<Result<Hip, String>> = OnceLock::new();
        HIP.get_or_init(Hip::load).as_ref().map_err(Clone::clone)
    }

    fn load() -> Result<Hip, String> {
        let names: Vec<String> = match std::env::var("ENGINE_HIP_LIB") {
            Ok(p) if !p.is_empty() => vec![p],
            _ => CANDIDATES.iter().map(|s| s.to_string()).collect(),
        };
        let mut tried = Vec::new();
        for name in &names {
            // SAFETY: loading the HIP runtime runs only its own initialisers.
            match unsafe { libloading::Library::new(name) } {
                Ok(lib) => return Hip::from_lib(lib, name),
                Err(e) => tried.push(format!("{name} ({e})")),
            }
        }
        Err(format!(
            "ROCm is not available: the HIP runtime (libamdhip64.so) was not found. Install \
             ROCm's HIP runtime (or set ENGINE_HIP_LIB to its path), or run on the CPU \
             (--device cpu). Tried: {}",
            tried.join(", ")
        ))
    }

    /// `hipGetErrorString`, with the number.
    pub fn describe(&self, e: HipError) -> String {
        // SAFETY: returns a static string (or null) for any code.
        let p = unsafe { (self.error_string)(e) };
        let text = if p.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: a NUL-terminated static string.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        };
        format!("{text} ({e})")
    }

    /// Turns a return code into a result naming the call.
    pub fn check(&self, e: HipError, what: &str) -> Result<(), String> {
        if e == 0 {
            Ok(())
        } else {
            Err(format!("HIP {what} failed: {}", self.describe(e)))
        }
    }

    /// `hipRuntimeGetVersion`, 0 when unknown.
    pub fn version(&self) -> i32 {
        let mut v = 0;
        // SAFETY: out-parameter.
        unsafe { (self.runtime_version)(&mut v) };
        v
    }
}
