//! Presets: a model plus the settings it is served with (aliases, a system prompt, default
//! sampling parameters, context size, chat template, keep-alive, a draft model), as written
//! by `engine create` from an Ollama Modelfile or listed in a models file (`--models FILE`).
//!
//! Also [`KeepAlive`], Ollama's keep-alive durations (`"5m"`, `300`, `0`, `-1`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Result, StoreError};

/// One message of a conversation preset (Modelfile `MESSAGE`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Its text.
    pub content: String,
}

/// Default generation parameters (Modelfile `PARAMETER`, Ollama's option names). A request's
/// own values win over these.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Parameters {
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Top-k (0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    /// Top-p (1 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Min-p (0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// Repetition penalty (1 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f32>,
    /// Tokens the penalties look back at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_last_n: Option<i32>,
    /// Presence penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// Frequency penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Sampling seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Stop strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Most tokens to generate (-1 = no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_predict: Option<i64>,
}

impl Parameters {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Parameters::default()
    }

    /// Sets one parameter from its Modelfile spelling (`PARAMETER name value`). `stop` adds
    /// a string each time it is given.
    pub fn set(&mut self, name: &str, value: &str) -> std::result::Result<(), String> {
        fn num<T: std::str::FromStr>(name: &str, v: &str) -> std::result::Result<T, String> {
            v.trim()
                .parse()
                .map_err(|_| format!("PARAMETER {name}: '{v}' is not a valid number"))
        }
        match name {
            "temperature" => self.temperature = Some(num(name, value)?),
            "top_k" => self.top_k = Some(num(name, value)?),
            "top_p" => self.top_p = Some(num(name, value)?),
            "min_p" => self.min_p = Some(num(name, value)?),
            "repeat_penalty" => self.repeat_penalty = Some(num(name, value)?),
            "repeat_last_n" => self.repeat_last_n = Some(num(name, value)?),
            "presence_penalty" => self.presence_penalty = Some(num(name, value)?),
            "frequency_penalty" => self.frequency_penalty = Some(num(name, value)?),
            "seed" => self.seed = Some(num(name, value)?),
            "num_predict" => self.num_predict = Some(num(name, value)?),
            "stop" => self.stop.push(value.to_string()),
            _ => return Err(format!("unknown PARAMETER '{name}'")),
        }
        Ok(())
    }

    /// The parameters as Modelfile lines.
    pub fn modelfile_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut p = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push(format!("PARAMETER {k} {v}"));
            }
        };
        p("temperature", self.temperature.map(|v| v.to_string()));
        p("top_k", self.top_k.map(|v| v.to_string()));
        p("top_p", self.top_p.map(|v| v.to_string()));
        p("min_p", self.min_p.map(|v| v.to_string()));
        p("repeat_penalty", self.repeat_penalty.map(|v| v.to_string()));
        p("repeat_last_n", self.repeat_last_n.map(|v| v.to_string()));
        p(
            "presence_penalty",
            self.presence_penalty.map(|v| v.to_string()),
        );
        p(
            "frequency_penalty",
            self.frequency_penalty.map(|v| v.to_string()),
        );
        p("seed", self.seed.map(|v| v.to_string()));
        p("num_predict", self.num_predict.map(|v| v.to_string()));
        for s in &self.stop {
            out.push(format!("PARAMETER stop {}", quote(s)));
        }
        out
    }
}

/// How a model is served, beyond its weights.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Preset {
    /// Other names requests may use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// System prompt used when a request brings none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Chat template override: a built-in name (`gemma`, `chatml`, ...) or Jinja source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Default sampling and length parameters.
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    pub parameters: Parameters,
    /// Context size per sequence (Ollama's `num_ctx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_ctx: Option<usize>,
    /// How long the model stays loaded after its last request (see [`KeepAlive`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<String>,
    /// A draft model (store name or path) for speculative decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<String>,
    /// Messages placed before every conversation (after the system prompt).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
}

impl Preset {
    /// Lays `over` on top of these settings: what `over` sets wins (aliases add up), what it
    /// leaves unset stays. A preset built FROM another inherits this way.
    pub fn overlay(&mut self, over: &Preset) {
        for a in &over.aliases {
            if !self.aliases.contains(a) {
                self.aliases.push(a.clone());
            }
        }
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f.clone(); } )* };
        }
        take!(system, template, num_ctx, keep_alive, draft);
        if !over.messages.is_empty() {
            self.messages = over.messages.clone();
        }
        let (o, n) = (&mut self.parameters, &over.parameters);
        macro_rules! param {
            ($($f:ident),*) => { $( if n.$f.is_some() { o.$f = n.$f; } )* };
        }
        param!(
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n,
            presence_penalty,
            frequency_penalty,
            seed,
            num_predict
        );
        if !n.stop.is_empty() {
            o.stop = n.stop.clone();
        }
    }

    /// Checks the values that can be checked without the model.
    pub fn validate(&self, what: &str) -> Result<()> {
        let bad = |problem: String| StoreError::Invalid {
            what: what.to_string(),
            problem,
        };
        if let Some(k) = &self.keep_alive {
            KeepAlive::parse(k).map_err(bad)?;
        }
        if self.num_ctx == Some(0) {
            return Err(bad("num_ctx must be at least 1".into()));
        }
        for m in &self.messages {
            if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                return Err(bad(format!(
                    "MESSAGE role must be system, user or assistant, got '{}'",
                    m.role
                )));
            }
        }
        let p = &self.parameters;
        if p.temperature.is_some_and(|t| !(0.0..=100.0).contains(&t)) {
            return Err(bad("temperature must be between 0 and 100".into()));
        }
        if p.top_p.is_some_and(|t| !(0.0..=1.0).contains(&t))
            || p.min_p.is_some_and(|t| !(0.0..=1.0).contains(&t))
        {
            return Err(bad("top_p and min_p must be between 0 and 1".into()));
        }
        Ok(())
    }
}

/// Ollama's keep-alive: how long a model stays loaded after its last request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    /// Unload as soon as the model is idle (`0`).
    Unload,
    /// Stay loaded this long after the last request.
    For(Duration),
    /// Never unload (any negative value).
    Forever,
}

impl KeepAlive {
    /// Parses Ollama's forms: a number of seconds (`300`, `-1`, `0`) or a duration with
    /// units (`5m`, `1h30m`, `90s`, `-1m`, `500ms`). Negative means forever, zero means
    /// unload now.
    pub fn parse(s: &str) -> std::result::Result<KeepAlive, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("empty keep-alive duration".into());
        }
        let (neg, body) = match t.strip_prefix('-') {
            Some(rest) => (true, rest.trim()),
            None => (false, t.strip_prefix('+').unwrap_or(t).trim()),
        };
        let d = if let Ok(secs) = body.parse::<f64>() {
            if !secs.is_finite() {
                return Err(format!("invalid keep-alive duration '{s}'"));
            }
            Duration::from_secs_f64(secs.min(1e12))
        } else {
            humantime::parse_duration(body).map_err(|e| {
                format!("invalid keep-alive duration '{s}' ({e}); use e.g. 5m, 1h, 300, 0 or -1")
            })?
        };
        Ok(if neg && !d.is_zero() {
            KeepAlive::Forever
        } else if d.is_zero() {
            KeepAlive::Unload
        } else {
            KeepAlive::For(d)
        })
    }

    /// From a JSON value as Ollama clients send it: a number of seconds or a string.
    pub fn from_json(v: &serde_json::Value) -> std::result::Result<KeepAlive, String> {
        match v {
            serde_json::Value::Number(n) => {
                let f = n.as_f64().unwrap_or(0.0);
                KeepAlive::parse(&f.to_string())
            }
            serde_json::Value::String(s) => KeepAlive::parse(s),
            other => Err(format!(
                "keep_alive must be a duration string or a number of seconds, got {other}"
            )),
        }
    }

    /// The time after `from` at which the model unloads (`None` = never).
    pub fn deadline(&self, from: std::time::Instant) -> Option<std::time::Instant> {
        match self {
            KeepAlive::Unload => Some(from),
            KeepAlive::For(d) => from.checked_add(*d),
            KeepAlive::Forever => None,
        }
    }
}

impl std::fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepAlive::Unload => f.write_str("0"),
            KeepAlive::For(d) => write!(f, "{}", humantime::format_duration(*d)),
            KeepAlive::Forever => f.write_str("-1"),
        }
    }
}

/// One model of a models file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsFileEntry {
    /// A store name (installed, or a known model pulled on first use).
    pub from: Option<String>,
    /// A GGUF path (relative paths are relative to the models file).
    pub path: Option<PathBuf>,
    /// A source to pull into the store when not installed: `hf:ORG/REPO[/FILE.gguf]` or an
    /// `https://` URL.
    pub source: Option<String>,
    /// Expected sha256 of a `source` download (hex).
    pub sha256: Option<String>,
    /// Other names.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// System prompt.
    pub system: Option<String>,
    /// Default parameters.
    #[serde(default)]
    pub parameters: Parameters,
    /// Context size per sequence.
    #[serde(alias = "num_ctx", alias = "ctx-size")]
    pub ctx_size: Option<usize>,
    /// A built-in chat template name or Jinja source.
    #[serde(alias = "chat-template")]
    pub chat_template: Option<String>,
    /// A Jinja chat template file (relative to the models file).
    #[serde(alias = "chat-template-file")]
    pub chat_template_file: Option<PathBuf>,
    /// Keep-alive (`"10m"`, `0`, `-1`).
    #[serde(alias = "keep-alive")]
    pub keep_alive: Option<toml::Value>,
    /// Draft model for speculative decoding (store name or path).
    pub draft: Option<String>,
    /// Messages placed before every conversation.
    #[serde(default)]
    pub messages: Vec<Message>,
}

/// Where a models-file entry's weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelRef {
    /// A store name (or a card name, pulled when missing).
    Store(String),
    /// A file.
    Path(PathBuf),
    /// A remote source pulled into the store under the entry's name when missing.
    Source {
        /// `hf:...` or a URL.
        spec: String,
        /// Expected sha256.
        sha256: Option<String>,
    },
}

/// A resolved models-file entry.
#[derive(Clone, Debug)]
pub struct ServedModel {
    /// The name requests use.
    pub name: String,
    /// The weights.
    pub model: ModelRef,
    /// Serving settings.
    pub preset: Preset,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    #[serde(default)]
    models: BTreeMap<String, ModelsFileEntry>,
}

/// Reads a models file (TOML): one `[models."NAME"]` table per served model.
pub fn load_models_file(path: &Path) -> Result<Vec<ServedModel>> {
    let text = std::fs::read_to_string(path).map_err(crate::io_err(path))?;
    parse_models_file(&text, path.parent().unwrap_or(Path::new("."))).map_err(|problem| {
        StoreError::Invalid {
            what: format!("models file {}", path.display()),
            problem,
        }
    })
}

/// Parses a models file; relative paths are taken from `base`.
pub fn parse_models_file(text: &str, base: &Path) -> std::result::Result<Vec<ServedModel>, String> {
    let f: ModelsFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (name, e) in f.models {
        if name.trim().is_empty() {
            return Err("a model name is empty".into());
        }
        let model = match (e.from, e.path, e.source) {
            (Some(s), None, None) => ModelRef::Store(s),
            (None, Some(p), None) => ModelRef::Path(if p.is_relative() { base.join(p) } else { p }),
            (None, None, Some(spec)) => ModelRef::Source {
                spec,
                sha256: e.sha256.clone(),
            },
            (None, None, None) => ModelRef::Store(name.clone()),
            _ => {
                return Err(format!(
                    "models.\"{name}\": give only one of from, path and source"
                ))
            }
        };
        if e.sha256.is_some() && !matches!(model, ModelRef::Source { .. }) {
            return Err(format!(
                "models.\"{name}\": sha256 only applies to a source"
            ));
        }
        let template = match (e.chat_template, e.chat_template_file) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "models.\"{name}\": give chat_template or chat_template_file, not both"
                ))
            }
            (Some(t), None) => Some(t),
            (None, Some(p)) => {
                let p = if p.is_relative() { base.join(p) } else { p };
                Some(std::fs::read_to_string(&p).map_err(|err| {
                    format!(
                        "models.\"{name}\": cannot read chat template file {}: {err}",
                        p.display()
                    )
                })?)
            }
            (None, None) => None,
        };
        let keep_alive = match e.keep_alive {
            None => None,
            Some(toml::Value::String(s)) => Some(s),
            Some(toml::Value::Integer(i)) => Some(i.to_string()),
            Some(toml::Value::Float(f)) => Some(f.to_string()),
            Some(other) => {
                return Err(format!(
                "models.\"{name}\": keep_alive must be a duration string or seconds, got {other}"
            ))
            }
        };
        let preset = Preset {
            aliases: e.aliases,
            system: e.system,
            template,
            parameters: e.parameters,
            num_ctx: e.ctx_size,
            keep_alive,
            draft: e.draft,
            messages: e.messages,
        };
        preset
            .validate(&format!("models.\"{name}\""))
            .map_err(|e| e.to_string())?;
        out.push(ServedModel {
            name,
            model,
            preset,
        });
    }
    Ok(out)
}

/// Quotes a Modelfile value with `"""` when it needs it.
pub(crate) fn quote(s: &str) -> String {
    if s.contains('\n') || s.contains('"') || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"\"\"{s}\"\"\"")
    } else if s.contains(' ') || s.is_empty() {
        format!("\"{s}\"")
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_forms() {
        use KeepAlive::*;
        assert_eq!(KeepAlive::parse("5m"), Ok(For(Duration::from_secs(300))));
        assert_eq!(
            KeepAlive::parse("1h30m"),
            Ok(For(Duration::from_secs(5400)))
        );
        assert_eq!(KeepAlive::parse("300"), Ok(For(Duration::from_secs(300))));
        assert_eq!(
            KeepAlive::parse("1.5"),
            Ok(For(Duration::from_millis(1500)))
        );
        assert_eq!(
            KeepAlive::parse("500ms"),
            Ok(For(Duration::from_millis(500)))
        );
        assert_eq!(KeepAlive::parse("0"), Ok(Unload));
        assert_eq!(KeepAlive::parse("0s"), Ok(Unload));
        assert_eq!(KeepAlive::parse("-1"), Ok(Forever));
        assert_eq!(KeepAlive::parse("-1m"), Ok(Forever));
        assert!(KeepAlive::parse("").is_err());
        assert!(KeepAlive::parse("soon").is_err());
        assert!(KeepAlive::parse("5 parsecs").is_err());
        assert_eq!(
            KeepAlive::from_json(&serde_json::json!(0)),
            Ok(KeepAlive::Unload)
        );
        assert_eq!(
            KeepAlive::from_json(&serde_json::json!(-1)),
            Ok(KeepAlive::Forever)
        );
        assert_eq!(
            KeepAlive::from_json(&serde_json::json!("10m")),
            Ok(For(Duration::from_secs(600)))
        );
        assert!(KeepAlive::from_json(&serde_json::json!([1])).is_err());
        assert_eq!(For(Duration::from_secs(300)).to_string(), "5m");
    }

    #[test]
    fn overlay_keeps_what_is_not_overridden() {
        let mut base = Preset {
            aliases: vec!["a".into()],
            system: Some("base".into()),
            num_ctx: Some(2048),
            ..Default::default()
        };
        base.parameters.temperature = Some(0.2);
        base.parameters.stop = vec!["x".into()];
        let mut over = Preset {
            aliases: vec!["b".into(), "a".into()],
            keep_alive: Some("1m".into()),
            ..Default::default()
        };
        over.parameters.temperature = Some(0.7);
        base.overlay(&over);
        assert_eq!(base.aliases, vec!["a", "b"]);
        assert_eq!(base.system.as_deref(), Some("base"));
        assert_eq!(base.num_ctx, Some(2048));
        assert_eq!(base.keep_alive.as_deref(), Some("1m"));
        assert_eq!(base.parameters.temperature, Some(0.7));
        assert_eq!(base.parameters.stop, vec!["x"]);
    }

    #[test]
    fn models_file_entries() {
        let dir = std::env::temp_dir().join(format!("engine-models-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.jinja"), "{{ messages }}").unwrap();
        let text = r#"
[models."base-elroy"]
from = "gemma3-270m"
aliases = ["elroy"]
system = "You are Elroy."
ctx_size = 2048
keep_alive = "10m"
parameters = { temperature = 0.2, stop = ["</s>"] }

[models.local]
path = "m.gguf"
chat_template_file = "t.jinja"
keep_alive = -1

[models."nemotron-3-nano:4b"]
source = "hf:org/repo/model-Q4_K_M.gguf"
sha256 = "ab"
draft = "tiny"
"#;
        let m = parse_models_file(text, &dir).unwrap();
        assert_eq!(m.len(), 3);
        let e = m.iter().find(|m| m.name == "base-elroy").unwrap();
        assert_eq!(e.model, ModelRef::Store("gemma3-270m".into()));
        assert_eq!(e.preset.system.as_deref(), Some("You are Elroy."));
        assert_eq!(e.preset.num_ctx, Some(2048));
        assert_eq!(e.preset.parameters.temperature, Some(0.2));
        assert_eq!(e.preset.parameters.stop, vec!["</s>"]);
        let l = m.iter().find(|m| m.name == "local").unwrap();
        assert_eq!(l.model, ModelRef::Path(dir.join("m.gguf")));
        assert_eq!(l.preset.template.as_deref(), Some("{{ messages }}"));
        assert_eq!(l.preset.keep_alive.as_deref(), Some("-1"));
        let n = m.iter().find(|m| m.name == "nemotron-3-nano:4b").unwrap();
        assert!(
            matches!(&n.model, ModelRef::Source { spec, sha256: Some(s) } if spec.starts_with("hf:") && s == "ab")
        );
        assert_eq!(n.preset.draft.as_deref(), Some("tiny"));

        for bad in [
            "[models.a]\nfrom = \"x\"\npath = \"y\"\n",
            "[models.a]\nkeep_alive = \"soon\"\n",
            "[models.a]\nunknown = 1\n",
            "[models.a]\nparameters = { temprature = 1 }\n",
            "[models.a]\nfrom = \"x\"\nsha256 = \"ab\"\n",
            "[models.a]\nchat_template_file = \"missing.jinja\"\n",
        ] {
            assert!(parse_models_file(bad, &dir).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
