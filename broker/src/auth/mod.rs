//! # `auth_file`: Mosquitto's password file and ACL file, built in
//!
//! The plugin `auth_file` (enable it with `plugins.load = auth_file`) reads
//! `<plugins.etc_dir>/auth_file.conf`:
//!
//! | key | value | default |
//! |---|---|---|
//! | `auth.file.password_file` | path (relative to the conf file's directory) | unset: no password check |
//! | `auth.file.acl_file` | path (relative to the conf file's directory) | unset: no ACL check |
//! | `auth.file.acl_nomatch` | `deny`, `allow` or `ignore` | `deny` |
//!
//! ## Authentication (`client.authenticate`)
//! The password file is Mosquitto's ([`password_file`]): files made by
//! `mosquitto_passwd` work as they are, and `postbox passwd`
//! ([`passwd_cli`]) writes files Mosquitto reads. A client whose user name is
//! in the file is let in with the right password and refused (CONNACK 0x86;
//! 3.1.1: 4) with a wrong or missing one. A client without a user name, or
//! with one the file does not have, is not decided here: another plugin or
//! `mqtt.allow_anonymous` decides.
//!
//! ## Enhanced authentication (MQTT 5 AUTH)
//! With a password file the plugin offers the methods `SCRAM-SHA-512`
//! ([`scram`]) for the users whose hash is `$7$` (PBKDF2-SHA512) and
//! `SCRAM-SHA-256` for those with a `$SCRAM-SHA-256$` entry, so a client
//! proves it knows the password without sending it.
//!
//! ## Authorization (`client.check_acl`)
//! The ACL file is Mosquitto's ([`acl_file`]). What no rule decides is
//! refused by default, as Mosquitto does when it has an ACL file;
//! `auth.file.acl_nomatch = allow` lets it through and `ignore` leaves it to
//! the next plugin on the hook (and, when none decides, allows it).
//!
//! ## Files: startup and SIGHUP
//! At startup, a file that cannot be read or parsed stops the broker with its
//! path and line. On SIGHUP ([`Plugin::reload`]) both files are read again,
//! each on its own: a file that reads and parses completely replaces the one
//! in force; one that does not is logged as `path:line: what is wrong` and
//! the one in force stays (a bad ACL file does not hold back a good password
//! file). `auth_file.conf` itself is not read again: which files, and
//! `acl_nomatch`, are fixed at startup. Connections already in are not
//! re-checked: the new password file applies to the next CONNECT, the new
//! ACL to each PUBLISH and SUBSCRIBE after the reload (there is no ACL cache;
//! subscriptions granted before stay, since a subscription is checked once).

pub mod acl_file;
pub mod passwd_cli;
pub mod password_file;
pub mod scram;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use hooks_spec::scram::{ScramAlg, ScramMethod, ScramSource};
use hooks_spec::{
    AclArgs, AclResult, AuthArgs, AuthResult, ConfError, ConfFile, Flow, HookError, Hooks, Plugin,
    PluginContext, PluginError,
};

use self::acl_file::{AclFile, Decision};
use self::password_file::PasswordFile;

/// The plugin's name in `plugins.load` and its config file (`auth_file.conf`).
pub const NAME: &str = "auth_file";

/// Why a password or ACL file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is wrong.
    #[error("{}:{line}: {message}", file.display())]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// What `auth.file.acl_nomatch` says to do when no ACL rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoMatch {
    /// Refuse (Mosquitto's behaviour with an ACL file).
    Deny,
    /// Allow.
    Allow,
    /// Leave the decision to the next plugin on `client.check_acl`.
    Ignore,
}

/// The plugin's configuration with its files loaded.
#[derive(Debug)]
pub struct AuthFileConfig {
    /// The conf file it was read from.
    pub file: PathBuf,
    /// `auth.file.password_file`, loaded.
    pub passwords: Option<PasswordFile>,
    /// `auth.file.acl_file`, loaded.
    pub acl: Option<AclFile>,
    /// `auth.file.acl_nomatch`.
    pub acl_nomatch: NoMatch,
}

impl AuthFileConfig {
    /// Reads `auth_file.conf` and the files it names. Errors name the conf
    /// file, line and key, and, for a bad password or ACL file, that file
    /// and its line.
    pub fn load(path: &Path) -> Result<AuthFileConfig, ConfError> {
        let conf = ConfFile::load(path)?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let resolve = |value: &str| {
            let p = Path::new(value);
            if p.is_relative() {
                dir.join(p)
            } else {
                p.to_path_buf()
            }
        };
        let mut cfg = AuthFileConfig {
            file: path.to_path_buf(),
            passwords: None,
            acl: None,
            acl_nomatch: NoMatch::Deny,
        };
        for e in &conf.entries {
            match e.key.as_str() {
                // An empty value leaves the provider off, like a missing key.
                "auth.file.password_file" if e.value.is_empty() => {}
                "auth.file.password_file" => {
                    let file = resolve(&e.value);
                    let loaded = PasswordFile::load(&file).map_err(|err| {
                        let hint = match &err {
                            AuthFileError::Read { source, .. }
                                if source.kind() == std::io::ErrorKind::NotFound =>
                            {
                                format!(" (create it with `postbox passwd -c {} <user>`)", file.display())
                            }
                            _ => String::new(),
                        };
                        conf.error(e, format!("{err}{hint}"))
                    })?;
                    cfg.passwords = Some(loaded);
                }
                "auth.file.acl_file" if e.value.is_empty() => {}
                "auth.file.acl_file" => {
                    let file = resolve(&e.value);
                    cfg.acl = Some(AclFile::load(&file).map_err(|err| conf.error(e, err.to_string()))?);
                }
                "auth.file.acl_nomatch" => {
                    cfg.acl_nomatch = match e.value.as_str() {
                        "deny" => NoMatch::Deny,
                        "allow" => NoMatch::Allow,
                        "ignore" => NoMatch::Ignore,
                        other => {
                            return Err(
                                conf.error(e, format!("expected `deny`, `allow` or `ignore`, got `{other}`"))
                            )
                        }
                    }
                }
                _ => return Err(conf.error(e, "unknown key")),
            }
        }
        Ok(cfg)
    }
}

/// Counters an operator (or a test) can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Clients let in by their password.
    pub auth_allowed: AtomicU64,
    /// Clients refused: known user, wrong or missing password.
    pub auth_denied: AtomicU64,
    /// Clients left to others: no user name, or one the file does not have.
    pub auth_ignored: AtomicU64,
    /// PUBLISH and SUBSCRIBE filters allowed by the ACL (or `acl_nomatch = allow`).
    pub acl_allowed: AtomicU64,
    /// PUBLISH and SUBSCRIBE filters refused by the ACL (or `acl_nomatch = deny`).
    pub acl_denied: AtomicU64,
}

/// A value that a reload replaces while readers keep the one they took.
///
/// The lock is held only to clone or replace the `Arc`, never across an
/// `.await`.
#[derive(Debug)]
pub struct Current<T>(RwLock<Arc<T>>);

impl<T> Current<T> {
    /// Holds `value`.
    pub fn new(value: T) -> Current<T> {
        Current(RwLock::new(Arc::new(value)))
    }

    /// The value in force now.
    pub fn get(&self) -> Arc<T> {
        // A panic while holding the lock cannot leave a half-written `Arc`.
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts `value` in force for every later `get`.
    pub fn set(&self, value: T) {
        let old = {
            let mut slot = self.0.write().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *slot, Arc::new(value))
        };
        // Freeing a large old file happens after readers can go on.
        drop(old);
    }
}

/// What the hooks decide with: the files in force (replaced on reload) and
/// `acl_nomatch`.
#[derive(Debug)]
pub struct InForce {
    /// The conf file the plugin was configured from.
    pub file: PathBuf,
    /// The password file, if one is configured.
    pub passwords: Option<Current<PasswordFile>>,
    /// The ACL file, if one is configured.
    pub acl: Option<Current<AclFile>>,
    /// `auth.file.acl_nomatch`.
    pub acl_nomatch: NoMatch,
}

impl From<AuthFileConfig> for InForce {
    fn from(cfg: AuthFileConfig) -> InForce {
        InForce {
            file: cfg.file,
            passwords: cfg.passwords.map(Current::new),
            acl: cfg.acl.map(Current::new),
            acl_nomatch: cfg.acl_nomatch,
        }
    }
}

impl InForce {
    /// Reads both files again and puts each in force if it loads
    /// completely. Returns one message per file that did not, saying what
    /// is wrong (`path:line: ...`) and that the previous one stays.
    pub fn reload(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(current) = &self.passwords {
            let path = current.get().path.clone();
            match PasswordFile::load(&path) {
                Ok(pw) => {
                    tracing::info!(file = %path.display(), users = pw.len(), "auth_file: password file reloaded");
                    current.set(pw);
                }
                Err(e) => errors.push(format!("{e} (the password file loaded before stays in force)")),
            }
        }
        if let Some(current) = &self.acl {
            let path = current.get().path.clone();
            match AclFile::load(&path) {
                Ok(acl) => {
                    tracing::info!(file = %path.display(), rules = acl.rule_count(), "auth_file: ACL file reloaded");
                    current.set(acl);
                }
                Err(e) => errors.push(format!("{e} (the ACL file loaded before stays in force)")),
            }
        }
        errors
    }
}

/// The `auth_file` plugin.
#[derive(Default)]
pub struct AuthFile {
    state: Option<Arc<InForce>>,
    stats: Arc<Stats>,
}

impl AuthFile {
    /// An unconfigured plugin.
    pub fn new() -> AuthFile {
        AuthFile::default()
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }
}

#[async_trait]
impl Plugin for AuthFile {
    fn name(&self) -> &str {
        NAME
    }

    fn load_config(&mut self, path: &Path) -> Result<(), PluginError> {
        self.state = Some(Arc::new(InForce::from(AuthFileConfig::load(path)?)));
        Ok(())
    }

    async fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        let cfg = self
            .state
            .clone()
            .ok_or_else(|| PluginError::Start("configuration not loaded".into()))?;
        if let Some(pw) = &cfg.passwords {
            let pw = pw.get();
            tracing::info!(file = %pw.path.display(), users = pw.len(), "auth_file: password file loaded");
            register_authenticate(&ctx.hooks, Arc::clone(&cfg), Arc::clone(&self.stats));
            // MQTT 5 enhanced authentication for the `$7$` and `$SCRAM-SHA-256$` users.
            let source: Arc<dyn ScramSource> = Arc::new(scram::PasswordFileScram(Arc::clone(&cfg)));
            for alg in [ScramAlg::Sha256, ScramAlg::Sha512] {
                let method = ScramMethod::new(alg, Arc::clone(&source));
                ctx.hooks.auth_methods.register(NAME, Arc::new(method));
            }
        }
        if let Some(acl) = &cfg.acl {
            let acl = acl.get();
            tracing::info!(file = %acl.path.display(), rules = acl.rule_count(), nomatch = ?cfg.acl_nomatch, "auth_file: ACL file loaded");
            register_check_acl(&ctx.hooks, Arc::clone(&cfg), Arc::clone(&self.stats));
        }
        if cfg.passwords.is_none() && cfg.acl.is_none() {
            tracing::warn!(file = %cfg.file.display(), "auth_file: neither auth.file.password_file nor auth.file.acl_file is set; the plugin does nothing");
        }
        Ok(())
    }

    async fn stop(&self, hooks: &Hooks) -> Result<(), PluginError> {
        hooks.remove_owner(NAME);
        Ok(())
    }

    /// Reads the password and ACL files again (see the module docs).
    async fn reload(&self) -> Result<(), PluginError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        // Plain blocking reads of small files: `postbox` runs reloads on its
        // main thread, not on a worker serving connections.
        let errors = state.reload();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(PluginError::Reload(errors.join("; ")))
        }
    }
}

fn register_authenticate(hooks: &Hooks, cfg: Arc<InForce>, stats: Arc<Stats>) {
    hooks
        .client_authenticate
        .add(NAME, 0, move |args: Arc<AuthArgs>, acc: AuthResult| {
            let cfg = Arc::clone(&cfg);
            let stats = Arc::clone(&stats);
            async move {
                let verdict = authenticate(&cfg, &args).await?;
                let flow = match verdict {
                    Some(true) => {
                        stats.auth_allowed.fetch_add(1, Ordering::Relaxed);
                        Flow::Stop(AuthResult::Allow)
                    }
                    Some(false) => {
                        stats.auth_denied.fetch_add(1, Ordering::Relaxed);
                        Flow::Stop(AuthResult::Deny)
                    }
                    None => {
                        stats.auth_ignored.fetch_add(1, Ordering::Relaxed);
                        Flow::Continue(acc)
                    }
                };
                Ok(flow)
            }
        });
}

/// `Some(true)`: right password; `Some(false)`: known user, wrong or no
/// password; `None`: not a user of the file.
async fn authenticate(cfg: &InForce, args: &AuthArgs) -> Result<Option<bool>, HookError> {
    let Some(passwords) = &cfg.passwords else {
        return Ok(None);
    };
    let passwords = passwords.get();
    let Some(username) = args.client.username.as_deref() else {
        return Ok(None);
    };
    let Some(hash) = passwords.get(username) else {
        tracing::debug!(clientid = %args.client.clientid, username, "auth_file: user not in the password file");
        return Ok(None);
    };
    let Some(password) = args.password.clone() else {
        tracing::info!(clientid = %args.client.clientid, username, "auth_file: no password given");
        return Ok(Some(false));
    };
    let ok = if hash.is_costly() {
        let hash = hash.clone();
        tokio::task::spawn_blocking(move || hash.verify(&password))
            .await
            .map_err(|e| HookError::new(format!("password check failed: {e}")))?
    } else {
        hash.verify(&password)
    };
    if !ok {
        tracing::info!(clientid = %args.client.clientid, username, "auth_file: wrong password");
    }
    Ok(Some(ok))
}

fn register_check_acl(hooks: &Hooks, cfg: Arc<InForce>, stats: Arc<Stats>) {
    hooks
        .client_check_acl
        .add(NAME, 0, move |args: Arc<AclArgs>, acc: AclResult| {
            let flow = check_acl(&cfg, &stats, &args, acc);
            std::future::ready(Ok(flow))
        });
}

fn check_acl(cfg: &InForce, stats: &Stats, args: &AclArgs, acc: AclResult) -> Flow<AclResult> {
    let Some(acl) = &cfg.acl else {
        return Flow::Continue(acc);
    };
    let acl = acl.get();
    let c = &args.client;
    let decision = acl.check(&c.clientid, c.username.as_deref(), args.action, &args.topic);
    let result = match (decision, cfg.acl_nomatch) {
        (Decision::Allow, _) | (Decision::NoMatch, NoMatch::Allow) => AclResult::Allow,
        (Decision::Deny, _) | (Decision::NoMatch, NoMatch::Deny) => AclResult::Deny,
        (Decision::NoMatch, NoMatch::Ignore) => return Flow::Continue(acc),
    };
    if result == AclResult::Deny {
        stats.acl_denied.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(clientid = %c.clientid, username = ?c.username, action = ?args.action, topic = %args.topic, ?decision, "auth_file: ACL refuses");
    } else {
        stats.acl_allowed.fetch_add(1, Ordering::Relaxed);
    }
    Flow::Stop(result)
}
