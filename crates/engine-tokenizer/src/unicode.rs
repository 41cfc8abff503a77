//! Code point classification as llama.cpp's tokenizers see it.
//!
//! llama.cpp reduces every code point to one general-category bucket (letter, number, mark,
//! punctuation, symbol, separator, control, unassigned) plus a White_Space bit, and lowercases
//! and NFD-decomposes one code point at a time (keeping only the first code point of the
//! decomposition). This module provides exactly those views, built from the
//! `unicode-general-category` (Unicode 16.0), standard library and `unicode-normalization`
//! tables, with code points newer than llama.cpp's Unicode 15.1 tables treated as
//! unassigned (a test compares every code point with llama.cpp's tables), plus the GPT-2
//! byte-to-character mapping used by byte-level BPE vocabularies.

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
    if new_in_unicode_16(c as u32) {
        return CpFlags(CpFlags::UNDEFINED);
    }
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
    // Characters llama.cpp's Unicode version does not have map to themselves.
    if flags(c).category() == CpFlags::UNDEFINED {
        return c;
    }
    // The full mapping only differs from the simple one by appending combining marks
    // (U+0130), so its first code point is the simple mapping.
    c.to_lowercase().next().unwrap_or(c)
}

/// First code point of the canonical decomposition (NFD) of `c`.
pub(crate) fn nfd_first(c: char) -> char {
    use unicode_normalization::char::decompose_canonical;
    if flags(c).category() == CpFlags::UNDEFINED {
        return c;
    }
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

/// Code point ranges first assigned in Unicode 16.0 (5,185 characters). llama.cpp's tables
/// are Unicode 15.1, where these are unassigned; they are classified as unassigned here too.
const NEW_IN_UNICODE_16: &[(u32, u32)] = &[
    (0x0897, 0x0897),
    (0x1B4E, 0x1B4F),
    (0x1B7F, 0x1B7F),
    (0x1C89, 0x1C8A),
    (0x2427, 0x2429),
    (0x31E4, 0x31E5),
    (0xA7CB, 0xA7CD),
    (0xA7DA, 0xA7DC),
    (0x105C0, 0x105F3),
    (0x10D40, 0x10D65),
    (0x10D69, 0x10D85),
    (0x10D8E, 0x10D8F),
    (0x10EC2, 0x10EC4),
    (0x10EFC, 0x10EFC),
    (0x11380, 0x11389),
    (0x1138B, 0x1138B),
    (0x1138E, 0x1138E),
    (0x11390, 0x113B5),
    (0x113B7, 0x113C0),
    (0x113C2, 0x113C2),
    (0x113C5, 0x113C5),
    (0x113C7, 0x113CA),
    (0x113CC, 0x113D5),
    (0x113D7, 0x113D8),
    (0x113E1, 0x113E2),
    (0x116D0, 0x116E3),
    (0x11BC0, 0x11BE1),
    (0x11BF0, 0x11BF9),
    (0x11F5A, 0x11F5A),
    (0x13460, 0x143FA),
    (0x16100, 0x16139),
    (0x16D40, 0x16D79),
    (0x18CFF, 0x18CFF),
    (0x1CC00, 0x1CCF9),
    (0x1CD00, 0x1CEB3),
    (0x1E5D0, 0x1E5FA),
    (0x1E5FF, 0x1E5FF),
    (0x1F8B2, 0x1F8BB),
    (0x1F8C0, 0x1F8C1),
    (0x1FA89, 0x1FA89),
    (0x1FA8F, 0x1FA8F),
    (0x1FABE, 0x1FABE),
    (0x1FAC6, 0x1FAC6),
    (0x1FADC, 0x1FADC),
    (0x1FADF, 0x1FADF),
    (0x1FAE9, 0x1FAE9),
    (0x1FBCB, 0x1FBEF),
];

fn new_in_unicode_16(cp: u32) -> bool {
    let i = NEW_IN_UNICODE_16.partition_point(|&(_, last)| last < cp);
    NEW_IN_UNICODE_16
        .get(i)
        .is_some_and(|&(first, _)| first <= cp)
}

/// Reads llama.cpp's generated Unicode tables from the reference sources and compares every
/// code point with this module.
#[cfg(test)]
mod llama_cpp_tables {
    use super::*;

    fn unicode_data_cpp() -> String {
        let sdist = engine_testdata::llama_cpp_sdist().expect("llama.cpp sources");
        let out = std::process::Command::new("tar")
            .arg("-xzOf")
            .arg(&sdist)
            .args(["--wildcards", "*/vendor/llama.cpp/src/unicode-data.cpp"])
            .output()
            .expect("tar");
        assert!(out.status.success(), "tar failed");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// The rows `{a, b, ...},` of the C++ initializer named `name`.
    fn rows(src: &str, name: &str) -> Vec<Vec<u32>> {
        let start = src.find(&format!("{name} = {{")).expect(name);
        let body = &src[start..];
        let body = &body[body.find('\n').unwrap()..body.find("};").unwrap()];
        body.lines()
            .map(|l| {
                l.trim()
                    .trim_start_matches('{')
                    .trim_end_matches(',')
                    .trim_end_matches('}')
            })
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.split(',')
                    .map(|x| {
                        u32::from_str_radix(x.trim().trim_start_matches("0x"), 16).expect("hex")
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn flags_lowercase_and_nfd_match_llama_cpp() {
        let src = unicode_data_cpp();
        let ranges = rows(&src, "unicode_ranges_flags");
        let spaces: Vec<u32> = rows(&src, "unicode_set_whitespace")
            .into_iter()
            .map(|r| r[0])
            .collect();
        let mut bad = Vec::new();
        for w in ranges.windows(2) {
            for cp in w[0][0]..w[1][0] {
                let Some(c) = char::from_u32(cp) else {
                    continue;
                };
                let want = w[0][1] as u16
                    | if spaces.contains(&cp) {
                        CpFlags::WHITESPACE
                    } else {
                        0
                    };
                if flags(c).0 != want {
                    bad.push(format!("U+{cp:04X}: {:#x} vs {want:#x}", flags(c).0));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "{} code points differ: {:?}",
            bad.len(),
            &bad[..bad.len().min(20)]
        );

        let lower = rows(&src, "unicode_map_lowercase");
        let mut mapped = std::collections::HashMap::new();
        for r in &lower {
            mapped.insert(r[0], r[1]);
        }
        for cp in 0..0x11_0000u32 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let want = mapped.get(&cp).copied().unwrap_or(cp);
            if to_lower(c) as u32 != want {
                bad.push(format!(
                    "lower U+{cp:04X}: U+{:04X} vs U+{want:04X}",
                    to_lower(c) as u32
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "{} lowercase mappings differ: {:?}",
            bad.len(),
            &bad[..bad.len().min(20)]
        );

        let nfd = rows(&src, "unicode_ranges_nfd");
        let mut want_nfd = std::collections::HashMap::new();
        for r in nfd.iter().skip(1) {
            for cp in r[0]..=r[1] {
                want_nfd.insert(cp, r[2]);
            }
        }
        for cp in 0..0x11_0000u32 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let want = want_nfd.get(&cp).copied().unwrap_or(cp);
            if nfd_first(c) as u32 != want {
                bad.push(format!(
                    "nfd U+{cp:04X}: U+{:04X} vs U+{want:04X}",
                    nfd_first(c) as u32
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "{} NFD mappings differ: {:?}",
            bad.len(),
            &bad[..bad.len().min(20)]
        );
    }
}
