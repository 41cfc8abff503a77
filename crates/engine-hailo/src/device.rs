//! A safe wrapper over one shim handle: every call checks its return code and turns a
//! failure into a [`ShimError`] with the shim's message. Used inside the host process only.

use std::ffi::CString;
use std::time::Duration;

use crate::abi::{self, GenParams, Handle, Shim};

/// A failed shim call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimError {
    /// The `EHS_ERR_*` code.
    pub code: i32,
    /// What the shim said.
    pub message: String,
}

impl std::fmt::Display for ShimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", abi::code_name(self.code))
        } else {
            write!(f, "{} ({})", self.message, abi::code_name(self.code))
        }
    }
}

/// An opened device with its shim.
pub struct Device {
    shim: Shim,
    handle: Handle,
    pending_read: usize,
}

fn cstring(what: &str, s: &str) -> Result<CString, ShimError> {
    CString::new(s).map_err(|_| ShimError {
        code: abi::ERR_INVALID,
        message: format!("{what} contains a NUL byte"),
    })
}

impl Device {
    /// Opens the device (`ehs_create`) with a JSON configuration.
    pub fn open(shim: Shim, config_json: &str) -> Result<Device, ShimError> {
        let cfg = cstring("the device configuration", config_json)?;
        let mut h: Handle = std::ptr::null_mut();
        // SAFETY: `cfg` is a valid C string and `h` a valid out pointer.
        let code = unsafe { (shim.create)(cfg.as_ptr(), &mut h) };
        if code != abi::OK || h.is_null() {
            let message = shim.error_text(std::ptr::null_mut());
            return Err(ShimError {
                code: if code == abi::OK {
                    abi::ERR_INTERNAL
                } else {
                    code
                },
                message,
            });
        }
        Ok(Device {
            shim,
            handle: h,
            pending_read: 256,
        })
    }

    fn check(&self, code: i32) -> Result<(), ShimError> {
        if code == abi::OK {
            Ok(())
        } else {
            Err(ShimError {
                code,
                message: self.shim.error_text(self.handle),
            })
        }
    }

    /// Loads a HEF.
    pub fn load_hef(&mut self, hef: &str, params_json: &str) -> Result<(), ShimError> {
        let (p, q) = (
            cstring("the HEF path", hef)?,
            cstring("the load parameters", params_json)?,
        );
        // SAFETY: valid handle and C strings.
        self.check(unsafe { (self.shim.load_hef)(self.handle, p.as_ptr(), q.as_ptr()) })
    }

    /// Starts a generation from a raw prompt.
    pub fn generate_raw(&mut self, prompt: &str, params: &GenParams) -> Result<(), ShimError> {
        let p = cstring("the prompt", prompt)?;
        // SAFETY: valid handle, C string and params pointer.
        self.check(unsafe { (self.shim.generate_raw)(self.handle, p.as_ptr(), params) })
    }

    /// Starts a generation from chat messages (a JSON array).
    pub fn generate_messages(&mut self, json: &str, params: &GenParams) -> Result<(), ShimError> {
        let p = cstring("the messages", json)?;
        // SAFETY: valid handle, C string and params pointer.
        self.check(unsafe { (self.shim.generate_messages)(self.handle, p.as_ptr(), params) })
    }

    /// Reads the next piece and the status after it.
    pub fn read(&mut self, timeout: Duration) -> Result<(String, i32), ShimError> {
        let ms = timeout.as_millis().min(u32::MAX as u128 - 1) as u32;
        loop {
            let mut buf = vec![0u8; self.pending_read];
            let (mut len, mut status) = (0usize, 0i32);
            // SAFETY: `buf` has `buf.len()` writable bytes; out pointers are valid.
            let code = unsafe {
                (self.shim.read)(
                    self.handle,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut len,
                    ms,
                    &mut status,
                )
            };
            if code == abi::ERR_BUFFER_TOO_SMALL && len > buf.len() && len <= 1 << 24 {
                self.pending_read = len;
                continue;
            }
            self.check(code)?;
            buf.truncate(len.min(buf.len()));
            return Ok((String::from_utf8_lossy(&buf).into_owned(), status));
        }
    }

    /// Aborts the running generation.
    pub fn abort(&mut self) -> Result<(), ShimError> {
        // SAFETY: valid handle.
        self.check(unsafe { (self.shim.abort)(self.handle) })
    }

    /// Token ids of `text`.
    pub fn tokenize(&mut self, text: &str) -> Result<Vec<u32>, ShimError> {
        let t = cstring("the text", text)?;
        let mut cap = text.len() + 16;
        loop {
            let mut ids = vec![0i32; cap];
            let mut len = 0usize;
            // SAFETY: `ids` has `cap` writable elements; out pointer valid.
            let code = unsafe {
                (self.shim.tokenize)(self.handle, t.as_ptr(), ids.as_mut_ptr(), cap, &mut len)
            };
            if code == abi::ERR_BUFFER_TOO_SMALL && len > cap && len <= 1 << 26 {
                cap = len;
                continue;
            }
            self.check(code)?;
            ids.truncate(len.min(cap));
            return Ok(ids.into_iter().map(|i| i.max(0) as u32).collect());
        }
    }

    fn size(&self, f: unsafe extern "C" fn(Handle, *mut usize) -> i32) -> Result<usize, ShimError> {
        let mut n = 0usize;
        // SAFETY: valid handle and out pointer.
        self.check(unsafe { f(self.handle, &mut n) })?;
        Ok(n)
    }

    /// Tokens the context holds at most.
    pub fn max_context(&self) -> Result<usize, ShimError> {
        self.size(self.shim.max_context)
    }

    /// Tokens in the context now.
    pub fn context_usage(&self) -> Result<usize, ShimError> {
        self.size(self.shim.context_usage)
    }

    /// Empties the context.
    pub fn clear_context(&mut self) -> Result<(), ShimError> {
        // SAFETY: valid handle.
        self.check(unsafe { (self.shim.clear_context)(self.handle) })
    }

    /// The context as a blob.
    pub fn save_context(&mut self) -> Result<Vec<u8>, ShimError> {
        let mut len = 0usize;
        // SAFETY: a NULL buffer asks for the size.
        let code =
            unsafe { (self.shim.save_context)(self.handle, std::ptr::null_mut(), 0, &mut len) };
        if code != abi::ERR_BUFFER_TOO_SMALL {
            self.check(code)?;
            if len == 0 {
                return Ok(Vec::new());
            }
        }
        let mut buf = vec![0u8; len];
        let mut got = 0usize;
        // SAFETY: `buf` has `len` writable bytes.
        self.check(unsafe {
            (self.shim.save_context)(self.handle, buf.as_mut_ptr(), len, &mut got)
        })?;
        buf.truncate(got.min(len));
        Ok(buf)
    }

    /// Restores a saved context.
    pub fn load_context(&mut self, blob: &[u8]) -> Result<(), ShimError> {
        // SAFETY: `blob` is readable for its length.
        self.check(unsafe { (self.shim.load_context)(self.handle, blob.as_ptr(), blob.len()) })
    }

    /// The two sensors' temperatures.
    pub fn chip_temperature(&mut self) -> Result<(f32, f32), ShimError> {
        let (mut a, mut b) = (0f32, 0f32);
        // SAFETY: valid handle and out pointers.
        self.check(unsafe { (self.shim.chip_temperature)(self.handle, &mut a, &mut b) })?;
        Ok((a, b))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: the handle came from ehs_create and is released once.
        unsafe { (self.shim.release)(self.handle) }
    }
}
