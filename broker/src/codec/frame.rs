//! Framing (fixed header, remaining length, fixed-header flags) and a small
//! bounds-checked reader used to validate what mqttbytes does not.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::props::{self, Kind};

/// Largest remaining length a 4-byte variable byte integer can carry.
pub(crate) const MAX_REMAINING: usize = 268_435_455;

/// Largest whole packet MQTT can express (fixed header byte, 4 length bytes).
pub(crate) const MAX_PACKET: usize = MAX_REMAINING + 5;

/// A parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// First byte: packet type and flags.
    pub byte1: u8,
    /// Length of the fixed header (2 to 5).
    pub header_len: usize,
    /// Remaining length: variable header plus payload.
    pub remaining: usize,
}

impl Header {
    /// Size of the whole packet.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining
    }

    /// Packet type (upper nibble of the first byte).
    pub fn packet_type(&self) -> u8 {
        self.byte1 >> 4
    }

    /// The header in mqttbytes' form, for its `read` functions.
    pub fn fixed(&self) -> mqttbytes::FixedHeader {
        mqttbytes::FixedHeader::new(self.byte1, self.header_len - 1, self.remaining)
    }

    /// True when the remaining length used more bytes than needed.
    pub fn non_minimal(&self) -> bool {
        self.header_len - 1 != varint_len(self.remaining)
    }
}

/// Parses the fixed header at the start of `buf`; `Ok(None)` when more bytes
/// are needed to know the remaining length.
pub(crate) fn parse_header(buf: &[u8]) -> Result<Option<Header>, DecodeError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(Header {
                byte1,
                header_len: 2 + i,
                remaining,
            }));
        }
    }
    Err(DecodeError::malformed("remaining length longer than 4 bytes"))
}

/// Checks the flag bits of the first byte of a packet: PUBREL, SUBSCRIBE and
/// UNSUBSCRIBE carry 0b0010, PUBLISH carries DUP/QoS/RETAIN (QoS 3 and DUP with
/// QoS 0 are malformed), every other type 0. Packet type 0 is reserved.
pub(crate) fn check_flags(byte1: u8) -> Result<(), DecodeError> {
    let flags = byte1 & 0x0F;
    match byte1 >> 4 {
        0 => Err(DecodeError::malformed("reserved packet type 0")),
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                Err(DecodeError::malformed("PUBLISH with QoS 3"))
            } else if qos == 0 && flags & 0b1000 != 0 {
                Err(DecodeError::malformed("PUBLISH with DUP set and QoS 0"))
            } else {
                Ok(())
            }
        }
        6 | 8 | 10 if flags != 0b0010 => Err(DecodeError::malformed(format!(
            "packet type {} with flags {flags:#06b}",
            byte1 >> 4
        ))),
        6 | 8 | 10 => Ok(()),
        t if flags != 0 => Err(DecodeError::malformed(format!(
            "packet type {t} with flags {flags:#06b}"
        ))),
        _ => Ok(()),
    }
}

/// Takes one whole packet off the front of `buf`. `Ok(None)` (with `buf`
/// untouched) when it is not all there yet. A packet larger than `max` is
/// refused as soon as its fixed header is complete.
pub(crate) fn take(
    buf: &mut BytesMut,
    max: usize,
    minimal: bool,
) -> Result<Option<(Header, Bytes)>, DecodeError> {
    let Some(header) = parse_header(buf)? else {
        return Ok(None);
    };
    if minimal && header.non_minimal() {
        return Err(DecodeError::malformed("remaining length not minimally encoded"));
    }
    let size = header.frame_len();
    if size > max {
        return Err(DecodeError::TooLarge { size, max });
    }
    if buf.len() < size {
        return Ok(None);
    }
    Ok(Some((header, buf.split_to(size).freeze())))
}

/// Builds a frame from a first byte and a body, for handing a rewritten packet
/// to mqttbytes. `body` comes from a valid frame, so its length fits.
pub(crate) fn rebuild(byte1: u8, body: &[u8]) -> (Header, Bytes) {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(byte1);
    let n = write_varint(&mut out, body.len());
    out.extend_from_slice(body);
    (
        Header {
            byte1,
            header_len: 1 + n,
            remaining: body.len(),
        },
        out.freeze(),
    )
}

/// Number of bytes of a variable byte integer.
pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a variable byte integer (the caller keeps `v <= MAX_REMAINING`).
pub(crate) fn write_varint(out: &mut BytesMut, mut v: usize) -> usize {
    let mut n = 0;
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        n += 1;
        if v == 0 || n == 4 {
            return n;
        }
    }
}

/// Fails when a string or binary field is too long for its 2-byte length
/// prefix (mqttbytes would silently truncate the length).
pub(crate) fn check_len(field: &[u8], what: &str) -> Result<(), EncodeError> {
    if field.len() > usize::from(u16::MAX) {
        return Err(EncodeError::invalid(format!(
            "{what} is {} bytes (max 65535)",
            field.len()
        )));
    }
    Ok(())
}

/// [`check_len`] for each key and value of user properties.
pub(crate) fn check_pairs(pairs: &[(String, String)]) -> Result<(), EncodeError> {
    for (k, v) in pairs {
        check_len(k.as_bytes(), "user property name")?;
        check_len(v.as_bytes(), "user property value")?;
    }
    Ok(())
}

/// Strings decoded by mqttbytes must still not contain U+0000 (MQTT-1.5.4-2).
pub(crate) fn no_nul(s: &str, what: &str) -> Result<(), DecodeError> {
    if s.contains('\0') {
        return Err(DecodeError::malformed(format!("{what} contains U+0000")));
    }
    Ok(())
}

/// A bounds-checked cursor over a packet body. Every read past the end is a
/// malformed packet, never a panic.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Bytes read so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(DecodeError::malformed("packet body too short for its contents"));
        };
        let s = self.buf.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?.first().copied().unwrap_or_default())
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A variable byte integer (at most 4 bytes, minimally encoded).
    pub fn varint(&mut self) -> Result<usize, DecodeError> {
        let mut v = 0usize;
        for i in 0..4 {
            let b = self.u8()?;
            v |= usize::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                if i + 1 != varint_len(v) {
                    return Err(DecodeError::malformed(
                        "variable byte integer not minimally encoded",
                    ));
                }
                return Ok(v);
            }
        }
        Err(DecodeError::malformed(
            "variable byte integer longer than 4 bytes",
        ))
    }

    /// Binary data: 2-byte length and the bytes.
    pub fn bin(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }

    /// A UTF-8 string: valid UTF-8 without U+0000.
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let s = std::str::from_utf8(self.bin()?)
            .map_err(|_| DecodeError::malformed("string is not valid UTF-8"))?;
        no_nul(s, "string")?;
        Ok(s)
    }
}

/// Checks what mqttbytes does not in a SUBSCRIBE body: packet id 0, reserved
/// subscription option bits (2-7 in 3.1.1, 6-7 in 5.0), QoS 3, retain
/// handling 3, no topic filter at all; for MQTT 5 also the property section.
pub(crate) fn check_subscribe(body: &[u8], v5: bool) -> Result<(), DecodeError> {
    let mut r = Reader::new(body);
    if r.u16()? == 0 {
        return Err(DecodeError::malformed("packet identifier 0"));
    }
    if v5 {
        props::walk(&mut r, Kind::Subscribe)?;
    }
    let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
    let mut filters = 0;
    while !r.is_empty() {
        r.str()?;
        let options = r.u8()?;
        if options & reserved != 0 {
            return Err(DecodeError::malformed("reserved subscription option bits set"));
        }
        if options & 0b11 == 3 {
            return Err(DecodeError::malformed("subscription with QoS 3"));
        }
        if (options >> 4) & 0b11 == 3 {
            return Err(DecodeError::protocol("retain handling 3"));
        }
        filters += 1;
    }
    if filters == 0 {
        return Err(DecodeError::protocol("SUBSCRIBE without topic filters"));
    }
    Ok(())
}
