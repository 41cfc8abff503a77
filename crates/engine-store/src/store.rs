//! The store directory: one sub-directory per installed model holding the weights (one file
//! or a split set) and a `manifest.json`. A preset made by `engine create` is a directory with
//! only a manifest, naming the model whose weights it uses (`from`) and its settings.
//!
//! Installs are atomic: weights are fetched into a work directory, verified, and only then
//! renamed into place, so a half-written model is never visible. Remote downloads keep their
//! partial files in `.partial/NAME/` so an interrupted pull resumes where it stopped.
//! Pulls, creates and removals are serialised with a lock file.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::card::{find_card, ModelCard};
use crate::modelfile::Modelfile;
use crate::preset::Preset;
use crate::remote::Plan;
use crate::source::{NoProgress, Progress, Source};
use crate::{io_err, Result, StoreError};

/// What the store records about an installed model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Store name.
    pub name: String,
    /// File name of the weights inside the model's directory (the first part of a split
    /// set; empty for a preset).
    pub file: String,
    /// Where it came from.
    pub source: String,
    /// sha256 of the file.
    pub sha256: String,
    /// Size in bytes (all parts of a split set together).
    pub size: u64,
    /// Quantization label.
    pub quant: String,
    /// Architecture.
    pub architecture: String,
    /// Install time, seconds since the Unix epoch.
    pub installed_at: u64,
    /// The other files of a split set, in order, with their sha256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartFile>,
    /// For a preset: the store model whose weights it uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Serving settings (from a Modelfile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// For a model compiled for a text device (a Hailo HEF): its package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<crate::DevicePackage>,
}

/// One more file of a split set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PartFile {
    /// File name.
    pub file: String,
    /// Its sha256.
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

impl Manifest {
    /// True for a preset (settings over another model's weights).
    pub fn is_preset(&self) -> bool {
        self.from.is_some()
    }
}

/// A model store rooted at a directory.
pub struct Store {
    root: PathBuf,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

    /// Installed models and presets, sorted by name.
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

    /// The manifest of an installed model or preset (by name or a card alias).
    pub fn get(&self, name: &str) -> Result<Option<Manifest>> {
        if let Some(m) = self.read_manifest(&self.dir(name))? {
            if m.name == name {
                return Ok(Some(m));
            }
        }
        match find_card(name) {
            Some(c) if c.name != name => Ok(self
                .read_manifest(&self.dir(&c.name))?
                .filter(|m| m.name == c.name)),
            _ => Ok(None),
        }
    }

    /// Path of an installed model's weights (the first file of a split set). For a preset,
    /// use [`Store::weights`].
    pub fn model_path(&self, m: &Manifest) -> PathBuf {
        self.dir(&m.name).join(&m.file)
    }

    /// The model whose weights `m` uses (itself unless it is a preset) and their path.
    pub fn weights(&self, m: &Manifest) -> Result<(Manifest, PathBuf)> {
        let mut cur = m.clone();
        for _ in 0..16 {
            match cur.from.clone() {
                None => {
                    let p = self.model_path(&cur);
                    return Ok((cur, p));
                }
                Some(base) => {
                    cur = self.get(&base)?.ok_or_else(|| StoreError::Invalid {
                        what: format!("preset '{}'", m.name),
                        problem: format!(
                            "its base model '{base}' is not installed (pull it again, or recreate the preset)"
                        ),
                    })?;
                }
            }
        }
        Err(StoreError::Invalid {
            what: format!("preset '{}'", m.name),
            problem: "its FROM chain is too long or loops".into(),
        })
    }

    /// The settings of `m`, merged along its FROM chain (a preset's own values win).
    pub fn effective_preset(&self, m: &Manifest) -> Result<Preset> {
        let mut chain = vec![m.clone()];
        let mut cur = m.clone();
        while let Some(base) = cur.from.clone() {
            if chain.len() > 16 {
                break;
            }
            cur = match self.get(&base)? {
                Some(b) => b,
                None => break,
            };
            chain.push(cur.clone());
        }
        let mut out = Preset::default();
        for m in chain.iter().rev() {
            if let Some(p) = &m.preset {
                out.overlay(p);
            }
        }
        Ok(out)
    }

    /// Resolves a path or an installed model name (a preset resolves to its base's file).
    pub fn resolve(&self, name_or_path: &str) -> Result<PathBuf> {
        let p = Path::new(name_or_path);
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        match self.get(name_or_path)? {
            Some(m) => Ok(self.weights(&m)?.1),
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
                installed_at: now_secs(),
                parts: Vec::new(),
                from: None,
                preset: None,
                device: None,
            };
            let staged = work.join("model");
            std::fs::create_dir_all(&staged).map_err(io_err(&staged))?;
            let dest_file = staged.join(&card.file);
            std::fs::rename(&fetched.path, &dest_file).map_err(io_err(&dest_file))?;
            self.install(&staged, &manifest)?;
            Ok(manifest)
        })();
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    /// Downloads a remote model (see [`crate::remote`]) and installs it as `name`. Each file
    /// is verified against the sha256 and size the source gives (or that the user passed);
    /// a mismatch installs nothing and discards the download. An interrupted download
    /// leaves its bytes in `.partial/` and the next pull of the same source resumes them.
    /// Pulling what is already installed from the same source is a no-op.
    pub fn pull_plan(
        &self,
        name: &str,
        plan: &Plan,
        progress: &mut dyn Progress,
    ) -> Result<Manifest> {
        check_name(name)?;
        if plan.files.is_empty() {
            return Err(StoreError::Invalid {
                what: format!("source {}", plan.source),
                problem: "no files to download".into(),
            });
        }
        let _lock = self.lock()?;
        self.check_collision(name)?;
        if let Some(m) = self.read_manifest(&self.dir(name))? {
            if m.source == plan.source && !m.is_preset() && self.files_intact(&m) {
                return Ok(m);
            }
        }
        self.clean_partials();
        let partial = self.root.join(".partial").join(sanitize(name));
        std::fs::create_dir_all(&partial).map_err(io_err(&partial))?;
        // A different source under the same name: its bytes are of no use.
        let source_file = partial.join("source");
        let recorded = std::fs::read_to_string(&source_file).ok();
        if recorded.as_deref() != Some(plan.source.as_str()) {
            let _ = std::fs::remove_dir_all(&partial);
            std::fs::create_dir_all(&partial).map_err(io_err(&partial))?;
            std::fs::write(&source_file, &plan.source).map_err(io_err(&source_file))?;
        }
        let agent = crate::http::agent();
        let n = plan.files.len();
        let mut done = Vec::with_capacity(n);
        for (i, f) in plan.files.iter().enumerate() {
            let dest = partial.join(format!("{}.part", f.name));
            let label = if n > 1 {
                format!("{} ({}/{n})", f.name, i + 1)
            } else {
                f.name.clone()
            };
            let got = match crate::http::download(
                &agent,
                &crate::http::Target {
                    url: &f.url,
                    headers: &plan.headers,
                    dest: &dest,
                    expected_size: f.size,
                    label: &label,
                },
                progress,
            ) {
                Ok(g) => g,
                Err(e) => {
                    // keep downloaded bytes for a resume; leave no empty work directory
                    if self
                        .partials()
                        .iter()
                        .any(|(n, b)| *n == sanitize(name) && *b == 0)
                    {
                        self.drop_partial(&partial);
                    }
                    return Err(e);
                }
            };
            let size_ok = f.size.is_none_or(|s| s == got.size);
            let sha_ok = f.sha256.as_ref().is_none_or(|s| *s == got.sha256);
            if !size_ok || !sha_ok {
                // bytes that do not verify are never kept
                self.drop_partial(&partial);
                return Err(StoreError::Checksum {
                    what: format!(
                        "{} ({} bytes{})",
                        f.name,
                        got.size,
                        f.size
                            .map(|s| format!(", expected {s}"))
                            .unwrap_or_default()
                    ),
                    expected: f.sha256.clone().unwrap_or_else(|| "(any)".into()),
                    actual: got.sha256,
                });
            }
            done.push((dest, got));
        }
        // Everything is downloaded and verified: check it is a GGUF the engine can read.
        let staged = self.root.join(format!(
            ".staging-{}-{}",
            sanitize(name),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&staged);
        std::fs::create_dir_all(&staged).map_err(io_err(&staged))?;
        let result = (|| {
            for ((dest, _), f) in done.iter().zip(&plan.files) {
                let to = staged.join(&f.name);
                std::fs::rename(dest, &to).map_err(io_err(&to))?;
            }
            let first = staged.join(&plan.files[0].name);
            let facts = match &plan.device {
                Some((pkg, _)) => Ok((
                    pkg.family.clone().unwrap_or_else(|| pkg.device.clone()),
                    pkg.quantization.clone().unwrap_or_else(|| "hef".into()),
                )),
                None => gguf_facts(&first),
            };
            let (architecture, quant) = match facts {
                Ok(x) => x,
                Err(problem) => {
                    // not a model at all (an error page, a wrong URL): nothing worth resuming
                    self.drop_partial(&partial);
                    return Err(StoreError::Invalid {
                        what: format!("download from {}", plan.source),
                        problem: format!("not a usable GGUF file: {problem}"),
                    });
                }
            };
            let manifest = Manifest {
                name: name.to_string(),
                file: plan.files[0].name.clone(),
                source: plan.source.clone(),
                sha256: done[0].1.sha256.clone(),
                size: done.iter().map(|(_, g)| g.size).sum(),
                quant,
                architecture,
                installed_at: now_secs(),
                parts: done[1..]
                    .iter()
                    .zip(&plan.files[1..])
                    .map(|((_, g), f)| PartFile {
                        file: f.name.clone(),
                        sha256: g.sha256.clone(),
                        size: g.size,
                    })
                    .collect(),
                from: None,
                preset: plan
                    .device
                    .as_ref()
                    .map(|(_, p)| p.clone())
                    .filter(|p| *p != Preset::default()),
                device: plan.device.as_ref().map(|(d, _)| d.clone()),
            };
            self.install(&staged, &manifest)?;
            Ok(manifest)
        })();
        let _ = std::fs::remove_dir_all(&staged);
        if result.is_ok() {
            self.drop_partial(&partial);
        }
        result
    }

    /// `engine create NAME -f Modelfile`: a preset over a store model (`FROM name`), or a new
    /// model importing a GGUF file (`FROM ./file.gguf`, hard-linked or copied into the store)
    /// with the Modelfile's settings. `base_dir` is where relative paths start (the
    /// Modelfile's directory).
    pub fn create(
        &self,
        name: &str,
        mf: &Modelfile,
        base_dir: &Path,
        progress: &mut dyn Progress,
    ) -> Result<Manifest> {
        check_name(name)?;
        mf.preset.validate(&format!("Modelfile for '{name}'"))?;
        let _lock = self.lock()?;
        self.check_collision(name)?;
        let from_path = {
            let p = Path::new(&mf.from);
            let p = match mf.from.strip_prefix("~/") {
                Some(rest) => std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(rest))
                    .unwrap_or_else(|| p.to_path_buf()),
                None if p.is_relative() => base_dir.join(p),
                None => p.to_path_buf(),
            };
            p.is_file().then_some(p)
        };
        let preset = (mf.preset != Preset::default()).then(|| mf.preset.clone());
        let manifest = match from_path {
            Some(path) => {
                let staged = self.root.join(format!(
                    ".staging-{}-{}",
                    sanitize(name),
                    std::process::id()
                ));
                let _ = std::fs::remove_dir_all(&staged);
                std::fs::create_dir_all(&staged).map_err(io_err(&staged))?;
                let result = (|| {
                    let files = match engine_gguf::model::split_parts(&path) {
                        Some((prefix, count)) => (1..=count)
                            .map(|i| engine_gguf::model::split_path(&prefix, i, count))
                            .collect(),
                        None => vec![path.clone()],
                    };
                    let mut parts = Vec::new();
                    for (i, f) in files.iter().enumerate() {
                        let fname = f
                            .file_name()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_else(|| "model.gguf".into());
                        progress.phase(&format!("importing {}", f.display()), None);
                        let to = staged.join(&fname);
                        if std::fs::hard_link(f, &to).is_err() {
                            std::fs::copy(f, &to).map_err(io_err(&to))?;
                        }
                        let sha = crate::source::sha256_file(&to)?;
                        let size = std::fs::metadata(&to).map_err(io_err(&to))?.len();
                        parts.push((i, fname, sha, size));
                    }
                    let (architecture, quant) =
                        gguf_facts(&staged.join(&parts[0].1)).map_err(|problem| {
                            StoreError::Invalid {
                                what: format!("FROM {}", mf.from),
                                problem: format!("not a usable GGUF file: {problem}"),
                            }
                        })?;
                    let manifest = Manifest {
                        name: name.to_string(),
                        file: parts[0].1.clone(),
                        source: format!("create: FROM {}", path.display()),
                        sha256: parts[0].2.clone(),
                        size: parts.iter().map(|p| p.3).sum(),
                        quant,
                        architecture,
                        installed_at: now_secs(),
                        parts: parts[1..]
                            .iter()
                            .map(|p| PartFile {
                                file: p.1.clone(),
                                sha256: p.2.clone(),
                                size: p.3,
                            })
                            .collect(),
                        from: None,
                        preset: preset.clone(),
                        device: None,
                    };
                    self.install(&staged, &manifest)?;
                    Ok(manifest)
                })();
                let _ = std::fs::remove_dir_all(&staged);
                result?
            }
            None => {
                let base = self.get(&mf.from)?.ok_or_else(|| {
                    StoreError::UnknownModel(format!(
                        "{} (FROM names neither a file nor an installed model; `engine pull` it first)",
                        mf.from
                    ))
                })?;
                if base.name == name {
                    return Err(StoreError::Invalid {
                        what: format!("Modelfile for '{name}'"),
                        problem: "a model cannot be created FROM itself".into(),
                    });
                }
                let (weights, _) = self.weights(&base)?;
                let manifest = Manifest {
                    name: name.to_string(),
                    file: String::new(),
                    source: format!("create: FROM {}", base.name),
                    sha256: weights.sha256.clone(),
                    size: weights.size,
                    quant: weights.quant.clone(),
                    architecture: weights.architecture.clone(),
                    installed_at: now_secs(),
                    parts: Vec::new(),
                    from: Some(base.name.clone()),
                    preset,
                    device: None,
                };
                let staged = self.root.join(format!(
                    ".staging-{}-{}",
                    sanitize(name),
                    std::process::id()
                ));
                let _ = std::fs::remove_dir_all(&staged);
                std::fs::create_dir_all(&staged).map_err(io_err(&staged))?;
                let r = self.install(&staged, &manifest);
                let _ = std::fs::remove_dir_all(&staged);
                r?;
                manifest
            }
        };
        Ok(manifest)
    }

    /// Writes the manifest into `staged` and moves it into place, replacing an older
    /// install of the same name only once the new one is complete.
    fn install(&self, staged: &Path, manifest: &Manifest) -> Result<()> {
        let mpath = staged.join("manifest.json");
        let json = serde_json::to_string_pretty(manifest).expect("manifest serializes");
        std::fs::write(&mpath, json).map_err(io_err(&mpath))?;
        let final_dir = self.dir(&manifest.name);
        if final_dir.exists() {
            let trash = self.root.join(format!(
                ".trash-{}-{}",
                sanitize(&manifest.name),
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&trash);
            std::fs::rename(&final_dir, &trash).map_err(io_err(&final_dir))?;
            let r = std::fs::rename(staged, &final_dir).map_err(io_err(&final_dir));
            if r.is_err() {
                let _ = std::fs::rename(&trash, &final_dir);
            } else {
                let _ = std::fs::remove_dir_all(&trash);
            }
            return r;
        }
        std::fs::rename(staged, &final_dir).map_err(io_err(&final_dir))
    }

    fn files_intact(&self, m: &Manifest) -> bool {
        let dir = self.dir(&m.name);
        let first = m.size - m.parts.iter().map(|p| p.size).sum::<u64>();
        std::fs::metadata(dir.join(&m.file)).is_ok_and(|md| md.len() == first)
            && m.parts
                .iter()
                .all(|p| std::fs::metadata(dir.join(&p.file)).is_ok_and(|md| md.len() == p.size))
    }

    /// Refuses a name whose directory holds a different model (names that differ only in
    /// characters the directory name cannot hold, like `a:b` and `a_b`).
    fn check_collision(&self, name: &str) -> Result<()> {
        if let Some(m) = self.read_manifest(&self.dir(name))? {
            if m.name != name {
                return Err(StoreError::Invalid {
                    what: format!("model name '{name}'"),
                    problem: format!(
                        "it would share a directory with the installed model '{}'; choose another name",
                        m.name
                    ),
                });
            }
        }
        Ok(())
    }

    /// Removes an installed model or preset. A model that presets are built on is kept
    /// unless `force` is set (the presets would stop working).
    pub fn remove(&self, name: &str) -> Result<bool> {
        self.remove_checked(name, true)
    }

    /// [`Store::remove`], refusing to remove the base of a preset unless `force`.
    pub fn remove_checked(&self, name: &str, force: bool) -> Result<bool> {
        let _lock = self.lock()?;
        let Some(m) = self.get(name)? else {
            return Ok(false);
        };
        if !force {
            let users: Vec<String> = self
                .list()?
                .into_iter()
                .filter(|x| x.from.as_deref() == Some(m.name.as_str()))
                .map(|x| x.name)
                .collect();
            if !users.is_empty() {
                return Err(StoreError::Invalid {
                    what: format!("removal of '{}'", m.name),
                    problem: format!(
                        "the presets {} use its weights; remove them first (or pass --force)",
                        users.join(", ")
                    ),
                });
            }
        }
        let dir = self.dir(&m.name);
        let trash = self.root.join(format!(
            ".trash-{}-{}",
            sanitize(&m.name),
            std::process::id()
        ));
        std::fs::rename(&dir, &trash).map_err(io_err(&dir))?;
        std::fs::remove_dir_all(&trash).map_err(io_err(&trash))?;
        Ok(true)
    }

    /// Removes a download's work directory, and `.partial` itself once empty.
    fn drop_partial(&self, partial: &Path) {
        let _ = std::fs::remove_dir_all(partial);
        let _ = std::fs::remove_dir(self.root.join(".partial"));
    }

    /// Bytes of interrupted downloads kept for resuming, per model name.
    pub fn partials(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.root.join(".partial")) {
            for e in rd.flatten() {
                let bytes = std::fs::read_dir(e.path())
                    .map(|r| {
                        r.flatten()
                            .filter(|f| f.file_name().to_string_lossy().ends_with(".part"))
                            .filter_map(|f| f.metadata().ok())
                            .map(|m| m.len())
                            .sum()
                    })
                    .unwrap_or(0);
                out.push((e.file_name().to_string_lossy().into_owned(), bytes));
            }
        }
        out.sort();
        out
    }

    fn lock(&self) -> Result<File> {
        let p = self.root.join(".lock");
        let f = File::create(&p).map_err(io_err(&p))?;
        f.lock().map_err(io_err(&p))?;
        Ok(f)
    }

    /// Removes work directories left behind by interrupted pulls and installs (called under
    /// the lock). Resumable downloads in `.partial/` are kept.
    fn clean_partials(&self) {
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(".partial-")
                    || n.starts_with(".staging-")
                    || n.starts_with(".trash-")
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// `general.architecture` and the quantization label of a GGUF (a split set opens whole).
fn gguf_facts(path: &Path) -> std::result::Result<(String, String), String> {
    let g = engine_gguf::GgufModel::open(path, true).map_err(|e| e.to_string())?;
    let arch = g
        .get_str("general.architecture")
        .map_err(|e| e.to_string())?
        .ok_or("it has no general.architecture")?
        .to_string();
    let quant = g
        .get_int("general.file_type")
        .ok()
        .flatten()
        .and_then(|t| u32::try_from(t).ok())
        .and_then(engine_gguf::ftype::file_type_name)
        .map(quant_label)
        .unwrap_or_else(|| "unknown".into());
    Ok((arch, quant))
}

/// `Q4_K - Medium` → `Q4_K_M`, as model cards and Ollama spell it.
fn quant_label(name: &str) -> String {
    let (base, rest) = match name.split_once(" - ") {
        Some((b, r)) => (b, r),
        None => return name.trim_start_matches("all ").to_string(),
    };
    match rest {
        "Small" => format!("{base}_S"),
        "Medium" => format!("{base}_M"),
        "Large" => format!("{base}_L"),
        _ => base.to_string(),
    }
}

/// A usable model name: not empty, not hidden, no control characters.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |problem: &str| StoreError::Invalid {
        what: format!("model name '{name}'"),
        problem: problem.to_string(),
    };
    if name.trim().is_empty() {
        return Err(bad("it is empty"));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(bad("it must not start with '.' or '-'"));
    }
    if name.len() > 200 {
        return Err(bad("it is longer than 200 bytes"));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("it must not contain spaces or control characters"));
    }
    Ok(())
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

    #[test]
    fn quant_labels_and_names() {
        assert_eq!(quant_label("Q4_K - Medium"), "Q4_K_M");
        assert_eq!(quant_label("Q3_K - Small"), "Q3_K_S");
        assert_eq!(quant_label("Q4_0"), "Q4_0");
        assert_eq!(quant_label("all F32"), "F32");
        assert_eq!(quant_label("IQ4_NL - 4.5 bpw"), "IQ4_NL");
        assert!(check_name("nemotron-3-nano:4b-elroy").is_ok());
        assert!(check_name("org/model:tag").is_ok());
        for bad in ["", " ", ".hidden", "-x", "a b", "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn presets_over_a_base_and_removal_order() {
        let dir = std::env::temp_dir().join(format!("engine-store-preset-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let payload = b"GGUF not really".to_vec();
        let sha = {
            let t = dir.join("probe");
            std::fs::write(&t, &payload).unwrap();
            let s = crate::source::sha256_file(&t).unwrap();
            std::fs::remove_file(&t).unwrap();
            s
        };
        store
            .pull_from(
                &card(&sha, payload.len() as u64),
                &Fake(payload.clone()),
                &mut NoProgress,
            )
            .unwrap();
        let mf = crate::modelfile::parse(
            "FROM tiny\nPARAMETER num_ctx 2048\nPARAMETER temperature 0\nSYSTEM \"\"\"You are Elroy.\"\"\"\n",
        )
        .unwrap();
        let m = store
            .create("tiny-elroy", &mf, &dir, &mut NoProgress)
            .unwrap();
        assert_eq!(m.from.as_deref(), Some("tiny"));
        assert!(m.is_preset());
        assert_eq!(m.sha256, sha);
        // a preset resolves to its base's weights
        let base_path = store.resolve("tiny").unwrap();
        assert_eq!(store.resolve("tiny-elroy").unwrap(), base_path);
        // a preset of a preset inherits and overrides
        let mf2 = crate::modelfile::parse("FROM tiny-elroy\nPARAMETER temperature 0.5\n").unwrap();
        let m2 = store
            .create("tiny-warm", &mf2, &dir, &mut NoProgress)
            .unwrap();
        let eff = store.effective_preset(&m2).unwrap();
        assert_eq!(eff.system.as_deref(), Some("You are Elroy."));
        assert_eq!(eff.num_ctx, Some(2048));
        assert_eq!(eff.parameters.temperature, Some(0.5));
        assert_eq!(store.resolve("tiny-warm").unwrap(), base_path);
        assert_eq!(store.list().unwrap().len(), 3);
        // unknown FROM and FROM itself are refused
        let bad = crate::modelfile::parse("FROM nothing-here\n").unwrap();
        assert!(matches!(
            store.create("x", &bad, &dir, &mut NoProgress),
            Err(StoreError::UnknownModel(_))
        ));
        let selfref = crate::modelfile::parse("FROM tiny-elroy\n").unwrap();
        assert!(store
            .create("tiny-elroy", &selfref, &dir, &mut NoProgress)
            .is_err());
        // the base cannot go while presets use it
        let e = store.remove_checked("tiny", false).unwrap_err().to_string();
        assert!(e.contains("tiny-elroy"), "{e}");
        assert!(store.remove_checked("tiny-warm", false).unwrap());
        assert!(store.remove_checked("tiny-elroy", false).unwrap());
        assert!(store.remove_checked("tiny", false).unwrap());
        assert!(store.list().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_imports_a_file() {
        let dir = std::env::temp_dir().join(format!("engine-store-import-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(dir.join("store")).unwrap();
        let src = engine_gguf_fixture(&dir);
        let mf = crate::modelfile::parse("FROM ./tiny.gguf\nSYSTEM hi\n").unwrap();
        let m = store
            .create("imported", &mf, &dir, &mut NoProgress)
            .unwrap();
        assert!(!m.is_preset());
        assert_eq!(m.architecture, "llama");
        assert_eq!(m.preset.as_ref().unwrap().system.as_deref(), Some("hi"));
        assert_eq!(
            std::fs::read(store.resolve("imported").unwrap()).unwrap(),
            std::fs::read(&src).unwrap()
        );
        // not a GGUF: refused, nothing installed
        std::fs::write(dir.join("junk.gguf"), b"<html>not found</html>").unwrap();
        let mf = crate::modelfile::parse("FROM junk.gguf\n").unwrap();
        let e = store
            .create("junk", &mf, &dir, &mut NoProgress)
            .unwrap_err();
        assert!(e.to_string().contains("not a usable GGUF"), "{e}");
        assert_eq!(store.list().unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn engine_gguf_fixture(dir: &Path) -> PathBuf {
        let mut w = engine_gguf::GgufWriter::new();
        w.set(
            "general.architecture",
            engine_gguf::Value::String("llama".into()),
        );
        w.set("general.file_type", engine_gguf::Value::U32(0));
        w.add_tensor("x", engine_core::DType::F32, &[4], vec![0u8; 16])
            .unwrap();
        let p = dir.join("tiny.gguf");
        w.write_to(&p).unwrap();
        p
    }
}
