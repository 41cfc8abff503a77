//! `response_format: json_object` (Ollama `format: "json"`): an incremental JSON syntax
//! checker over bytes. The sampler only sees tokens whose text keeps the output a prefix of
//! one JSON object, and generation ends when the object closes.

/// Nesting deeper than this is refused (keeps the stack bounded).
const MAX_DEPTH: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A value is expected (`top` = the outermost one, which must be an object).
    Value { top: bool },
    /// After `[`: a value or `]`.
    ArrayFirst,
    /// After `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value inside a container: `,` or the closing bracket.
    After,
    /// Inside a string; `key` when it is an object key.
    Str { key: bool, esc: u8 },
    /// Inside a number.
    Number(Num),
    /// Inside `true`, `false` or `null`: the word and how much of it was read.
    Literal { word: &'static [u8], at: u8 },
    /// The outermost object closed.
    Done,
}

/// The state of a partially generated JSON object.
#[derive(Clone, Debug)]
pub struct JsonState {
    stack: Vec<Container>,
    mode: Mode,
}

impl Default for JsonState {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonState {
    /// Nothing generated yet.
    pub fn new() -> JsonState {
        JsonState {
            stack: Vec::with_capacity(16),
            mode: Mode::Value { top: true },
        }
    }

    /// True once the outermost object is closed.
    pub fn is_complete(&self) -> bool {
        self.mode == Mode::Done
    }

    /// Copies `other` into `self` reusing the allocation.
    pub fn copy_from(&mut self, other: &JsonState) {
        self.stack.clear();
        self.stack.extend_from_slice(&other.stack);
        self.mode = other.mode;
    }

    /// Feeds bytes; false (state then unspecified) when they cannot continue valid JSON.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.byte(b))
    }

    fn value_done(&mut self) {
        self.mode = if self.stack.is_empty() {
            Mode::Done
        } else {
            Mode::After
        };
    }

    fn open(&mut self, c: Container) -> bool {
        if self.stack.len() >= MAX_DEPTH {
            return false;
        }
        self.stack.push(c);
        self.mode = match c {
            Container::Object => Mode::ObjectFirst,
            Container::Array => Mode::ArrayFirst,
        };
        true
    }

    fn close(&mut self, c: Container) -> bool {
        if self.stack.last() != Some(&c) {
            return false;
        }
        self.stack.pop();
        self.value_done();
        true
    }

    fn start_value(&mut self, b: u8, top: bool) -> bool {
        if top && b != b'{' {
            return is_ws(b);
        }
        match b {
            b'{' => self.open(Container::Object),
            b'[' => self.open(Container::Array),
            b'"' => {
                self.mode = Mode::Str { key: false, esc: 0 };
                true
            }
            b'-' => {
                self.mode = Mode::Number(Num::Minus);
                true
            }
            b'0' => {
                self.mode = Mode::Number(Num::Zero);
                true
            }
            b'1'..=b'9' => {
                self.mode = Mode::Number(Num::Int);
                true
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => is_ws(b),
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> bool {
        self.mode = Mode::Literal { word, at: 1 };
        true
    }

    fn byte(&mut self, b: u8) -> bool {
        match self.mode {
            Mode::Done => false,
            Mode::Value { top } => self.start_value(b, top),
            Mode::ArrayFirst => {
                if b == b']' {
                    self.close(Container::Array)
                } else {
                    self.start_value(b, false)
                }
            }
            Mode::ObjectFirst | Mode::Key => match b {
                b'"' => {
                    self.mode = Mode::Str { key: true, esc: 0 };
                    true
                }
                b'}' if self.mode == Mode::ObjectFirst => self.close(Container::Object),
                _ => is_ws(b),
            },
            Mode::Colon => match b {
                b':' => {
                    self.mode = Mode::Value { top: false };
                    true
                }
                _ => is_ws(b),
            },
            Mode::After => match b {
                b',' => {
                    self.mode = match self.stack.last() {
                        Some(Container::Object) => Mode::Key,
                        _ => Mode::Value { top: false },
                    };
                    true
                }
                b'}' => self.close(Container::Object),
                b']' => self.close(Container::Array),
                _ => is_ws(b),
            },
            Mode::Str { key, esc } => self.string_byte(b, key, esc),
            Mode::Number(n) => self.number_byte(b, n),
            Mode::Literal { word, at } => {
                if word.get(at as usize) != Some(&b) {
                    return false;
                }
                if at as usize + 1 == word.len() {
                    self.value_done();
                } else {
                    self.mode = Mode::Literal { word, at: at + 1 };
                }
                true
            }
        }
    }

    fn string_byte(&mut self, b: u8, key: bool, esc: u8) -> bool {
        match esc {
            // plain text
            0 => match b {
                b'"' => {
                    if key {
                        self.mode = Mode::Colon;
                    } else {
                        self.value_done();
                    }
                    true
                }
                b'\\' => {
                    self.mode = Mode::Str { key, esc: 1 };
                    true
                }
                0..=0x1f => false,
                _ => true,
            },
            // after a backslash
            1 => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                    self.mode = Mode::Str { key, esc: 0 };
                    true
                }
                b'u' => {
                    self.mode = Mode::Str { key, esc: 2 };
                    true
                }
                _ => false,
            },
            // 2..=5: reading the four hex digits of \uXXXX
            n => {
                if !b.is_ascii_hexdigit() {
                    return false;
                }
                self.mode = Mode::Str {
                    key,
                    esc: if n == 5 { 0 } else { n + 1 },
                };
                true
            }
        }
    }

    fn number_byte(&mut self, b: u8, n: Num) -> bool {
        let next = match (n, b) {
            (Num::Minus, b'0') => Some(Num::Zero),
            (Num::Minus, b'1'..=b'9') => Some(Num::Int),
            (Num::Int, b'0'..=b'9') => Some(Num::Int),
            (Num::Zero | Num::Int, b'.') => Some(Num::Dot),
            (Num::Dot | Num::Frac, b'0'..=b'9') => Some(Num::Frac),
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Some(Num::E),
            (Num::E, b'+' | b'-') => Some(Num::ESign),
            (Num::E | Num::ESign | Num::Exp, b'0'..=b'9') => Some(Num::Exp),
            _ => None,
        };
        if let Some(n) = next {
            self.mode = Mode::Number(n);
            return true;
        }
        // The number ends here if it is complete; the byte then belongs to what follows.
        if matches!(n, Num::Zero | Num::Int | Num::Frac | Num::Exp) {
            self.value_done();
            self.byte(b)
        } else {
            false
        }
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(s: &str) -> (bool, bool) {
        let mut j = JsonState::new();
        let ok = j.feed(s.as_bytes());
        (ok, j.is_complete())
    }

    #[test]
    fn complete_objects() {
        for s in [
            "{}",
            " {\"a\": 1}",
            "{\"a\":[1,-2.5e+3,true,false,null,{\"b\":\"x\\n\\u00e9\"}],\"c\":0}",
            "{\"k\": \"é ☃\"}",
            "{\"a\": [ ] , \"b\" : { } }",
        ] {
            assert_eq!(accepts(s), (true, true), "{s}");
        }
    }

    #[test]
    fn prefixes_are_accepted_but_incomplete() {
        for s in [
            "",
            " ",
            "{",
            "{\"a",
            "{\"a\":",
            "{\"a\": -",
            "{\"a\": 1.",
            "{\"a\": tr",
            "{\"a\":[1,",
        ] {
            assert_eq!(accepts(s), (true, false), "{s}");
        }
    }

    #[test]
    fn invalid_text_is_refused() {
        for s in [
            "[1]",
            "\"x\"",
            "hello",
            "{a:1}",
            "{\"a\" 1}",
            "{\"a\":01}",
            "{\"a\":1,}",
            "{\"a\":tru }",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"line\nbreak\"}",
            "{\"a\":[1}",
            "{} {}",
            "{\"a\":-}",
        ] {
            assert!(!accepts(s).0, "{s} should be refused");
        }
    }

    #[test]
    fn depth_is_bounded() {
        let deep = format!("{{\"a\":{}", "[".repeat(MAX_DEPTH + 5));
        assert!(!accepts(&deep).0);
    }

    #[test]
    fn copy_from_restores_state() {
        let mut a = JsonState::new();
        assert!(a.feed(b"{\"x\": ["));
        let mut b = JsonState::new();
        b.copy_from(&a);
        assert!(b.feed(b"1]}"));
        assert!(b.is_complete());
        assert!(!a.is_complete());
        assert!(a.feed(b"2]}"));
    }
}
