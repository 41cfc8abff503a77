//! Hailo model-zoo GenAI packages: a `manifest.json` naming the HEF by its sha256
//! (`hef_h10h`), with the chat template (`template_params`), the stop tokens and default
//! sampling (`generation_params`). `engine pull` turns one into a [`Plan`] whose single
//! file is the HEF, verified against that sha256 like any other download, and installs it
//! with its [`DevicePackage`] and a preset holding the defaults.
//!
//! The HEF comes from the manifest's `hef_url` when it has one (absolute, or relative to the
//! manifest), else from `sha256_<digest>` beside the manifest (the layout of Hailo's model
//! library); `engine pull --hef-url` overrides both. `repetition_penalty` is not carried
//! over: HailoRT's GenAI API has no such setting (it has a frequency penalty).

use serde::Deserialize;

use crate::device::DevicePackage;
use crate::preset::Preset;
use crate::remote::{Plan, RemoteFile};
use crate::{Result, StoreError};

#[derive(Deserialize)]
struct Manifest {
    hef_h10h: String,
    #[serde(default)]
    hef_url: Option<String>,
    #[serde(default)]
    template_params: TemplateParams,
    #[serde(default)]
    generation_params: GenerationParams,
    #[serde(default)]
    system_prompt: Option<String>,
    #[serde(default)]
    details: Details,
}

#[derive(Deserialize, Default)]
struct TemplateParams {
    #[serde(default)]
    bos_token: Option<String>,
    #[serde(default)]
    eos_token: Option<String>,
    #[serde(default)]
    chat_template: Option<String>,
}

#[derive(Deserialize, Default)]
struct GenerationParams {
    #[serde(default)]
    stop_tokens: Vec<String>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    frequency_penalty: Option<f32>,
    seed: Option<i64>,
    max_generated_tokens: Option<i64>,
}

#[derive(Deserialize, Default)]
struct Details {
    family: Option<String>,
    parameter_size: Option<String>,
    quantization_level: Option<String>,
}

/// A parsed package: what to download and what to record.
#[derive(Clone, Debug)]
pub struct Package {
    /// The HEF to download (one file, with its sha256).
    pub plan: Plan,
    /// The device package recorded in the store manifest.
    pub device: DevicePackage,
    /// The defaults (sampling, system prompt) recorded as the model's preset.
    pub preset: Preset,
    /// A store name derived from the manifest's place (`MODEL:TAG` from `.../MODEL/TAG/
    /// manifest.json`) or its family.
    pub default_name: String,
}

/// True when `text` looks like a Hailo GenAI manifest.
pub fn is_manifest(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .is_some_and(|v| v.get("hef_h10h").is_some())
}

fn join(base: &str, rel: &str) -> String {
    if rel.starts_with("http://") || rel.starts_with("https://") {
        return rel.to_string();
    }
    let dir = base.rsplit_once('/').map(|(d, _)| d).unwrap_or(base);
    format!("{dir}/{}", rel.trim_start_matches("./"))
}

/// Parses a manifest found at `location` (its URL, or a local path when `hef_url` gives an
/// absolute URL); `hef_url` overrides where the HEF comes from.
pub fn parse(text: &str, location: &str, hef_url: Option<&str>) -> Result<Package> {
    let bad = |problem: String| StoreError::Invalid {
        what: format!("Hailo manifest {location}"),
        problem,
    };
    let m: Manifest = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let sha = m.hef_h10h.trim().to_ascii_lowercase();
    if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(format!(
            "hef_h10h must be the HEF's sha256 (64 hexadecimal digits), got '{}'",
            m.hef_h10h
        )));
    }
    let remote = location.starts_with("http://") || location.starts_with("https://");
    let url = match hef_url.map(str::to_string).or(m.hef_url.clone()) {
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => u,
        Some(u) if remote => join(location, &u),
        None if remote => join(location, &format!("sha256_{sha}")),
        _ => {
            return Err(bad(
                "the manifest is a local file and names no HEF URL; give one with --hef-url (or hef_url in the manifest)".into(),
            ))
        }
    };
    let g = &m.generation_params;
    if let Some(t) = g.stop_tokens.iter().find(|t| t.is_empty()) {
        return Err(bad(format!("stop_tokens contains an empty string ({t:?})")));
    }
    let mut preset = Preset::default();
    preset.parameters.temperature = g.temperature;
    preset.parameters.top_p = g.top_p;
    preset.parameters.top_k = g.top_k;
    preset.parameters.frequency_penalty = g.frequency_penalty;
    preset.parameters.seed = g.seed;
    preset.parameters.num_predict = g.max_generated_tokens;
    preset.system = m.system_prompt.clone().filter(|s| !s.is_empty());
    let family = m.details.family.clone();
    let device = DevicePackage {
        device: "hailo".into(),
        chat_template: m
            .template_params
            .chat_template
            .clone()
            .filter(|t| !t.is_empty()),
        bos_token: m.template_params.bos_token.clone().unwrap_or_default(),
        eos_token: m.template_params.eos_token.clone().unwrap_or_default(),
        stop_tokens: g.stop_tokens.clone(),
        family: family.clone(),
        parameter_size: m.details.parameter_size.clone(),
        quantization: m.details.quantization_level.clone(),
    };
    let no_query = location.split(['?', '#']).next().unwrap_or(location);
    let parts: Vec<&str> = no_query.split('/').filter(|p| !p.is_empty()).collect();
    let default_name = match parts.as_slice() {
        [.., model, tag, file] if file.ends_with(".json") && !model.contains(':') => {
            format!("{model}:{tag}")
        }
        _ => family.unwrap_or_else(|| "hailo-model".into()),
    }
    .to_ascii_lowercase();
    Ok(Package {
        plan: Plan {
            source: format!("hailo:{location}"),
            files: vec![RemoteFile {
                url,
                name: "model.hef".into(),
                size: None,
                sha256: Some(sha),
            }],
            headers: Vec::new(),
            device: None,
        },
        device,
        preset,
        default_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "5310176848638505fbc28add04ba60c97abe345cdb0ec7e3b8ffaa4b0a8c65dd";

    fn manifest(extra: &str) -> String {
        format!(
            r#"{{"hef_h10h": "{SHA}", {extra} "template_params": {{"bos_token": "", "eos_token": "<|endoftext|>", "chat_template": "{{{{ messages[0].content }}}}"}},
            "generation_params": {{"stop_tokens": ["<|im_end|>", "<|endoftext|>"], "repetition_penalty": 1.1, "temperature": 0.7, "top_p": 0.8, "top_k": 20}},
            "license": null, "system_prompt": null,
            "details": {{"family": "qwen2.5", "parameter_size": "1.5B", "quantization_level": "Q4_0"}}}}"#
        )
    }

    #[test]
    fn a_model_zoo_manifest_becomes_a_verified_plan() {
        let loc = "https://h.invalid/manifests/qwen2.5-instruct/1.5b/manifest.json";
        let p = parse(&manifest(""), loc, None).unwrap();
        assert_eq!(p.default_name, "qwen2.5-instruct:1.5b");
        assert_eq!(p.plan.files.len(), 1);
        let f = &p.plan.files[0];
        assert_eq!(
            f.url,
            format!("https://h.invalid/manifests/qwen2.5-instruct/1.5b/sha256_{SHA}")
        );
        assert_eq!(f.sha256.as_deref(), Some(SHA));
        assert_eq!(p.device.stop_tokens, ["<|im_end|>", "<|endoftext|>"]);
        assert_eq!(p.device.eos_token, "<|endoftext|>");
        assert_eq!(p.device.parameter_size.as_deref(), Some("1.5B"));
        assert_eq!(p.preset.parameters.temperature, Some(0.7));
        assert_eq!(p.preset.parameters.top_k, Some(20));
        assert_eq!(p.preset.parameters.repeat_penalty, None);
        // hef_url: relative, absolute, overridden
        let p = parse(&manifest(r#""hef_url": "blobs/q.hef","#), loc, None).unwrap();
        assert_eq!(
            p.plan.files[0].url,
            "https://h.invalid/manifests/qwen2.5-instruct/1.5b/blobs/q.hef"
        );
        let p = parse(&manifest(""), loc, Some("https://other.invalid/x.hef")).unwrap();
        assert_eq!(p.plan.files[0].url, "https://other.invalid/x.hef");
        // a local manifest needs an absolute HEF URL
        assert!(parse(&manifest(""), "/tmp/manifest.json", None).is_err());
        assert!(parse(
            &manifest(""),
            "/tmp/manifest.json",
            Some("https://o.invalid/x.hef")
        )
        .is_ok());
        assert!(is_manifest(&manifest("")));
        assert!(!is_manifest("{}"));
    }

    #[test]
    fn bad_manifests_are_refused_with_the_reason() {
        let e = parse(r#"{"hef_h10h": "abc"}"#, "https://h.invalid/m.json", None).unwrap_err();
        assert!(e.to_string().contains("64 hexadecimal digits"), "{e}");
        let e = parse("not json", "https://h.invalid/m.json", None).unwrap_err();
        assert!(e.to_string().contains("Hailo manifest"), "{e}");
        let bad = manifest("").replace(r#""<|im_end|>", "#, r#""", "#);
        let e = parse(&bad, "https://h.invalid/m.json", None).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }
}
