//! Mail out: lettre's SMTP transport with the user's own account, over implicit TLS or
//! STARTTLS with verified certificates, plain only where configured.

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::settings::{Account, EmailSettings, Security};

/// The transport for one account.
pub type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// Why a mail was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct SendError {
    /// Whether retrying cannot help (5xx, authentication refused, bad recipient).
    pub permanent: bool,
    /// The server's reply or the cause.
    pub text: String,
}

/// Why no transport could be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The network policy forbids the server (it resolves to a private address now):
    /// no use trying again.
    #[error("smtp_server: {0}")]
    Refused(String),
    /// Anything else (DNS down, a bad CA file): try again later.
    #[error("SMTP: {0}")]
    Other(String),
}

/// Builds the transport for `account`. A server the user gave is resolved here, once,
/// and must be public ([`bridge_net::Reach`]); lettre then connects to the address that
/// was checked (no lookup of its own), verifying the certificate for the name.
pub async fn transport(account: &Account, settings: &EmailSettings) -> Result<Transport, TransportError> {
    let endpoint = &account.smtp;
    let server = match endpoint.reach {
        bridge_net::Reach::Configured => endpoint.host.clone(),
        bridge_net::Reach::PublicOnly => {
            let addresses = bridge_net::resolve(&endpoint.host, endpoint.port, endpoint.reach).await.map_err(|error| match error {
                // Named by its credentials field.
                refused @ bridge_net::ConnectError::Refused { .. } => TransportError::Refused(refused.to_string()),
                error => TransportError::Other(error.to_string()),
            })?;
            let address = addresses.first().ok_or_else(|| TransportError::Other(format!("{} has no address", endpoint.host)))?;
            address.ip().to_string()
        }
    };
    let tls_parameters = || -> Result<TlsParameters, TransportError> {
        let mut builder = TlsParameters::builder(endpoint.host.clone());
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path).map_err(|e| TransportError::Other(format!("reading CA file {}: {e}", path.display())))?;
            let certificate = Certificate::from_pem(&pem).map_err(|e| TransportError::Other(format!("CA file {}: {e}", path.display())))?;
            builder = builder.add_root_certificate(certificate);
        }
        builder.build_rustls().map_err(|e| TransportError::Other(format!("TLS set-up: {e}")))
    };
    let tls = match endpoint.security {
        Security::Tls => Tls::Wrapper(tls_parameters()?),
        Security::Starttls => Tls::Required(tls_parameters()?),
        Security::Plain => Tls::None,
    };
    Ok(Transport::builder_dangerous(server)
        .port(endpoint.port)
        .tls(tls)
        .credentials(Credentials::new(account.login.clone(), account.password.expose().to_owned()))
        .timeout(Some(std::time::Duration::from_secs(30)))
        .build())
}

/// Connects and authenticates without sending anything: the registration check.
pub async fn check(account: &Account, settings: &EmailSettings) -> Result<(), String> {
    let transport = transport(account, settings).await.map_err(|error| error.to_string())?;
    match transport.test_connection().await {
        Ok(true) => Ok(()),
        Ok(false) => Err("the SMTP server did not answer".into()),
        Err(error) => Err(format!("SMTP: {error}")),
    }
}

/// Sends a formatted message to the envelope's recipients.
pub async fn send(transport: &Transport, envelope: &Envelope, raw: &[u8]) -> Result<(), SendError> {
    match transport.send_raw(envelope, raw).await {
        Ok(_) => {
            bridge_core::counters::count(&bridge_core::counters::COUNTERS.mails_out);
            Ok(())
        }
        Err(error) => Err(SendError { permanent: error.is_permanent(), text: error.to_string() }),
    }
}
