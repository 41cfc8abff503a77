//! WordPiece (WPM) tokenization as llama.cpp does it for BERT-style vocabularies: normalize
//! (optional lowercasing and accent stripping), split on whitespace and around punctuation
//! and CJK characters, then cover each word, prefixed with `▁`, greedily with the longest
//! vocabulary tokens; a word that cannot be covered becomes the unknown token.

use crate::error::TokenizerError;
use crate::unicode::{flags, nfd_first, to_lower};
use crate::vocab::Vocab;

/// CJK ideograph ranges treated as single-character words (as in HF's BERT tokenizer).
fn is_chinese_char(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

/// Normalizes and splits `text` into words.
fn preprocess(text: &str, lowercase: bool, strip_accents: bool) -> Vec<String> {
    let mut words = vec![String::new()];
    for c in text.chars() {
        let c = if strip_accents { nfd_first(c) } else { c };
        let f = flags(c);
        if f.is_whitespace() {
            if words.last().is_some_and(|w| !w.is_empty()) {
                words.push(String::new());
            }
            continue;
        }
        if c == '\0' || c == '\u{FFFD}' || f.is_control() {
            continue;
        }
        if strip_accents && f.is_mark() {
            continue;
        }
        let s = if lowercase { to_lower(c) } else { c };
        let Some(last) = words.last_mut() else {
            continue;
        };
        if f.is_punctuation() || ((c as u32) < 0x7F && f.is_symbol()) || is_chinese_char(c) {
            if !last.is_empty() {
                words.push(String::new());
            }
            if let Some(last) = words.last_mut() {
                last.push(s);
            }
            words.push(String::new());
        } else {
            last.push(s);
        }
    }
    if words.last().is_some_and(|w| w.is_empty()) {
        words.pop();
    }
    words
}

/// Tokenizes one raw-text fragment and appends the ids to `out`.
pub(crate) fn tokenize(
    vocab: &Vocab,
    text: &str,
    out: &mut Vec<u32>,
) -> Result<(), TokenizerError> {
    let flags = &vocab.flags;
    for word in preprocess(text, flags.lowercase, flags.strip_accents) {
        if word.is_empty() {
            continue;
        }
        let word = format!("\u{2581}{word}");
        let n = word.len();
        let start_len = out.len();
        let mut i = 0;
        while i < n {
            let mut matched = false;
            let mut j = n.min(i + vocab.max_token_len + 1);
            while j > i {
                if let Some(id) = word.get(i..j).and_then(|s| vocab.token_id(s)) {
                    out.push(id);
                    matched = true;
                    i = j;
                    break;
                }
                j -= 1;
            }
            if !matched {
                out.truncate(start_len);
                break;
            }
        }
        if out.len() == start_len {
            out.push(
                vocab
                    .ids
                    .unk
                    .ok_or(TokenizerError::MissingSpecialToken("UNK"))?,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::preprocess;

    #[test]
    fn splits_punctuation_and_strips_accents() {
        assert_eq!(
            preprocess("Héllo, WORLD!  ok", true, true),
            ["hello", ",", "world", "!", "ok"]
        );
        assert_eq!(preprocess("a你b", false, false), ["a", "你", "b"]);
        assert!(preprocess("   ", true, true).is_empty());
    }
}
