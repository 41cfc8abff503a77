//! Chat templates: turning a list of messages into the prompt text a model was trained on.
//!
//! The template comes from `--chat-template-file`/`--chat-template`, else the GGUF's
//! `tokenizer.chat_template`, else a named built-in picked from the vocabulary
//! ([`builtin`]). Templates are Jinja, rendered with minijinja plus the Python string and
//! dict methods Hugging Face templates call (`.strip()`, `.split()`, `.items()`, ...), and
//! the helpers they expect (`raise_exception`, `strftime_now`, a Python-style `tojson`).

pub mod builtin;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};

use crate::config::TemplateChoice;

/// How a model marks reasoning in its output, as implied by its template and vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasoningSyntax {
    /// No reasoning markup.
    None,
    /// `<think>…</think>` at the start of the answer.
    Think,
    /// OpenAI harmony channels (`analysis`, `final`).
    Harmony,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where it came from (`gguf`, `file`, or the built-in's name).
    pub origin: String,
    /// The Jinja source.
    pub source: String,
    /// The reasoning markup of this model.
    pub reasoning: ReasoningSyntax,
    bos: String,
    eos: String,
}

/// Variables beyond the messages.
#[derive(Default)]
pub struct RenderOptions {
    /// End with the assistant's turn opener.
    pub add_generation_prompt: bool,
    /// Tool definitions, passed through as `tools`.
    pub tools: Option<serde_json::Value>,
    /// `enable_thinking` for templates that switch reasoning on and off.
    pub enable_thinking: Option<bool>,
    /// `reasoning_effort` (harmony).
    pub reasoning_effort: Option<String>,
    /// Any other variables (`chat_template_kwargs`).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`; `bos`/`eos` are the model's token texts.
    pub fn new(
        source: String,
        origin: impl Into<String>,
        bos: &str,
        eos: &str,
        reasoning: ReasoningSyntax,
    ) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.clone())
            .map_err(|e| format!("the chat template does not compile: {e:#}"))?;
        Ok(ChatTemplate {
            env,
            origin: origin.into(),
            source,
            reasoning,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// Compiles a template given as source with its model's BOS/EOS texts (a device model's
    /// package), the reasoning markup read from the source.
    pub fn from_source(
        source: String,
        origin: impl Into<String>,
        bos: &str,
        eos: &str,
    ) -> Result<ChatTemplate, String> {
        let syntax = if source.contains("<|channel|>") {
            ReasoningSyntax::Harmony
        } else if source.contains("<think>") {
            ReasoningSyntax::Think
        } else {
            ReasoningSyntax::None
        };
        ChatTemplate::new(source, origin, bos, eos, syntax)
    }

    /// Picks and compiles the template for a model: an override, the GGUF's own, or the
    /// built-in matching its vocabulary. A GGUF template that fails to compile falls back to
    /// the built-in (with a warning); a bad override is an error.
    pub fn for_model(
        model: &engine::Model,
        choice: Option<&TemplateChoice>,
    ) -> Result<ChatTemplate, String> {
        let tok = model.tokenizer();
        let text = |id: Option<u32>| {
            id.and_then(|i| tok.token_text(i))
                .unwrap_or_default()
                .to_string()
        };
        let (bos, eos) = (text(tok.bos()), text(tok.eos()));
        let think_token = tok.token_id("<think>").is_some() && tok.token_id("</think>").is_some();
        let syntax = |src: &str| {
            if src.contains("<|channel|>") {
                ReasoningSyntax::Harmony
            } else if src.contains("<think>") || think_token {
                ReasoningSyntax::Think
            } else {
                ReasoningSyntax::None
            }
        };
        let builtin_named = |name: &str| -> Result<ChatTemplate, String> {
            let src = builtin::source(name).ok_or_else(|| {
                format!(
                    "unknown built-in chat template '{name}' (known: {})",
                    builtin::NAMES.join(", ")
                )
            })?;
            ChatTemplate::new(src.to_string(), name, &bos, &eos, syntax(src))
        };
        match choice {
            Some(TemplateChoice::Builtin(name)) => return builtin_named(name),
            Some(TemplateChoice::Source(src)) => {
                return ChatTemplate::new(src.clone(), "file", &bos, &eos, syntax(src))
            }
            None => {}
        }
        if let Ok(Some(src)) = model.gguf().get_str("tokenizer.chat_template") {
            match ChatTemplate::new(src.to_string(), "gguf", &bos, &eos, syntax(src)) {
                Ok(t) => return Ok(t),
                Err(e) => tracing::warn!(
                    error = e,
                    "the model's chat template cannot be used; falling back to a built-in"
                ),
            }
        }
        builtin_named(builtin::detect(tok))
    }

    /// Renders `messages` (OpenAI-style objects with `role` and string `content`).
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        opts: &RenderOptions,
    ) -> Result<String, String> {
        let mut vars = opts.extra.clone();
        vars.insert(
            "messages".into(),
            serde_json::Value::from(messages.to_vec()),
        );
        vars.insert(
            "add_generation_prompt".into(),
            opts.add_generation_prompt.into(),
        );
        vars.insert("bos_token".into(), self.bos.clone().into());
        vars.insert("eos_token".into(), self.eos.clone().into());
        if let Some(t) = &opts.tools {
            vars.insert("tools".into(), t.clone());
        }
        if let Some(t) = opts.enable_thinking {
            vars.insert("enable_thinking".into(), t.into());
        }
        if let Some(e) = &opts.reasoning_effort {
            vars.insert("reasoning_effort".into(), e.clone().into());
        }
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| format!("chat template: {e}"))?;
        tmpl.render(Value::from_serialize(&vars))
            .map_err(|e| format!("the chat template failed: {e:#}"))
    }

    /// True when a rendered prompt leaves the model inside an open `<think>` block.
    pub fn opens_reasoning(&self, prompt: &str) -> bool {
        self.reasoning == ReasoningSyntax::Think && prompt.trim_end().ends_with("<think>")
    }
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(format: String) -> Result<Value, Error> {
    Ok(Value::from(strftime_utc(&format, unix_now())))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A small `strftime` for UTC covering what templates use (`%Y %m %d %B %b %H %M %S %%`).
pub fn strftime_utc(format: &str, unix: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let (y, m, d) = civil_from_days(unix.div_euclid(86_400));
    let secs = unix.rem_euclid(86_400);
    let mut out = String::new();
    let mut it = format.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Python's `json.dumps` formatting (`", "` and `": "` separators, or `indent`), without
/// HTML escaping, as Hugging Face's `tojson` does.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let v: serde_json::Value = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    py_json(&v, indent, sort_keys.unwrap_or(false), 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn py_json(
    v: &serde_json::Value,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
    out: &mut String,
) {
    use serde_json::Value as J;
    let nl = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let (item_sep, key_sep) = if indent.is_some() {
        (",", ": ")
    } else {
        (", ", ": ")
    };
    match v {
        J::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, depth + 1);
                py_json(x, indent, sort, depth + 1, out);
            }
            nl(out, depth);
            out.push(']');
        }
        J::Object(o) if !o.is_empty() => {
            out.push('{');
            let mut keys: Vec<&String> = o.keys().collect();
            if sort {
                keys.sort();
            }
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, depth + 1);
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push_str(key_sep);
                py_json(&o[k], indent, sort, depth + 1, out);
            }
            nl(out, depth);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msgs() -> Vec<serde_json::Value> {
        vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "Hi!"}),
            json!({"role": "assistant", "content": "Hello."}),
            json!({"role": "user", "content": "Capital of France?"}),
        ]
    }

    fn builtin(name: &str) -> ChatTemplate {
        ChatTemplate::new(
            builtin::source(name).unwrap().to_string(),
            name,
            "<bos>",
            "<eos>",
            ReasoningSyntax::None,
        )
        .unwrap()
    }

    fn gen() -> RenderOptions {
        RenderOptions {
            add_generation_prompt: true,
            ..Default::default()
        }
    }

    #[test]
    fn gemma_turns() {
        let out = builtin("gemma").render(&msgs(), &gen()).unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn llama3_and_chatml_turns() {
        let out = builtin("llama3").render(&msgs()[1..2], &gen()).unwrap();
        assert_eq!(
            out,
            "<bos><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let out = builtin("chatml").render(&msgs()[..2], &gen()).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn every_builtin_renders() {
        for name in builtin::NAMES {
            let out = builtin(name).render(&msgs(), &gen()).unwrap();
            assert!(out.contains("Capital of France?"), "{name}: {out}");
        }
    }

    #[test]
    fn harmony_and_deepseek_shapes() {
        let out = builtin("harmony").render(&msgs(), &gen()).unwrap();
        assert!(out.starts_with("<|start|>system<|message|>"), "{out}");
        assert!(out.contains("Reasoning: medium"));
        assert!(out.contains("<|start|>developer<|message|># Instructions\n\nBe brief.<|end|>"));
        assert!(
            out.ends_with("<|start|>user<|message|>Capital of France?<|end|><|start|>assistant")
        );
        let m = vec![
            json!({"role": "user", "content": "a"}),
            json!({"role": "assistant", "content": "<think>x</think>b"}),
            json!({"role": "user", "content": "c"}),
        ];
        let t = ChatTemplate::new(
            builtin::source("deepseek").unwrap().into(),
            "deepseek",
            "<s>",
            "</s>",
            ReasoningSyntax::Think,
        )
        .unwrap();
        let out = t.render(&m, &gen()).unwrap();
        assert_eq!(
            out,
            "<s><｜User｜>a<｜Assistant｜>b<｜end▁of▁sentence｜><｜User｜>c<｜Assistant｜><think>\n"
        );
        assert!(t.opens_reasoning(&out));
    }

    #[test]
    fn hugging_face_style_templates_work() {
        // Python string methods, namespace, loop controls, raise_exception and tojson.
        let src = r#"{% for m in messages %}{% if m['role'] not in ['user', 'assistant', 'system'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}{% if loop.index0 > 5 %}{% break %}{% endif %}{{ m['role'].upper() }}: {{ m['content'].strip() }}
{% endfor %}{% if tools %}{{ tools | tojson }}{% endif %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"#;
        let t = ChatTemplate::new(src.into(), "file", "", "", ReasoningSyntax::None).unwrap();
        let opts = RenderOptions {
            add_generation_prompt: true,
            tools: Some(json!([{"name": "f", "parameters": {"a": 1}}])),
            ..Default::default()
        };
        let m = vec![json!({"role": "user", "content": "  hi  "})];
        assert_eq!(
            t.render(&m, &opts).unwrap(),
            "USER: hi\n[{\"name\": \"f\", \"parameters\": {\"a\": 1}}]ASSISTANT:"
        );
        let bad = vec![json!({"role": "robot", "content": "x"})];
        let e = t.render(&bad, &opts).unwrap_err();
        assert!(e.contains("bad role robot"), "{e}");
        assert!(
            ChatTemplate::new("{% if %}".into(), "file", "", "", ReasoningSyntax::None).is_err()
        );
    }

    #[test]
    fn strftime_dates() {
        assert_eq!(strftime_utc("%Y-%m-%d %H:%M:%S", 0), "1970-01-01 00:00:00");
        assert_eq!(strftime_utc("%d %B %Y", 1_700_000_000), "14 November 2023");
        assert_eq!(strftime_utc("%b %%", 951_782_400), "Feb %");
    }
}
