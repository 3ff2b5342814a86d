//! Validation of MQTT 5 property sections.
//!
//! mqttbytes reads properties with a cursor that may run past the end of the
//! property section, accepts duplicates, does not know which properties belong
//! to which packet and checks no values. [`walk`] does all that before the
//! packet is handed to mqttbytes, so what mqttbytes then reads is exactly the
//! property section, already known to be valid.

use super::error::DecodeError;
use super::frame::Reader;

/// Where a property section sits: each allows its own set of properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Connect,
    Will,
    Publish,
    ConnAck,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Byte,
    U16,
    U32,
    Varint,
    Str,
    Bin,
    Pair,
}

const USER_PROPERTY: u8 = 38;
const SUBSCRIPTION_ID: u8 = 11;

fn ty(id: u8) -> Option<Ty> {
    Some(match id {
        1 | 23 | 25 | 36 | 37 | 40 | 41 | 42 => Ty::Byte,
        19 | 33 | 34 | 35 => Ty::U16,
        2 | 17 | 24 | 39 => Ty::U32,
        SUBSCRIPTION_ID => Ty::Varint,
        3 | 8 | 18 | 21 | 26 | 28 | 31 => Ty::Str,
        9 | 22 => Ty::Bin,
        USER_PROPERTY => Ty::Pair,
        _ => return None,
    })
}

fn allowed(kind: Kind, id: u8) -> bool {
    let ids: &[u8] = match kind {
        Kind::Connect => &[17, 21, 22, 23, 25, 33, 34, 39],
        Kind::Will => &[1, 2, 3, 8, 9, 24],
        Kind::Publish => &[1, 2, 3, 8, 9, 11, 35],
        Kind::ConnAck => &[17, 18, 19, 21, 22, 26, 28, 31, 33, 34, 36, 37, 39, 40, 41, 42],
        Kind::Ack | Kind::SubAck | Kind::UnsubAck => &[31],
        Kind::Subscribe => &[11],
        Kind::Unsubscribe => &[],
        Kind::Disconnect => &[17, 28, 31],
        Kind::Auth => &[21, 22, 31],
    };
    id == USER_PROPERTY || ids.contains(&id)
}

/// What [`walk`] found that callers need beyond validity.
#[derive(Debug, Default)]
pub(crate) struct Section<'a> {
    /// User properties, in order.
    pub user_properties: Vec<(&'a str, &'a str)>,
    /// Authentication method (0x15).
    pub auth_method: Option<&'a str>,
    /// Authentication data (0x16).
    pub auth_data: Option<&'a [u8]>,
    /// Reason string (0x1F).
    pub reason_string: Option<&'a str>,
}

/// Reads and validates a property section (variable byte length, then the
/// properties) of a packet of `kind`, leaving `r` just after it.
///
/// Malformed: length past the end, a property cut by the section end, an
/// identifier unknown or not allowed in `kind`, bad UTF-8 or U+0000.
/// Protocol error: a property other than user property (or subscription
/// identifier in PUBLISH) given twice, or a value the protocol forbids (0 for
/// receive maximum, maximum packet size, topic alias or subscription
/// identifier; other than 0/1 for flags; maximum QoS other than 0/1).
pub(crate) fn walk<'a>(r: &mut Reader<'a>, kind: Kind) -> Result<Section<'a>, DecodeError> {
    let len = r.varint()?;
    let mut p = Reader::new(r.bytes(len)?);
    let mut seen = 0u64;
    let mut section = Section::default();
    while !p.is_empty() {
        let id = p.u8()?;
        let Some(t) = ty(id).filter(|_| allowed(kind, id)) else {
            return Err(DecodeError::malformed(format!(
                "property 0x{id:02x} not allowed in {kind:?}"
            )));
        };
        let repeatable = id == USER_PROPERTY || (id == SUBSCRIPTION_ID && kind == Kind::Publish);
        if !repeatable && seen & (1u64 << id) != 0 {
            return Err(DecodeError::protocol(format!("property 0x{id:02x} given twice")));
        }
        seen |= 1u64 << id;
        let value = match t {
            Ty::Byte => usize::from(p.u8()?),
            Ty::U16 => usize::from(p.u16()?),
            Ty::U32 => p.u32()? as usize,
            Ty::Varint => p.varint()?,
            Ty::Str => {
                let v = p.str()?;
                match id {
                    21 => section.auth_method = Some(v),
                    31 => section.reason_string = Some(v),
                    _ => {}
                }
                continue;
            }
            Ty::Bin => {
                let v = p.bin()?;
                if id == 22 {
                    section.auth_data = Some(v);
                }
                continue;
            }
            Ty::Pair => {
                let k = p.str()?;
                let v = p.str()?;
                section.user_properties.push((k, v));
                continue;
            }
        };
        check_value(id, value)?;
    }
    Ok(section)
}

fn check_value(id: u8, value: usize) -> Result<(), DecodeError> {
    let bad = match id {
        // payload format, request problem / response information, maximum
        // QoS, retain, wildcard, subscription identifier and shared
        // subscription available
        1 | 23 | 25 | 36 | 37 | 40 | 41 | 42 => value > 1,
        // subscription identifier, receive maximum, topic alias, maximum packet size
        11 | 33 | 35 | 39 => value == 0,
        _ => false,
    };
    if bad {
        return Err(DecodeError::protocol(format!(
            "property 0x{id:02x} with invalid value {value}"
        )));
    }
    Ok(())
}
