//! Where a user's mail lives and how to reach it: the account, its servers, and the
//! bridge-wide settings.

use std::path::PathBuf;
use std::time::Duration;

use bridge_core::Secret;

/// Transport security of a mail connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Implicit TLS from the first byte.
    Tls,
    /// Plain connection upgraded with STARTTLS (required, never optional).
    Starttls,
    /// No encryption: only where the administrator's configuration says so.
    Plain,
}

/// A server: host, port, security.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address (also the name the certificate must carry).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// How the connection is secured.
    pub security: Security,
    /// Where connections may go: a preset's server is trusted as written, a server a
    /// user gave must resolve to public addresses only.
    pub reach: bridge_net::Reach,
}

impl Endpoint {
    /// Reads `host:port`, with the security the port conventionally implies (993 and 465
    /// implicit TLS, otherwise STARTTLS) unless given. A server read here is one a user
    /// gave (public addresses only) until [`Endpoint::configured`] says otherwise.
    pub fn parse(value: &str, security: Option<Security>) -> Option<Endpoint> {
        let (host, port) = value.rsplit_once(':')?;
        let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
        if host.is_empty() {
            return None;
        }
        let security = security.unwrap_or(if port == 993 || port == 465 { Security::Tls } else { Security::Starttls });
        Some(Endpoint { host: host.to_owned(), port, security, reach: bridge_net::Reach::PublicOnly })
    }

    /// The same server, configured by the administrator: trusted as written.
    #[must_use]
    pub fn configured(self) -> Endpoint {
        Endpoint { reach: bridge_net::Reach::Configured, ..self }
    }
}

/// Servers preset for an email domain by the administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// IMAP server.
    pub imap: Endpoint,
    /// SMTP submission server.
    pub smtp: Endpoint,
}

/// One user's mail account, resolved from their registration and the presets.
#[derive(Debug, Clone)]
pub struct Account {
    /// The address: the From of every mail sent.
    pub address: String,
    /// IMAP/SMTP login (the address unless the user gave another).
    pub login: String,
    /// IMAP/SMTP password.
    pub password: Secret,
    /// Where mail is read.
    pub imap: Endpoint,
    /// Where mail is sent.
    pub smtp: Endpoint,
    /// Whether delivered mail is flagged `\Seen`; otherwise flags are left alone
    /// (mail is fetched with BODY.PEEK).
    pub mark_seen: bool,
    /// Whether a copy of every mail sent is appended to the Sent folder.
    pub save_sent: bool,
    /// The name shown beside the address in the From of mail sent.
    pub display_name: Option<String>,
    /// Whether mail the user's client reports displayed (XEP-0333) is marked `\Seen`.
    pub mark_displayed: bool,
    /// How many of the newest mails' correspondents are reported once
    /// (`Event::Correspondents`), for the roster; 0: none.
    pub import_contacts: u32,
    /// Folders watched besides INBOX, each by a watcher of its own.
    pub folders: Vec<String>,
}

/// Settings of the whole email bridge.
#[derive(Debug, Clone)]
pub struct EmailSettings {
    /// Subject of mails written without one.
    pub default_subject: String,
    /// Extra CA certificate to trust (besides webpki roots) for IMAP and SMTP.
    pub ca_file: Option<PathBuf>,
    /// How often to poll when the server has no IDLE.
    pub poll_interval: Duration,
    /// How long one IDLE may last before it is re-issued (RFC 2177: under 29 minutes).
    pub idle_timeout: Duration,
    /// What one mail may cost: fetched size, MIME nesting, decoded bytes.
    pub limits: crate::incoming::MailLimits,
    /// What one user's outbox may hold while their SMTP server does not take it.
    pub outbox: OutboxLimits,
    /// Bytes of one file a user links to that is attached to their mail; a larger one is
    /// refused (`resource-constraint`).
    pub attachment_bytes: usize,
}

/// How much mail one user may have waiting for their SMTP server; past it a message is
/// refused (`resource-constraint`), not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Mails waiting.
    pub mails: usize,
    /// Bytes of formatted mail waiting.
    pub bytes: usize,
}

impl Default for OutboxLimits {
    /// 100 mails, 25 MiB.
    fn default() -> Self {
        OutboxLimits { mails: 100, bytes: 25 * 1024 * 1024 }
    }
}

impl Default for EmailSettings {
    fn default() -> Self {
        EmailSettings {
            default_subject: "(no subject)".into(),
            ca_file: None,
            poll_interval: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(25 * 60),
            limits: crate::incoming::MailLimits::default(),
            outbox: OutboxLimits::default(),
            attachment_bytes: 10 * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_imply_security_from_the_port() {
        assert_eq!(Endpoint::parse("imap.x.org:993", None).unwrap().security, Security::Tls);
        assert_eq!(Endpoint::parse("smtp.x.org:587", None).unwrap().security, Security::Starttls);
        assert_eq!(Endpoint::parse("127.0.0.1:1143", Some(Security::Plain)).unwrap().security, Security::Plain);
        assert!(Endpoint::parse("nope", None).is_none());
        assert!(Endpoint::parse(":25", None).is_none());
        assert!(Endpoint::parse("x:0", None).is_none());
    }
}
