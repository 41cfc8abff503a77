//! The C ABI of the Hailo shim, mirrored from `shim/hailo/engine_hailo_shim.h`, and the
//! loader: the shim is opened with `dlopen` at run time, its ABI version checked before any
//! other symbol is resolved, and every function looked up once. A missing library, a missing
//! symbol or a version mismatch is an error naming the file, never a panic.

use std::ffi::{c_char, c_void, CStr};
use std::path::{Path, PathBuf};

/// The ABI this engine speaks (`EHS_ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;

/// `EHS_OK`.
pub const OK: i32 = 0;
/// `EHS_ERR_INVALID`.
pub const ERR_INVALID: i32 = 1;
/// `EHS_ERR_NO_DEVICE`.
pub const ERR_NO_DEVICE: i32 = 2;
/// `EHS_ERR_TIMEOUT`.
pub const ERR_TIMEOUT: i32 = 3;
/// `EHS_ERR_BUSY`.
pub const ERR_BUSY: i32 = 4;
/// `EHS_ERR_BUFFER_TOO_SMALL`.
pub const ERR_BUFFER_TOO_SMALL: i32 = 5;
/// `EHS_ERR_NOT_LOADED`.
pub const ERR_NOT_LOADED: i32 = 6;
/// `EHS_ERR_DEVICE`.
pub const ERR_DEVICE: i32 = 7;
/// `EHS_ERR_NO_GENERATION`.
pub const ERR_NO_GENERATION: i32 = 8;
/// `EHS_ERR_CONTEXT_FULL`.
pub const ERR_CONTEXT_FULL: i32 = 9;
/// `EHS_ERR_INTERNAL`.
pub const ERR_INTERNAL: i32 = 10;

/// `EHS_STATUS_GENERATING`.
pub const STATUS_GENERATING: i32 = 0;
/// `EHS_STATUS_MAX_TOKENS_REACHED`.
pub const STATUS_MAX_TOKENS: i32 = 1;
/// `EHS_STATUS_LOGICAL_END_OF_GENERATION`.
pub const STATUS_END: i32 = 2;
/// `EHS_STATUS_ABORTED`.
pub const STATUS_ABORTED: i32 = 3;

/// `HAILO_RANDOM_SEED`.
pub const RANDOM_SEED: u32 = u32::MAX;

/// The name of a return code.
pub fn code_name(code: i32) -> &'static str {
    match code {
        OK => "ok",
        ERR_INVALID => "invalid argument",
        ERR_NO_DEVICE => "no device",
        ERR_TIMEOUT => "timeout",
        ERR_BUSY => "busy",
        ERR_BUFFER_TOO_SMALL => "buffer too small",
        ERR_NOT_LOADED => "no model loaded",
        ERR_DEVICE => "device error",
        ERR_NO_GENERATION => "no generation running",
        ERR_CONTEXT_FULL => "context full",
        ERR_INTERNAL => "internal error",
        _ => "unknown error",
    }
}

/// `ehs_gen_params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenParams {
    /// Softmax temperature.
    pub temperature: f32,
    /// Nucleus sampling.
    pub top_p: f32,
    /// Top-k (0 = all).
    pub top_k: u32,
    /// Frequency penalty.
    pub frequency_penalty: f32,
    /// Most tokens (0 = the model's default).
    pub max_generated_tokens: u32,
    /// 0 = greedy.
    pub do_sample: i32,
    /// [`RANDOM_SEED`] = random.
    pub seed: u32,
}

/// `ehs_llm *`.
pub type Handle = *mut c_void;

type AbiVersion = unsafe extern "C" fn() -> u32;
type Create = unsafe extern "C" fn(*const c_char, *mut Handle) -> i32;
type Release = unsafe extern "C" fn(Handle);
type LastError = unsafe extern "C" fn(Handle) -> *const c_char;
type LoadHef = unsafe extern "C" fn(Handle, *const c_char, *const c_char) -> i32;
type Generate = unsafe extern "C" fn(Handle, *const c_char, *const GenParams) -> i32;
type Read = unsafe extern "C" fn(Handle, *mut c_char, usize, *mut usize, u32, *mut i32) -> i32;
type Simple = unsafe extern "C" fn(Handle) -> i32;
type Tokenize = unsafe extern "C" fn(Handle, *const c_char, *mut i32, usize, *mut usize) -> i32;
type Size = unsafe extern "C" fn(Handle, *mut usize) -> i32;
type SaveContext = unsafe extern "C" fn(Handle, *mut u8, usize, *mut usize) -> i32;
type LoadContext = unsafe extern "C" fn(Handle, *const u8, usize) -> i32;
type Temperature = unsafe extern "C" fn(Handle, *mut f32, *mut f32) -> i32;

/// The shim's functions, resolved from a loaded library that stays open while they live.
pub struct Shim {
    /// Where it was loaded from.
    pub path: PathBuf,
    pub(crate) create: Create,
    pub(crate) release: Release,
    pub(crate) last_error: LastError,
    pub(crate) load_hef: LoadHef,
    pub(crate) generate_raw: Generate,
    pub(crate) generate_messages: Generate,
    pub(crate) read: Read,
    pub(crate) abort: Simple,
    pub(crate) tokenize: Tokenize,
    pub(crate) max_context: Size,
    pub(crate) context_usage: Size,
    pub(crate) clear_context: Simple,
    pub(crate) save_context: SaveContext,
    pub(crate) load_context: LoadContext,
    pub(crate) chip_temperature: Temperature,
    _lib: libloading::Library,
}

/// The file name of the shim library.
pub const LIBRARY_NAME: &str = "libengine_hailo_shim.so";

/// Where the shim is looked for: `ENGINE_HAILO_SHIM`, then next to the running program,
/// then the usual library directories. Returns the candidates in order.
pub fn candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("ENGINE_HAILO_SHIM").filter(|p| !p.is_empty()) {
        v.push(PathBuf::from(p));
        return v;
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        v.push(dir.join(LIBRARY_NAME));
    }
    for d in ["/usr/local/lib", "/usr/lib", "/usr/lib/aarch64-linux-gnu"] {
        v.push(Path::new(d).join(LIBRARY_NAME));
    }
    v
}

/// Finds the shim (see [`candidates`]).
pub fn find() -> Result<PathBuf, String> {
    let c = candidates();
    c.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        format!(
            "no Hailo shim found (looked for {}); build it with `cargo xtask build-hailo-shim` on a machine with HailoRT 5.x installed, or set ENGINE_HAILO_SHIM to its path",
            c.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

impl Shim {
    /// Loads the shim at `path`, refusing one built for another ABI version.
    pub fn load(path: &Path) -> Result<Shim, String> {
        let shown = path.display();
        // SAFETY: loading a library runs its initialisers; the shim is ours (or the fake) and
        // documents no initialiser with side effects beyond HailoRT's own.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| format!("cannot load the Hailo shim {shown}: {e}"))?;
        // SAFETY: the symbol's type is fixed by the ABI header; it takes no arguments.
        let version = unsafe {
            let f: libloading::Symbol<AbiVersion> = lib.get(b"ehs_abi_version\0").map_err(|e| {
                format!("{shown} is not an engine Hailo shim (no ehs_abi_version: {e})")
            })?;
            f()
        };
        if version != ABI_VERSION {
            return Err(format!(
                "the Hailo shim {shown} speaks ABI version {version}, but this engine needs version {ABI_VERSION}; rebuild it from this engine's sources with `cargo xtask build-hailo-shim`"
            ));
        }
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol's type is fixed by the ABI header of the version checked
                // above; the library stays loaded while the pointer is held (in `_lib`).
                unsafe {
                    *lib.get(concat!($name, "\0").as_bytes())
                        .map_err(|e| format!("the Hailo shim {shown} lacks {}: {e}", $name))?
                }
            };
        }
        Ok(Shim {
            path: path.to_path_buf(),
            create: sym!("ehs_create"),
            release: sym!("ehs_release"),
            last_error: sym!("ehs_last_error"),
            load_hef: sym!("ehs_load_hef"),
            generate_raw: sym!("ehs_generate_raw"),
            generate_messages: sym!("ehs_generate_messages"),
            read: sym!("ehs_read"),
            abort: sym!("ehs_abort"),
            tokenize: sym!("ehs_tokenize"),
            max_context: sym!("ehs_max_context"),
            context_usage: sym!("ehs_context_usage"),
            clear_context: sym!("ehs_clear_context"),
            save_context: sym!("ehs_save_context"),
            load_context: sym!("ehs_load_context"),
            chip_temperature: sym!("ehs_chip_temperature"),
            _lib: lib,
        })
    }

    /// The last error message on `h` (or of `ehs_create` with a null handle).
    pub(crate) fn error_text(&self, h: Handle) -> String {
        // SAFETY: the ABI promises a valid NUL-terminated string for any handle it made or
        // NULL, valid until the next call on that handle.
        unsafe {
            let p = (self.last_error)(h);
            if p.is_null() {
                return String::new();
            }
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}
