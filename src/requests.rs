//! IQ requests the gateway sends itself (service discovery on the user's server, upload
//! slots) and the answers it awaits.
//!
//! A request goes out through the one writer; the router hands every `result` or `error`
//! IQ to [`Requests::resolve`] first, which wakes the task that asked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minidom::Element;
use tokio::sync::oneshot;
use xmpp_parsers::iq::Iq;

use crate::writer::Outbox;

/// Prefix of the ids of our requests, so their answers are told apart from others.
const ID_PREFIX: &str = "gw-req-";

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// Nothing came back in time.
    #[error("no answer from {to} within {timeout:?}")]
    Timeout {
        /// Whom we asked.
        to: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The answer was an error stanza.
    #[error("{to} answered with an error: {condition}{}", text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default())]
    Refused {
        /// Whom we asked.
        to: String,
        /// The defined condition's element name (`forbidden`, `not-acceptable`...).
        condition: String,
        /// The error's text, if any.
        text: Option<String>,
    },
}

/// A task waiting for an answer.
struct Waiter {
    /// Whom we asked, lower-cased: only they may answer.
    asked: String,
    /// Where the answer goes.
    answer: oneshot::Sender<Element>,
}

/// The requests in flight. Cheap to clone: clones share them.
#[derive(Clone, Default)]
pub struct Requests {
    /// Request id -> who may answer it and the task waiting.
    waiting: Arc<Mutex<HashMap<String, Waiter>>>,
    /// Source of unique ids.
    counter: Arc<AtomicU64>,
    /// Before [`ID_PREFIX`] in every id: this instance's tag in a cluster
    /// (`cluster::id_prefix`), so that the answer finds its way back here.
    instance: Arc<str>,
}

impl Requests {
    /// Requests whose ids carry `instance` (`cluster::id_prefix`) before [`ID_PREFIX`].
    pub fn of_instance(instance: &str) -> Requests {
        Requests { instance: instance.into(), ..Requests::default() }
    }

    /// Sends `iq` (a get or set, its id replaced by ours) through `out` and waits for
    /// its answer; the answer's payload (`result`) or why there is none.
    pub async fn ask(&self, out: &Outbox, iq: Iq, timeout: Duration) -> Result<Option<Element>, RequestError> {
        let id = format!("{}{ID_PREFIX}{}", self.instance, self.counter.fetch_add(1, Ordering::Relaxed));
        let iq: Element = iq.with_id(id.clone()).into();
        let to = iq.attr("to").unwrap_or_default().to_owned();
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id.clone(), Waiter { asked: to.to_ascii_lowercase(), answer: tx });
        out.send(iq).await;
        let answer = tokio::time::timeout(timeout, rx).await;
        self.lock().remove(&id);
        match answer {
            Ok(Ok(answer)) => answer_payload(&to, answer),
            // Timed out, or the sender vanished (cannot happen while we hold the map).
            _ => Err(RequestError::Timeout { to, timeout }),
        }
    }

    /// Hands an `<iq type='result|error'/>` to the task that asked for it. `false` when
    /// it answers nothing we asked, or comes from someone we did not ask.
    pub fn resolve(&self, stanza: Element) -> bool {
        let Some(id) = stanza.attr("id").filter(|id| id.strip_prefix(&*self.instance).is_some_and(|rest| rest.starts_with(ID_PREFIX))) else {
            return false;
        };
        let from = stanza.attr("from").unwrap_or_default().to_ascii_lowercase();
        let mut waiting = self.lock();
        if waiting.get(id).is_none_or(|waiter| waiter.asked != from) {
            return false;
        }
        let Some(waiter) = waiting.remove(id) else { return false };
        drop(waiting);
        // The asker may have timed out meanwhile: then nobody reads it, which is fine.
        let _ = waiter.answer.send(stanza);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiter>> {
        // A panic while holding this lock leaves the map sound: keep using it.
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The payload of a `result`, or the error an `error` carries.
fn answer_payload(to: &str, answer: Element) -> Result<Option<Element>, RequestError> {
    if answer.attr("type") == Some("error") {
        let error = answer.children().find(|c| c.name() == "error");
        let condition = error
            .and_then(|e| e.children().find(|c| c.name() != "text"))
            .map_or_else(|| "undefined-condition".to_owned(), |c| c.name().to_owned());
        let text = error.and_then(|e| e.get_child("text", xmpp_parsers::ns::XMPP_STANZAS)).map(Element::text);
        return Err(RequestError::Refused { to: to.to_owned(), condition, text });
    }
    Ok(answer.children().next().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn a_result_gives_its_payload() {
        let answer = parse("<iq xmlns='jabber:component:accept' type='result' id='gw-req-1'><query xmlns='q'/></iq>");
        let payload = answer_payload("s", answer).unwrap().unwrap();
        assert_eq!(payload.name(), "query");
        let empty = parse("<iq xmlns='jabber:component:accept' type='result' id='gw-req-1'/>");
        assert_eq!(answer_payload("s", empty).unwrap(), None);
    }

    #[test]
    fn an_error_gives_its_condition_and_text() {
        let answer = parse(
            "<iq xmlns='jabber:component:accept' type='error' id='gw-req-2'>\
             <error type='cancel'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>File too large</text></error></iq>",
        );
        let error = answer_payload("upload.example", answer).unwrap_err();
        assert_eq!(
            error,
            RequestError::Refused { to: "upload.example".into(), condition: "not-acceptable".into(), text: Some("File too large".into()) }
        );
        assert_eq!(error.to_string(), "upload.example answered with an error: not-acceptable (File too large)");
    }

    #[tokio::test]
    async fn an_answer_reaches_its_asker_and_others_are_not_ours() {
        let (out, mut written) = crate::writer::Outbox::for_tests();
        let requests = Requests::default();
        let asker = {
            let requests = requests.clone();
            tokio::spawn(async move {
                let iq = Iq::try_from(parse("<iq xmlns='jabber:component:accept' type='get' id='x' to='example.org'><ping xmlns='urn:xmpp:ping'/></iq>")).unwrap();
                requests.ask(&out, iq, Duration::from_secs(5)).await
            })
        };
        let sent = written.recv().await.unwrap();
        let id = sent.attr("id").unwrap().to_owned();
        assert!(!requests.resolve(parse("<iq xmlns='jabber:component:accept' type='result' id='keepalive-1'/>")));
        let forged = format!("<iq xmlns='jabber:component:accept' type='result' id='{id}' from='mallory@example.org'/>");
        assert!(!requests.resolve(parse(&forged)), "only whom we asked may answer");
        let answer = format!(
            "<iq xmlns='jabber:component:accept' type='result' id='{id}' from='Example.org'><query xmlns='q' answered='yes'/></iq>"
        );
        assert!(requests.resolve(parse(&answer)));
        let payload = asker.await.unwrap().unwrap().unwrap();
        assert_eq!(payload.attr("answered"), Some("yes"));
        // Answered once: a duplicate is not ours any more.
        assert!(!requests.resolve(parse(&answer)));
    }

    #[tokio::test]
    async fn silence_is_a_timeout() {
        let (out, _written) = crate::writer::Outbox::for_tests();
        let requests = Requests::default();
        let iq = Iq::from_get("x", xmpp_parsers::ping::Ping).with_to("example.org".parse().unwrap());
        let error = requests.ask(&out, iq, Duration::from_millis(20)).await.unwrap_err();
        assert!(matches!(error, RequestError::Timeout { .. }), "{error}");
        assert!(requests.lock().is_empty(), "a timed-out request is forgotten");
    }
}
