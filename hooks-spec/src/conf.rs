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
mod tests {
    use super::*;

    fn p(text: &str) -> Result<ConfFile, ConfError> {
        ConfFile::parse(Path::new("etc/test.conf"), text)
    }

    fn ok(text: &str) -> ConfFile {
        match p(text) {
            Ok(c) => c,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn err(text: &str) -> ConfError {
        match p(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e,
        }
    }

    fn entry(value: &str) -> (ConfFile, ConfEntry) {
        let c = ConfFile {
            path: PathBuf::from("x.conf"),
            entries: vec![],
        };
        (
            c,
            ConfEntry {
                key: "k.v".into(),
                value: value.into(),
                line: 7,
            },
        )
    }

    #[test]
    fn parses_entries_comments_and_blank_lines() {
        let c = ok(
            "# comment\n## doc comment\n\n   \n  a.b = 1\nc_d-e=  two words  \n\t# indented comment\nf =\n",
        );
        assert_eq!(c.path, PathBuf::from("etc/test.conf"));
        assert_eq!(
            c.entries,
            vec![
                ConfEntry {
                    key: "a.b".into(),
                    value: "1".into(),
                    line: 5
                },
                ConfEntry {
                    key: "c_d-e".into(),
                    value: "two words".into(),
                    line: 6
                },
                ConfEntry {
                    key: "f".into(),
                    value: "".into(),
                    line: 8
                },
            ]
        );
        assert_eq!(c.get("c_d-e").map(|e| e.value.as_str()), Some("two words"));
        assert!(c.get("missing").is_none());
    }

    #[test]
    fn empty_file_has_no_entries() {
        assert!(ok("").entries.is_empty());
        assert!(ok("\n\n# only comments\n").entries.is_empty());
    }

    #[test]
    fn crlf_and_bom_are_handled() {
        let c = ok("\u{feff}a = 1\r\nb = 2\r\n");
        assert_eq!(c.entries.len(), 2);
        assert_eq!(c.entries[0].key, "a");
        assert_eq!(c.entries[1].value, "2");
        assert_eq!(c.entries[1].line, 2);
    }

    #[test]
    fn value_may_contain_equals_and_json() {
        let c =
            ok("url = postgres://u:p@h/db?sslmode=disable&a=b\njson = {\"a\": \"x=y\", \"b\": [1, 2]} \n");
        assert_eq!(c.entries[0].value, "postgres://u:p@h/db?sslmode=disable&a=b");
        assert_eq!(c.entries[1].value, "{\"a\": \"x=y\", \"b\": [1, 2]}");
    }

    #[test]
    fn hash_inside_value_is_kept() {
        let c = ok("a = x # not a comment\n");
        assert_eq!(c.entries[0].value, "x # not a comment");
    }

    #[test]
    fn line_without_equals_is_an_error() {
        let e = err("a = 1\n\njust some words\n");
        assert_eq!(e.line, 3);
        assert_eq!(e.key, "just some words");
        assert!(e.message.contains("key = value"), "{}", e.message);
        assert_eq!(e.file, PathBuf::from("etc/test.conf"));
    }

    #[test]
    fn empty_key_is_an_error() {
        let e = err("# c\n  = value\n");
        assert_eq!(e.line, 2);
        assert_eq!(e.key, "");
        assert!(e.message.contains("missing key"), "{}", e.message);
    }

    #[test]
    fn invalid_key_characters_are_an_error() {
        for (text, key) in [
            ("a b = 1", "a b"),
            ("a/b = 1", "a/b"),
            ("ключ = 1", "ключ"),
            ("a:b=1", "a:b"),
        ] {
            let e = err(&format!("ok = 1\n{text}\n"));
            assert_eq!(e.line, 2, "{text}");
            assert_eq!(e.key, key);
            assert!(e.message.contains("invalid key"), "{}", e.message);
        }
    }

    #[test]
    fn duplicate_key_names_both_lines() {
        let e = err("a = 1\nb = 2\n# x\na = 3\n");
        assert_eq!(e.line, 4);
        assert_eq!(e.key, "a");
        assert!(e.message.contains("duplicate key"), "{}", e.message);
        assert!(e.message.contains("line 1"), "{}", e.message);
        assert!(e.message.contains("line 4"), "{}", e.message);
    }

    #[test]
    fn display_formats() {
        let e = err("a = 1\na = 2\n");
        assert_eq!(
            e.to_string(),
            "etc/test.conf:2: `a`: duplicate key: set on line 1 and again on line 2"
        );
        let f = ConfError::file_error(Path::new("etc/x.conf"), "cannot read: boom");
        assert_eq!(f.to_string(), "etc/x.conf: cannot read: boom");
        assert_eq!(f.line, 0);
    }

    #[test]
    fn load_reads_a_file() {
        let dir = std::env::temp_dir().join(format!("hooks-spec-conf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.conf");
        std::fs::write(&path, "## x\nk = v\n").unwrap();
        let c = ConfFile::load(&path).unwrap();
        assert_eq!(c.path, path);
        assert_eq!(
            c.entries,
            vec![ConfEntry {
                key: "k".into(),
                value: "v".into(),
                line: 2
            }]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_missing_file_is_a_line_zero_error() {
        let path = Path::new("/nonexistent/dir/postbox-missing.conf");
        let e = ConfFile::load(path).unwrap_err();
        assert_eq!(e.file, path);
        assert_eq!(e.line, 0);
        assert!(e.message.starts_with("cannot read: "), "{}", e.message);
        assert!(e
            .to_string()
            .starts_with("/nonexistent/dir/postbox-missing.conf: cannot read: "));
    }

    #[test]
    fn error_names_the_entry() {
        let c = ok("\n\nx.y = 3\n");
        let e = c.error(&c.entries[0], "bad");
        assert_eq!(
            e,
            ConfError {
                file: "etc/test.conf".into(),
                line: 3,
                key: "x.y".into(),
                message: "bad".into()
            }
        );
        assert_eq!(e.to_string(), "etc/test.conf:3: `x.y`: bad");
    }

    #[test]
    fn into_plugin_error() {
        let e = ConfError {
            file: "a.conf".into(),
            line: 3,
            key: "k".into(),
            message: "m".into(),
        };
        match PluginError::from(e) {
            PluginError::Config {
                file,
                line,
                key,
                message,
            } => {
                assert_eq!(
                    (file, line, key, message),
                    ("a.conf".into(), 3, "k".to_string(), "m".to_string())
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = ConfError::file_error(Path::new("a.conf"), "cannot read: x");
        let pe = PluginError::from(e.clone());
        assert_eq!(pe.to_string(), e.to_string());
        assert!(matches!(pe, PluginError::ConfigFile { .. }));
    }

    #[test]
    fn bools() {
        for (v, want) in [
            ("true", true),
            ("on", true),
            ("false", false),
            ("off", false),
            ("TRUE", true),
        ] {
            let (c, e) = entry(v);
            assert_eq!(c.parse_bool(&e), Ok(want), "{v}");
        }
        for v in ["yes", "1", ""] {
            let (c, e) = entry(v);
            let err = c.parse_bool(&e).unwrap_err();
            assert_eq!((err.line, err.key.as_str()), (7, "k.v"));
            assert!(
                err.message.contains("expected `true`, `false`, `on` or `off`"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn integers() {
        let (c, e) = entry("18446744073709551615");
        assert_eq!(c.parse_u64(&e), Ok(u64::MAX));
        let (c, e) = entry("0");
        assert_eq!(c.parse_u64(&e), Ok(0));
        assert_eq!(c.parse_u16(&e), Ok(0));
        let (c, e) = entry("65535");
        assert_eq!(c.parse_u16(&e), Ok(65535));
        assert_eq!(c.parse_u32(&e), Ok(65535));
        assert_eq!(c.parse_usize(&e), Ok(65535));
        let (c, e) = entry("65536");
        let err = c.parse_u16(&e).unwrap_err();
        assert_eq!(
            err.message,
            "expected an integer between 0 and 65535, got `65536`"
        );
        assert_eq!(err.line, 7);
        assert_eq!(c.parse_u32(&e), Ok(65536));
        let (c, e) = entry("4294967296");
        assert!(c
            .parse_u32(&e)
            .unwrap_err()
            .message
            .contains("between 0 and 4294967295"));
        for v in ["-1", "+1", "1.5", "abc", "", "1 000", "18446744073709551616"] {
            let (c, e) = entry(v);
            let err = c.parse_u64(&e).unwrap_err();
            assert!(
                err.message.starts_with("expected an integer between 0 and"),
                "{v}: {}",
                err.message
            );
            assert_eq!(err.line, 7);
        }
        let (c, e) = entry("");
        assert!(c
            .parse_u64(&e)
            .unwrap_err()
            .message
            .ends_with("got an empty value"));
    }

    #[test]
    fn durations() {
        for (v, secs) in [
            ("15s", 15),
            ("2h", 7200),
            ("7d", 7 * 86400),
            ("1h 30m", 5400),
            ("0s", 0),
        ] {
            let (c, e) = entry(v);
            assert_eq!(c.parse_duration(&e), Ok(Duration::from_secs(secs)), "{v}");
            assert_eq!(
                c.parse_duration_or_infinity(&e),
                Ok(Some(Duration::from_secs(secs))),
                "{v}"
            );
        }
        let (c, e) = entry("500ms");
        assert_eq!(c.parse_duration(&e), Ok(Duration::from_millis(500)));
        let (c, e) = entry("infinity");
        assert_eq!(c.parse_duration_or_infinity(&e), Ok(None));
        assert!(c.parse_duration(&e).is_err());
        for v in ["15", "abc", "", "1 lightyear"] {
            let (c, e) = entry(v);
            let err = c.parse_duration(&e).unwrap_err();
            assert_eq!((err.line, err.key.as_str()), (7, "k.v"));
            assert!(err.message.starts_with("expected a duration"), "{}", err.message);
            assert!(err.message.contains(&shown(v)), "{}", err.message);
            let err = c.parse_duration_or_infinity(&e).unwrap_err();
            assert!(
                err.message.starts_with("expected `infinity` or a duration"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn sizes() {
        for (v, want) in [
            ("1024", 1024),
            ("0", 0),
            ("10B", 10),
            ("64KB", 64 * 1024),
            ("64kb", 64 * 1024),
            ("64K", 64 * 1024),
            ("1MB", 1 << 20),
            ("1mb", 1 << 20),
            ("1M", 1 << 20),
            ("2GB", 2 << 30),
            ("2gb", 2 << 30),
            ("2G", 2 << 30),
            ("16 KB", 16 << 10),
        ] {
            let (c, e) = entry(v);
            assert_eq!(c.parse_size(&e), Ok(want), "{v}");
        }
        for v in [
            "",
            "KB",
            "1.5MB",
            "-1",
            "1TB",
            "1 MB x",
            "99999999999999999999",
            "17179869184GB",
        ] {
            let (c, e) = entry(v);
            let err = c.parse_size(&e).unwrap_err();
            assert_eq!(err.line, 7);
            assert!(
                err.message.starts_with("expected a size such as"),
                "{v}: {}",
                err.message
            );
        }
    }

    #[test]
    fn lists() {
        let (c, e) = entry(" a, b ,,c ,");
        assert_eq!(c.parse_list(&e), vec!["a", "b", "c"]);
        let (c, e) = entry("");
        assert!(c.parse_list(&e).is_empty());
        let (c, e) = entry("single");
        assert_eq!(c.parse_list(&e), vec!["single"]);
    }
}
