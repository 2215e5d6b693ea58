//! How to reach one IRC network, as the administrator configured it.

use std::path::PathBuf;
use std::time::Duration;

/// Connection settings of one IRC server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// TCP port.
    pub port: u16,
    /// Whether to speak TLS (certificates are always verified).
    pub tls: bool,
    /// An extra CA certificate (PEM) to trust besides the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Lines sent at once before the rate limit applies; 0 disables the limit.
    pub flood_burst: u32,
    /// Interval between lines once the burst is spent.
    pub flood_interval: Duration,
    /// Whether the network runs NickServ: a password is sent to it (`IDENTIFY`) only
    /// then, and only when the server offered no SASL.
    pub nickserv: bool,
    /// Where connections may go: a configured network is trusted as written; a server a
    /// user named must resolve to public addresses only.
    pub reach: bridge_net::Reach,
}

impl Default for NetworkSettings {
    /// What an unknown server gets: TLS on 6697, public addresses only, no NickServ, and
    /// a rate limit gentle enough for common flood protections (about 2 lines a second
    /// after a burst of 4).
    fn default() -> Self {
        NetworkSettings {
            port: 6697,
            tls: true,
            ca_file: None,
            flood_burst: 4,
            flood_interval: Duration::from_millis(500),
            nickserv: false,
            reach: bridge_net::Reach::PublicOnly,
        }
    }
}
