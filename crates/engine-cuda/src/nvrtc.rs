//! NVRTC, loaded at run time: compiles the kernel program to a cubin for a real SM.
//!
//! A cubin rather than PTX: PTX from a newer NVRTC is refused by an older driver
//! (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`), a cubin for the device's SM is not. The library
//! is found through `ENGINE_NVRTC_LIB` (a path), else the usual names from CUDA 13 down to
//! 11, so a CUDA 13-only system (GB10) is found too.

use std::ffi::{c_char, c_int, c_void, CString};

type Prog = *mut c_void;
type CreateFn = unsafe extern "C" fn(
    *mut Prog,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(Prog, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(Prog, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut Prog) -> c_int;
type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;

/// Library names tried, newest first.
pub const CANDIDATES: &[&str] = &[
    "libnvrtc.so",
    "libnvrtc.so.13",
    "libnvrtc.so.12",
    "libnvrtc.so.11.2",
    "nvrtc64_130_0.dll",
    "nvrtc64_120_0.dll",
];

/// A loaded NVRTC.
pub struct Nvrtc {
    _lib: libloading::Library,
    create: CreateFn,
    compile: CompileFn,
    log_size: SizeFn,
    log: GetFn,
    cubin_size: SizeFn,
    cubin: GetFn,
    destroy: DestroyFn,
    version: (i32, i32),
    path: String,
}

fn sym<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
    // SAFETY: the symbol types match NVRTC's public C API.
    unsafe {
        lib.get::<T>(name.as_bytes())
            .map(|s| *s)
            .map_err(|e| format!("NVRTC has no {name}: {e}"))
    }
}

impl Nvrtc {
    /// Loads NVRTC, or says what was tried.
    pub fn load() -> Result<Nvrtc, String> {
        let mut tried = Vec::new();
        let names: Vec<String> = match std::env::var("ENGINE_NVRTC_LIB") {
            Ok(p) if !p.is_empty() => vec![p],
            _ => CANDIDATES.iter().map(|s| s.to_string()).collect(),
        };
        for name in &names {
            // SAFETY: loading NVRTC runs no untrusted initialisers beyond the library's own.
            match unsafe { libloading::Library::new(name) } {
                Ok(lib) => return Self::from_lib(lib, name),
                Err(e) => tried.push(format!("{name} ({e})")),
            }
        }
        Err(format!(
            "NVRTC (the CUDA runtime compiler) was not found; install the CUDA toolkit's \
             libnvrtc or set ENGINE_NVRTC_LIB to its path. Tried: {}",
            tried.join(", ")
        ))
    }

    fn from_lib(lib: libloading::Library, path: &str) -> Result<Nvrtc, String> {
        let version_fn: VersionFn = sym(&lib, "nvrtcVersion")?;
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two out-parameters.
        unsafe { version_fn(&mut major, &mut minor) };
        Ok(Nvrtc {
            create: sym(&lib, "nvrtcCreateProgram")?,
            compile: sym(&lib, "nvrtcCompileProgram")?,
            log_size: sym(&lib, "nvrtcGetProgramLogSize")?,
            log: sym(&lib, "nvrtcGetProgramLog")?,
            cubin_size: sym(&lib, "nvrtcGetCUBINSize")?,
            cubin: sym(&lib, "nvrtcGetCUBIN")?,
            destroy: sym(&lib, "nvrtcDestroyProgram")?,
            version: (major, minor),
            path: path.to_string(),
            _lib: lib,
        })
    }

    /// `(major, minor)`.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// The library that was loaded.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Compiles `src` for `arch` (e.g. `sm_86`, `sm_121a`) and returns the cubin, or the
    /// compiler's log.
    pub fn compile_cubin(&self, src: &str, arch: &str, extra: &[&str]) -> Result<Vec<u8>, String> {
        let csrc = CString::new(src).map_err(|_| "kernel source holds a NUL byte".to_string())?;
        let name = CString::new("engine_kernels.cu").expect("no NUL");
        let mut opts: Vec<CString> = vec![
            CString::new(format!("--gpu-architecture={arch}")).expect("no NUL"),
            CString::new("--std=c++17").expect("no NUL"),
            CString::new("-default-device").expect("no NUL"),
        ];
        for e in extra {
            opts.push(CString::new(*e).map_err(|_| "option holds a NUL byte".to_string())?);
        }
        let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: Prog = std::ptr::null_mut();
        // SAFETY: valid C strings; no headers.
        let rc = unsafe {
            (self.create)(
                &mut prog,
                csrc.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(format!("nvrtcCreateProgram failed ({rc})"));
        }
        // SAFETY: prog is a live program; the options outlive the call.
        let rc = unsafe { (self.compile)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
        let result = if rc != 0 {
            Err(format!(
                "NVRTC could not compile the kernels for {arch} (error {rc}):\n{}",
                self.program_log(prog)
            ))
        } else {
            let mut size = 0usize;
            // SAFETY: out-parameter, then a buffer of that size.
            unsafe {
                (self.cubin_size)(prog, &mut size);
                let mut buf = vec![0u8; size];
                let rc = (self.cubin)(prog, buf.as_mut_ptr() as *mut c_char);
                if rc != 0 || size == 0 {
                    Err(format!("NVRTC produced no cubin for {arch} (error {rc})"))
                } else {
                    Ok(buf)
                }
            }
        };
        // SAFETY: destroys the program created above.
        unsafe { (self.destroy)(&mut prog) };
        result
    }

    fn program_log(&self, prog: Prog) -> String {
        let mut size = 0usize;
        // SAFETY: out-parameter, then a buffer of that size.
        unsafe {
            (self.log_size)(prog, &mut size);
            let mut buf = vec![0u8; size.max(1)];
            (self.log)(prog, buf.as_mut_ptr() as *mut c_char);
            String::from_utf8_lossy(&buf)
                .trim_end_matches('\0')
                .to_string()
        }
    }
}
