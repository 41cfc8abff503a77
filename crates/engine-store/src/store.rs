//! The store directory: one sub-directory per installed model holding the weights and a
//! `manifest.json`. Installs are atomic: a model is fetched into a private work directory,
//! verified, and only then renamed into place, so a half-written model is never visible.
//! Concurrent pulls are serialised with a lock file.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::card::{find_card, ModelCard};
use crate::source::{NoProgress, Progress, Source};
use crate::{io_err, Result, StoreError};

/// What the store records about an installed model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Store name.
    pub name: String,
    /// File name of the weights inside the model's directory.
    pub file: String,
    /// Where it came from.
    pub source: String,
    /// sha256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Quantization label.
    pub quant: String,
    /// Architecture.
    pub architecture: String,
    /// Install time, seconds since the Unix epoch.
    pub installed_at: u64,
}

/// A model store rooted at a directory.
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The default location: `$ENGINE_MODELS`, else `$XDG_CACHE_HOME/engine/models`, else
    /// `~/.cache/engine/models`.
    pub fn default_root() -> PathBuf {
        if let Some(p) = std::env::var_os("ENGINE_MODELS").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"));
        cache.join("engine").join("models")
    }

    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(Store { root })
    }

    /// Opens the store at [`Store::default_root`].
    pub fn open_default() -> Result<Store> {
        Self::open(Self::default_root())
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(sanitize(name))
    }

    /// Installed models, sorted by name.
    pub fn list(&self) -> Result<Vec<Manifest>> {
        let mut out = vec![];
        for e in std::fs::read_dir(&self.root)
            .map_err(io_err(&self.root))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Ok(Some(m)) = self.read_manifest(&e.path()) {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read_manifest(&self, dir: &Path) -> Result<Option<Manifest>> {
        let p = dir.join("manifest.json");
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Invalid {
                what: p.display().to_string(),
                problem: e.to_string(),
            })
    }

    /// The manifest of an installed model (by name or a card alias).
    pub fn get(&self, name: &str) -> Result<Option<Manifest>> {
        if let Some(m) = self.read_manifest(&self.dir(name))? {
            return Ok(Some(m));
        }
        match find_card(name) {
            Some(c) if c.name != name => self.read_manifest(&self.dir(&c.name)),
            _ => Ok(None),
        }
    }

    /// Path of an installed model's weights.
    pub fn model_path(&self, m: &Manifest) -> PathBuf {
        self.dir(&m.name).join(&m.file)
    }

    /// Resolves a path or an installed model name to a file.
    pub fn resolve(&self, name_or_path: &str) -> Result<PathBuf> {
        let p = Path::new(name_or_path);
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        match self.get(name_or_path)? {
            Some(m) => Ok(self.model_path(&m)),
            None => Err(StoreError::UnknownModel(name_or_path.to_string())),
        }
    }

    /// Resolves like [`Store::resolve`], pulling a known model that is not installed yet.
    pub fn ensure(&self, name_or_path: &str, progress: &mut dyn Progress) -> Result<PathBuf> {
        match self.resolve(name_or_path) {
            Ok(p) => Ok(p),
            Err(StoreError::UnknownModel(_)) => match find_card(name_or_path) {
                Some(card) => {
                    let m = self.pull(&card, progress)?;
                    Ok(self.model_path(&m))
                }
                None => Err(StoreError::UnknownModel(name_or_path.to_string())),
            },
            Err(e) => Err(e),
        }
    }

    /// Fetches, verifies and installs the model a card describes. Installing a model that is
    /// already present with the right size is a no-op.
    pub fn pull(&self, card: &ModelCard, progress: &mut dyn Progress) -> Result<Manifest> {
        self.pull_from(card, &*card.source.source(), progress)
    }

    /// [`Store::pull`] with an explicit source (tests use fakes).
    pub fn pull_from(
        &self,
        card: &ModelCard,
        source: &dyn Source,
        progress: &mut dyn Progress,
    ) -> Result<Manifest> {
        let _lock = self.lock()?;
        if let Some(m) = self.read_manifest(&self.dir(&card.name))? {
            let path = self.model_path(&m);
            if m.sha256 == card.sha256
                && std::fs::metadata(&path).map(|md| md.len()).ok() == Some(m.size)
            {
                return Ok(m);
            }
        }
        self.clean_partials();
        let work = self.root.join(format!(
            ".partial-{}-{}",
            sanitize(&card.name),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(io_err(&work))?;
        let result = (|| {
            let fetched = source.fetch(&card.file, &work, progress)?;
            if fetched.sha256 != card.sha256 || fetched.size != card.size {
                return Err(StoreError::Checksum {
                    what: format!(
                        "{} ({} bytes, expected {})",
                        card.name, fetched.size, card.size
                    ),
                    expected: card.sha256.clone(),
                    actual: fetched.sha256,
                });
            }
            let manifest = Manifest {
                name: card.name.clone(),
                file: card.file.clone(),
                source: source.describe(),
                sha256: fetched.sha256,
                size: fetched.size,
                quant: card.quant.clone(),
                architecture: card.architecture.clone(),
                installed_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            };
            let staged = work.join("model");
            std::fs::create_dir_all(&staged).map_err(io_err(&staged))?;
            let dest_file = staged.join(&card.file);
            std::fs::rename(&fetched.path, &dest_file).map_err(io_err(&dest_file))?;
            let mpath = staged.join("manifest.json");
            let json = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
            std::fs::write(&mpath, json).map_err(io_err(&mpath))?;
            let final_dir = self.dir(&card.name);
            if final_dir.exists() {
                std::fs::remove_dir_all(&final_dir).map_err(io_err(&final_dir))?;
            }
            std::fs::rename(&staged, &final_dir).map_err(io_err(&final_dir))?;
            Ok(manifest)
        })();
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    /// Removes an installed model.
    pub fn remove(&self, name: &str) -> Result<bool> {
        let _lock = self.lock()?;
        let Some(m) = self.get(name)? else {
            return Ok(false);
        };
        let dir = self.dir(&m.name);
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(true)
    }

    fn lock(&self) -> Result<File> {
        let p = self.root.join(".lock");
        let f = File::create(&p).map_err(io_err(&p))?;
        f.lock().map_err(io_err(&p))?;
        Ok(f)
    }

    /// Removes work directories left behind by interrupted pulls (called under the lock).
    fn clean_partials(&self) {
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".partial-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// A store name safe as a directory name (`/` and `:` become `_`).
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Convenience: the default store's path for a model, pulling it quietly if needed.
pub fn ensure_quiet(name: &str) -> Result<PathBuf> {
    Store::open_default()?.ensure(name, &mut NoProgress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Fetched, Source};

    #[test]
    fn resolve_paths_and_names() {
        let dir = std::env::temp_dir().join(format!("engine-store-test-{}", std::process::id()));
        let store = Store::open(&dir).unwrap();
        assert!(matches!(
            store.resolve("nope"),
            Err(StoreError::UnknownModel(_))
        ));
        let f = dir.join("x.gguf");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(store.resolve(f.to_str().unwrap()).unwrap(), f);
        assert!(store.list().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sanitize_names() {
        assert_eq!(sanitize("gemma3:270m"), "gemma3_270m");
        assert_eq!(sanitize("a/../b"), "a_.._b");
    }

    struct Fake(Vec<u8>);
    impl Source for Fake {
        fn describe(&self) -> String {
            "fake".into()
        }
        fn fetch(&self, file: &str, work: &Path, _: &mut dyn Progress) -> Result<Fetched> {
            let p = work.join(file);
            std::fs::write(&p, &self.0).unwrap();
            Ok(Fetched {
                sha256: crate::source::sha256_file(&p)?,
                path: p,
                size: self.0.len() as u64,
            })
        }
    }

    fn card(sha: &str, size: u64) -> ModelCard {
        let mut c = find_card("gemma3-270m").unwrap();
        c.name = "tiny".into();
        c.file = "tiny.gguf".into();
        c.sha256 = sha.into();
        c.size = size;
        c
    }

    #[test]
    fn verified_install_and_refused_mismatch() {
        let dir = std::env::temp_dir().join(format!("engine-store-pull-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let payload = b"GGUF and some bytes".to_vec();
        let good = {
            let t = dir.join("probe");
            std::fs::write(&t, &payload).unwrap();
            let s = crate::source::sha256_file(&t).unwrap();
            std::fs::remove_file(&t).unwrap();
            s
        };
        // wrong digest: refused, nothing visible, no work directory left
        let err = store.pull_from(
            &card(&"0".repeat(64), payload.len() as u64),
            &Fake(payload.clone()),
            &mut NoProgress,
        );
        assert!(matches!(err, Err(StoreError::Checksum { .. })), "{err:?}");
        assert!(store.list().unwrap().is_empty());
        assert!(std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(".partial")));
        // right digest: installed, listed, resolvable, removable
        let m = store
            .pull_from(
                &card(&good, payload.len() as u64),
                &Fake(payload.clone()),
                &mut NoProgress,
            )
            .unwrap();
        assert_eq!(m.sha256, good);
        assert_eq!(store.list().unwrap(), vec![m.clone()]);
        assert_eq!(
            std::fs::read(store.resolve("tiny").unwrap()).unwrap(),
            payload
        );
        assert!(store.remove("tiny").unwrap());
        assert!(store.list().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
