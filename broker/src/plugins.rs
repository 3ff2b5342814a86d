//! The plugins compiled into the `postbox` binary, by the name `plugins.load`
//! uses. The binary wires them in: the broker library knows plugins only
//! through `hooks-spec`.

use hooks_spec::Plugin;

/// Names of the built-in plugins.
pub const KNOWN: &[&str] = &[
    backend_pgsql::NAME,
    postbox::auth::NAME,
    backend_pgsql::auth::NAME,
];

/// A new, unconfigured instance of the named plugin.
pub fn by_name(name: &str) -> Option<Box<dyn Plugin>> {
    match name {
        backend_pgsql::NAME => Some(Box::new(backend_pgsql::BackendPgsql::new())),
        postbox::auth::NAME => Some(Box::new(postbox::auth::AuthFile::new())),
        backend_pgsql::auth::NAME => Some(Box::new(backend_pgsql::AuthPgsql::new())),
        _ => None,
    }
}
