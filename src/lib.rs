//! xmpp-gateway: an XEP-0114 component that bridges XMPP to IRC and email.
//!
//! See ARCHITECTURE.md for the bird's-eye view. `main.rs` parses the command line and
//! calls [`run`]; each module below does one job.

pub mod adhoc;
pub mod admin;
pub mod address;
pub mod archive;
pub mod cluster;
pub mod component;
pub mod config;
pub mod connection;
pub mod disco;
pub mod download;
pub mod encode;
pub mod extensions;
pub mod email_side;
pub mod irc_side;
pub mod mam;
pub mod metrics;
pub mod muc;
pub mod multicast;
pub mod presence;
pub mod registration;
pub mod requests;
pub mod roster;
pub mod router;
pub mod sanitize;
pub mod sessions;
pub mod side;
pub mod stanza;
pub mod store;
pub mod upload;
pub mod vault;
pub mod writer;
pub mod xml_stream;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::email_side::EmailSide;
use crate::irc_side::IrcSide;
use crate::requests::Requests;
use crate::router::Router;
use crate::sessions::Sessions;
use crate::side::NetworkSide;
use crate::store::Store;
use crate::upload::{UploadQueues, Uploader};

/// How many session events may wait for the router.
const EVENT_QUEUE: usize = 4096;

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store could not be opened (wrong key, locked, unreadable).
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The server refused us for good (wrong secret).
    #[error(transparent)]
    Fatal(#[from] component::FatalError),
    /// The one task that writes to the server stopped (it never should: a stanza it cannot
    /// write is dropped, not fatal). The process exits non-zero so that systemd restarts
    /// it, rather than living on with nobody writing.
    #[error("the XMPP writer task stopped: {0}")]
    WriterDied(String),
    /// The message archive could not be started.
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    /// The cluster's peer listener cannot be set up.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The metrics endpoint's address cannot be listened on.
    #[error("cannot listen on metrics.listen = {address}: {source}")]
    Metrics {
        /// The configured address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The IRC bridge with the configured networks' settings and the limits on every server.
fn irc_bridge(config: &Config) -> bridge_irc::IrcBridge {
    let limits = config.limits.irc_server_limits();
    let networks = config
        .irc
        .networks
        .iter()
        .map(|(server, network)| {
            let settings = bridge_irc::NetworkSettings {
                port: network.port,
                tls: network.tls,
                ca_file: network.ca_file.clone(),
                flood_burst: network.flood_burst,
                flood_interval: std::time::Duration::from_millis(network.flood_interval_ms),
                nickserv: network.nickserv,
                reach: bridge_irc::Reach::Configured,
                limits,
            };
            (server.clone(), settings)
        })
        .collect();
    bridge_irc::IrcBridge::new(networks, limits)
}

/// The email bridge with the configured presets; its durable state lives in `store`.
fn email_bridge(config: &Config, store: Arc<dyn bridge_core::BridgeStore>) -> bridge_email::EmailBridge {
    let security = |s: config::Security| match s {
        config::Security::Tls => bridge_email::Security::Tls,
        config::Security::Starttls => bridge_email::Security::Starttls,
        config::Security::Plain => bridge_email::Security::Plain,
    };
    let providers = config
        .email
        .providers
        .iter()
        .filter_map(|(domain, p)| {
            // Validated at load time: both are host:port.
            let imap = bridge_email::Endpoint::parse(&p.imap, Some(security(p.imap_security)))?.configured();
            let smtp = bridge_email::Endpoint::parse(&p.smtp, Some(security(p.smtp_security)))?.configured();
            Some((domain.clone(), bridge_email::Provider { imap, smtp }))
        })
        .collect();
    let settings = bridge_email::EmailSettings {
        default_subject: config.email.default_subject.clone(),
        ca_file: config.email.ca_file.clone(),
        limits: config.limits.mail_limits(),
        outbox: bridge_email::OutboxLimits { mails: config.limits.outbox_mails_per_user, bytes: config.limits.outbox_bytes_per_user },
        attachment_bytes: config.limits.attachment_bytes_email,
        ..bridge_email::EmailSettings::default()
    };
    bridge_email::EmailBridge::new(providers, settings, store)
}

/// IRC passwords stored before they were kept per network are tied to none and sent
/// nowhere; with exactly one IRC network configured, that is the network they were for.
async fn assign_unassigned_irc_passwords(config: &Config, store: &Store) -> Result<(), store::StoreError> {
    let mut networks = config.irc.networks.keys();
    let (Some(network), None) = (networks.next(), networks.next()) else { return Ok(()) };
    let assigned = store.assign_unassigned_irc_passwords(network).await?;
    if assigned > 0 {
        tracing::info!(assigned, %network, "IRC passwords from before per-network passwords given to the one configured network");
    }
    Ok(())
}

/// The store the configuration names: sled in `storage.path`, or PostgreSQL at
/// `storage.url` (its schema migrated, its small trees loaded).
pub async fn open_store(config: &Config) -> Result<Store, store::StoreError> {
    match (config.storage.backend, &config.storage.url) {
        (config::StorageBackend::Postgres, Some(url)) => {
            let target = store::postgres::PgTarget::new(url.expose(), config.storage.ca_file.as_deref())
                .map_err(|error| store::StoreError::Config(error.to_string()))?;
            tracing::info!(store = target.name(), "opening the PostgreSQL store");
            // Where the key file is by default, as sled creates its directory.
            std::fs::create_dir_all(&config.storage.path)
                .map_err(|e| store::StoreError::Config(format!("cannot create storage.path {}: {e}", config.storage.path.display())))?;
            Store::open_postgres(target, &config.key_file()).await
        }
        _ => Store::open(&config.storage.path, &config.key_file()),
    }
}

/// Runs the gateway until `shutdown` turns true (then shuts down cleanly) or a fatal
/// error.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> Result<(), RunError> {
    let store = open_store(&config).await?;
    assign_unassigned_irc_passwords(&config, &store).await?;
    let archive = if config.archive.enabled {
        archive::Archive::start(store.archive()?, archive::Retention::of(&config.archive))?
    } else {
        archive::Archive::default()
    };
    let config = Arc::new(config);
    let (out, control, writer) = writer::spawn(config.keepalive());
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    // Several instances on one domain: the peer listener is bound before anything else
    // runs, so a wrong address stops the start at once.
    let membership = match (&config.cluster.listen, &config.storage.url) {
        (Some(listen), Some(url)) => {
            let (listener, advertised) = cluster::bind(listen, config.cluster.advertise.as_deref()).await?;
            let target = store::postgres::PgTarget::new(url.expose(), config.storage.ca_file.as_deref())
                .map_err(|error| store::StoreError::Config(error.to_string()))?;
            let id = cluster::new_instance_id();
            tracing::info!(instance = %id, peer = %advertised, "starting as one instance of a cluster");
            let lease = cluster::lease::Lease::new(target, id, advertised, std::time::Duration::from_secs(config.cluster.lease_secs));
            Some(cluster::Membership { lease, listener })
        }
        _ => None,
    };
    let requests = match &membership {
        Some(membership) => Requests::of_instance(&cluster::id_prefix(membership.lease.me())),
        None => Requests::default(),
    };
    let gateway = config.component.jid.to_ascii_lowercase();
    let uploader = match Uploader::new(&gateway, out.clone(), requests.clone(), config.registration.allowed_domains.clone()) {
        Ok(uploader) => Some(Arc::new(uploader)),
        Err(error) => {
            tracing::warn!(%error, "attachments will not be uploaded, nor linked files attached");
            None
        }
    };
    let uploads = uploader.clone().map(|uploader| UploadQueues::new(uploader, out.clone()));
    let mut email = email_bridge(&config, Arc::new(store.clone()));
    if let Some(uploader) = uploader {
        email = email.with_files(Arc::new(download::LinkedFiles::new(uploader)));
    }
    let email = Arc::new(email);
    let roster = roster::Roster::new(&gateway, out.clone(), requests.clone(), store.clone());
    // One XMPP side per kind of network, each with the sessions of its bridge: a new
    // network is one more line here.
    let sides: Vec<Box<dyn NetworkSide>> = vec![
        Box::new(
            IrcSide::new(
                &gateway,
                out.clone(),
                store.clone(),
                Sessions::new(vec![Arc::new(irc_bridge(&config))], events_tx.clone()),
                irc_side::IrcPolicy::of(&config),
                archive.clone(),
            )
            .with_roster(roster.clone()),
        ),
        Box::new(
            EmailSide::new(&gateway, out.clone(), store.clone(), Sessions::new(vec![email.clone()], events_tx), uploads, config.limits.message_bytes_email)
                .with_roster(roster.clone()),
        ),
    ];
    let mut router = Router::new(config.clone(), store.clone(), out.clone(), sides, email, requests, archive.clone());
    router.keep_rosters(roster);
    let mut cluster = match membership {
        Some(membership) => {
            router.join_cluster(membership.lease.clone());
            let max_bytes = config.limits.stanza_limits().bytes;
            cluster::Cluster::join(membership, &gateway, config.component.secret.clone(), out, max_bytes)
        }
        None => cluster::Cluster::single(),
    };
    let metrics = match &config.metrics.listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|source| RunError::Metrics { address: address.clone(), source })?;
            tracing::info!(%address, "serving metrics at /metrics");
            Some(tokio::spawn(metrics::serve(listener, router.tasks())))
        }
        None => None,
    };
    // The writer returns on its own only when asked to close at shutdown; if it dies, the
    // process exits non-zero rather than live on with nobody writing.
    let mut writer = writer;
    let (result, writer_done) = {
        let supervise = component::supervise(&config, &mut router, &mut cluster, control, events_rx, shutdown);
        tokio::pin!(supervise);
        tokio::select! {
            result = &mut supervise => (result, false),
            ended = &mut writer => match ended {
                Ok(()) => (supervise.await, true),
                Err(error) => {
                    let why = if error.is_panic() { format!("it panicked: {}", panic_text(error.into_panic())) } else { error.to_string() };
                    tracing::error!(%why, "the XMPP writer task stopped; exiting");
                    let _ = archive.flush().await;
                    let _ = store.flush().await;
                    return Err(RunError::WriterDied(why));
                }
            },
        }
    };
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    drop(router);
    if !writer_done {
        let _ = writer.await;
    }
    archive.flush().await?;
    store.flush().await?;
    Ok(result?)
}

/// The message of a panic payload (`panic!("...")` gives a `&str` or a `String`).
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(|| "(no message)".to_owned(), |t| (*t).to_owned()),
    }
}
