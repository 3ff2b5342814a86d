//! `postbox passwd`: manages a Mosquitto password file, like `mosquitto_passwd`.
//!
//! ```text
//! postbox passwd [-c] FILE USER              # asks for the password (twice on a terminal)
//! postbox passwd [-c] -b FILE USER PASSWORD  # batch: the password on the command line
//! postbox passwd -D FILE USER                # deletes the user
//! ```
//!
//! `-c` creates the file, replacing an existing one; without it the file
//! must exist. Other users' lines (and comments) are kept as they are. The
//! file is rewritten atomically: the new contents go to a temporary file in
//! the same directory, which is then renamed over the old one, so the broker
//! never reads half a file. A new file is readable by its owner only; a
//! rewritten one keeps its permissions.
//!
//! Hashes are `$7$` (PBKDF2-HMAC-SHA512) unless `-H sha512` asks for the
//! `$6$` form of Mosquitto 1.6 and earlier, or `-H scram-sha256` Postbox's
//! `$SCRAM-SHA-256$` form (for MQTT 5 `SCRAM-SHA-256` logins; Mosquitto does
//! not read it); `-I` sets the PBKDF2 iterations.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use super::password_file::{PasswordHash, DEFAULT_ITERATIONS};

/// The hash `-H` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HashKind {
    /// `$7$`: PBKDF2-HMAC-SHA512 (Mosquitto 2's default).
    #[value(name = "sha512-pbkdf2")]
    Sha512Pbkdf2,
    /// `$6$`: salted SHA-512 (Mosquitto 1.6 and earlier).
    #[value(name = "sha512")]
    Sha512,
    /// `$SCRAM-SHA-256$`: SCRAM-SHA-256 keys (Postbox only).
    #[value(name = "scram-sha256")]
    ScramSha256,
}

/// Arguments of `postbox passwd`.
#[derive(Debug, Clone, clap::Args)]
pub struct PasswdArgs {
    /// Create a new password file; an existing one is overwritten.
    #[arg(short = 'c', conflicts_with = "delete")]
    pub create: bool,
    /// Batch mode: the password is the third argument.
    #[arg(short = 'b', conflicts_with = "delete")]
    pub batch: bool,
    /// Delete the user from the file.
    #[arg(short = 'D')]
    pub delete: bool,
    /// Hash: sha512-pbkdf2 ($7$, default), sha512 ($6$, Mosquitto 1.6 and
    /// earlier) or scram-sha256 (Postbox only, for SCRAM-SHA-256 logins).
    #[arg(short = 'H', value_enum, default_value = "sha512-pbkdf2")]
    pub hash: HashKind,
    /// PBKDF2 iterations for sha512-pbkdf2 and scram-sha256 (mosquitto_passwd uses 101).
    #[arg(short = 'I', default_value_t = DEFAULT_ITERATIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: u32,
    /// The password file.
    pub file: PathBuf,
    /// The user name (no `:`).
    pub username: String,
    /// The password (batch mode, -b, only).
    pub password: Option<String>,
}

/// Why `postbox passwd` failed.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// The arguments do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// The password file could not be read.
    #[error("{}: cannot read: {source}{hint}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The OS error.
        source: std::io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The password file could not be written.
    #[error("{}: cannot write: {source}", file.display())]
    Write {
        /// The file.
        file: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `-D` for a user the file does not have.
    #[error("user `{user}` is not in {}", file.display())]
    UnknownUser {
        /// The user.
        user: String,
        /// The file.
        file: PathBuf,
    },
    /// The two passwords typed differ.
    #[error("the passwords do not match")]
    Mismatch,
    /// No password could be read.
    #[error("cannot read the password: {0}")]
    Input(String),
    /// No random salt could be had.
    #[error("cannot generate a salt: {0}")]
    Random(getrandom::Error),
}

/// What to do to one user's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add the user, or replace its hash.
    Set(PasswordHash),
    /// Remove the user.
    Delete,
}

/// Runs `postbox passwd`; errors are printed on stderr.
pub fn main(args: &PasswdArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postbox passwd: {e}");
            ExitCode::from(1)
        }
    }
}

/// Does what the arguments ask.
pub fn run(args: &PasswdArgs) -> Result<(), PasswdError> {
    check_username(&args.username)?;
    match (args.batch, &args.password) {
        (true, None) => {
            return Err(PasswdError::Usage(
                "-b needs a password: -b FILE USER PASSWORD".into(),
            ))
        }
        (false, Some(_)) => {
            return Err(PasswdError::Usage(
                "a password on the command line needs -b (batch mode); without it the password is asked for"
                    .into(),
            ))
        }
        _ => {}
    }
    // Read the file first: a missing file is reported before a password is asked for.
    let existing = if args.create {
        None
    } else {
        let hint = if args.delete { "" } else { " (-c creates it)" };
        Some(
            std::fs::read_to_string(&args.file).map_err(|source| PasswdError::Read {
                file: args.file.clone(),
                source,
                hint,
            })?,
        )
    };
    let change = if args.delete {
        Change::Delete
    } else {
        let password = match &args.password {
            Some(p) => p.clone(),
            None => read_password()?,
        };
        check_password(&password)?;
        let hash = match args.hash {
            HashKind::Sha512Pbkdf2 => PasswordHash::new_pbkdf2(password.as_bytes(), args.iterations),
            HashKind::Sha512 => PasswordHash::new_sha512(password.as_bytes()),
            HashKind::ScramSha256 => PasswordHash::new_scram_sha256(password.as_bytes(), args.iterations),
        }
        .map_err(PasswdError::Random)?;
        Change::Set(hash)
    };
    let contents =
        rewrite(existing.as_deref(), &args.username, &change).ok_or_else(|| PasswdError::UnknownUser {
            user: args.username.clone(),
            file: args.file.clone(),
        })?;
    write_atomically(&args.file, contents.as_bytes()).map_err(|source| PasswdError::Write {
        file: args.file.clone(),
        source,
    })
}

/// A user name a password file line can hold.
pub fn check_username(username: &str) -> Result<(), PasswdError> {
    if username.is_empty() {
        return Err(PasswdError::Usage("the user name is empty".into()));
    }
    if username.contains(':') {
        return Err(PasswdError::Usage(format!(
            "user name `{username}` contains `:`, which separates the user name from the hash in the file"
        )));
    }
    if username.chars().any(char::is_control) {
        return Err(PasswdError::Usage(
            "the user name contains a control character".into(),
        ));
    }
    // The file reader skips a line whose first non-blank character is `#`.
    if username.trim_start().starts_with('#') {
        return Err(PasswdError::Usage(format!(
            "user name `{username}` starts with `#`, which starts a comment in the file"
        )));
    }
    Ok(())
}

fn check_password(password: &str) -> Result<(), PasswdError> {
    if password.is_empty() {
        return Err(PasswdError::Usage("the password is empty".into()));
    }
    Ok(())
}

/// The new file contents: `existing` (`None`: a new file) with `username`'s
/// line changed. Every other line is kept byte for byte; a repeated line of
/// the user is dropped. `None` when deleting a user the file does not have.
pub fn rewrite(existing: Option<&str>, username: &str, change: &Change) -> Option<String> {
    let mut out = String::new();
    let mut found = false;
    for line in existing.unwrap_or("").split_inclusive('\n') {
        let content = line.trim_end_matches(['\n', '\r']);
        let is_user = !content.trim_start().starts_with('#')
            && content.split_once(':').is_some_and(|(name, _)| name == username);
        if !is_user {
            out.push_str(line);
            continue;
        }
        if let (Change::Set(hash), false) = (change, found) {
            out.push_str(&format!("{username}:{hash}\n"));
        }
        found = true;
    }
    match change {
        Change::Delete if !found => None,
        Change::Set(hash) if !found => {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("{username}:{hash}\n"));
            Some(out)
        }
        _ => Some(out),
    }
}

/// Replaces `path` with `contents` through a temporary file and a rename, so
/// readers see the old file or the new one, never a mix.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    // Through a symbolic link, the target is replaced and the link kept.
    let target = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(e),
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{nanos}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let permissions = std::fs::metadata(&target).ok().map(|m| m.permissions());
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // A new password file is for its owner only.
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        if let Some(p) = permissions {
            file.set_permissions(p)?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        // Make the rename itself durable; not every platform can sync a directory.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The password from standard input: typed twice, unechoed, on a terminal;
/// otherwise the first line.
fn read_password() -> Result<String, PasswdError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return read_line()
            .and_then(|l| l.ok_or_else(|| PasswdError::Input("no password on standard input".into())));
    }
    let first = prompt_hidden("Password: ")?;
    let second = prompt_hidden("Reenter password: ")?;
    if first != second {
        return Err(PasswdError::Mismatch);
    }
    Ok(first)
}

fn read_line() -> Result<Option<String>, PasswdError> {
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| PasswdError::Input(e.to_string()))?;
    if n == 0 {
        return Ok(None);
    }
    let trimmed = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(trimmed);
    Ok(Some(line))
}

fn prompt_hidden(prompt: &str) -> Result<String, PasswdError> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    // `stty` on the inherited terminal: the portable way without unsafe code.
    let hidden = set_echo(false);
    let line = read_line();
    if hidden {
        set_echo(true);
        eprintln!();
    }
    line?.ok_or_else(|| PasswdError::Input("end of input".into()))
}

fn set_echo(on: bool) -> bool {
    Command::new("stty")
        .arg(if on { "echo" } else { "-echo" })
        .stdin(Stdio::inherit())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
