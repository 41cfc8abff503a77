//! Models compiled for a text device (a Hailo HEF) rather than GGUF weights: what the store
//! records about them beside the file, so the server can drive the device.

use serde::{Deserialize, Serialize};

/// A device model's package: the device it runs on and what its manifest said.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DevicePackage {
    /// The device kind (`hailo`).
    pub device: String,
    /// The model's Jinja chat template (rendered on the host), if the package has one;
    /// without it chat messages go to the device, which applies its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// Text of the beginning-of-sequence token (for the template).
    #[serde(default)]
    pub bos_token: String,
    /// Text of the end-of-sequence token (for the template).
    #[serde(default)]
    pub eos_token: String,
    /// Texts of the tokens that end a generation.
    #[serde(default)]
    pub stop_tokens: Vec<String>,
    /// Model family (`qwen2.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Parameter count as the package says (`1.5B`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter_size: Option<String>,
    /// Quantization as the package says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
}

impl DevicePackage {
    /// The end tokens the device stops on: the stop tokens and the end-of-sequence token.
    pub fn end_tokens(&self) -> Vec<String> {
        let mut v: Vec<String> = self.stop_tokens.clone();
        if !self.eos_token.is_empty() && !v.contains(&self.eos_token) {
            v.push(self.eos_token.clone());
        }
        v.retain(|t| !t.is_empty());
        v
    }

    /// A bare file of a device kind with no package (`x.hef`): the device applies its own
    /// template and stop tokens.
    pub fn for_file(path: &std::path::Path) -> Option<DevicePackage> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        (ext == "hef").then(|| DevicePackage {
            device: "hailo".into(),
            ..Default::default()
        })
    }
}
