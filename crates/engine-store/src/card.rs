//! Model cards: the models the engine knows by name, read from the `models/` folder of the
//! repository and compiled into the binary.

use serde::Deserialize;

use crate::source::SourceSpec;
use crate::{Result, StoreError};

/// One model card.
#[derive(Clone, Debug, Deserialize)]
pub struct ModelCard {
    /// Store name, e.g. `gemma3-270m`.
    pub name: String,
    /// One line about the model.
    pub description: String,
    /// `general.architecture` of the file.
    pub architecture: String,
    /// Quantization label, e.g. `Q4_K_M`.
    pub quant: String,
    /// File name inside the store.
    pub file: String,
    /// Expected sha256 of the file (lower-case hex).
    pub sha256: String,
    /// Expected size in bytes.
    pub size: u64,
    /// License identifier.
    #[serde(default)]
    pub license: String,
    /// Other names that resolve to this card.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Where the weights come from.
    pub source: SourceSpec,
}

const CARDS: &[(&str, &str)] = &[(
    "gemma3-270m.toml",
    include_str!("../../../models/gemma3-270m.toml"),
)];

/// Parses a card from TOML text.
pub fn parse_card(what: &str, text: &str) -> Result<ModelCard> {
    toml::from_str(text).map_err(|e| StoreError::Invalid {
        what: format!("model card {what}"),
        problem: e.to_string(),
    })
}

/// Every card compiled into this build.
pub fn builtin_cards() -> Vec<ModelCard> {
    CARDS
        .iter()
        .map(|(f, t)| parse_card(f, t).expect("built-in model cards are valid (checked by a test)"))
        .collect()
}

/// The card named `name` (or with that alias), if any.
pub fn find_card(name: &str) -> Option<ModelCard> {
    builtin_cards()
        .into_iter()
        .find(|c| c.name == name || c.aliases.iter().any(|a| a == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_cards_parse_and_resolve() {
        let cards = builtin_cards();
        assert!(!cards.is_empty());
        let c = find_card("gemma3-270m").unwrap();
        assert_eq!(c.sha256.len(), 64);
        assert_eq!(find_card("gemma3:270m").unwrap().name, "gemma3-270m");
        assert!(find_card("no-such-model").is_none());
    }
}
