//! The `postbox` command: runs the broker, manages a Mosquitto-compatible
//! password file (`postbox passwd`), or talks to a running node's management
//! API (`postbox ctl`).

mod plugins;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hooks_spec::{ConfError, ConfFile, Plugin};
use postbox::config::{Config, Listener, LogFormat};
use postbox::{BrokerError, Server};

/// Every message allocates on one worker thread and is freed on another
/// (the subscriber's); glibc's allocator takes an arena lock for that, and
/// the profile of a broker-only run showed its lock waits (futex) and
/// `_int_malloc`/`_int_free` at ~12 % of the broker's CPU. mimalloc frees
/// across threads without a lock.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Postbox: an MQTT broker for devices that go offline.
#[derive(Parser, Debug)]
#[command(name = "postbox", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Configuration file.
    #[arg(short = 'c', long = "config", default_value = "etc/postbox.conf")]
    config: PathBuf,
    /// Listen on this address instead of the configured listeners (e.g. 127.0.0.1:1884).
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
    /// Log level: error, warn, info, debug or trace (overrides `log.level`).
    #[arg(long)]
    log_level: Option<String>,
}

/// Subcommands; without one, `postbox` runs the broker.
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Add, change or delete a user in a password file (like mosquitto_passwd).
    ///
    /// `passwd [-c] FILE USER` asks for the password (twice on a terminal; otherwise it reads one
    /// line from standard input); `passwd [-c] -b FILE USER PASSWORD` takes it from the command
    /// line; `passwd -D FILE USER` deletes the user. `-c` creates (or overwrites) the file.
    Passwd(postbox::auth::passwd_cli::PasswdArgs),
    /// Talk to a running node's management API (`management.listener.http`).
    ///
    /// `ctl status`, `ctl clients [--page N] [--limit N]`, `ctl kick CLIENTID`,
    /// `ctl subscriptions [CLIENTID]`, `ctl publish TOPIC PAYLOAD [--qos N] [--retain]`;
    /// `--url` (default http://127.0.0.1:8081), `--user`/`--password` (default
    /// admin/public), or POSTBOX_API_URL, POSTBOX_API_USER, POSTBOX_API_PASSWORD.
    Ctl(postbox::ctl::CtlArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Cmd::Passwd(args)) => return postbox::auth::passwd_cli::main(args),
        Some(Cmd::Ctl(args)) => return postbox::ctl::main(args),
        None => {}
    }
    let mut config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postbox: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = cli.bind {
        config.listeners = vec![Listener::tcp("external", addr)];
    }
    if let Some(level) = cli.log_level {
        config.log_level = level;
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match config.log_format {
        LogFormat::Text => logs.init(),
        // Fields at the top level, next to `message`: what log shippers expect.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("postbox: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // Before anything slow (plugins read files, connect to databases): from
    // here on SIGHUP no longer ends the process, which is its default action.
    let hangup = {
        let _runtime = runtime.enter();
        Hangup::register()
    };
    let plugins = match load_plugins(&config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("postbox: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(config, plugins, hangup))
}

async fn run(config: Config, plugins: Vec<Box<dyn Plugin>>, mut hangup: Hangup) -> ExitCode {
    let server = match Server::start(config, plugins).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("postbox: {e}");
            return ExitCode::from(1);
        }
    };
    for addr in server.local_addrs() {
        // Tests and scripts read this line to learn the port.
        println!("listening on {addr}");
    }
    if let Some(addr) = server.cluster_addr() {
        println!("cluster listening on {addr}");
    }
    if let Some(addr) = server.http_addr() {
        println!("http listening on {addr}");
    }
    tracing::info!(addrs = ?server.local_addrs(), "postbox started");
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = hangup.recv() => {
                tracing::info!("SIGHUP: reloading plugins");
                // A stop signal is not held up by a slow reload.
                tokio::select! {
                    _ = server.reload_plugins() => {}
                    () = &mut stop => break,
                }
            }
        }
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// SIGHUP, which asks the plugins to reload. Once registered, the signal
/// never ends the process again (tokio keeps its handler installed), so a
/// SIGHUP during startup or shutdown is harmless.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    /// Installs the handler; needs a runtime context.
    fn register() -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::hangup()) {
                Ok(s) => Hangup { signal: Some(s) },
                Err(e) => {
                    tracing::warn!(
                        "cannot handle SIGHUP ({e}): it will stop the broker instead of reloading"
                    );
                    Hangup { signal: None }
                }
            }
        }
        #[cfg(not(unix))]
        {
            Hangup {}
        }
    }

    /// The next SIGHUP (several sent during one reload count as one).
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal {
            if s.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await;
    }
}

/// Builds and configures the plugins named in `plugins.load`, in order.
fn load_plugins(config: &Config) -> Result<Vec<Box<dyn Plugin>>, BrokerError> {
    let mut plugins: Vec<Box<dyn Plugin>> = Vec::new();
    for name in &config.plugins {
        let mut plugin: Box<dyn Plugin> = match plugins::by_name(name) {
            Some(p) => p,
            None => {
                let conf = ConfFile::load(&config.file)?;
                let line = conf.get("plugins.load").map(|e| e.line).unwrap_or(0);
                return Err(BrokerError::Config(ConfError {
                    file: config.file.clone(),
                    line,
                    key: "plugins.load".into(),
                    message: format!("unknown plugin `{name}` (known: {})", plugins::KNOWN.join(", ")),
                }));
            }
        };
        let path = config.plugins_etc_dir.join(format!("{name}.conf"));
        plugin.load_config(&path).map_err(|e| BrokerError::PluginStart {
            name: name.clone(),
            message: e.to_string(),
        })?;
        plugins.push(plugin);
    }
    Ok(plugins)
}
