//! AUTH (MQTT 5, packet type 15), which mqttbytes 0.6 does not know: read
//! and written here.
//!
//! Layout (MQTT 5 section 3.15): a reason code (0x00 success, 0x18 continue
//! authentication, 0x19 re-authenticate) and a property section with the
//! authentication method, authentication data, reason string and user
//! properties. Remaining length 0 means reason 0x00 without properties.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::frame::{check_len, check_pairs, write_varint, Reader, MAX_REMAINING};
use super::packet::Auth;
use super::props::{self, Kind};

/// The reason codes an AUTH may carry.
fn valid_reason(code: u8) -> bool {
    matches!(code, 0x00 | 0x18 | 0x19)
}

/// Decodes an AUTH body of `remaining` bytes.
pub(crate) fn decode(remaining: usize, body: &[u8]) -> Result<Auth, DecodeError> {
    if remaining == 0 {
        return Ok(Auth::default());
    }
    let mut r = Reader::new(body);
    let reason = r.u8()?;
    if !valid_reason(reason) {
        return Err(DecodeError::malformed(format!("AUTH reason code 0x{reason:02x}")));
    }
    let section = if r.is_empty() {
        props::Section::default()
    } else {
        props::walk(&mut r, Kind::Auth)?
    };
    if !r.is_empty() {
        return Err(DecodeError::malformed("bytes after the property section"));
    }
    if section.auth_method.is_none() && reason != 0x00 {
        return Err(DecodeError::protocol("AUTH without authentication method"));
    }
    Ok(Auth {
        reason,
        method: section.auth_method.map(str::to_owned),
        data: section.auth_data.map(Bytes::copy_from_slice),
        reason_string: section.reason_string.map(str::to_owned),
        user_properties: section
            .user_properties
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    })
}

fn put_bin(out: &mut BytesMut, id: u8, v: &[u8]) {
    out.put_u8(id);
    // check_len has bounded it to u16.
    out.put_u16(v.len() as u16);
    out.extend_from_slice(v);
}

/// Appends an AUTH.
pub(crate) fn encode(a: &Auth, out: &mut BytesMut) -> Result<(), EncodeError> {
    if !valid_reason(a.reason) {
        return Err(EncodeError::invalid(format!(
            "AUTH reason code 0x{:02x}",
            a.reason
        )));
    }
    if a.method.is_none() && a.reason != 0x00 {
        return Err(EncodeError::invalid("AUTH without authentication method"));
    }
    let mut props = BytesMut::new();
    if let Some(m) = &a.method {
        check_len(m.as_bytes(), "authentication method")?;
        put_bin(&mut props, 0x15, m.as_bytes());
    }
    if let Some(d) = &a.data {
        check_len(d, "authentication data")?;
        put_bin(&mut props, 0x16, d);
    }
    if let Some(s) = &a.reason_string {
        check_len(s.as_bytes(), "reason string")?;
        put_bin(&mut props, 0x1F, s.as_bytes());
    }
    check_pairs(&a.user_properties)?;
    for (k, v) in &a.user_properties {
        props.put_u8(0x26);
        props.put_u16(k.len() as u16);
        props.extend_from_slice(k.as_bytes());
        props.put_u16(v.len() as u16);
        props.extend_from_slice(v.as_bytes());
    }
    if a.reason == 0x00 && props.is_empty() {
        out.extend_from_slice(&[0xF0, 0]);
        return Ok(());
    }
    let mut body = BytesMut::with_capacity(props.len() + 5);
    body.put_u8(a.reason);
    write_varint(&mut body, props.len());
    body.extend_from_slice(&props);
    if body.len() > MAX_REMAINING {
        return Err(EncodeError::TooLarge {
            size: body.len(),
            max: MAX_REMAINING,
        });
    }
    out.put_u8(0xF0);
    write_varint(out, body.len());
    out.extend_from_slice(&body);
    Ok(())
}
