//! Splitting reasoning from the answer in streamed text: a leading `<think>…</think>` block
//! (Qwen3, DeepSeek-R1 distills) or harmony's `analysis` channel (GPT-OSS) becomes
//! `reasoning_content`, the rest `content`. Works on deltas, holding back only text that
//! could still be the start of a marker.

use crate::template::ReasoningSyntax;

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const H_CHANNEL: &str = "<|channel|>";
const H_MESSAGE: &str = "<|message|>";
/// Markers that end a harmony message body.
const H_ENDS: &[&str] = &["<|end|>", "<|start|>", "<|return|>", "<|call|>"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before any output: might open a `<think>` block.
    ThinkStart,
    /// Inside `<think>`.
    Thinking,
    /// After `</think>`: skipping whitespace before the answer.
    AfterThink,
    /// Plain answer text.
    Content,
    /// Harmony: reading a message header up to `<|message|>`.
    Header,
    /// Harmony: inside a message body; `true` = reasoning channel.
    Body(bool),
}

/// A streaming splitter for one response.
pub struct ReasoningParser {
    state: State,
    buf: String,
}

/// Text split into reasoning and answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Reasoning text.
    pub reasoning: String,
    /// Answer text.
    pub content: String,
}

impl ReasoningParser {
    /// A parser for `syntax`; `in_reasoning` when the prompt already opened a `<think>`
    /// block. `ReasoningSyntax::None` passes everything through as content.
    pub fn new(syntax: ReasoningSyntax, in_reasoning: bool) -> ReasoningParser {
        let state = match syntax {
            ReasoningSyntax::None => State::Content,
            ReasoningSyntax::Think if in_reasoning => State::Thinking,
            ReasoningSyntax::Think => State::ThinkStart,
            ReasoningSyntax::Harmony => State::Header,
        };
        ReasoningParser {
            state,
            buf: String::new(),
        }
    }

    /// Feeds a delta; returns what became final.
    pub fn push(&mut self, text: &str) -> Split {
        let mut out = Split::default();
        if self.state == State::Content && self.buf.is_empty() {
            out.content.push_str(text);
            return out;
        }
        self.buf.push_str(text);
        self.drain(&mut out, false);
        out
    }

    /// Flushes what was held back at the end of the response.
    pub fn finish(&mut self) -> Split {
        let mut out = Split::default();
        self.drain(&mut out, true);
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            State::Thinking | State::Body(true) => out.reasoning.push_str(&rest),
            State::Header => {
                // A harmony header that never opened a message: show it rather than lose it.
                out.content.push_str(&rest)
            }
            _ => out.content.push_str(&rest),
        }
        out
    }

    fn drain(&mut self, out: &mut Split, end: bool) {
        loop {
            let progressed = match self.state {
                State::Content => {
                    out.content.push_str(&self.buf);
                    self.buf.clear();
                    false
                }
                State::ThinkStart => {
                    let t = self.buf.trim_start();
                    if let Some(rest) = t.strip_prefix(THINK_OPEN) {
                        self.buf = rest.to_string();
                        self.state = State::Thinking;
                        true
                    } else if !end && THINK_OPEN.starts_with(t) {
                        false
                    } else {
                        self.state = State::Content;
                        true
                    }
                }
                State::Thinking => match self.buf.find(THINK_CLOSE) {
                    Some(i) => {
                        out.reasoning.push_str(&self.buf[..i]);
                        self.buf.drain(..i + THINK_CLOSE.len());
                        self.state = State::AfterThink;
                        true
                    }
                    None => {
                        let keep = held_back(&self.buf, &[THINK_CLOSE]);
                        out.reasoning.push_str(&self.buf[..keep]);
                        self.buf.drain(..keep);
                        false
                    }
                },
                State::AfterThink => {
                    let t = self.buf.trim_start();
                    if t.is_empty() {
                        self.buf.clear();
                        false
                    } else {
                        self.buf = t.to_string();
                        self.state = State::Content;
                        true
                    }
                }
                State::Header => {
                    let t = self.buf.trim_start();
                    if !t.is_empty() && !t.starts_with("<|") && !"<|".starts_with(t) {
                        // Not harmony after all: plain answer text.
                        self.state = State::Content;
                        true
                    } else if let Some(i) = self.buf.find(H_MESSAGE) {
                        let header = &self.buf[..i];
                        let channel = header
                            .find(H_CHANNEL)
                            .map(|c| {
                                header[c + H_CHANNEL.len()..]
                                    .split(|ch: char| ch.is_whitespace() || ch == '<')
                                    .next()
                                    .unwrap_or("")
                            })
                            .unwrap_or("final");
                        let reasoning = channel == "analysis";
                        self.buf.drain(..i + H_MESSAGE.len());
                        self.state = State::Body(reasoning);
                        true
                    } else {
                        false
                    }
                }
                State::Body(reasoning) => {
                    let hit = H_ENDS
                        .iter()
                        .filter_map(|m| self.buf.find(m).map(|i| (i, m.len())))
                        .min();
                    let sink = if reasoning {
                        &mut out.reasoning
                    } else {
                        &mut out.content
                    };
                    match hit {
                        Some((i, len)) => {
                            sink.push_str(&self.buf[..i]);
                            self.buf.drain(..i + len);
                            self.state = State::Header;
                            true
                        }
                        None => {
                            let keep = held_back(&self.buf, H_ENDS);
                            sink.push_str(&self.buf[..keep]);
                            self.buf.drain(..keep);
                            false
                        }
                    }
                }
            };
            if !progressed {
                break;
            }
        }
    }
}

/// Length of the prefix of `s` that cannot be the start of any marker (the rest is held).
fn held_back(s: &str, markers: &[&str]) -> usize {
    let max = markers.iter().map(|m| m.len()).max().unwrap_or(0);
    let from = s.len().saturating_sub(max.saturating_sub(1));
    for k in from..s.len() {
        if s.is_char_boundary(k) && markers.iter().any(|m| m.starts_with(&s[k..])) {
            return k;
        }
    }
    s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` in pieces of `n` bytes (on char boundaries) and joins the results.
    fn run(syntax: ReasoningSyntax, open: bool, text: &str, n: usize) -> (String, String) {
        let mut p = ReasoningParser::new(syntax, open);
        let (mut r, mut c) = (String::new(), String::new());
        let mut i = 0;
        while i < text.len() {
            let mut j = (i + n).min(text.len());
            while !text.is_char_boundary(j) {
                j += 1;
            }
            let s = p.push(&text[i..j]);
            r += &s.reasoning;
            c += &s.content;
            i = j;
        }
        let s = p.finish();
        (r + &s.reasoning, c + &s.content)
    }

    #[test]
    fn think_blocks_split_at_any_chunking() {
        for n in [1, 2, 3, 7, 100] {
            let (r, c) = run(
                ReasoningSyntax::Think,
                false,
                "<think>\nLet me see: 2+2.\n</think>\n\nIt is 4.",
                n,
            );
            assert_eq!(r, "\nLet me see: 2+2.\n", "n={n}");
            assert_eq!(c, "It is 4.", "n={n}");
        }
    }

    #[test]
    fn think_opened_by_the_prompt_and_no_think_at_all() {
        let (r, c) = run(ReasoningSyntax::Think, true, "hmm</think>answer", 2);
        assert_eq!((r.as_str(), c.as_str()), ("hmm", "answer"));
        let (r, c) = run(ReasoningSyntax::Think, false, "just <think> text", 1);
        assert_eq!((r.as_str(), c.as_str()), ("", "just <think> text"));
        let (r, c) = run(ReasoningSyntax::Think, false, "<think>unfinished", 3);
        assert_eq!((r.as_str(), c.as_str()), ("unfinished", ""));
        let (r, c) = run(ReasoningSyntax::None, false, "<think>x</think>y", 1);
        assert_eq!((r.as_str(), c.as_str()), ("", "<think>x</think>y"));
    }

    #[test]
    fn harmony_channels() {
        let out = "<|channel|>analysis<|message|>User wants a greeting.<|end|><|start|>assistant<|channel|>final<|message|>Hello there!";
        for n in [1, 4, 1000] {
            let (r, c) = run(ReasoningSyntax::Harmony, false, out, n);
            assert_eq!(r, "User wants a greeting.", "n={n}");
            assert_eq!(c, "Hello there!", "n={n}");
        }
        let (r, c) = run(ReasoningSyntax::Harmony, false, "plain answer", 2);
        assert_eq!((r.as_str(), c.as_str()), ("", "plain answer"));
    }

    #[test]
    fn multibyte_text_is_not_split() {
        let (r, c) = run(ReasoningSyntax::Think, false, "<think>é€</think>😀<", 1);
        assert_eq!((r.as_str(), c.as_str()), ("é€", "😀<"));
    }
}
