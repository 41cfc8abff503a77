//! Named built-in chat templates for models whose GGUF ships none, and picking one from the
//! model's vocabulary. Each is a small Jinja template written for the format's published
//! turn markers; they take the same variables as Hugging Face templates.

use engine::Tokenizer;

/// Gemma (2, 3): `<start_of_turn>user … <end_of_turn>`, the assistant is `model`, a system
/// prompt is folded into the first user turn.
const GEMMA: &str = r#"{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for m in messages -%}
{%- if m.role == 'system' or m.role == 'developer' -%}
{%- set ns.system = ns.system + (m.content | trim) + '\n\n' -%}
{%- else -%}
{%- set role = 'model' if m.role == 'assistant' else 'user' -%}
{{- '<start_of_turn>' + role + '\n' -}}
{%- if role == 'user' -%}{{- ns.system -}}{%- set ns.system = '' -%}{%- endif -%}
{{- (m.content | trim) + '<end_of_turn>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if ns.system -%}{{- '<start_of_turn>user\n' + (ns.system | trim) + '<end_of_turn>\n' -}}{%- endif -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"#;

/// Llama 3.x: header ids around each role, `<|eot_id|>` after each turn.
const LLAMA3: &str = r#"{{- bos_token -}}
{%- for m in messages -%}
{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + (m.content | trim) + '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}"#;

/// ChatML (Qwen, many fine-tunes): `<|im_start|>role\n…<|im_end|>`.
const CHATML: &str = r#"{%- for m in messages -%}
{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"#;

/// Llama 2 chat: `[INST] <<SYS>>…<</SYS>> … [/INST]`.
const LLAMA2: &str = r#"{%- set ns = namespace(system='') -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}
{%- set ns.system = '<<SYS>>\n' + (m.content | trim) + '\n<</SYS>>\n\n' -%}
{%- elif m.role == 'assistant' -%}
{{- ' ' + (m.content | trim) + ' ' + eos_token -}}
{%- else -%}
{{- bos_token + '[INST] ' + ns.system + (m.content | trim) + ' [/INST]' -}}
{%- set ns.system = '' -%}
{%- endif -%}
{%- endfor -%}"#;

/// Mistral instruct: `[INST] … [/INST]`, the system prompt before the first user turn.
const MISTRAL: &str = r#"{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}
{%- set ns.system = (m.content | trim) + '\n\n' -%}
{%- elif m.role == 'assistant' -%}
{{- ' ' + (m.content | trim) + eos_token -}}
{%- else -%}
{{- '[INST] ' + ns.system + (m.content | trim) + ' [/INST]' -}}
{%- set ns.system = '' -%}
{%- endif -%}
{%- endfor -%}"#;

/// Phi-3: `<|user|>\n…<|end|>\n`.
const PHI3: &str = r#"{%- for m in messages -%}
{{- '<|' + m.role + '|>\n' + m.content + '<|end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}"#;

/// DeepSeek R1 (and its distills): full-width bar markers, generation opens `<think>`;
/// reasoning of earlier assistant turns is dropped as the format asks.
const DEEPSEEK: &str = r#"{{- bos_token -}}
{%- for m in messages -%}{%- if m.role == 'system' -%}{{- m.content -}}{%- endif -%}{%- endfor -%}
{%- for m in messages -%}
{%- if m.role == 'user' -%}
{{- '<｜User｜>' + m.content -}}
{%- elif m.role == 'assistant' -%}
{%- set c = (m.content.split('</think>') | last) if '</think>' in m.content else m.content -%}
{{- '<｜Assistant｜>' + c + '<｜end▁of▁sentence｜>' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<｜Assistant｜><think>\n' -}}{%- endif -%}"#;

/// OpenAI harmony (GPT-OSS): a system header with the reasoning effort, developer
/// instructions, and channels (`analysis` for reasoning, `final` for the answer).
const HARMONY: &str = r#"{{- '<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\n' -}}
{%- if strftime_now is defined -%}{{- 'Current date: ' + strftime_now('%Y-%m-%d') + '\n' -}}{%- endif -%}
{{- '\nReasoning: ' + (reasoning_effort if reasoning_effort is defined and reasoning_effort else 'medium') + '\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>' -}}
{%- set ns = namespace(dev='') -%}
{%- for m in messages -%}{%- if m.role == 'system' or m.role == 'developer' -%}{%- set ns.dev = ns.dev + m.content -%}{%- endif -%}{%- endfor -%}
{%- if ns.dev -%}{{- '<|start|>developer<|message|># Instructions\n\n' + ns.dev + '<|end|>' -}}{%- endif -%}
{%- for m in messages -%}
{%- if m.role == 'user' -%}
{{- '<|start|>user<|message|>' + m.content + '<|end|>' -}}
{%- elif m.role == 'assistant' -%}
{{- '<|start|>assistant<|channel|>final<|message|>' + m.content + '<|end|>' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start|>assistant' -}}{%- endif -%}"#;

/// Names of the built-in templates.
pub const NAMES: &[&str] = &[
    "chatml", "deepseek", "gemma", "harmony", "llama2", "llama3", "mistral", "phi3",
];

/// The source of a built-in template by name (a few common aliases accepted).
pub fn source(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "chatml" | "qwen" | "qwen2" => CHATML,
        "deepseek" | "deepseek-r1" | "deepseek3" => DEEPSEEK,
        "gemma" | "gemma2" | "gemma3" => GEMMA,
        "harmony" | "gpt-oss" => HARMONY,
        "llama2" => LLAMA2,
        "llama3" | "llama3.1" | "llama3.2" => LLAMA3,
        "mistral" | "mistral-v1" => MISTRAL,
        "phi3" => PHI3,
        _ => return None,
    })
}

/// The built-in whose turn markers are special tokens of this vocabulary (ChatML when none
/// are, as llama-server does).
pub fn detect(tok: &Tokenizer) -> &'static str {
    let has = |t: &str| tok.token_id(t).is_some();
    if has("<|channel|>") && has("<|start|>") && has("<|message|>") {
        "harmony"
    } else if has("<start_of_turn>") && has("<end_of_turn>") {
        "gemma"
    } else if has("<|start_header_id|>") && has("<|eot_id|>") {
        "llama3"
    } else if has("<|im_start|>") && has("<|im_end|>") {
        "chatml"
    } else if has("<｜User｜>") && has("<｜Assistant｜>") {
        "deepseek"
    } else if has("<|user|>") && has("<|assistant|>") && has("<|end|>") {
        "phi3"
    } else if has("[INST]") {
        "mistral"
    } else {
        "chatml"
    }
}
