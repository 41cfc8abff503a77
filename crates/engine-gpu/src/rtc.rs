//! A runtime compiler loaded at run time: NVRTC and hiprtc have the same C API shape
//! (create, compile, log, code, destroy, version) under different prefixes, so one loader
//! serves both; each backend supplies an [`RtcApi`] naming its library and symbols.

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

/// Which runtime compiler: its name for messages, where to find it, and its symbols.
#[derive(Clone, Copy, Debug)]
pub struct RtcApi {
    /// Name in messages, e.g. `NVRTC`.
    pub label: &'static str,
    /// Symbol prefix, e.g. `nvrtc`.
    pub prefix: &'static str,
    /// Suffix of the code-size function after the prefix, e.g. `GetCUBINSize`.
    pub code_size: &'static str,
    /// Suffix of the code getter, e.g. `GetCUBIN`.
    pub code: &'static str,
    /// Environment variable holding a path that overrides the search.
    pub env: &'static str,
    /// Library names tried, newest first.
    pub candidates: &'static [&'static str],
    /// What to install when none is found.
    pub install_hint: &'static str,
    /// Source file name given to the compiler.
    pub file_name: &'static str,
}

/// A loaded runtime compiler.
pub struct Rtc {
    _lib: libloading::Library,
    api: RtcApi,
    create: CreateFn,
    compile: CompileFn,
    log_size: SizeFn,
    log: GetFn,
    code_size: SizeFn,
    code: GetFn,
    destroy: DestroyFn,
    version: (i32, i32),
    path: String,
}

fn sym<T: Copy>(lib: &libloading::Library, api: &RtcApi, suffix: &str) -> Result<T, String> {
    let name = format!("{}{suffix}", api.prefix);
    // SAFETY: the symbol types match the compilers' public C API.
    unsafe {
        lib.get::<T>(name.as_bytes())
            .map(|s| *s)
            .map_err(|e| format!("{} has no {name}: {e}", api.label))
    }
}

impl Rtc {
    /// Loads the compiler, or says what was tried.
    pub fn load(api: RtcApi) -> Result<Rtc, String> {
        let names: Vec<String> = match std::env::var(api.env) {
            Ok(p) if !p.is_empty() => vec![p],
            _ => api.candidates.iter().map(|s| s.to_string()).collect(),
        };
        let mut tried = Vec::new();
        for name in &names {
            // SAFETY: loading the compiler runs only the library's own initialisers.
            match unsafe { libloading::Library::new(name) } {
                Ok(lib) => return Rtc::from_lib(lib, api, name),
                Err(e) => tried.push(format!("{name} ({e})")),
            }
        }
        Err(format!(
            "{} was not found; {} or set {} to its path. Tried: {}",
            api.label,
            api.install_hint,
            api.env,
            tried.join(", ")
        ))
    }

    fn from_lib(lib: libloading::Library, api: RtcApi, path: &str) -> Result<Rtc, String> {
        let version_fn: VersionFn = sym(&lib, &api, "Version")?;
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two out-parameters.
        unsafe { version_fn(&mut major, &mut minor) };
        Ok(Rtc {
            create: sym(&lib, &api, "CreateProgram")?,
            compile: sym(&lib, &api, "CompileProgram")?,
            log_size: sym(&lib, &api, "GetProgramLogSize")?,
            log: sym(&lib, &api, "GetProgramLog")?,
            code_size: sym(&lib, &api, api.code_size)?,
            code: sym(&lib, &api, api.code)?,
            destroy: sym(&lib, &api, "DestroyProgram")?,
            version: (major, minor),
            path: path.to_string(),
            api,
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

    /// Compiles `src` with `options` and returns the code object, or the compiler's log.
    /// `target` only names the target in messages.
    pub fn compile(&self, src: &str, target: &str, options: &[String]) -> Result<Vec<u8>, String> {
        let label = self.api.label;
        let csrc = CString::new(src).map_err(|_| "kernel source holds a NUL byte".to_string())?;
        let name = CString::new(self.api.file_name).map_err(|_| "bad file name".to_string())?;
        let opts = options
            .iter()
            .map(|o| CString::new(o.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "a compiler option holds a NUL byte".to_string())?;
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
            return Err(format!("{label}: creating the program failed ({rc})"));
        }
        // SAFETY: prog is a live program; the options outlive the call.
        let rc = unsafe { (self.compile)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
        let result = if rc != 0 {
            Err(format!(
                "{label} could not compile the kernels for {target} (error {rc}):\n{}",
                self.program_log(prog)
            ))
        } else {
            let mut size = 0usize;
            // SAFETY: out-parameter, then a buffer of that size.
            unsafe {
                (self.code_size)(prog, &mut size);
                let mut buf = vec![0u8; size];
                let rc = (self.code)(prog, buf.as_mut_ptr() as *mut c_char);
                if rc != 0 || size == 0 {
                    Err(format!(
                        "{label} produced no code for {target} (error {rc})"
                    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_compiler_names_what_was_tried() {
        let api = RtcApi {
            label: "TESTRTC",
            prefix: "testrtc",
            code_size: "GetCodeSize",
            code: "GetCode",
            env: "ENGINE_TESTRTC_LIB_UNSET",
            candidates: &["libengine-no-such-compiler.so"],
            install_hint: "install nothing",
            file_name: "x.cu",
        };
        let e = Rtc::load(api).err().unwrap();
        assert!(
            e.starts_with("TESTRTC was not found; install nothing"),
            "{e}"
        );
        assert!(e.contains("libengine-no-such-compiler.so"), "{e}");
    }
}
