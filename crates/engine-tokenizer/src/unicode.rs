//! Code point classification as llama.cpp's tokenizers see it.
//!
//! llama.cpp reduces every code point to one general-category bucket (letter, number, mark,
//! punctuation, symbol, separator, control, unassigned) plus a White_Space bit, and lowercases
//! and NFD-decomposes one code point at a time (keeping only the first code point of the
//! decomposition). This module provides exactly those views, built from the
//! `unicode-general-category` tables, plus the GPT-2 byte-to-character mapping used by
//! byte-level BPE vocabularies.

use std::sync::OnceLock;

use unicode_general_category::{get_general_category, GeneralCategory as Gc};

/// Per-code-point flags: one category bit plus the whitespace bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CpFlags(u16);

impl CpFlags {
    /// Unassigned code point (`Cn`).
    pub const UNDEFINED: u16 = 0x0001;
    /// `\p{N}`.
    pub const NUMBER: u16 = 0x0002;
    /// `\p{L}`.
    pub const LETTER: u16 = 0x0004;
    /// `\p{Z}`.
    pub const SEPARATOR: u16 = 0x0008;
    /// `\p{M}`.
    pub const MARK: u16 = 0x0010;
    /// `\p{P}`.
    pub const PUNCTUATION: u16 = 0x0020;
    /// `\p{S}`.
    pub const SYMBOL: u16 = 0x0040;
    /// `\p{C}` other than unassigned.
    pub const CONTROL: u16 = 0x0080;
    /// Unicode White_Space.
    pub const WHITESPACE: u16 = 0x0100;

    /// No flags at all: what llama.cpp reports for a position outside the current range.
    pub const NONE: CpFlags = CpFlags(0);

    pub fn is_number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }
    pub fn is_letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }
    pub fn is_mark(self) -> bool {
        self.0 & Self::MARK != 0
    }
    pub fn is_punctuation(self) -> bool {
        self.0 & Self::PUNCTUATION != 0
    }
    pub fn is_symbol(self) -> bool {
        self.0 & Self::SYMBOL != 0
    }
    pub fn is_control(self) -> bool {
        self.0 & Self::CONTROL != 0
    }
    pub fn is_whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
    /// True for any real code point (false only for [`CpFlags::NONE`]).
    pub fn any(self) -> bool {
        self.0 != 0
    }
    /// The category bits alone (whitespace bit removed).
    pub fn category(self) -> u16 {
        self.0 & 0x00FF
    }
}

fn category_bits(c: char) -> u16 {
    match get_general_category(c) {
        Gc::Unassigned => CpFlags::UNDEFINED,
        Gc::Control | Gc::Format | Gc::PrivateUse | Gc::Surrogate => CpFlags::CONTROL,
        Gc::UppercaseLetter
        | Gc::LowercaseLetter
        | Gc::TitlecaseLetter
        | Gc::ModifierLetter
        | Gc::OtherLetter => CpFlags::LETTER,
        Gc::NonspacingMark | Gc::SpacingMark | Gc::EnclosingMark => CpFlags::MARK,
        Gc::DecimalNumber | Gc::LetterNumber | Gc::OtherNumber => CpFlags::NUMBER,
        Gc::ConnectorPunctuation
        | Gc::DashPunctuation
        | Gc::OpenPunctuation
        | Gc::ClosePunctuation
        | Gc::InitialPunctuation
        | Gc::FinalPunctuation
        | Gc::OtherPunctuation => CpFlags::PUNCTUATION,
        Gc::MathSymbol | Gc::CurrencySymbol | Gc::ModifierSymbol | Gc::OtherSymbol => {
            CpFlags::SYMBOL
        }
        Gc::SpaceSeparator | Gc::LineSeparator | Gc::ParagraphSeparator => CpFlags::SEPARATOR,
        _ => CpFlags::UNDEFINED,
    }
}

fn compute_flags(c: char) -> CpFlags {
    let mut bits = category_bits(c);
    if c.is_whitespace() {
        bits |= CpFlags::WHITESPACE;
    }
    CpFlags(bits)
}

/// Flags of every Basic Multilingual Plane code point, computed once.
fn bmp_table() -> &'static [u16] {
    static TABLE: OnceLock<Vec<u16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0u32..0x1_0000)
            .map(|cp| char::from_u32(cp).map_or(CpFlags::CONTROL, |c| compute_flags(c).0))
            .collect()
    })
}

/// The flags of one code point.
pub(crate) fn flags(c: char) -> CpFlags {
    let cp = c as u32;
    if cp < 0x1_0000 {
        CpFlags(bmp_table()[cp as usize])
    } else {
        compute_flags(c)
    }
}

/// Simple (one code point) lowercase mapping.
pub(crate) fn to_lower(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    // The full mapping only differs from the simple one by appending combining marks
    // (U+0130), so its first code point is the simple mapping.
    c.to_lowercase().next().unwrap_or(c)
}

/// First code point of the canonical decomposition (NFD) of `c`.
pub(crate) fn nfd_first(c: char) -> char {
    use unicode_normalization::char::decompose_canonical;
    let mut first = None;
    decompose_canonical(c, |d| {
        if first.is_none() {
            first = Some(d);
        }
    });
    first.unwrap_or(c)
}

/// GPT-2's reversible byte-to-character map: printable Latin-1 bytes stand for themselves,
/// the rest are shifted to U+0100 and up in byte order.
pub(crate) fn byte_to_char(b: u8) -> char {
    static MAP: OnceLock<[char; 256]> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = ['\0'; 256];
        let mut next = 256u32;
        for (b, slot) in map.iter_mut().enumerate() {
            let printable = (0x21..=0x7E).contains(&b)
                || (0xA1..=0xAC).contains(&b)
                || (0xAE..=0xFF).contains(&b);
            let cp = if printable {
                b as u32
            } else {
                next += 1;
                next - 1
            };
            *slot = char::from_u32(cp).unwrap_or('\u{FFFD}');
        }
        map
    })[b as usize]
}

/// Inverse of [`byte_to_char`].
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    const NONE: u16 = u16::MAX;
    static MAP: OnceLock<[u16; 0x144]> = OnceLock::new();
    let map = MAP.get_or_init(|| {
        let mut map = [NONE; 0x144];
        for b in 0..=255u8 {
            map[byte_to_char(b) as usize] = b as u16;
        }
        map
    });
    match map.get(c as usize) {
        Some(&b) if b != NONE => Some(b as u8),
        _ => None,
    }
}

/// True for the bytes C's `isspace` accepts in the "C" locale.
pub(crate) fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories() {
        assert!(flags('a').is_letter());
        assert!(flags('7').is_number());
        assert!(flags('$').is_symbol());
        assert!(flags('_').is_punctuation());
        assert!(flags('\u{301}').is_mark());
        assert!(flags(' ').is_whitespace());
        assert!(flags('\u{3000}').is_whitespace());
        assert!(!flags('\u{1C}').is_whitespace());
        assert!(flags('\u{200B}').is_control());
        assert!(flags('\u{E000}').is_control());
        assert_eq!(flags('\u{378}').category(), CpFlags::UNDEFINED);
        assert!(flags('\u{1D400}').is_letter());
    }

    #[test]
    fn byte_map_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(byte_to_char(b' '), '\u{120}');
        assert_eq!(byte_to_char(b'\n'), '\u{10A}');
    }

    #[test]
    fn lower_and_nfd() {
        assert_eq!(to_lower('\u{130}'), 'i');
        assert_eq!(to_lower('Ä'), 'ä');
        assert_eq!(nfd_first('é'), 'e');
        assert_eq!(nfd_first('한'), '\u{1112}');
        assert_eq!(nfd_first('x'), 'x');
    }
}
