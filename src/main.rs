//! The `xmpp-gateway` binary: parse the command line, load the configuration, run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use xmpp_gateway::config::Config;

/// An XMPP component (XEP-0114) that bridges IRC channels and email to XMPP.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file (TOML). Keys can be overridden by GATEWAY__SECTION__KEY.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and exit.
    CheckConfig,
    /// Move an installation to another storage engine: copy every entry of one store into
    /// another, empty, one and read it back (run with the gateway stopped). Needs no
    /// configuration file.
    MigrateStore {
        /// The store to copy: sled:PATH or postgres:URL.
        #[arg(long, value_name = "STORE")]
        from: String,
        /// The empty store to fill: sled:PATH or postgres:URL.
        #[arg(long, value_name = "STORE")]
        to: String,
        /// Certificates to trust for PostgreSQL's TLS besides the webpki roots.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
}

/// Exit code for errors that a restart will not fix (configuration, secret, key).
const EXIT_CONFIG: u8 = 2;
/// Exit code for failures a restart may cure (the writer task died): systemd restarts
/// the gateway on it (`Restart=on-failure`).
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // A panic anywhere (a session task, which is then ended; a stanza's serialisation,
    // which is then dropped) is logged with where it came from, whatever RUST_BACKTRACE says.
    std::panic::set_hook(Box::new(|info| {
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!(panic = %info, %backtrace, "panicked");
    }));
    if let Some(Command::MigrateStore { from, to, ca_file }) = &cli.command {
        return migrate_store(from, to, ca_file.as_deref());
    }
    let Some(path) = cli.config else {
        eprintln!("error: --config FILE is required (see config/gateway.example.toml)");
        return ExitCode::from(EXIT_CONFIG);
    };
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        println!("{}: ok (component {})", path.display(), config.component.jid);
        return ExitCode::SUCCESS;
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            let restart_helps = matches!(error.downcast_ref(), Some(xmpp_gateway::RunError::WriterDied(_)));
            ExitCode::from(if restart_helps { EXIT_FAILURE } else { EXIT_CONFIG })
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    // One thread for everything (see ARCHITECTURE.md): the XMPP server is the bottleneck,
    // and a multi-thread runtime spends a third more CPU per message on wake-ups.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; shutting down");
            let _ = stop.send(true);
        });
        xmpp_gateway::run(config, shutdown).await.context("the gateway stopped")
    })
}

/// `migrate-store`: prints what was moved, or why not.
fn migrate_store(from: &str, to: &str, ca_file: Option<&std::path::Path>) -> ExitCode {
    use xmpp_gateway::store::migrate::{migrate, Location};
    let moved = (|| -> anyhow::Result<_> {
        let from = Location::parse(from, ca_file).context("--from")?;
        let to = Location::parse(to, ca_file).context("--to")?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
        let moved = runtime.block_on(migrate(&from, &to)).with_context(|| format!("moving {from:?} to {to:?}"))?;
        Ok((from, to, moved))
    })();
    match moved {
        Ok((from, to, moved)) => {
            println!("moved {from:?} to {to:?} and read it back: {moved}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the gateway");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
