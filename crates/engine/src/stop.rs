//! Stop strings in streamed text: text that could still become a stop string is held back,
//! and a completed stop string ends generation with nothing of it emitted.

/// Tracks generated text against a set of stop strings.
pub struct StopMatcher {
    stops: Vec<String>,
    max_len: usize,
}

/// What to do after new text arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum StopCheck {
    /// Emit `text[emitted..safe]`; nothing matched yet.
    Continue {
        /// End (exclusive) of the text that can be emitted now.
        safe: usize,
    },
    /// A stop string starts at `at`: emit `text[emitted..at]` and stop.
    Stop {
        /// Byte offset where the stop string begins.
        at: usize,
    },
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> StopMatcher {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let max_len = stops.iter().map(|s| s.len()).max().unwrap_or(0);
        StopMatcher { stops, max_len }
    }

    /// Checks `text`, of which the first `emitted` bytes were already handed out.
    pub fn check(&self, text: &str, emitted: usize) -> StopCheck {
        if self.stops.is_empty() {
            return StopCheck::Continue { safe: text.len() };
        }
        let mut from = emitted.saturating_sub(self.max_len);
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let mut first: Option<usize> = None;
        for s in &self.stops {
            if let Some(i) = text[from..].find(s.as_str()) {
                first = Some(first.map_or(from + i, |f| f.min(from + i)));
            }
        }
        if let Some(at) = first {
            return StopCheck::Stop { at };
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let mut safe = text.len();
        let start = text.len().saturating_sub(self.max_len);
        for k in start..text.len() {
            if !text.is_char_boundary(k) {
                continue;
            }
            let tail = &text[k..];
            if self.stops.iter().any(|s| s.starts_with(tail)) {
                safe = k;
                break;
            }
        }
        StopCheck::Continue {
            safe: safe.max(emitted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_matches_and_stops_on_full_ones() {
        let m = StopMatcher::new(&["\n\n".to_string(), "END".to_string()]);
        assert_eq!(m.check("hello", 0), StopCheck::Continue { safe: 5 });
        assert_eq!(m.check("hello E", 5), StopCheck::Continue { safe: 6 });
        assert_eq!(m.check("hello EN", 6), StopCheck::Continue { safe: 6 });
        assert_eq!(m.check("hello ENx", 6), StopCheck::Continue { safe: 9 });
        assert_eq!(m.check("hello END", 6), StopCheck::Stop { at: 6 });
        assert_eq!(m.check("a\n", 0), StopCheck::Continue { safe: 1 });
        assert_eq!(m.check("a\n\nb", 1), StopCheck::Stop { at: 1 });
        assert_eq!(m.check("é€", 0), StopCheck::Continue { safe: 5 });
    }

    #[test]
    fn no_stops_emits_everything() {
        let m = StopMatcher::new(&[]);
        assert_eq!(m.check("abc", 0), StopCheck::Continue { safe: 3 });
    }
}
