//! The harmony chat format of GPT-OSS models: rendering a conversation into the
//! `<|start|>{role}<|message|>{content}<|end|>` form the model was trained on (with the
//! system preamble of model identity, knowledge cutoff, date, reasoning effort and valid
//! channels; a first system or developer message becomes the developer instructions), and
//! splitting a reply into its `analysis` (reasoning) and `final` channels.
//!
//! This is the layout of the GPT-OSS chat template shipped in the model files, without tool
//! definitions and tool calls. It is self-contained: general chat templating (Jinja
//! templates from the file) belongs to the server.

use std::fmt::Write as _;

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// System instructions (a first one becomes the developer message).
    System,
    /// Developer instructions.
    Developer,
    /// The user.
    User,
    /// The model.
    Assistant,
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Author.
    pub role: Role,
    /// Text (for the assistant: the final answer).
    pub content: String,
}

impl Message {
    /// A message of `role` with `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// How much the model should reason before answering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReasoningEffort {
    /// `Reasoning: low`.
    Low,
    /// `Reasoning: medium` (the template's default).
    #[default]
    Medium,
    /// `Reasoning: high`.
    High,
}

impl ReasoningEffort {
    fn as_str(self) -> &'static str {
        match self {
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
        }
    }
}

/// The system preamble's settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// First line of the system message.
    pub model_identity: String,
    /// `Knowledge cutoff:` value.
    pub knowledge_cutoff: String,
    /// `Current date:` value (`YYYY-MM-DD`); today (UTC) when `None`.
    pub current_date: Option<String>,
    /// `Reasoning:` value.
    pub reasoning_effort: ReasoningEffort,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            model_identity: "You are ChatGPT, a large language model trained by OpenAI.".into(),
            knowledge_cutoff: "2024-06".into(),
            current_date: None,
            reasoning_effort: ReasoningEffort::Medium,
        }
    }
}

/// Today's date in UTC as `YYYY-MM-DD`.
pub fn today_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // shift the epoch to 0000-03-01 so leap days fall at the end of each 400-year era
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, 0..11
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Renders `messages` in the harmony format; with `add_generation_prompt` the text ends
/// with `<|start|>assistant`, where the model continues with a channel and its reply.
/// Earlier assistant turns are rendered as `final` messages (reasoning is not carried over).
pub fn render(messages: &[Message], opts: &Options, add_generation_prompt: bool) -> String {
    let mut s = String::new();
    let date = opts.current_date.clone().unwrap_or_else(today_utc);
    let _ = write!(
        s,
        "<|start|>system<|message|>{}\nKnowledge cutoff: {}\nCurrent date: {}\n\n\
         Reasoning: {}\n\n# Valid channels: analysis, commentary, final. \
         Channel must be included for every message.<|end|>",
        opts.model_identity,
        opts.knowledge_cutoff,
        date,
        opts.reasoning_effort.as_str()
    );
    let rest = match messages.first() {
        Some(m) if matches!(m.role, Role::System | Role::Developer) => {
            if !m.content.is_empty() {
                let _ = write!(
                    s,
                    "<|start|>developer<|message|># Instructions\n\n{}\n\n<|end|>",
                    m.content
                );
            }
            &messages[1..]
        }
        _ => messages,
    };
    let n = rest.len();
    for (i, m) in rest.iter().enumerate() {
        match m.role {
            Role::User => {
                let _ = write!(s, "<|start|>user<|message|>{}<|end|>", m.content);
            }
            Role::Assistant => {
                // the last assistant turn of a finished conversation ends with <|return|>
                let end = if i + 1 == n && !add_generation_prompt {
                    "<|return|>"
                } else {
                    "<|end|>"
                };
                let _ = write!(
                    s,
                    "<|start|>assistant<|channel|>final<|message|>{}{end}",
                    m.content
                );
            }
            // later system/developer messages are not part of the harmony layout; keep
            // their text as developer instructions rather than dropping it
            Role::System | Role::Developer => {
                let _ = write!(s, "<|start|>developer<|message|>{}<|end|>", m.content);
            }
        }
    }
    if add_generation_prompt {
        s.push_str("<|start|>assistant");
    }
    s
}

/// A model reply split by channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// Text of the `analysis` channel (the reasoning), messages joined in order.
    pub analysis: String,
    /// Text of the `final` channel (the answer).
    pub final_text: String,
    /// Text of the `commentary` channel.
    pub commentary: String,
    /// Whether the reply ended with `<|return|>` (finished) rather than being cut off.
    pub finished: bool,
}

/// Splits generated text (as produced after `<|start|>assistant`, special tokens rendered)
/// into channels: `<|channel|>{name}<|message|>{text}` ended by `<|end|>`, `<|return|>`,
/// `<|call|>` or the end of the text, with `<|start|>assistant` between messages. Text
/// outside any channel counts as `final` (a model that answers without a channel header).
pub fn parse_reply(text: &str) -> Reply {
    let mut r = Reply::default();
    let mut rest = text;
    loop {
        rest = rest.strip_prefix("<|start|>assistant").unwrap_or(rest);
        if rest.is_empty() {
            break;
        }
        let (channel, body) = match rest.strip_prefix("<|channel|>") {
            Some(h) => match h.find("<|message|>") {
                Some(p) => {
                    // the header may carry a recipient or content type after the name
                    let name = h[..p].split_whitespace().next().unwrap_or("");
                    (name, &h[p + "<|message|>".len()..])
                }
                None => break,
            },
            None => ("final", rest.strip_prefix("<|message|>").unwrap_or(rest)),
        };
        let ends = ["<|end|>", "<|return|>", "<|call|>"];
        let (len, term) = ends
            .iter()
            .filter_map(|t| body.find(t).map(|p| (p, *t)))
            .min()
            .unwrap_or((body.len(), ""));
        let target = match channel {
            "analysis" => &mut r.analysis,
            "commentary" => &mut r.commentary,
            _ => &mut r.final_text,
        };
        target.push_str(&body[..len]);
        if term == "<|return|>" {
            r.finished = true;
        }
        rest = &body[(len + term.len()).min(body.len())..];
        if term.is_empty() || term == "<|return|>" {
            break;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            current_date: Some("2025-08-05".into()),
            ..Default::default()
        }
    }

    #[test]
    fn renders_the_gpt_oss_template_layout() {
        let msgs = [
            Message::new(Role::System, "Answer briefly."),
            Message::new(Role::User, "Hi"),
            Message::new(Role::Assistant, "Hello!"),
            Message::new(Role::User, "2+2?"),
        ];
        let want = "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n\
            Knowledge cutoff: 2024-06\nCurrent date: 2025-08-05\n\nReasoning: medium\n\n\
            # Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>\
            <|start|>developer<|message|># Instructions\n\nAnswer briefly.\n\n<|end|>\
            <|start|>user<|message|>Hi<|end|>\
            <|start|>assistant<|channel|>final<|message|>Hello!<|end|>\
            <|start|>user<|message|>2+2?<|end|>\
            <|start|>assistant";
        assert_eq!(render(&msgs, &opts(), true), want);
    }

    #[test]
    fn no_developer_message_without_instructions_and_return_at_the_end() {
        let o = Options {
            reasoning_effort: ReasoningEffort::High,
            ..opts()
        };
        let msgs = [
            Message::new(Role::User, "Hi"),
            Message::new(Role::Assistant, "Hello!"),
        ];
        let s = render(&msgs, &o, false);
        assert!(s.contains("Reasoning: high\n\n"));
        assert!(!s.contains("developer"));
        assert!(s.ends_with("<|start|>assistant<|channel|>final<|message|>Hello!<|return|>"));
    }

    #[test]
    fn parses_reasoning_and_answer() {
        let out = "<|channel|>analysis<|message|>User asks 2+2. Easy.<|end|>\
                   <|start|>assistant<|channel|>final<|message|>4<|return|>";
        let r = parse_reply(out);
        assert_eq!(r.analysis, "User asks 2+2. Easy.");
        assert_eq!(r.final_text, "4");
        assert!(r.finished);
        // cut off in the middle of the reasoning
        let r = parse_reply("<|channel|>analysis<|message|>Thinking about");
        assert_eq!(r.analysis, "Thinking about");
        assert_eq!(r.final_text, "");
        assert!(!r.finished);
        // tool-call style header with a recipient and content type
        let r = parse_reply("<|channel|>commentary to=functions.f json<|message|>{}<|call|>");
        assert_eq!(r.commentary, "{}");
        // no channel header at all
        assert_eq!(parse_reply("plain").final_text, "plain");
    }

    #[test]
    fn calendar_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_305), (2025, 8, 5));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(today_utc().len(), 10);
    }
}
