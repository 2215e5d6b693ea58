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

/// Builds the transport for `account`.
pub fn transport(account: &Account, settings: &EmailSettings) -> Result<Transport, String> {
    let endpoint = &account.smtp;
    let tls_parameters = || -> Result<TlsParameters, String> {
        let mut builder = TlsParameters::builder(endpoint.host.clone());
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("reading CA file {}: {e}", path.display()))?;
            let certificate = Certificate::from_pem(&pem).map_err(|e| format!("CA file {}: {e}", path.display()))?;
            builder = builder.add_root_certificate(certificate);
        }
        builder.build_rustls().map_err(|e| format!("TLS set-up: {e}"))
    };
    let tls = match endpoint.security {
        Security::Tls => Tls::Wrapper(tls_parameters()?),
        Security::Starttls => Tls::Required(tls_parameters()?),
        Security::Plain => Tls::None,
    };
    Ok(Transport::builder_dangerous(endpoint.host.clone())
        .port(endpoint.port)
        .tls(tls)
        .credentials(Credentials::new(account.login.clone(), account.password.expose().to_owned()))
        .timeout(Some(std::time::Duration::from_secs(30)))
        .build())
}

/// Connects and authenticates without sending anything: the registration check.
pub async fn check(account: &Account, settings: &EmailSettings) -> Result<(), String> {
    let transport = transport(account, settings)?;
    match transport.test_connection().await {
        Ok(true) => Ok(()),
        Ok(false) => Err("the SMTP server did not answer".into()),
        Err(error) => Err(format!("SMTP: {error}")),
    }
}

/// Sends a formatted message to the envelope's recipients.
pub async fn send(transport: &Transport, envelope: &Envelope, raw: &[u8]) -> Result<(), SendError> {
    match transport.send_raw(envelope, raw).await {
        Ok(_) => Ok(()),
        Err(error) => Err(SendError { permanent: error.is_permanent(), text: error.to_string() }),
    }
}
