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
    /// What the server may make the session hold or do (the same for every server).
    pub limits: ServerLimits,
}

/// Bounds on what one IRC server can cost the gateway, whoever runs it: a hostile or
/// broken server is cut off or ignored past them, never buffered without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Longest line kept, in bytes; the rest of a longer line is dropped as it is read.
    pub line_bytes: u32,
    /// Lines a second the server may send on average; a server sending faster for
    /// longer than the burst allows is disconnected. 0: no limit.
    pub lines_per_second: u32,
    /// Lines the server may send at once beyond the average (a big channel's NAMES, a
    /// reconnection rejoining fifty channels).
    pub lines_burst: u32,
    /// Members kept per channel; nicks past it are not shown (and a NAMES reply that
    /// never ends grows nothing).
    pub channel_members: u32,
    /// Channels kept of the server's `LIST` (discovery); the rest of a longer list is
    /// dropped as it arrives.
    pub list_channels: u32,
}

impl Default for ServerLimits {
    /// Lines of 16 KiB (IRCv3 tags can exceed 512 bytes); 1,000 lines a second after a
    /// burst of 10,000 (the busiest public channels see a few lines a second, and
    /// servers hold their clients far below this; the project's throughput benchmark
    /// peaks near 1,300 a second for a few seconds); 20,000 members per channel (the
    /// largest public channels have a few thousand); 10,000 channels of a LIST (with
    /// names and topics of at most 200 bytes: 4 MB, for the minute it is kept).
    fn default() -> Self {
        ServerLimits { line_bytes: 16 * 1024, lines_per_second: 1000, lines_burst: 10_000, channel_members: 20_000, list_channels: 10_000 }
    }
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
            limits: ServerLimits::default(),
        }
    }
}
