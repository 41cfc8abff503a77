//! Hand-written word splitters that llama.cpp uses instead of `std::regex` for its most
//! common pre-tokenizer patterns. They are reproduced rule for rule, because their results
//! differ from a true regex engine in corner cases (for example a lone trailing space, or
//! `\s+(?!\S)` at the end of a word), and llama.cpp's output is what models were checked
//! against.
//!
//! Every splitter works on code points and their flags and turns a list of word lengths
//! (in code points) into a finer one.

use crate::unicode::{self, CpFlags};

/// The splitters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Custom {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
    Gpt2,
    /// The Llama 3 pattern: letters with an optional leading non-letter, numbers in runs of
    /// at most three, case-insensitive contractions.
    Llama3,
    /// As [`Custom::Llama3`] with single digits.
    Qwen2,
    /// As [`Custom::Qwen2`] with combining marks joining letter runs.
    Qwen35,
    /// Kimi K2: Han runs, letter words with contractions, numbers in threes.
    KimiK2,
    /// Digit runs cut into groups of three from the right.
    DigitGroups,
    /// Runs of newlines and runs of anything else.
    Newlines,
}

/// A view of one word: positions outside it read as "no code point".
struct Word<'a> {
    cps: &'a [char],
    fl: &'a [CpFlags],
    ini: usize,
    end: usize,
}

impl Word<'_> {
    fn cpt(&self, pos: usize) -> Option<char> {
        (self.ini <= pos && pos < self.end).then(|| self.cps[pos])
    }
    fn flags(&self, pos: usize) -> CpFlags {
        if self.ini <= pos && pos < self.end {
            self.fl[pos]
        } else {
            CpFlags::NONE
        }
    }
    fn is(&self, pos: usize, c: char) -> bool {
        self.cpt(pos) == Some(c)
    }
    fn is_cr_or_lf(&self, pos: usize) -> bool {
        matches!(self.cpt(pos), Some('\r' | '\n'))
    }
    fn lower(&self, pos: usize) -> Option<char> {
        self.cpt(pos).map(unicode::to_lower)
    }
}

/// Emits word lengths, remembering where the previous word ended.
struct Emitter<'a> {
    prev: usize,
    out: &'a mut Vec<usize>,
}

impl Emitter<'_> {
    fn add(&mut self, end: usize) -> usize {
        let len = end.saturating_sub(self.prev);
        if len > 0 {
            self.out.push(len);
        }
        self.prev = end;
        len
    }
}

/// Applies a splitter to every word.
pub(crate) fn split(kind: Custom, cps: &[char], fl: &[CpFlags], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len() * 2);
    let mut start = 0;
    for &len in offsets {
        let w = Word {
            cps,
            fl,
            ini: start,
            end: start + len,
        };
        let mut e = Emitter {
            prev: start,
            out: &mut out,
        };
        match kind {
            Custom::Gpt2 => gpt2(&w, &mut e),
            Custom::Llama3 => llama3_family(&w, &mut e, 3, false),
            Custom::Qwen2 => llama3_family(&w, &mut e, 1, false),
            Custom::Qwen35 => llama3_family(&w, &mut e, 1, true),
            Custom::KimiK2 => kimi_k2(&w, &mut e),
            Custom::DigitGroups => digit_groups(&w, &mut e),
            Custom::Newlines => newlines(&w, &mut e),
        }
        start += len;
    }
    out
}

/// `'s|'t|'re|'ve|'m|'ll|'d` (case-sensitive or not) at `pos`: the length matched.
fn contraction(w: &Word, pos: usize, fold: bool) -> usize {
    if !w.is(pos, '\'') || pos + 1 >= w.end {
        return 0;
    }
    let get = |p| if fold { w.lower(p) } else { w.cpt(p) };
    let n1 = get(pos + 1);
    if matches!(n1, Some('s' | 't' | 'm' | 'd')) {
        return 2;
    }
    if pos + 2 < w.end {
        let n2 = get(pos + 2);
        if matches!(
            (n1, n2),
            (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
        ) {
            return 3;
        }
    }
    0
}

/// Whitespace handling shared by all splitters: `\s*[\r\n]+` (when `newline_runs`),
/// `\s+(?!\S)` and `\s+`. Returns whether something was emitted.
fn whitespace(w: &Word, e: &mut Emitter, pos: &mut usize, newline_runs: bool) -> bool {
    let mut n = 0;
    let mut last_rn = 0;
    while w.flags(*pos + n).is_whitespace() {
        if w.is_cr_or_lf(*pos + n) {
            last_rn = *pos + n + 1;
        }
        n += 1;
    }
    if newline_runs && last_rn > 0 {
        *pos = last_rn;
        e.add(*pos);
        return true;
    }
    if n > 1 && w.cpt(*pos + n).is_some() {
        *pos += n - 1;
        e.add(*pos);
        return true;
    }
    if n > 0 {
        *pos += n;
        e.add(*pos);
        return true;
    }
    false
}

fn gpt2(w: &Word, e: &mut Emitter) {
    let mut pos = w.ini;
    while pos < w.end {
        let cpt = w.cpt(pos);
        let fl = w.flags(pos);
        let c = contraction(w, pos, false);
        if c > 0 {
            pos += e.add(pos + c);
            continue;
        }
        let space = cpt == Some(' ');
        let mut fl2 = if space { w.flags(pos + 1) } else { fl };
        if fl2.is_letter() {
            pos += space as usize;
            while fl2.is_letter() {
                pos += 1;
                fl2 = w.flags(pos);
            }
            e.add(pos);
            continue;
        }
        if fl2.is_number() {
            pos += space as usize;
            while fl2.is_number() {
                pos += 1;
                fl2 = w.flags(pos);
            }
            e.add(pos);
            continue;
        }
        let other = |f: CpFlags| !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.any();
        if other(fl2) {
            pos += space as usize;
            while other(fl2) {
                pos += 1;
                fl2 = w.flags(pos);
            }
            e.add(pos);
            continue;
        }
        if whitespace(w, e, &mut pos, false) {
            continue;
        }
        pos += 1;
        e.add(pos);
    }
}

fn llama3_family(w: &Word, e: &mut Emitter, max_digits: usize, marks: bool) {
    let wordish = |f: CpFlags| f.is_letter() || (marks && f.is_mark());
    let mut pos = w.ini;
    while pos < w.end {
        let fl = w.flags(pos);
        let c = contraction(w, pos, true);
        if c > 0 {
            pos += e.add(pos + c);
            continue;
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(w.is_cr_or_lf(pos) || fl.is_number()) && (wordish(fl) || wordish(w.flags(pos + 1))) {
            pos += 1;
            while wordish(w.flags(pos)) {
                pos += 1;
            }
            e.add(pos);
            continue;
        }
        // \p{N}{1,max}
        if fl.is_number() {
            let mut ini = pos;
            while w.flags(pos).is_number() {
                pos += 1;
                if pos - ini >= max_digits {
                    e.add(pos);
                    ini = pos;
                }
            }
            e.add(pos);
            continue;
        }
        // <space>?[^\s\p{L}\p{N}]+[\r\n]*  (the guard reads the current code point's flags)
        let space = w.is(pos, ' ');
        let mut fl2 = if space { w.flags(pos + 1) } else { fl };
        let other = |f: CpFlags| !(f.is_whitespace() || wordish(f) || f.is_number());
        if other(fl2) && fl.any() {
            pos += space as usize;
            while other(fl2) && fl2.any() {
                pos += 1;
                fl2 = w.flags(pos);
            }
            while w.is_cr_or_lf(pos) {
                pos += 1;
            }
            e.add(pos);
            continue;
        }
        if whitespace(w, e, &mut pos, true) {
            continue;
        }
        pos += 1;
        e.add(pos);
    }
}

/// The Han ranges llama.cpp recognises.
fn is_han(c: Option<char>) -> bool {
    let Some(c) = c else { return false };
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0x2CEB0..=0x2EBEF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

fn kimi_k2(w: &Word, e: &mut Emitter) {
    let letter = |p: usize| w.flags(p).is_letter() && !is_han(w.cpt(p));
    let mut pos = w.ini;
    while pos < w.end {
        let cpt = w.cpt(pos);
        let fl = w.flags(pos);
        if is_han(cpt) {
            while is_han(w.cpt(pos)) {
                pos += 1;
            }
            e.add(pos);
            continue;
        }
        let leading_ok = !(w.is_cr_or_lf(pos) || fl.is_letter() || fl.is_number());
        if letter(pos) || (leading_ok && letter(pos + 1)) {
            let mut has_leading = false;
            if leading_ok {
                has_leading = true;
                pos += 1;
            }
            let mut has_letters = false;
            while letter(pos) {
                has_letters = true;
                pos += 1;
            }
            if has_letters || (!has_leading && letter(pos)) {
                if !has_letters {
                    pos += 1;
                }
                while letter(pos) {
                    pos += 1;
                }
                if w.is(pos, '\'') && pos + 1 < w.end {
                    let n1 = w.lower(pos + 1);
                    if matches!(n1, Some('s' | 't' | 'm' | 'd')) {
                        pos += 2;
                    } else if pos + 2 < w.end {
                        let n2 = w.lower(pos + 2);
                        if matches!(
                            (n1, n2),
                            (Some('r'), Some('e'))
                                | (Some('v'), Some('e'))
                                | (Some('l'), Some('l'))
                        ) {
                            pos += 3;
                        }
                    }
                }
                e.add(pos);
                continue;
            } else if has_leading {
                pos -= 1;
            }
        }
        if fl.is_number() {
            let mut ini = pos;
            while w.flags(pos).is_number() {
                pos += 1;
                if pos - ini >= 3 {
                    e.add(pos);
                    ini = pos;
                }
            }
            e.add(pos);
            continue;
        }
        let space = cpt == Some(' ');
        let mut fl2 = if space { w.flags(pos + 1) } else { fl };
        let other = |f: CpFlags| !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.any();
        if other(fl2) {
            pos += space as usize;
            while other(fl2) {
                pos += 1;
                fl2 = w.flags(pos);
            }
            while w.is_cr_or_lf(pos) {
                pos += 1;
            }
            e.add(pos);
            continue;
        }
        if whitespace(w, e, &mut pos, true) {
            continue;
        }
        pos += 1;
        e.add(pos);
    }
}

/// Digit runs split so that the groups of three line up with the end of the run; text
/// before a run joins its first group, as in llama.cpp.
fn digit_groups(w: &Word, e: &mut Emitter) {
    let mut pos = w.ini;
    while pos < w.end {
        if w.flags(pos).is_number() {
            let start = pos;
            while pos < w.end && w.flags(pos).is_number() {
                pos += 1;
            }
            let count = pos - start;
            let mut cur = start;
            let rem = count % 3;
            if rem > 0 {
                e.add(cur + rem);
                cur += rem;
            }
            while cur < start + count {
                e.add(cur + 3);
                cur += 3;
            }
            continue;
        }
        pos += 1;
    }
    if e.prev < w.end {
        e.add(w.end);
    }
}

fn newlines(w: &Word, e: &mut Emitter) {
    let mut pos = w.ini;
    while pos < w.end {
        let nl = w.cps[pos] == '\n';
        while pos < w.end && (w.cps[pos] == '\n') == nl {
            pos += 1;
        }
        e.add(pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kind: Custom, text: &str) -> Vec<String> {
        let cps: Vec<char> = text.chars().collect();
        let fl: Vec<CpFlags> = cps.iter().map(|&c| unicode::flags(c)).collect();
        let lens = split(kind, &cps, &fl, &[cps.len()]);
        let mut out = Vec::new();
        let mut s = 0;
        for l in lens {
            out.push(cps[s..s + l].iter().collect());
            s += l;
        }
        out
    }

    #[test]
    fn llama3_rules() {
        assert_eq!(
            run(Custom::Llama3, "I'M 12345 ok!!\n\n  x "),
            ["I", "'M", " ", "123", "45", " ok", "!!\n\n", " ", " x", " "]
        );
        assert_eq!(run(Custom::Qwen2, "a 12"), ["a", " ", "1", "2"]);
    }

    #[test]
    fn gpt2_rules() {
        assert_eq!(
            run(Custom::Gpt2, "it's  a\t\n"),
            ["it", "'s", " ", " a", "\t\n"]
        );
    }

    #[test]
    fn digit_groups_join_leading_text() {
        assert_eq!(run(Custom::DigitGroups, "ab1234"), ["ab1", "234"]);
        assert_eq!(run(Custom::DigitGroups, "x"), ["x"]);
    }

    #[test]
    fn newline_runs() {
        assert_eq!(run(Custom::Newlines, "a b\n\nc"), ["a b", "\n\n", "c"]);
    }
}
