//! The on-disk code-object cache: compiled kernels (cubins, HSA code objects) stored under
//! a key made of the source hash, the target (`sm_86`, `gfx1103`) and the toolchain
//! (compiler and driver versions), so a driver or compiler update never loads stale code.
//! Entries are written to a temporary file and renamed, so a crash leaves no torn file.

use std::path::{Path, PathBuf};

/// A directory of compiled code objects.
#[derive(Clone, Debug)]
pub struct CodeCache {
    dir: PathBuf,
}

/// What a compiled object depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    /// Hash of the expanded source.
    pub source_hash: String,
    /// Compile target, e.g. `sm_121a` or `gfx1103`.
    pub target: String,
    /// Compiler and driver versions, and options.
    pub toolchain: String,
}

impl CacheKey {
    /// The file name of this key's entry.
    pub fn file_name(&self, ext: &str) -> String {
        let mixed = super::source::hash(&format!(
            "{}\n{}\n{}",
            self.source_hash, self.target, self.toolchain
        ));
        let safe: String = self
            .target
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("{safe}-{}.{ext}", &mixed[..24])
    }
}

impl CodeCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> CodeCache {
        CodeCache { dir: dir.into() }
    }

    /// `$ENGINE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/engine/kernels/<backend>`, else
    /// `~/.cache/engine/kernels/<backend>`.
    pub fn default_for(backend: &str) -> CodeCache {
        if let Some(d) = std::env::var_os("ENGINE_KERNEL_CACHE") {
            return CodeCache::new(PathBuf::from(d).join(backend));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        CodeCache::new(base.join("engine").join("kernels").join(backend))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stored object for `key`, if any (an empty file counts as missing).
    pub fn load(&self, key: &CacheKey, ext: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join(key.file_name(ext)))
            .ok()
            .filter(|b| !b.is_empty())
    }

    /// Stores an object; a failure to write is returned but the caller may ignore it
    /// (the cache only saves time).
    pub fn store(&self, key: &CacheKey, ext: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(key.file_name(ext));
        let tmp = self.dir.join(format!(
            ".{}.{}.tmp",
            key.file_name(ext),
            std::process::id()
        ));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Loads the object for `key`, or compiles and stores it. Returns the bytes and whether
    /// they came from the cache.
    pub fn get_or_compile<E>(
        &self,
        key: &CacheKey,
        ext: &str,
        compile: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<(Vec<u8>, bool), E> {
        if let Some(b) = self.load(key, ext) {
            return Ok((b, true));
        }
        let b = compile()?;
        let _ = self.store(key, ext, &b);
        Ok((b, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(target: &str, tool: &str) -> CacheKey {
        CacheKey {
            source_hash: "abc".into(),
            target: target.into(),
            toolchain: tool.into(),
        }
    }

    #[test]
    fn compiles_once_then_loads() {
        let dir = std::env::temp_dir().join(format!("eg-cache-{}", std::process::id()));
        let c = CodeCache::new(&dir);
        let k = key("sm_86", "nvrtc 12.6 / driver 12060");
        let mut calls = 0;
        let (a, hit) = c
            .get_or_compile::<()>(&k, "cubin", || {
                calls += 1;
                Ok(vec![1, 2, 3])
            })
            .unwrap();
        assert_eq!((a, hit), (vec![1, 2, 3], false));
        let (b, hit) = c
            .get_or_compile::<()>(&k, "cubin", || {
                calls += 1;
                Ok(vec![9])
            })
            .unwrap();
        assert_eq!((b, hit), (vec![1, 2, 3], true));
        assert_eq!(calls, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn key_separates_targets_toolchains_and_sources() {
        let base = key("sm_86", "t1").file_name("cubin");
        assert_ne!(base, key("sm_87", "t1").file_name("cubin"));
        assert_ne!(base, key("sm_86", "t2").file_name("cubin"));
        let mut other = key("sm_86", "t1");
        other.source_hash = "abd".into();
        assert_ne!(base, other.file_name("cubin"));
        assert!(key("gfx1103", "t")
            .file_name("hsaco")
            .starts_with("gfx1103-"));
    }

    #[test]
    fn empty_or_missing_entries_are_recompiled() {
        let dir = std::env::temp_dir().join(format!("eg-cache-e-{}", std::process::id()));
        let c = CodeCache::new(&dir);
        let k = key("sm_90", "t");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(k.file_name("cubin")), b"").unwrap();
        let (b, hit) = c.get_or_compile::<()>(&k, "cubin", || Ok(vec![7])).unwrap();
        assert_eq!((b, hit), (vec![7], false));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
