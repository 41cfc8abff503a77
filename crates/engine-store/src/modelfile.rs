//! Ollama Modelfiles, as `engine create NAME -f Modelfile` reads them.
//!
//! Instructions (case-insensitive): `FROM` (a store name or a GGUF path), `PARAMETER`
//! (num_ctx, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
//! presence_penalty, frequency_penalty, seed, stop, num_predict), `SYSTEM`, `TEMPLATE`,
//! `MESSAGE role text`, and `LICENSE`. Values are the rest of the line, a `"quoted"` string or
//! a `"""multi-line"""` string. Lines starting with `#` are comments. Ollama parameters
//! that only tune its own runtime (num_gpu, num_thread, mirostat, ...) are accepted with a
//! warning; anything else unknown is an error naming the line.

use crate::preset::{quote, Message, Preset};

/// A parsed Modelfile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Modelfile {
    /// The `FROM` value as written.
    pub from: String,
    /// Everything else.
    pub preset: Preset,
    /// `LICENSE` text, if any.
    pub license: Option<String>,
    /// Accepted-but-ignored instructions, for the user.
    pub warnings: Vec<String>,
}

/// Ollama runtime parameters that have no meaning here; accepted with a warning.
const IGNORED_PARAMETERS: &[&str] = &[
    "num_gpu",
    "num_thread",
    "num_batch",
    "num_keep",
    "main_gpu",
    "use_mmap",
    "use_mlock",
    "numa",
    "low_vram",
    "mirostat",
    "mirostat_eta",
    "mirostat_tau",
    "tfs_z",
    "typical_p",
    "penalize_newline",
];

/// Parses Modelfile text. Errors name the line.
pub fn parse(text: &str) -> Result<Modelfile, String> {
    let mut out = Modelfile::default();
    let mut from = None;
    let mut rest = text;
    let mut line_no = 1usize;
    loop {
        // skip blank lines and comments
        let trimmed = rest.trim_start_matches([' ', '\t', '\r']);
        if trimmed.is_empty() {
            break;
        }
        if let Some(after) = trimmed.strip_prefix('\n') {
            line_no += 1;
            rest = after;
            continue;
        }
        if trimmed.starts_with('#') {
            match trimmed.find('\n') {
                Some(i) => {
                    rest = &trimmed[i + 1..];
                    line_no += 1;
                    continue;
                }
                None => break,
            }
        }
        let word_end = trimmed
            .find(|c: char| c.is_whitespace())
            .unwrap_or(trimmed.len());
        let instruction = trimmed[..word_end].to_ascii_uppercase();
        let start_line = line_no;
        let after = trimmed[word_end..].trim_start_matches([' ', '\t']);
        let at = |msg: String| format!("line {start_line}: {msg}");
        match instruction.as_str() {
            "FROM" | "SYSTEM" | "TEMPLATE" | "LICENSE" | "ADAPTER" | "REQUIRES" => {
                let (value, remaining, lines) = value(after).map_err(at)?;
                line_no += lines;
                rest = remaining;
                match instruction.as_str() {
                    "FROM" => {
                        if value.trim().is_empty() {
                            return Err(at("FROM needs a model name or a file".into()));
                        }
                        if from.is_some() {
                            return Err(at("only one FROM is allowed".into()));
                        }
                        from = Some(value.trim().to_string());
                    }
                    "SYSTEM" => out.preset.system = Some(value),
                    "TEMPLATE" => out.preset.template = Some(value),
                    "LICENSE" => out.license = Some(value),
                    "REQUIRES" => out
                        .warnings
                        .push(format!("line {start_line}: REQUIRES is ignored")),
                    _ => {
                        return Err(at(
                            "ADAPTER (LoRA adapters) is not supported by this engine".into(),
                        ))
                    }
                }
            }
            "PARAMETER" => {
                let name_end = after
                    .find(|c: char| c.is_whitespace())
                    .unwrap_or(after.len());
                let name = after[..name_end].to_ascii_lowercase();
                if name.is_empty() {
                    return Err(at("PARAMETER needs a name and a value".into()));
                }
                let (value, remaining, lines) =
                    self::value(after[name_end..].trim_start_matches([' ', '\t'])).map_err(at)?;
                line_no += lines;
                rest = remaining;
                if value.is_empty() {
                    return Err(at(format!("PARAMETER {name} needs a value")));
                }
                if name == "num_ctx" {
                    let n: usize = value.trim().parse().map_err(|_| {
                        at(format!("PARAMETER num_ctx: '{value}' is not a whole number"))
                    })?;
                    if n == 0 {
                        return Err(at("PARAMETER num_ctx must be at least 1".into()));
                    }
                    out.preset.num_ctx = Some(n);
                } else if IGNORED_PARAMETERS.contains(&name.as_str()) {
                    out.warnings.push(format!(
                        "line {start_line}: PARAMETER {name} has no effect in this engine and is ignored"
                    ));
                } else {
                    out.preset.parameters.set(&name, &value).map_err(at)?;
                }
            }
            "MESSAGE" => {
                let role_end = after
                    .find(|c: char| c.is_whitespace())
                    .unwrap_or(after.len());
                let role = after[..role_end].to_ascii_lowercase();
                if !matches!(role.as_str(), "system" | "user" | "assistant") {
                    return Err(at(format!(
                        "MESSAGE role must be system, user or assistant, got '{role}'"
                    )));
                }
                let (value, remaining, lines) =
                    self::value(after[role_end..].trim_start_matches([' ', '\t'])).map_err(at)?;
                line_no += lines;
                rest = remaining;
                out.preset.messages.push(Message {
                    role,
                    content: value,
                });
            }
            other => {
                return Err(at(format!(
                    "unknown instruction '{other}' (FROM, PARAMETER, SYSTEM, TEMPLATE, MESSAGE, LICENSE)"
                )))
            }
        }
    }
    out.from = from.ok_or("the Modelfile has no FROM line")?;
    Ok(out)
}

/// Reads one value: `"""multi-line"""`, `"quoted"` or the rest of the line. Returns the
/// value, the text after it (after its line's end) and the newlines consumed.
fn value(s: &str) -> Result<(String, &str, usize), String> {
    if let Some(body) = s.strip_prefix("\"\"\"") {
        let end = body.find("\"\"\"").ok_or("a \"\"\" string is not closed")?;
        let v = &body[..end];
        let after = &body[end + 3..];
        let (tail, rest) = split_line(after);
        if !tail.trim().is_empty() {
            return Err(format!(
                "unexpected text after the closing \"\"\": '{tail}'"
            ));
        }
        let lines = v.matches('\n').count() + usize::from(rest.len() < after.len());
        return Ok((v.to_string(), rest, lines));
    }
    let (line, rest) = split_line(s);
    let consumed = usize::from(rest.len() < s.len());
    let line = line.trim_end_matches('\r').trim();
    if let Some(inner) = line.strip_prefix('"') {
        if let Some(v) = inner.strip_suffix('"') {
            return Ok((unescape(v), rest, consumed));
        }
        return Err(format!("a quoted string is not closed: {line}"));
    }
    Ok((line.to_string(), rest, consumed))
}

fn split_line(s: &str) -> (&str, &str) {
    match s.find('\n') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some(o) => {
                    out.push('\\');
                    out.push(o);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes a preset back as a Modelfile (for `/api/show` and `engine show --modelfile`).
pub fn render(from: &str, preset: &Preset) -> String {
    let mut s = format!("# Modelfile generated by engine\nFROM {from}\n");
    if let Some(t) = &preset.template {
        s.push_str(&format!("TEMPLATE \"\"\"{t}\"\"\"\n"));
    }
    if let Some(sys) = &preset.system {
        s.push_str(&format!("SYSTEM \"\"\"{sys}\"\"\"\n"));
    }
    if let Some(n) = preset.num_ctx {
        s.push_str(&format!("PARAMETER num_ctx {n}\n"));
    }
    for l in preset.parameters.modelfile_lines() {
        s.push_str(&l);
        s.push('\n');
    }
    for m in &preset.messages {
        s.push_str(&format!("MESSAGE {} {}\n", m.role, quote(&m.content)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_workflow_modelfile() {
        let m = parse(
            "FROM base\nPARAMETER num_ctx 2048\nSYSTEM \"\"\"You are Elroy, a helpful assistant.\nYou never claim to be another model.\"\"\"\n",
        )
        .unwrap();
        assert_eq!(m.from, "base");
        assert_eq!(m.preset.num_ctx, Some(2048));
        assert_eq!(
            m.preset.system.as_deref(),
            Some("You are Elroy, a helpful assistant.\nYou never claim to be another model.")
        );
        assert!(m.warnings.is_empty());
    }

    #[test]
    fn every_instruction() {
        let text = r#"# a comment
from ./models/x.gguf

PARAMETER temperature 0.7
PARAMETER top_k 20
PARAMETER top_p 0.9
PARAMETER min_p 0.05
PARAMETER repeat_penalty 1.1
PARAMETER seed 42
PARAMETER stop "<|im_end|>"
PARAMETER stop "User:"
PARAMETER num_predict 64
PARAMETER num_gpu 99
TEMPLATE """{{ if .System }}{{ .System }}{{ end }}
{{ .Prompt }}"""
SYSTEM You are terse.
MESSAGE user Is Paris in France?
MESSAGE assistant "Yes."
LICENSE """MIT"""
"#;
        let m = parse(text).unwrap();
        assert_eq!(m.from, "./models/x.gguf");
        let p = &m.preset.parameters;
        assert_eq!(p.temperature, Some(0.7));
        assert_eq!(p.top_k, Some(20));
        assert_eq!(p.top_p, Some(0.9));
        assert_eq!(p.min_p, Some(0.05));
        assert_eq!(p.repeat_penalty, Some(1.1));
        assert_eq!(p.seed, Some(42));
        assert_eq!(p.stop, vec!["<|im_end|>", "User:"]);
        assert_eq!(p.num_predict, Some(64));
        assert_eq!(
            m.preset.template.as_deref(),
            Some("{{ if .System }}{{ .System }}{{ end }}\n{{ .Prompt }}")
        );
        assert_eq!(m.preset.system.as_deref(), Some("You are terse."));
        assert_eq!(m.preset.messages.len(), 2);
        assert_eq!(m.preset.messages[1].content, "Yes.");
        assert_eq!(m.license.as_deref(), Some("MIT"));
        assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
        // render and parse again: the same preset
        let again = parse(&render(&m.from, &m.preset)).unwrap();
        assert_eq!(again.preset, m.preset);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, needle) in [
            ("PARAMETER num_ctx 1\n", "no FROM"),
            ("FROM a\nFROM b\n", "line 2"),
            ("FROM a\n\nPARAMETER temperature hot\n", "line 3"),
            ("FROM a\nPARAMETER bogus 1\n", "unknown PARAMETER 'bogus'"),
            ("FROM a\nSYSTEM \"\"\"never closed\n", "not closed"),
            ("FROM a\nMESSAGE robot hi\n", "MESSAGE role"),
            ("FROM a\nADAPTER x.gguf\n", "not supported"),
            ("FROM a\nWHATEVER x\n", "unknown instruction"),
            ("FROM a\nPARAMETER num_ctx 0\n", "at least 1"),
            ("FROM a\nPARAMETER stop\n", "needs a value"),
            ("FROM\n", "FROM needs"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
