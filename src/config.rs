//! The gateway's configuration: a TOML file (`--config FILE`) with every key overridable by
//! an environment variable `GATEWAY__SECTION__KEY`, read with the `config` crate.
//!
//! Keys are those of `config/gateway.example.toml`, which documents each. Only `component.jid`, `component.secret` and
//! `storage.path` are required (and `storage.url` with PostgreSQL). An unknown key, a missing key or a bad value is a
//! [`ConfigError`] whose one-line message names the key and the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bridge_core::Secret;
use serde::{Deserialize, Deserializer};

/// Prefix of the environment variables that override file keys.
const ENV_PREFIX: &str = "GATEWAY";
/// Separator between prefix, section and key in those variables.
const ENV_SEPARATOR: &str = "__";
/// Keys that hold lists; in the environment they are comma-separated.
const LIST_KEYS: &[&str] = &["registration.allowed_domains", "registration.admins"];
/// The longest a duration in seconds of the config may be (`component.keepalive_secs`...).
const DAY_SECS: u64 = 86_400;

/// Everything the gateway is told by its administrator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How to reach the XMPP server and who we are on it.
    pub component: ComponentConfig,
    /// Where users and their credentials are kept.
    pub storage: StorageConfig,
    /// Who may use the gateway and who administers it.
    #[serde(default)]
    pub registration: RegistrationConfig,
    /// Per-IRC-network settings.
    #[serde(default)]
    pub irc: IrcConfig,
    /// Email provider presets.
    #[serde(default)]
    pub email: EmailConfig,
    /// What one user may cost everyone else.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The Prometheus endpoint (off unless `listen` is set).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The message archive (XEP-0313) of channels and private conversations.
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// Several instances on one domain (off unless `listen` is set).
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// Several gateway instances serving one domain: an ejabberd cluster routes to all of
/// them, PostgreSQL (`storage.backend = "postgres"`) says which serves which user, and
/// each hands the others' users' stanzas to them over a peer link (`src/cluster/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Where this instance listens for the other instances' peer links (`host:port`);
    /// setting it turns the cluster mode on.
    #[serde(default)]
    pub listen: Option<String>,
    /// The address the others dial to reach this one (default: the bound `listen`
    /// address, which then must not be a wildcard).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Seconds an instance that cannot reach the database keeps its users; it ends their
    /// sessions itself 3 s before, and the others take them after. A killed instance's
    /// users move within about 3 s whatever this is.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { listen: None, advertise: None, lease_secs: default_lease_secs() }
    }
}

fn default_lease_secs() -> u64 {
    10
}

/// What the gateway keeps of what was said, for clients to fetch (XEP-0313).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Whether channel lines and private messages are archived; when off, nothing is
    /// written and archive queries get `feature-not-implemented`.
    #[serde(default = "default_archive_enabled")]
    pub enabled: bool,
    /// Days a message is kept; 0: no age limit.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Messages kept per conversation (a channel's log, shared by the users of the
    /// gateway in it, or one user's private conversation), the newest; 0: no count limit.
    #[serde(default = "default_retention_messages")]
    pub retention_messages: u64,
}

fn default_archive_enabled() -> bool {
    true
}
fn default_retention_days() -> u32 {
    365
}
fn default_retention_messages() -> u64 {
    100_000
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig { enabled: default_archive_enabled(), retention_days: default_retention_days(), retention_messages: default_retention_messages() }
    }
}

/// Metrics for operators.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve Prometheus's text format (`GET /metrics`), as `host:port`; no
    /// endpoint when absent. Anyone who can connect may read the figures: keep it on
    /// loopback or a private network.
    pub listen: Option<String>,
}

/// Per-user limits, each refused with an error stanza that says which (never by dropping).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// IRC networks one user may be connected to at once (one connection each).
    #[serde(default = "default_irc_networks_per_user")]
    pub irc_networks_per_user: usize,
    /// IRC channels one user may be in at once, over all networks.
    #[serde(default = "default_channels_per_user")]
    pub channels_per_user: usize,
    /// Bytes of one message's body to IRC (it is split into lines; longer is refused).
    #[serde(default = "default_message_bytes_irc")]
    pub message_bytes_irc: usize,
    /// Bytes of one message's body to email.
    #[serde(default = "default_message_bytes_email")]
    pub message_bytes_email: usize,
    /// Bytes of one file a user links to (XEP-0066/XEP-0363) that is fetched from their
    /// upload service and attached to their mail; a larger one is refused.
    #[serde(default = "default_attachment_bytes_email")]
    pub attachment_bytes_email: usize,
    /// Bytes of one stanza from the XMPP server; a bigger one is skipped as it is read
    /// (never held) and its sender told.
    #[serde(default = "default_stanza_bytes")]
    pub stanza_bytes: usize,
    /// Elements nested in one stanza from the XMPP server (the same).
    #[serde(default = "default_xml_depth")]
    pub xml_depth: usize,
    /// Longest line kept from an IRC server, in bytes; the rest is dropped as it is read.
    #[serde(default = "default_irc_line_bytes")]
    pub irc_line_bytes: u32,
    /// Lines a second an IRC server may send on average; one that goes on faster than
    /// its burst allows is disconnected (the user is told). 0: no limit.
    #[serde(default = "default_irc_lines_per_second")]
    pub irc_lines_per_second: u32,
    /// Lines an IRC server may send at once beyond that average.
    #[serde(default = "default_irc_lines_burst")]
    pub irc_lines_burst: u32,
    /// Members shown per IRC channel; nicks past it are not.
    #[serde(default = "default_irc_channel_members")]
    pub irc_channel_members: u32,
    /// Channels kept of an IRC server's list (discovery of the server); the rest of a
    /// longer list is not shown.
    #[serde(default = "default_irc_list_channels")]
    pub irc_list_channels: u32,
    /// Mails larger than this are announced with their header, not fetched.
    #[serde(default = "default_mail_fetch_bytes")]
    pub mail_fetch_bytes: u32,
    /// Multiparts nested deeper than this in a mail are not read (a note says so).
    #[serde(default = "default_mime_depth")]
    pub mime_depth: usize,
    /// Decoded bytes kept from one mail; attachments past it are listed, not passed on.
    #[serde(default = "default_mail_decoded_bytes")]
    pub mail_decoded_bytes: usize,
    /// Mails one user may have waiting for their SMTP server; past it a message is
    /// refused, not queued.
    #[serde(default = "default_outbox_mails_per_user")]
    pub outbox_mails_per_user: usize,
    /// Bytes of mail (as stored) one user may have waiting.
    #[serde(default = "default_outbox_bytes_per_user")]
    pub outbox_bytes_per_user: usize,
    /// New registrations from one XMPP domain in an hour; 0: no limit. Counted since the
    /// gateway started.
    #[serde(default = "default_registrations_per_domain_per_hour")]
    pub registrations_per_domain_per_hour: usize,
}

fn default_outbox_mails_per_user() -> usize {
    bridge_email::OutboxLimits::default().mails
}
fn default_outbox_bytes_per_user() -> usize {
    bridge_email::OutboxLimits::default().bytes
}
fn default_registrations_per_domain_per_hour() -> usize {
    60
}

fn default_mail_fetch_bytes() -> u32 {
    bridge_email::incoming::MailLimits::default().fetch_bytes
}
fn default_mime_depth() -> usize {
    bridge_email::incoming::MailLimits::default().mime_depth
}
fn default_mail_decoded_bytes() -> usize {
    bridge_email::incoming::MailLimits::default().decoded_bytes
}

fn default_irc_line_bytes() -> u32 {
    bridge_irc::ServerLimits::default().line_bytes
}
fn default_irc_lines_per_second() -> u32 {
    bridge_irc::ServerLimits::default().lines_per_second
}
fn default_irc_lines_burst() -> u32 {
    bridge_irc::ServerLimits::default().lines_burst
}
fn default_irc_channel_members() -> u32 {
    bridge_irc::ServerLimits::default().channel_members
}
fn default_irc_list_channels() -> u32 {
    bridge_irc::ServerLimits::default().list_channels
}

fn default_stanza_bytes() -> usize {
    crate::xml_stream::StanzaLimits::default().bytes
}
fn default_xml_depth() -> usize {
    crate::xml_stream::StanzaLimits::default().depth
}

impl LimitsConfig {
    /// The limits of the component stream's reader.
    #[must_use]
    pub fn stanza_limits(&self) -> crate::xml_stream::StanzaLimits {
        crate::xml_stream::StanzaLimits { bytes: self.stanza_bytes, depth: self.xml_depth }
    }

    /// What one mail may cost.
    #[must_use]
    pub fn mail_limits(&self) -> bridge_email::incoming::MailLimits {
        bridge_email::incoming::MailLimits {
            fetch_bytes: self.mail_fetch_bytes,
            mime_depth: self.mime_depth,
            decoded_bytes: self.mail_decoded_bytes,
        }
    }

    /// What every IRC server may make the gateway hold or do.
    #[must_use]
    pub fn irc_server_limits(&self) -> bridge_irc::ServerLimits {
        bridge_irc::ServerLimits {
            line_bytes: self.irc_line_bytes.max(512),
            lines_per_second: self.irc_lines_per_second,
            lines_burst: self.irc_lines_burst,
            channel_members: self.irc_channel_members,
            list_channels: self.irc_list_channels,
        }
    }
}

fn default_irc_networks_per_user() -> usize {
    5
}
fn default_channels_per_user() -> usize {
    50
}
fn default_message_bytes_irc() -> usize {
    16 * 1024
}
fn default_message_bytes_email() -> usize {
    1024 * 1024
}
fn default_attachment_bytes_email() -> usize {
    10 * 1024 * 1024
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            irc_networks_per_user: default_irc_networks_per_user(),
            channels_per_user: default_channels_per_user(),
            message_bytes_irc: default_message_bytes_irc(),
            message_bytes_email: default_message_bytes_email(),
            attachment_bytes_email: default_attachment_bytes_email(),
            stanza_bytes: default_stanza_bytes(),
            xml_depth: default_xml_depth(),
            irc_line_bytes: default_irc_line_bytes(),
            irc_lines_per_second: default_irc_lines_per_second(),
            irc_lines_burst: default_irc_lines_burst(),
            irc_channel_members: default_irc_channel_members(),
            irc_list_channels: default_irc_list_channels(),
            mail_fetch_bytes: default_mail_fetch_bytes(),
            mime_depth: default_mime_depth(),
            mail_decoded_bytes: default_mail_decoded_bytes(),
            outbox_mails_per_user: default_outbox_mails_per_user(),
            outbox_bytes_per_user: default_outbox_bytes_per_user(),
            registrations_per_domain_per_hour: default_registrations_per_domain_per_hour(),
        }
    }
}

/// The XEP-0114 connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    /// The gateway's own domain, as declared in the server's `Component` block.
    pub jid: String,
    /// The shared secret of the XEP-0114 handshake; never logged.
    #[serde(deserialize_with = "secret")]
    pub secret: Secret,
    /// The server's component port (`host:port`), or several separated by commas (the
    /// nodes of a cluster): after a lost connection the next one is tried.
    #[serde(default = "default_server")]
    pub server: String,
    /// Seconds of silence after which we check that the server is still there.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
    /// Upper bound of the reconnection backoff, in seconds.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_secs: u64,
}

impl ComponentConfig {
    /// The servers of `server`, in the order they are tried.
    pub fn servers(&self) -> impl Iterator<Item = &str> {
        self.server.split(',').map(str::trim).filter(|s| !s.is_empty())
    }
}

/// Where the gateway keeps its data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The engine: embedded sled (the default, nothing to install) or PostgreSQL (shared
    /// by several instances).
    #[serde(default)]
    pub backend: StorageBackend,
    /// The sled directory; with PostgreSQL, only where the key file is by default.
    pub path: PathBuf,
    /// The credentials key; `<path>/secret.key` when absent, created 0600 on first start.
    /// Several instances on one PostgreSQL database need the same key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The PostgreSQL connection string (`postgres://user:password@host/db?sslmode=...`),
    /// required with `backend = "postgres"`; a secret, as it may hold the password.
    #[serde(default, deserialize_with = "optional_secret")]
    pub url: Option<Secret>,
    /// Certificates to trust for PostgreSQL's TLS besides the webpki roots (a private CA or
    /// the server's self-signed certificate).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The storage engines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// sled, in `storage.path`.
    #[default]
    Sled,
    /// PostgreSQL, at `storage.url`.
    Postgres,
}

/// Access control.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    /// XMPP domains whose users may use the gateway; empty means any domain.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// Bare JIDs that may run admin commands.
    #[serde(default)]
    pub admins: Vec<String>,
}

/// IRC settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IrcConfig {
    /// Settings per IRC server host name; servers not listed use TLS on 6697.
    #[serde(default)]
    pub networks: BTreeMap<String, IrcNetworkConfig>,
    /// Whether only the networks under `networks` may be used (biboumi's fixed server,
    /// Spectrum 2's `allowed_servers`). Without it any public server may be, but never
    /// one on a private address unless it is configured.
    #[serde(default)]
    pub networks_only: bool,
    /// What XEP-0444 reactions become on IRC.
    #[serde(default)]
    pub reactions: Reactions,
}

/// What a user's XEP-0444 reaction becomes on IRC, which has no reactions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reactions {
    /// An action: `/me reacted 👍 to bob: "the start of the message"`.
    #[default]
    Action,
    /// Nothing: reactions stay on XMPP (other resources still see them).
    Off,
}

impl IrcConfig {
    /// The networks users may reach, by host in lower case: `None` for any public one.
    #[must_use]
    pub fn allowed_networks(&self) -> Option<std::collections::BTreeSet<String>> {
        self.networks_only.then(|| self.networks.keys().map(|host| host.to_ascii_lowercase()).collect())
    }
}

/// One IRC network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IrcNetworkConfig {
    /// The server's port.
    #[serde(default = "default_irc_port")]
    pub port: u16,
    /// Whether to speak TLS (certificates are always verified).
    #[serde(default = "default_true")]
    pub tls: bool,
    /// An extra CA certificate (PEM) to trust for this network, e.g. a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Lines sent at once before the rate limit applies; 0 turns the limit off.
    #[serde(default = "default_flood_burst")]
    pub flood_burst: u32,
    /// Milliseconds between lines once the burst is spent.
    #[serde(default = "default_flood_interval")]
    pub flood_interval_ms: u64,
    /// Whether the network runs NickServ: only then is a user's password for it sent as
    /// `PRIVMSG NickServ :IDENTIFY` when the server offers no SASL. Off by default: on a
    /// network without services, anyone could hold the nick NickServ and collect it.
    #[serde(default)]
    pub nickserv: bool,
}

/// Email settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// Presets per email domain, so users give only their address and password.
    #[serde(default)]
    pub providers: BTreeMap<String, EmailProviderConfig>,
    /// Subject of mails written without one.
    #[serde(default = "default_subject")]
    pub default_subject: String,
    /// An extra CA certificate (PEM) trusted for IMAP and SMTP, e.g. a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The ports a user may give for their own IMAP or SMTP server (servers of a preset
    /// may use any): the standard mail ports, so that the gateway cannot be made to
    /// knock on other services.
    #[serde(default = "default_user_server_ports")]
    pub user_server_ports: Vec<u16>,
}

fn default_user_server_ports() -> Vec<u16> {
    vec![993, 143, 465, 587, 25]
}

impl EmailConfig {
    /// Whether `host:port` (already checked as such) is a server of a preset.
    #[must_use]
    pub fn is_preset_server(&self, host: &str, port: u16) -> bool {
        self.providers.values().flat_map(|p| [&p.imap, &p.smtp]).any(|server| {
            server.rsplit_once(':').is_some_and(|(h, p)| h.eq_ignore_ascii_case(host) && p.parse() == Ok(port))
        })
    }
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig { providers: BTreeMap::new(), default_subject: default_subject(), ca_file: None, user_server_ports: default_user_server_ports() }
    }
}

/// One email provider preset.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailProviderConfig {
    /// IMAP server, `host:port`.
    pub imap: String,
    /// How to secure the IMAP connection.
    #[serde(default)]
    pub imap_security: Security,
    /// SMTP submission server, `host:port`.
    pub smtp: String,
    /// How to secure the SMTP connection.
    #[serde(default)]
    pub smtp_security: Security,
}

/// Transport security of a mail connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Implicit TLS from the first byte.
    #[default]
    Tls,
    /// Plain connection upgraded with STARTTLS.
    Starttls,
    /// No encryption: only for a server on the same machine.
    Plain,
}

fn default_server() -> String {
    "127.0.0.1:5347".into()
}
fn default_keepalive() -> u64 {
    60
}
fn default_reconnect_max() -> u64 {
    30
}
fn default_irc_port() -> u16 {
    6697
}
fn default_flood_burst() -> u32 {
    4
}
fn default_flood_interval() -> u64 {
    500
}
fn default_subject() -> String {
    "(no subject)".into()
}
fn default_true() -> bool {
    true
}

fn secret<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
    String::deserialize(deserializer).map(Secret::from)
}

fn optional_secret<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Secret>, D::Error> {
    Option::<String>::deserialize(deserializer).map(|value| value.map(Secret::from))
}

/// Why the configuration was refused. Each message is one line naming the key and the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing, unreadable, not TOML, or a key is unknown, missing or mistyped.
    #[error("{file}: {message}")]
    Load {
        /// The configuration file.
        file: String,
        /// What the config crate or serde said, which names the key.
        message: String,
    },
    /// A key has a value of the right type that makes no sense.
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        /// The configuration file.
        file: String,
        /// The dotted key, e.g. `component.jid`.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

impl Config {
    /// Reads `file` and the `GATEWAY__*` environment, then validates the result.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// [`Config::load`] with an explicit environment, for tests.
    pub fn load_with_env(
        file: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let file_name = file.display().to_string();
        let load_error = |error: config::ConfigError| ConfigError::Load {
            file: file_name.clone(),
            message: error.to_string().replace('\n', " "),
        };
        if !file.is_file() {
            return Err(ConfigError::Load {
                file: file_name,
                message: "no such file".into(),
            });
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
            .collect();
        let mut environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .list_separator(",")
            .try_parsing(true)
            .source(Some(env));
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        let config: Config = config::Config::builder()
            .add_source(config::File::from(file).format(config::FileFormat::Toml))
            .add_source(environment)
            .build()
            .map_err(load_error)?
            .try_deserialize()
            .map_err(load_error)?;
        config.validate(&file_name)?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message,
        };
        if !is_domain(&self.component.jid) {
            return Err(invalid(
                "component.jid",
                format!(
                    "{:?} is not a domain; expected the component's domain such as \"gateway.example.com\"",
                    self.component.jid
                ),
            ));
        }
        if self.component.secret.expose().is_empty() {
            return Err(invalid("component.secret", "must not be empty".into()));
        }
        match (self.storage.backend, &self.storage.url) {
            (StorageBackend::Postgres, None) => return Err(invalid("storage.url", "is required with backend = \"postgres\"".into())),
            (StorageBackend::Postgres, Some(url)) => {
                if let Err(error) = crate::store::postgres::PgTarget::new(url.expose(), None) {
                    return Err(invalid("storage.url", error.to_string()));
                }
            }
            (StorageBackend::Sled, Some(_)) => return Err(invalid("storage.url", "is only read with backend = \"postgres\"".into())),
            (StorageBackend::Sled, None) => {}
        }
        if self.component.servers().next().is_none() {
            return Err(invalid("component.server", "names no server; expected host:port, such as \"127.0.0.1:5347\"".into()));
        }
        for server in self.component.servers() {
            if let Err(message) = check_host_port(server) {
                return Err(invalid("component.server", message));
            }
        }
        if let Some(listen) = &self.cluster.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid("cluster.listen", format!("{listen:?} is not an address and port such as \"10.0.0.5:5390\"")));
            }
            if self.storage.backend != StorageBackend::Postgres {
                return Err(invalid("cluster.listen", "several instances share their state in PostgreSQL: set storage.backend = \"postgres\"".into()));
            }
            if self.cluster.lease_secs < 5 {
                return Err(invalid("cluster.lease_secs", "must be at least 5 (an instance ends its sessions 3 s before its lease runs out)".into()));
            }
        }
        if let Some(advertise) = &self.cluster.advertise {
            if let Err(message) = check_host_port(advertise) {
                return Err(invalid("cluster.advertise", message));
            }
        }
        // A day at most: timers are set that far ahead (and a larger value is a typo).
        for (key, secs) in [("component.keepalive_secs", self.component.keepalive_secs), ("component.reconnect_max_secs", self.component.reconnect_max_secs)] {
            if !(1..=DAY_SECS).contains(&secs) {
                return Err(invalid(key, format!("must be from 1 to {DAY_SECS} (a day), not {secs}")));
            }
        }
        for (i, domain) in self.registration.allowed_domains.iter().enumerate() {
            if !is_domain(domain) {
                return Err(invalid(
                    &format!("registration.allowed_domains[{i}]"),
                    format!("{domain:?} is not a domain"),
                ));
            }
        }
        for (i, admin) in self.registration.admins.iter().enumerate() {
            if !admin.split_once('@').is_some_and(|(u, d)| !u.is_empty() && is_domain(d)) {
                return Err(invalid(
                    &format!("registration.admins[{i}]"),
                    format!("{admin:?} is not a bare JID such as \"admin@example.com\""),
                ));
            }
        }
        for (name, network) in &self.irc.networks {
            if network.port == 0 {
                return Err(invalid(&format!("irc.networks.\"{name}\".port"), "must not be 0".into()));
            }
        }
        if let Some(listen) = &self.metrics.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid("metrics.listen", format!("{listen:?} is not an address and port such as \"127.0.0.1:9469\"")));
            }
        }
        for (domain, provider) in &self.email.providers {
            for (field, value) in [("imap", &provider.imap), ("smtp", &provider.smtp)] {
                if let Err(message) = check_host_port(value) {
                    return Err(invalid(&format!("email.providers.\"{domain}\".{field}"), message));
                }
            }
        }
        Ok(())
    }

    /// The credentials key file: the configured one, or `secret.key` in the store.
    pub fn key_file(&self) -> PathBuf {
        self.storage
            .key_file
            .clone()
            .unwrap_or_else(|| self.storage.path.join("secret.key"))
    }

    /// The XMPP servers to connect to, in the order they are tried.
    pub fn servers(&self) -> impl Iterator<Item = &str> {
        self.component.servers()
    }

    /// How long the connection may stay silent before we check on the server.
    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.component.keepalive_secs)
    }

    /// Whether a user of `domain` may use the gateway.
    pub fn domain_allowed(&self, domain: &str) -> bool {
        let allowed = &self.registration.allowed_domains;
        allowed.is_empty() || allowed.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// Whether `s` looks like a DNS name or an IPv4 address usable as a JID domain.
fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Checks a `host:port` value (a domain or IP address, and a non-zero port).
pub fn check_host_port(value: &str) -> Result<(), String> {
    if value.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match value.rsplit_once(':') {
        Some((host, port)) if is_domain(host) && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(format!("{value:?} is not host:port, such as \"127.0.0.1:5347\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(toml: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(toml.as_bytes()).unwrap();
        file
    }

    const MINIMAL: &str = "[component]\njid = \"gw.localhost\"\nsecret = \"s3cret\"\n[storage]\npath = \"/tmp/x\"\n";

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let file = write(toml);
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_with_env(file.path(), env)
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.component.server, "127.0.0.1:5347");
        assert_eq!(c.key_file(), PathBuf::from("/tmp/x/secret.key"));
        assert!(c.domain_allowed("anything.org"));
        assert_eq!(c.component.keepalive_secs, 60);
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.example.toml");
        let c = Config::load_with_env(&path, std::iter::empty()).unwrap();
        assert_eq!(c.component.jid, "gateway.localhost");
        assert!(c.irc.networks.contains_key("127.0.0.1"));
        assert_eq!(c.email.providers["example.test"].smtp_security, Security::Plain);
    }

    #[test]
    fn environment_overrides_file() {
        let c = load(
            MINIMAL,
            &[
                ("GATEWAY__COMPONENT__SECRET", "12345"),
                ("GATEWAY__COMPONENT__SERVER", "127.0.0.1:6000"),
                ("GATEWAY__STORAGE__KEY_FILE", "/k"),
                ("GATEWAY__REGISTRATION__ALLOWED_DOMAINS", "a.org,b.org"),
                ("OTHER__COMPONENT__JID", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.component.secret.expose(), "12345");
        assert_eq!(c.component.server, "127.0.0.1:6000");
        assert_eq!(c.key_file(), PathBuf::from("/k"));
        assert!(c.domain_allowed("B.org") && !c.domain_allowed("c.org"));
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let file = write(&format!("{MINIMAL}[registration]\nallowed_domain = [\"x\"]\n"));
        let err = Config::load_with_env(file.path(), std::iter::empty()).unwrap_err().to_string();
        assert!(err.contains("allowed_domain"), "{err}");
        assert!(err.contains(&file.path().display().to_string()), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn missing_key_is_named() {
        let err = load("[component]\njid = \"gw\"\n[storage]\npath = \"/x\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (format!("{MINIMAL}[irc.networks.\"h\"]\nport = \"x\"\n"), "port"),
            (format!("{MINIMAL}[irc.networks.\"h\"]\nport = 70000\n"), "port"),
            (MINIMAL.replace("gw.localhost", "user@gw"), "component.jid"),
            (MINIMAL.replace("s3cret", ""), "component.secret"),
            (format!("{MINIMAL}[registration]\nadmins = [\"nobody\"]\n"), "registration.admins[0]"),
            (MINIMAL.replace("s3cret\"\n", "s3cret\"\nkeepalive_secs = 0\n"), "component.keepalive_secs"),
            (MINIMAL.replace("s3cret\"\n", "s3cret\"\nreconnect_max_secs = 9223372036854775807\n"), "component.reconnect_max_secs"),
            (
                format!("{MINIMAL}[email.providers.\"e.org\"]\nimap = \"e.org\"\nsmtp = \"e.org:25\"\n"),
                "email.providers.\"e.org\".imap",
            ),
            (
                format!("{MINIMAL}[email.providers.\"e.org\"]\nimap = \"e.org:1\"\nsmtp = \"e.org:25\"\nsmtp_security = \"none\"\n"),
                "smtp_security",
            ),
        ];
        for (toml, key) in cases {
            let err = load(&toml, &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn missing_file_is_named() {
        let err = Config::load_with_env(Path::new("/nonexistent/gw.toml"), std::iter::empty())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/gw.toml"), "{err}");
    }

    #[test]
    fn secret_does_not_print() {
        let c = load(MINIMAL, &[]).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
