//! The operators' Prometheus endpoint (`[metrics] listen`): `GET /metrics` answers the
//! counters of `bridge_core::counters` and the router's gauges in Prometheus's text
//! format. Each scrape asks the router for its gauges (`RouterTask::Gauges`); if the
//! router does not answer in time (it waits for the XMPP server), the counters come alone.

use std::convert::Infallible;
use std::time::Duration;

use bridge_core::counters::{read, COUNTERS};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::admin::Gauges;
use crate::router::RouterTask;

/// How long a scrape waits for the router's gauges.
const GAUGES_TIMEOUT: Duration = Duration::from_secs(2);

/// The figures of one scrape.
#[derive(Debug)]
struct Figures {
    /// The router's gauges, if it answered.
    gauges: Option<Gauges>,
}

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let c = &COUNTERS;
        for (name, help, value) in [
            ("xmpp_gateway_stanzas_in", "Stanzas read from the XMPP server", read(&c.stanzas_in)),
            ("xmpp_gateway_stanzas_out", "Stanzas written to the XMPP server", read(&c.stanzas_out)),
            ("xmpp_gateway_errors_out", "Error stanzas written to the XMPP server", read(&c.errors_out)),
            ("xmpp_gateway_irc_lines_in", "Lines read from IRC servers", read(&c.irc_lines_in)),
            ("xmpp_gateway_irc_lines_out", "Lines written to IRC servers", read(&c.irc_lines_out)),
            ("xmpp_gateway_mails_in", "Mails delivered from users' mailboxes", read(&c.mails_in)),
            ("xmpp_gateway_mails_out", "Mails accepted by SMTP servers", read(&c.mails_out)),
            ("xmpp_gateway_irc_servers_cut_off", "IRC connections cut off for flooding", read(&c.irc_servers_cut_off)),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }
        if let Some(g) = self.gauges {
            let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            for (name, help, value) in [
                ("xmpp_gateway_registered_users", "Registered users", gauge(g.registered)),
                ("xmpp_gateway_online_users", "Users with an online resource", gauge(g.online)),
                ("xmpp_gateway_irc_connections", "Live IRC connections", gauge(g.irc_connections)),
                ("xmpp_gateway_mail_sessions", "Live mailbox sessions", gauge(g.mail_sessions)),
                ("xmpp_gateway_rooms", "Rooms joined through the gateway", gauge(g.rooms)),
                ("xmpp_gateway_resident_memory_bytes", "Resident memory", i64::try_from(g.rss_kib * 1024).unwrap_or(i64::MAX)),
            ] {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
            }
        }
        Ok(())
    }
}

/// The text of one scrape.
fn render(gauges: Option<Gauges>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Figures { gauges }));
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// Answers one request: the figures at `/metrics`, 404 elsewhere, 405 for other methods.
async fn answer(request: Request<Incoming>, router: mpsc::Sender<RouterTask>) -> Result<Response<Full<Bytes>>, Infallible> {
    let status_only = |status: StatusCode| {
        let mut response = Response::new(Full::new(Bytes::from(status.canonical_reason().unwrap_or_default())));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return Ok(status_only(StatusCode::NOT_FOUND));
    }
    if request.method() != Method::GET {
        return Ok(status_only(StatusCode::METHOD_NOT_ALLOWED));
    }
    let (ask, reply) = oneshot::channel();
    let gauges = match router.try_send(RouterTask::Gauges(ask)) {
        Ok(()) => tokio::time::timeout(GAUGES_TIMEOUT, reply).await.ok().and_then(Result::ok),
        Err(_) => None,
    };
    let mut response = Response::new(Full::new(Bytes::from(render(gauges))));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}

/// Serves scrapes on `listener` until the process ends; each connection in its own task.
pub async fn serve(listener: TcpListener, router: mpsc::Sender<RouterTask>) {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "the metrics endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let router = router.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(request, router.clone()));
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                .await
            {
                debug!(%peer, %error, "a metrics connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_always_and_gauges_when_the_router_answered() {
        let alone = render(None);
        assert!(alone.contains("# TYPE xmpp_gateway_stanzas_in counter"), "{alone}");
        assert!(alone.contains("xmpp_gateway_stanzas_in_total "), "{alone}");
        assert!(!alone.contains("xmpp_gateway_online_users"), "{alone}");
        let gauges = Gauges { registered: 3, online: 2, irc_connections: 4, mail_sessions: 1, rooms: 5, rss_kib: 10 };
        let full = render(Some(gauges));
        assert!(full.contains("xmpp_gateway_irc_connections 4"), "{full}");
        assert!(full.contains("xmpp_gateway_resident_memory_bytes 10240"), "{full}");
        assert!(full.ends_with("# EOF\n"), "{full}");
    }
}
