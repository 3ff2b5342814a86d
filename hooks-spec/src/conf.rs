//! The flat configuration file format shared by the broker and its plugins.
//!
//! The format follows EMQX's flat `.conf` files:
//!
//! ```text
//! ## The node's name.
//! node.name = postbox@127.0.0.1
//!
//! # A value may contain `=` and may be a JSON object.
//! backend.pgsql.options = {"application_name": "postbox"}
//! ```
//!
//! - one `key = value` per line, split at the first `=`; whitespace around the
//!   key and the value is trimmed, so the value runs to the end of the line
//!   (there are no trailing comments);
//! - lines whose first non-blank character is `#` (including `##`) are
//!   comments, blank lines are ignored;
//! - keys are made of `A-Z a-z 0-9 _ . -`;
//! - a key may appear once; a second occurrence is an error naming both lines.
//!
//! [`ConfFile`] holds the entries in file order. The typed getters
//! ([`ConfFile::parse_bool`], [`ConfFile::parse_duration`], ...) turn an entry's
//! value into a value of the wanted type and, when they cannot, return a
//! [`ConfError`] naming the file, line and key and saying what was expected.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::plugin::PluginError;

/// A configuration problem: names the file, the line and the key at fault.
///
/// Displays as `{file}:{line}: `{key}`: {message}`, or `{file}: {message}`
/// when the problem concerns the file as a whole (`line == 0`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line number; 0 when the problem is the file as a whole (for
    /// example, it cannot be read).
    pub line: usize,
    /// The key at fault (empty when there is none).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}: `{}`: {}",
                self.file.display(),
                self.line,
                self.key,
                self.message
            )
        }
    }
}

impl ConfError {
    /// An error about the file as a whole (`line` 0, no key).
    pub fn file_error(file: &Path, message: impl Into<String>) -> ConfError {
        ConfError {
            file: file.to_path_buf(),
            line: 0,
            key: String::new(),
            message: message.into(),
        }
    }
}

impl From<ConfError> for PluginError {
    /// Maps to [`PluginError::Config`]; an error about the file as a whole
    /// (`line` 0, such as an unreadable file) maps to
    /// [`PluginError::ConfigFile`], which displays the same way.
    fn from(e: ConfError) -> PluginError {
        if e.line == 0 {
            PluginError::ConfigFile {
                file: e.file,
                message: e.message,
            }
        } else {
            PluginError::Config {
                file: e.file,
                line: e.line,
                key: e.key,
                message: e.message,
            }
        }
    }
}

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfEntry {
    /// The key, trimmed.
    pub key: String,
    /// The value, trimmed (may be empty).
    pub value: String,
    /// 1-based line number.
    pub line: usize,
}

/// A parsed configuration file: its entries in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfFile {
    /// Where the file was read from (used in error messages).
    pub path: PathBuf,
    /// The entries, in file order; keys are unique.
    pub entries: Vec<ConfEntry>,
}

/// How a value is shown in an error message.
fn shown(value: &str) -> String {
    if value.is_empty() {
        "an empty value".to_string()
    } else {
        format!("`{value}`")
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl ConfFile {
    /// Reads and parses the file at `path`. A missing or unreadable file is a
    /// [`ConfError`] with line 0 whose message starts with `cannot read:`.
    pub fn load(path: &Path) -> Result<ConfFile, ConfError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfError::file_error(path, format!("cannot read: {e}")))?;
        ConfFile::parse(path, &text)
    }

    /// Parses `text` as the contents of the file at `path` (which is only
    /// used in error messages).
    pub fn parse(path: &Path, text: &str) -> Result<ConfFile, ConfError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let err = |line: usize, key: &str, message: String| ConfError {
            file: path.to_path_buf(),
            line,
            key: key.to_string(),
            message,
        };
        let mut entries: Vec<ConfEntry> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((key, value)) = trimmed.split_once('=') else {
                return Err(err(
                    line,
                    trimmed,
                    "expected `key = value` (or a `#` comment)".to_string(),
                ));
            };
            let key = key.trim();
            let value = value.trim();
            if key.is_empty() {
                return Err(err(line, key, "missing key before `=`".to_string()));
            }
            if !valid_key(key) {
                return Err(err(
                    line,
                    key,
                    "invalid key: keys are made of letters, digits, `_`, `.` and `-`".to_string(),
                ));
            }
            if let Some(first) = entries.iter().find(|e| e.key == key) {
                return Err(err(
                    line,
                    key,
                    format!(
                        "duplicate key: set on line {} and again on line {line}",
                        first.line
                    ),
                ));
            }
            entries.push(ConfEntry {
                key: key.to_string(),
                value: value.to_string(),
                line,
            });
        }
        Ok(ConfFile {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The entry for `key`, if the file sets it.
    pub fn get(&self, key: &str) -> Option<&ConfEntry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// An error about `entry` in this file (names the file, line and key).
    pub fn error(&self, entry: &ConfEntry, message: impl Into<String>) -> ConfError {
        ConfError {
            file: self.path.clone(),
            line: entry.line,
            key: entry.key.clone(),
            message: message.into(),
        }
    }

    /// `true`/`on` or `false`/`off` (ASCII case ignored).
    pub fn parse_bool(&self, e: &ConfEntry) -> Result<bool, ConfError> {
        match e.value.to_ascii_lowercase().as_str() {
            "true" | "on" => Ok(true),
            "false" | "off" => Ok(false),
            _ => Err(self.error(
                e,
                format!("expected `true`, `false`, `on` or `off`, got {}", shown(&e.value)),
            )),
        }
    }

    /// A non-negative decimal integer.
    pub fn parse_u64(&self, e: &ConfEntry) -> Result<u64, ConfError> {
        self.parse_uint(e, u64::MAX)
    }

    /// A non-negative decimal integer that fits a `usize`.
    pub fn parse_usize(&self, e: &ConfEntry) -> Result<usize, ConfError> {
        let max = u64::try_from(usize::MAX).unwrap_or(u64::MAX);
        let v = self.parse_uint(e, max)?;
        usize::try_from(v).map_err(|_| self.range_error(e, max))
    }

    /// A non-negative decimal integer that fits a `u32`.
    pub fn parse_u32(&self, e: &ConfEntry) -> Result<u32, ConfError> {
        let max = u64::from(u32::MAX);
        let v = self.parse_uint(e, max)?;
        u32::try_from(v).map_err(|_| self.range_error(e, max))
    }

    /// A non-negative decimal integer that fits a `u16`.
    pub fn parse_u16(&self, e: &ConfEntry) -> Result<u16, ConfError> {
        let max = u64::from(u16::MAX);
        let v = self.parse_uint(e, max)?;
        u16::try_from(v).map_err(|_| self.range_error(e, max))
    }

    fn range_error(&self, e: &ConfEntry, max: u64) -> ConfError {
        self.error(
            e,
            format!("expected an integer between 0 and {max}, got {}", shown(&e.value)),
        )
    }

    fn parse_uint(&self, e: &ConfEntry, max: u64) -> Result<u64, ConfError> {
        if e.value.is_empty() || !e.value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.range_error(e, max));
        }
        match e.value.parse::<u64>() {
            Ok(v) if v <= max => Ok(v),
            _ => Err(self.range_error(e, max)),
        }
    }

    /// A duration in humantime form: `15s`, `500ms`, `2h`, `7d`, `1h 30m`.
    pub fn parse_duration(&self, e: &ConfEntry) -> Result<Duration, ConfError> {
        humantime::parse_duration(&e.value).map_err(|err| {
            self.error(
                e,
                format!(
                    "expected a duration such as `15s`, `2h`, `7d` or `1h 30m`, got {} ({err})",
                    shown(&e.value)
                ),
            )
        })
    }

    /// A duration as [`ConfFile::parse_duration`], or `infinity` (`None`).
    pub fn parse_duration_or_infinity(&self, e: &ConfEntry) -> Result<Option<Duration>, ConfError> {
        if e.value == "infinity" {
            return Ok(None);
        }
        humantime::parse_duration(&e.value).map(Some).map_err(|err| {
            self.error(
                e,
                format!(
                    "expected `infinity` or a duration such as `15s`, `2h`, `7d` or `1h 30m`, got {} ({err})",
                    shown(&e.value)
                ),
            )
        })
    }

    /// A size in bytes: `1024`, `64KB`, `1MB`, `2GB` (units are powers of
    /// 1024; `B`, `K`/`KB`, `M`/`MB`, `G`/`GB`, in any case, optionally
    /// separated from the number by spaces).
    pub fn parse_size(&self, e: &ConfEntry) -> Result<u64, ConfError> {
        let bad = || {
            self.error(
                e,
                format!(
                    "expected a size such as `1024`, `64KB`, `1MB` or `2GB`, got {}",
                    shown(&e.value)
                ),
            )
        };
        let v = e.value.as_str();
        let digits_end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
        let (number, unit) = v.split_at(digits_end);
        if number.is_empty() {
            return Err(bad());
        }
        let number: u64 = number.parse().map_err(|_| bad())?;
        let multiplier: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1 << 10,
            "m" | "mb" => 1 << 20,
            "g" | "gb" => 1 << 30,
            _ => return Err(bad()),
        };
        number.checked_mul(multiplier).ok_or_else(bad)
    }

    /// A comma-separated list; items are trimmed and empty items dropped (so
    /// an empty value is an empty list).
    pub fn parse_list(&self, e: &ConfEntry) -> Vec<String> {
        e.value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests;
