//! FITS headers: cards as written, and the HDU structure they describe.
//!
//! This is the parser of header tables. It works on whatever bytes a caller has: a range read of
//! the start of an HDU, the whole file, or a gunzipped stream. [`parse_hdu`] either finds the
//! `END` card in the bytes it is given and returns the HDU (its cards, its kind, its axes and
//! where its data lies), or says that it needs more bytes, so that a reader of remote storage can
//! fetch a speculative first range and only go back for more when a header is unusually long.
//!
//! Cards follow the FITS standard 4.0 (section 4): `KEYWORD = value / comment` with the value
//! indicator in columns 9-10; commentary cards (`COMMENT`, `HISTORY`, a blank keyword, or any
//! card without a value indicator); the `HIERARCH` convention (ESO) for long keywords; and the
//! `CONTINUE` long-string convention, joined into one card. Values are kept as written (`1.0D2`
//! stays `1.0D2`); strings lose their quotes, their doubled inner quotes and their trailing
//! blanks, which the standard says are not significant. Each value is also classified
//! ([`ValueKind`]) so that callers can build typed columns.

use crate::{FitsError, BLOCK};

const CARD: usize = 80;

/// Headers longer than this (about 200,000 cards) are refused: no real header comes close, and a
/// file without an `END` card must not make a reader fetch it whole.
pub const MAX_HEADER_BYTES: usize = 16 << 20;

/// What a card's value is, by its syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ValueKind {
    /// No value: `KEY =` with nothing after it (an undefined value).
    Undefined,
    /// `T` or `F`.
    Logical,
    /// An integer (which may not fit 64 bits: the text is kept).
    Integer,
    /// A real number, `E` or `D` exponent.
    Float,
    /// `(re, im)`.
    Complex,
    /// A quoted string.
    String,
    /// The text of a commentary card (`COMMENT`, `HISTORY`, a blank keyword, or no `= `).
    Commentary,
    /// A value that is none of the above (a malformed card); kept as written.
    Invalid,
}

/// One card, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Card {
    /// The keyword: columns 1-8 without trailing blanks, or for `HIERARCH` cards the words after
    /// `HIERARCH` up to `=` (as astropy names them: `ESO DET CHIP`).
    pub key: String,
    /// The value as written (strings unquoted); the text of commentary cards; None when
    /// undefined.
    pub value: Option<String>,
    /// The comment after `/`, without the surrounding blanks; None when there is none.
    pub comment: Option<String>,
    pub kind: ValueKind,
}

/// What an HDU is, from its first card (and `GROUPS`, `ZIMAGE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HduKind {
    Primary,
    Groups,
    Image,
    BinTable,
    Table,
    CompressedImage,
    /// Any other `XTENSION` (as written, upper case): `FOREIGN`, `DUMP`...
    Other(String),
}

impl HduKind {
    /// The name used in header tables.
    pub fn name(&self) -> &str {
        match self {
            HduKind::Primary => "PRIMARY",
            HduKind::Groups => "GROUPS",
            HduKind::Image => "IMAGE",
            HduKind::BinTable => "BINTABLE",
            HduKind::Table => "TABLE",
            HduKind::CompressedImage => "COMPRESSED_IMAGE",
            HduKind::Other(s) => s,
        }
    }
}

/// One HDU: its header and where its data lies. Offsets are from the start of the file (of the
/// decompressed stream for gzipped files).
#[derive(Debug, Clone, PartialEq)]
pub struct Hdu {
    /// 0 for the primary HDU.
    pub index: usize,
    pub kind: HduKind,
    pub extname: Option<String>,
    pub bitpix: i64,
    pub naxis: i64,
    /// NAXIS1..NAXISn, in header order.
    pub naxes: Vec<i64>,
    pub pcount: i64,
    pub gcount: i64,
    pub header_offset: u64,
    pub data_offset: u64,
    /// Bytes of data, without the padding to a whole block.
    pub data_size: u64,
    /// Tile-compressed images: the real image's BITPIX and axes (`ZBITPIX`, `ZNAXISn`).
    pub zbitpix: Option<i64>,
    pub znaxes: Option<Vec<i64>>,
    pub cards: Vec<Card>,
}

impl Hdu {
    /// Where the next HDU starts: after the data, padded to a whole block.
    pub fn next_offset(&self) -> u64 {
        self.data_offset + padded(self.data_size)
    }

    /// The first card with this keyword.
    pub fn card(&self, key: &str) -> Option<&Card> {
        self.cards.iter().find(|c| c.key == key)
    }

    /// The value of the first card with this keyword, as written.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.card(key).and_then(|c| c.value.as_deref())
    }
}

/// `n` rounded up to a whole number of 2,880-byte blocks.
pub fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// The outcome of parsing the start of an HDU.
#[derive(Debug)]
pub enum Parsed {
    /// The header is complete.
    Hdu(Box<Hdu>),
    /// No `END` card in the bytes given: read at least this many bytes from the HDU's start
    /// (twice what was given, so that long headers take few reads) and try again.
    NeedMore(usize),
}

/// Parse the header of HDU number `index`, which starts at `offset` in the file; `bytes` are the
/// file's bytes from `offset` on (as many as the caller has). Errors name the HDU and the card.
pub fn parse_hdu(bytes: &[u8], index: usize, offset: u64) -> Result<Parsed, FitsError> {
    // The first card says what this is before any END is looked for: a file that is not FITS
    // fails on its first bytes instead of being read on in search of an END card.
    let first = &bytes[..bytes.len().min(8)];
    let expect: &[u8] = if index == 0 { b"SIMPLE  " } else { b"XTENSION" };
    if !expect.starts_with(first) {
        return Err(FitsError::Format(if index == 0 {
            "not a FITS file: it does not start with a SIMPLE card".to_string()
        } else {
            format!("HDU {index} at byte {offset}: an extension must start with XTENSION")
        }));
    }
    let blocks = bytes.len() / BLOCK;
    let mut end = None;
    'scan: for b in 0..blocks {
        for c in 0..BLOCK / CARD {
            let at = b * BLOCK + c * CARD;
            if &bytes[at..at + 8] == b"END     " {
                end = Some(at);
                break 'scan;
            }
        }
    }
    let Some(end) = end else {
        if bytes.len() >= MAX_HEADER_BYTES {
            return Err(FitsError::Format(format!(
                "HDU {index} at byte {offset}: no END card in the first {MAX_HEADER_BYTES} bytes of its header"
            )));
        }
        return Ok(Parsed::NeedMore((bytes.len().max(BLOCK) * 2).min(MAX_HEADER_BYTES)));
    };
    let cards = parse_cards(&bytes[..end], index)?;
    let header_len = padded((end + CARD) as u64);
    Ok(Parsed::Hdu(Box::new(describe(cards, index, offset, header_len)?)))
}

/// Parse a header's cards (every card before `END`).
fn parse_cards(bytes: &[u8], hdu: usize) -> Result<Vec<Card>, FitsError> {
    let mut cards: Vec<Card> = Vec::with_capacity(bytes.len() / CARD);
    // A long string being joined: the card's index and its parts so far (as astropy does, every
    // `CONTINUE` card right after a string card is a part, and each part loses one trailing `&`).
    let mut long: Option<(usize, Vec<String>)> = None;
    for (n, raw) in bytes.chunks_exact(CARD).enumerate() {
        // FITS headers are printable ASCII; anything else is refused before the card is sliced
        // by column (slicing UTF-8 at byte offsets would panic inside a multi-byte character).
        if let Some(bad) = raw.iter().position(|b| !(0x20..=0x7e).contains(b)) {
            return Err(FitsError::Format(format!(
                "HDU {hdu}, card {}: byte 0x{:02x} at column {} is not printable ASCII (FITS headers are ASCII)",
                n + 1,
                raw[bad],
                bad + 1
            )));
        }
        let text = std::str::from_utf8(raw).expect("printable ASCII is UTF-8");
        let key = text[..8].trim_end();
        let last_is_string = cards.last().is_some_and(|c| c.kind == ValueKind::String);
        if key == "CONTINUE" && (long.is_some() || last_is_string) {
            if let Some((part, comment)) = string_value(&text[8..]) {
                let at = cards.len() - 1;
                let (_, parts) = long.get_or_insert_with(|| (at, vec![cards[at].value.clone().unwrap_or_default()]));
                parts.push(part);
                if let Some(c) = comment.filter(|c| !c.is_empty()) {
                    let last = &mut cards[at];
                    match &mut last.comment {
                        Some(prev) if !prev.is_empty() => {
                            prev.push(' ');
                            prev.push_str(&c)
                        }
                        _ => last.comment = Some(c),
                    }
                }
                continue;
            }
        }
        join_long(&mut cards, long.take());
        let mut card = parse_card(text);
        if key == "CONTINUE" {
            // A `CONTINUE` with nothing to continue is a card of its own (its string read as a
            // value, as astropy reads it).
            if let Some((s, comment)) = string_value(&text[8..]) {
                card = Card {
                    key: key.to_string(),
                    value: Some(s),
                    comment,
                    kind: ValueKind::String,
                };
            }
        }
        cards.push(card);
    }
    join_long(&mut cards, long.take());
    Ok(cards)
}

/// Join the parts of a long string into its card.
fn join_long(cards: &mut [Card], long: Option<(usize, Vec<String>)>) {
    if let Some((at, parts)) = long {
        let joined: String = parts.iter().map(|p| p.strip_suffix('&').unwrap_or(p)).collect();
        cards[at].value = Some(joined);
    }
}

/// One 80-character card (printable ASCII).
fn parse_card(text: &str) -> Card {
    let key = text[..8].trim_end();
    if key == "HIERARCH" {
        if let Some(eq) = text[8..].find('=') {
            let (value, comment, kind) = value_field(&text[8 + eq + 1..]);
            return Card {
                key: text[8..8 + eq].trim().to_string(),
                value,
                comment,
                kind,
            };
        }
    }
    let commentary = matches!(key, "COMMENT" | "HISTORY" | "") || &text[8..10] != "= ";
    if commentary {
        let body = text[8..].trim_end();
        return Card {
            key: key.to_string(),
            value: Some(body.to_string()),
            comment: None,
            kind: ValueKind::Commentary,
        };
    }
    let (value, comment, kind) = value_field(&text[10..]);
    Card {
        key: key.to_string(),
        value,
        comment,
        kind,
    }
}

/// The value and comment of a value field (what follows `= `).
fn value_field(field: &str) -> (Option<String>, Option<String>, ValueKind) {
    let trimmed = field.trim_start();
    if trimmed.starts_with('\'') {
        return match string_value(field) {
            Some((s, comment)) => (Some(s), comment, ValueKind::String),
            // An unterminated string: astropy reads it as an invalid card.
            None => (Some(field.trim().to_string()), None, ValueKind::Invalid),
        };
    }
    let (value, comment) = match trimmed.find('/') {
        Some(i) => (trimmed[..i].trim(), Some(comment_text(&trimmed[i + 1..]))),
        None => (trimmed.trim(), None),
    };
    if value.is_empty() {
        return (None, comment, ValueKind::Undefined);
    }
    (Some(value.to_string()), comment, classify(value))
}

fn comment_text(s: &str) -> String {
    s.trim().to_string()
}

/// A quoted string at the start of `field` (after blanks): its text (doubled quotes made single,
/// trailing blanks removed) and the comment after it.
fn string_value(field: &str) -> Option<(String, Option<String>)> {
    let s = field.trim_start();
    let body = s.strip_prefix('\'')?;
    let mut out = String::new();
    let mut chars = body.char_indices().peekable();
    let rest = loop {
        let (i, c) = chars.next()?;
        if c == '\'' {
            if let Some((_, '\'')) = chars.peek() {
                chars.next();
                out.push('\'');
                continue;
            }
            break &body[i + 1..];
        }
        out.push(c);
    };
    let out = out.trim_end().to_string();
    let rest = rest.trim_start();
    let comment = rest.strip_prefix('/').map(comment_text);
    Some((out, comment))
}

/// The kind of a non-string value, by its syntax.
fn classify(v: &str) -> ValueKind {
    if v == "T" || v == "F" {
        return ValueKind::Logical;
    }
    let digits = v.strip_prefix(['+', '-']).unwrap_or(v);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return ValueKind::Integer;
    }
    if parse_float(v).is_some() {
        return ValueKind::Float;
    }
    if let Some(inner) = v.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        let parts: Vec<&str> = inner.split(',').collect();
        if parts.len() == 2 && parts.iter().all(|p| parse_float(p.trim()).is_some()) {
            return ValueKind::Complex;
        }
    }
    ValueKind::Invalid
}

/// A FITS real (`D` exponents allowed); None for anything else, including Rust's `inf`/`NaN`
/// spellings, which are not FITS.
pub fn parse_float(v: &str) -> Option<f64> {
    let ok = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'E' | b'e' | b'D' | b'd'))
        && v.bytes().any(|b| b.is_ascii_digit());
    if !ok {
        return None;
    }
    v.replace(['D', 'd'], "E").parse::<f64>().ok()
}

/// Build the HDU from its cards: kind, axes, data size.
fn describe(cards: Vec<Card>, index: usize, offset: u64, header_len: u64) -> Result<Hdu, FitsError> {
    let here = || format!("HDU {index} at byte {offset}");
    let first = cards
        .first()
        .ok_or_else(|| FitsError::Format(format!("{}: the header is empty", here())))?;
    let value = |key: &str| cards.iter().find(|c| c.key == key).and_then(|c| c.value.as_deref());
    let int = |key: &str| -> Result<Option<i64>, FitsError> {
        match value(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .map(Some)
                .map_err(|_| FitsError::Format(format!("{}: {key} = {v:?} is not an integer", here()))),
        }
    };
    let required = |key: &str| -> Result<i64, FitsError> {
        int(key)?.ok_or_else(|| FitsError::Format(format!("{}: the required card {key} is missing", here())))
    };
    let xtension = if index == 0 {
        if first.key != "SIMPLE" {
            return Err(FitsError::Format(format!(
                "not a FITS file: the first card is {:?}, not SIMPLE",
                first.key
            )));
        }
        None
    } else {
        if first.key != "XTENSION" {
            return Err(FitsError::Format(format!(
                "{}: an extension must start with XTENSION, found {:?}",
                here(),
                first.key
            )));
        }
        Some(first.value.clone().unwrap_or_default().trim().to_ascii_uppercase())
    };
    let bitpix = required("BITPIX")?;
    if ![8, 16, 32, 64, -32, -64].contains(&bitpix) {
        return Err(FitsError::Format(format!(
            "{}: BITPIX = {bitpix} is not a FITS value",
            here()
        )));
    }
    let naxis = required("NAXIS")?;
    if !(0..=999).contains(&naxis) {
        return Err(FitsError::Format(format!(
            "{}: NAXIS = {naxis} is out of range",
            here()
        )));
    }
    let mut naxes = Vec::with_capacity(naxis as usize);
    for i in 1..=naxis {
        let n = required(&format!("NAXIS{i}"))?;
        if n < 0 {
            return Err(FitsError::Format(format!("{}: NAXIS{i} = {n} is negative", here())));
        }
        naxes.push(n);
    }
    let logical = |key: &str| value(key) == Some("T");
    let groups = index == 0 && logical("GROUPS") && naxes.first() == Some(&0);
    let (default_pcount, default_gcount) = (0, 1);
    let pcount = int("PCOUNT")?.unwrap_or(default_pcount);
    let gcount = int("GCOUNT")?.unwrap_or(default_gcount);
    if pcount < 0 || gcount < 0 {
        return Err(FitsError::Format(format!(
            "{}: PCOUNT = {pcount}, GCOUNT = {gcount}: negative",
            here()
        )));
    }
    let kind = match xtension.as_deref() {
        None if groups => HduKind::Groups,
        None => HduKind::Primary,
        Some("IMAGE") => HduKind::Image,
        Some("BINTABLE") | Some("A3DTABLE") if logical("ZIMAGE") => HduKind::CompressedImage,
        Some("BINTABLE") | Some("A3DTABLE") => HduKind::BinTable,
        Some("TABLE") => HduKind::Table,
        Some(other) => HduKind::Other(other.to_string()),
    };
    // FITS 4.0 eq. 2 (and eq. 4 for random groups, where NAXIS1 = 0 is not an axis).
    let data_size = if naxis == 0 {
        0
    } else {
        let axes = if groups { &naxes[1..] } else { &naxes[..] };
        let overflow = || FitsError::Format(format!("{}: the data size overflows", here()));
        let elements = axes
            .iter()
            .try_fold(1u64, |acc, &n| acc.checked_mul(n as u64))
            .ok_or_else(overflow)?;
        let bits = (bitpix.unsigned_abs())
            .checked_mul(gcount as u64)
            .and_then(|b| b.checked_mul((pcount as u64).checked_add(elements)?))
            .ok_or_else(overflow)?;
        bits / 8
    };
    let (zbitpix, znaxes) = if kind == HduKind::CompressedImage {
        let zbitpix = int("ZBITPIX")?;
        let znaxes = match int("ZNAXIS")? {
            Some(n) if (0..=999).contains(&n) => Some(
                (1..=n)
                    .map(|i| int(&format!("ZNAXIS{i}")).map(|v| v.unwrap_or(0)))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            _ => None,
        };
        (zbitpix, znaxes)
    } else {
        (None, None)
    };
    let extname = cards
        .iter()
        .find(|c| c.key == "EXTNAME" && c.kind == ValueKind::String)
        .and_then(|c| c.value.clone());
    Ok(Hdu {
        index,
        kind,
        extname,
        bitpix,
        naxis,
        naxes,
        pcount,
        gcount,
        header_offset: offset,
        data_offset: offset + header_len,
        data_size,
        zbitpix,
        znaxes,
        cards,
    })
}

/// True when the bytes at an HDU boundary start an extension (`XTENSION=`); anything else after
/// the last HDU (zero padding, junk) ends the file, as in astropy.
pub fn starts_extension(bytes: &[u8]) -> bool {
    bytes.starts_with(b"XTENSION=")
}

/// Every HDU of a whole file (or stream) read in order: for gzipped files, which cannot be read
/// by range. Data is skipped, not kept: memory stays at one header. Errors are returned with the
/// HDUs read before them.
pub fn scan_reader<R: std::io::Read>(mut r: R) -> (Vec<Hdu>, Option<FitsError>) {
    let mut hdus = Vec::new();
    let mut offset = 0u64;
    loop {
        let mut buf = Vec::new();
        // Read block by block until the header is complete.
        let parsed = loop {
            let start = buf.len();
            buf.resize(start + BLOCK, 0);
            let n = match read_full(&mut r, &mut buf[start..]) {
                Ok(n) => n,
                Err(e) => return (hdus, Some(FitsError::Gzip(e.to_string()))),
            };
            buf.truncate(start + n);
            if start == 0 && !hdus.is_empty() && !starts_extension(&buf) {
                // The end of the file, or padding or junk after the last HDU: the file ends
                // there, as in astropy.
                return (hdus, None);
            }
            if n < BLOCK {
                let what = if hdus.is_empty() && buf.is_empty() {
                    "the file is empty".to_string()
                } else {
                    format!("HDU {} at byte {offset}: the file ends inside the header", hdus.len())
                };
                return (hdus, Some(FitsError::Format(what)));
            }
            match parse_hdu(&buf, hdus.len(), offset) {
                Ok(Parsed::Hdu(h)) => break h,
                Ok(Parsed::NeedMore(_)) => continue,
                Err(e) => return (hdus, Some(e)),
            }
        };
        let skip = parsed.next_offset() - offset - buf.len() as u64;
        offset = parsed.next_offset();
        hdus.push(*parsed);
        match std::io::copy(&mut std::io::Read::take(&mut r, skip), &mut std::io::sink()) {
            Ok(n) if n == skip => {}
            Ok(_) => {
                // Truncated data: the HDU is listed (as astropy lists it), the scan ends.
                return (hdus, None);
            }
            Err(e) => return (hdus, Some(FitsError::Gzip(e.to_string()))),
        }
    }
}

fn read_full<R: std::io::Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A real as the FITS fixed format writes it: the shortest text that reads back to the same
/// number, with a decimal point and an upper-case exponent (`1.0E-5`, `-10.5`).
pub fn fits_real(v: f64) -> String {
    let s = format!("{v:?}");
    let (mantissa, exp) = match s.split_once('e') {
        Some((m, e)) => (m.to_string(), Some(e.to_string())),
        None => (s, None),
    };
    let mantissa = if mantissa.contains('.') || !mantissa.bytes().any(|b| b.is_ascii_digit()) {
        mantissa
    } else {
        format!("{mantissa}.0")
    };
    match exp {
        Some(e) => format!("{mantissa}E{e}"),
        None => mantissa,
    }
}

/// The header of a sub-image cut out of an image HDU: `raw` is the HDU's header as stored
/// (every card up to `END`). The result is a primary header (`SIMPLE` instead of `XTENSION`),
/// with NAXIS1/NAXIS2 set to the section's size, CRPIX1/CRPIX2 shifted by the section's origin
/// (as astropy's `Cutout2D` shifts its WCS), and the cards that no longer hold dropped
/// (`PCOUNT`, `GCOUNT` of the extension, `CHECKSUM`, `DATASUM`). Every other card is copied as
/// written.
pub fn section_header(raw: &[u8], width: u64, height: u64, origin: (u64, u64)) -> Result<Vec<u8>, FitsError> {
    let mut out = Vec::with_capacity(raw.len());
    let card = |out: &mut Vec<u8>, text: String| {
        let mut t = text;
        t.truncate(CARD);
        out.extend_from_slice(format!("{t:<80}").as_bytes());
    };
    let mut ended = false;
    for (n, c) in raw.chunks_exact(CARD).enumerate() {
        if !c.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err(FitsError::Format(format!("card {} is not printable ASCII", n + 1)));
        }
        let key = std::str::from_utf8(&c[..8]).expect("ASCII").trim_end();
        let value = || {
            let text = std::str::from_utf8(c).expect("ASCII");
            value_field(&text[10..]).0.unwrap_or_default()
        };
        match key {
            "XTENSION" if n == 0 => card(
                &mut out,
                format!("{:<8}= {:>20} / {}", "SIMPLE", "T", "conforms to FITS standard"),
            ),
            "NAXIS1" => card(&mut out, format!("{key:<8}= {width:>20}")),
            "NAXIS2" => card(&mut out, format!("{key:<8}= {height:>20}")),
            "CRPIX1" | "CRPIX2" => {
                let v = value();
                let old = parse_float(&v).ok_or_else(|| FitsError::Format(format!("{key} = {v:?} is not a number")))?;
                let shift = if key == "CRPIX1" { origin.0 } else { origin.1 } as f64;
                card(&mut out, format!("{key:<8}= {:>20}", fits_real(old - shift)))
            }
            "PCOUNT" | "GCOUNT" | "CHECKSUM" | "DATASUM" => {}
            "END" => {
                ended = true;
                break;
            }
            _ => out.extend_from_slice(c),
        }
    }
    if !ended {
        return Err(FitsError::Format("the header has no END card".into()));
    }
    card(&mut out, "END".to_string());
    out.resize(padded(out.len() as u64) as usize, b' ');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(cards: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in cards {
            assert!(c.len() <= 80, "{c}");
            out.extend_from_slice(format!("{c:<80}").as_bytes());
        }
        out.extend_from_slice(format!("{:<80}", "END").as_bytes());
        out.resize(padded(out.len() as u64) as usize, b' ');
        out
    }

    fn hdu(bytes: &[u8], index: usize) -> Hdu {
        match parse_hdu(bytes, index, 0).unwrap() {
            Parsed::Hdu(h) => *h,
            Parsed::NeedMore(n) => panic!("needs {n}"),
        }
    }

    #[test]
    fn cards_as_written() {
        let h = hdu(
            &header(&[
                "SIMPLE  =                    T / conforms",
                "BITPIX  =                  -32",
                "NAXIS   =                    2",
                "NAXIS1  =                  100",
                "NAXIS2  =                   50",
                "EXPTIME =               1.5D2 / seconds",
                "OBJECT  = 'M31 ''core''   '   / name / with slash",
                "EMPTY   =",
                "CPLX    = (1.0, -2)",
                "COMMENT   a comment card   ",
                "HISTORY step 1",
                "",
                "HIERARCH ESO DET CHIP NAME = 'CCD-44' / chip",
                "NOEQUALS just text",
            ]),
            0,
        );
        assert_eq!(h.kind, HduKind::Primary);
        assert_eq!(h.naxes, vec![100, 50]);
        assert_eq!(h.data_offset, 2880);
        assert_eq!(h.data_size, 100 * 50 * 4);
        let c = |k: &str| h.card(k).unwrap().clone();
        assert_eq!(c("EXPTIME").value.as_deref(), Some("1.5D2"));
        assert_eq!(c("EXPTIME").kind, ValueKind::Float);
        assert_eq!(c("EXPTIME").comment.as_deref(), Some("seconds"));
        assert_eq!(c("OBJECT").value.as_deref(), Some("M31 'core'"));
        assert_eq!(c("OBJECT").comment.as_deref(), Some("name / with slash"));
        assert_eq!(c("EMPTY").kind, ValueKind::Undefined);
        assert_eq!(c("EMPTY").value, None);
        assert_eq!(c("CPLX").kind, ValueKind::Complex);
        assert_eq!(c("COMMENT").value.as_deref(), Some("  a comment card"));
        assert_eq!(c("HISTORY").value.as_deref(), Some("step 1"));
        assert_eq!(c("").kind, ValueKind::Commentary);
        assert_eq!(c("ESO DET CHIP NAME").value.as_deref(), Some("CCD-44"));
        assert_eq!(c("NOEQUALS").kind, ValueKind::Commentary);
        assert_eq!(c("SIMPLE").kind, ValueKind::Logical);
    }

    #[test]
    fn continue_joins_long_strings() {
        let h = hdu(
            &header(&[
                "SIMPLE  =                    T",
                "BITPIX  =                    8",
                "NAXIS   =                    0",
                "LONG    = 'first part &'  / c1",
                "CONTINUE  'second part&' /",
                "CONTINUE  'end&&'  / c3",
                "CONTINUE  'and more'",
                "NUM     =                    5",
                "CONTINUE  'orphan'",
            ]),
            0,
        );
        // As astropy reads them: every CONTINUE after a string is a part, each part loses one
        // trailing `&`, empty comments are skipped.
        let long = h.card("LONG").unwrap();
        assert_eq!(long.value.as_deref(), Some("first part second partend&and more"));
        assert_eq!(long.comment.as_deref(), Some("c1 c3"));
        let orphan = h.card("CONTINUE").unwrap();
        assert_eq!(
            (orphan.value.as_deref(), orphan.kind),
            (Some("orphan"), ValueKind::String)
        );
        assert_eq!(h.data_size, 0);
    }

    #[test]
    fn kinds_and_sizes() {
        let groups = hdu(
            &header(&[
                "SIMPLE  =                    T",
                "BITPIX  =                  -32",
                "NAXIS   =                    3",
                "NAXIS1  =                    0",
                "NAXIS2  =                    4",
                "NAXIS3  =                    5",
                "GROUPS  =                    T",
                "PCOUNT  =                    2",
                "GCOUNT  =                    7",
            ]),
            0,
        );
        assert_eq!(groups.kind, HduKind::Groups);
        assert_eq!(groups.data_size, 4 * 7 * (2 + 20));
        let table = hdu(
            &header(&[
                "XTENSION= 'BINTABLE'",
                "BITPIX  =                    8",
                "NAXIS   =                    2",
                "NAXIS1  =                   12",
                "NAXIS2  =                   10",
                "PCOUNT  =                  500",
                "GCOUNT  =                    1",
                "ZIMAGE  =                    T",
                "ZBITPIX =                   16",
                "ZNAXIS  =                    2",
                "ZNAXIS1 =                 1000",
                "ZNAXIS2 =                  800",
                "EXTNAME = 'SCI     '",
            ]),
            1,
        );
        assert_eq!(table.kind, HduKind::CompressedImage);
        assert_eq!(table.data_size, 120 + 500);
        assert_eq!(table.zbitpix, Some(16));
        assert_eq!(table.znaxes, Some(vec![1000, 800]));
        assert_eq!(table.extname.as_deref(), Some("SCI"));
        assert_eq!(table.next_offset(), 2880 + 2880);
    }

    #[test]
    fn long_headers_ask_for_more() {
        let mut cards = vec![
            "SIMPLE  =                    T".to_string(),
            "BITPIX  =                    8".into(),
            "NAXIS   =                    0".into(),
        ];
        for i in 0..100 {
            cards.push(format!("KEY{i:<5}= {i}"));
        }
        let refs: Vec<&str> = cards.iter().map(String::as_str).collect();
        let bytes = header(&refs);
        assert_eq!(bytes.len(), 3 * BLOCK);
        match parse_hdu(&bytes[..BLOCK + 100], 0, 0).unwrap() {
            Parsed::NeedMore(n) => assert!(n >= 2 * BLOCK),
            other => panic!("{other:?}"),
        }
        assert_eq!(hdu(&bytes, 0).cards.len(), 103);
    }

    #[test]
    fn bad_headers_are_errors_not_panics() {
        let mut bytes = header(&[
            "SIMPLE  =                    T",
            "BITPIX  =                    8",
            "NAXIS   = 0",
        ]);
        let e = |b: &[u8], i| parse_hdu(b, i, 0).unwrap_err().to_string();
        assert!(e(&bytes, 1).contains("XTENSION"));
        bytes[80 + 20] = 0xe9;
        assert!(e(&bytes, 0).contains("not printable ASCII"), "{}", e(&bytes, 0));
        let no_bitpix = header(&["SIMPLE  =                    T", "NAXIS   =                    0"]);
        assert!(e(&no_bitpix, 0).contains("BITPIX"));
        let bad_axis = header(&[
            "SIMPLE  =                    T",
            "BITPIX  =                    8",
            "NAXIS   =                    1",
            "NAXIS1  = 'x'",
        ]);
        assert!(e(&bad_axis, 0).contains("NAXIS1"));
        let huge = header(&[
            "SIMPLE  =                    T",
            "BITPIX  =                  -64",
            "NAXIS   =                    3",
            "NAXIS1  =  9000000000000000000",
            "NAXIS2  =  9000000000000000000",
            "NAXIS3  =                    9",
        ]);
        assert!(e(&huge, 0).contains("overflows"));
        for junk in [&b""[..], &[0u8; 10][..], &[b'x'; 2880][..], &[0xffu8; 5760][..]] {
            let _ = parse_hdu(junk, 0, 0);
            let _ = scan_reader(junk);
        }
    }

    #[test]
    fn section_headers_shift_crpix_and_become_primary() {
        let raw = header(&[
            "XTENSION= 'IMAGE   '",
            "BITPIX  =                  -32",
            "NAXIS   =                    2",
            "NAXIS1  =                 1000",
            "NAXIS2  =                  800",
            "PCOUNT  =                    0",
            "GCOUNT  =                    1",
            "CRPIX1  =                500.5 / ref",
            "CRPIX2  =               400.25",
            "CHECKSUM= 'abc'",
            "LONG    = 'a&'",
            "CONTINUE  'b'",
        ]);
        let out = section_header(&raw, 30, 20, (100, 7)).unwrap();
        let h = hdu(&out, 0);
        assert_eq!(h.kind, HduKind::Primary);
        assert_eq!(h.naxes, vec![30, 20]);
        assert_eq!(h.value("CRPIX1"), Some("400.5"));
        assert_eq!(h.value("CRPIX2"), Some("393.25"));
        assert_eq!(h.value("LONG"), Some("ab"));
        for gone in ["PCOUNT", "GCOUNT", "CHECKSUM", "XTENSION"] {
            assert!(h.card(gone).is_none(), "{gone}");
        }
        assert_eq!(h.data_size, 30 * 20 * 4);
        assert!(section_header(&raw[..160], 1, 1, (0, 0)).is_err());
        assert_eq!(fits_real(1e-5), "1.0E-5");
        assert_eq!(fits_real(-10.5), "-10.5");
        assert_eq!(fits_real(3.0), "3.0");
        assert_eq!(fits_real(1.5e300), "1.5E300");
    }

    #[test]
    fn scan_reader_walks_every_hdu() {
        let mut file = header(&[
            "SIMPLE  =                    T",
            "BITPIX  =                   16",
            "NAXIS   =                    2",
            "NAXIS1  =                   10",
            "NAXIS2  =                   10",
            "EXTEND  =                    T",
        ]);
        file.resize(file.len() + BLOCK, 0);
        file.extend(header(&[
            "XTENSION= 'IMAGE   '",
            "BITPIX  =                  -32",
            "NAXIS   =                    1",
            "NAXIS1  =                 1000",
            "PCOUNT  =                    0",
            "GCOUNT  =                    1",
        ]));
        file.resize(file.len() + 2 * BLOCK, 0);
        let (hdus, err) = scan_reader(&file[..]);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(hdus.len(), 2);
        assert_eq!(hdus[1].header_offset, 2 * BLOCK as u64);
        assert_eq!(hdus[1].kind, HduKind::Image);
        // Junk after the last HDU ends the file; a header cut short is an error.
        let mut junk = file.clone();
        junk.extend_from_slice(&[0u8; 100]);
        assert_eq!(scan_reader(&junk[..]).0.len(), 2);
        let (hdus, err) = scan_reader(&file[..2 * BLOCK + 100]);
        assert_eq!(hdus.len(), 1);
        assert!(err.unwrap().to_string().contains("ends inside the header"));
    }
}
