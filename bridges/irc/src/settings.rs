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
}

impl Default for NetworkSettings {
    /// What an unknown server gets: TLS on 6697, and a rate limit gentle enough for
    /// common flood protections (about 2 lines a second after a burst of 4).
    fn default() -> Self {
        NetworkSettings {
            port: 6697,
            tls: true,
            ca_file: None,
            flood_burst: 4,
            flood_interval: Duration::from_millis(500),
        }
    }
}
