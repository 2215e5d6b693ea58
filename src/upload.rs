//! Files from the networks (mail attachments) shared with the user: uploaded to the
//! upload service of the user's own server (XEP-0363), then sent as a link (XEP-0066) in
//! a message from the contact who sent them.
//!
//! The service is found once per domain by service discovery (the domain's disco#items,
//! then disco#info of each item) and remembered for a while, found or not. Each user's
//! files go through one queue, so links arrive in the order of the mails. A file that
//! cannot be shared stays listed in its message's body; the user is told why, unless
//! their server simply has no upload service.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bridge_core::model::Attachment;
use minidom::Element;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};
use xmpp_parsers::disco::{DiscoInfoQuery, DiscoInfoResult, DiscoItemsQuery, DiscoItemsResult};
use xmpp_parsers::http_upload::{SlotRequest, SlotResult};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Lang, Message, MessageType};
use xmpp_parsers::oob::Oob;

use crate::requests::{RequestError, Requests};
use crate::writer::Outbox;

/// XEP-0363.
pub const NS_HTTP_UPLOAD: &str = "urn:xmpp:http:upload:0";

/// How long we wait for a disco or slot answer.
const IQ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one HTTP upload may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a domain's upload service is remembered once found.
const FOUND_FOR: Duration = Duration::from_secs(3600);
/// How long a domain without an upload service is not asked again.
const NOT_FOUND_FOR: Duration = Duration::from_secs(600);
/// How long a user's queue waits for more files before its task ends.
const QUEUE_IDLE: Duration = Duration::from_secs(60);
/// The longest file name put in a slot request (in characters).
const MAX_FILENAME_CHARS: usize = 100;
/// Bytes of attachments one user may have waiting to be uploaded; a file past it is
/// announced as not shared (the user reads it in their mail client) instead of held.
const QUEUED_BYTES_PER_USER: usize = 64 * 1024 * 1024;

/// An upload service of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its JID, where slots are requested.
    pub jid: Jid,
    /// The largest file it takes, when it says.
    pub max_size: Option<u64>,
}

/// Why a file was not shared.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The uploader could not start.
    #[error("cannot upload files: {0}")]
    Setup(String),
    /// The user's server offers no HTTP upload: the file stays listed in the body only.
    #[error("{0} offers no HTTP upload service")]
    NoService(String),
    /// Larger than the service takes.
    #[error("{size} bytes is more than the {max} bytes the upload service of your server takes")]
    TooLarge {
        /// The file's size.
        size: u64,
        /// The service's limit.
        max: u64,
    },
    /// The slot request failed (refused, quota, no answer).
    #[error("the upload service gave no slot: {0}")]
    Slot(#[from] RequestError),
    /// The slot answer made no sense.
    #[error("the upload service answered with a malformed slot: {0}")]
    BadSlot(String),
    /// The HTTP PUT failed. The text never holds the URL (it may carry a secret).
    #[error("the HTTP upload failed: {0}")]
    Http(String),
}

/// Finds upload services and uploads files. Shared by every user's queue.
pub struct Uploader {
    /// Our domain: the `from` of disco and slot requests.
    gateway: Jid,
    /// Where the requests go.
    out: Outbox,
    /// Answers to our requests.
    requests: Requests,
    /// The HTTP client for PUTs: verified TLS, one connection pool for all users.
    http: reqwest::Client,
    /// The same for the servers of domains the administrator did not list
    /// (`registration.allowed_domains`): their slot URLs may only lead to public
    /// addresses, checked on the address connected to (the network policy). Built at its
    /// first use: a client holds its own TLS roots (a few hundred KiB), which a gateway
    /// whose users all come from listed domains never needs.
    public_http: std::sync::OnceLock<reqwest::Client>,
    /// XMPP domains whose servers are trusted as written (`registration.allowed_domains`).
    trusted_domains: Vec<String>,
    /// Domain -> its upload service (or none) and when that was learnt.
    services: Mutex<HashMap<String, (Instant, Option<Service>)>>,
    /// Domain -> where its upload service serves files (`scheme://host:port` of the GET
    /// URLs of its slots): the only places a file a user links to is fetched from,
    /// besides the domain and its subdomains. At most [`ORIGINS_PER_DOMAIN`] each.
    origins: Mutex<HashMap<String, Vec<String>>>,
}

/// Origins remembered per domain's upload service.
const ORIGINS_PER_DOMAIN: usize = 4;

impl Uploader {
    /// An uploader asking as `gateway` through `out`.
    ///
    /// # Errors
    /// [`UploadError::Setup`] when `gateway` is no JID or the HTTP client cannot be
    /// built (no TLS backend).
    pub fn new(gateway: &str, out: Outbox, requests: Requests, trusted_domains: Vec<String>) -> Result<Uploader, UploadError> {
        let gateway = gateway.parse::<Jid>().map_err(|e| UploadError::Setup(format!("{gateway}: {e}")))?;
        let http = client_builder().build().map_err(|e| UploadError::Setup(e.without_url().to_string()))?;
        Ok(Uploader {
            gateway,
            out,
            requests,
            http,
            public_http: std::sync::OnceLock::new(),
            trusted_domains,
            services: Mutex::default(),
            origins: Mutex::default(),
        })
    }

    /// Uploads `file` to the upload service of `domain`; the URL to share.
    ///
    /// # Errors
    /// See [`UploadError`].
    pub async fn upload(&self, domain: &str, file: &Attachment) -> Result<String, UploadError> {
        let service = self.service(domain).await?;
        let size = file.content.len() as u64;
        if let Some(max) = service.max_size.filter(|max| size > *max) {
            return Err(UploadError::TooLarge { size, max });
        }
        let request = SlotRequest { filename: slot_filename(&file.name), size, content_type: Some(file.content_type.clone()) };
        let iq = self.iq(service.jid.clone(), Iq::from_get("", request));
        let payload = match self.requests.ask(&self.out, iq, IQ_TIMEOUT).await {
            Ok(payload) => payload,
            Err(error) => {
                if let RequestError::Refused { condition, .. } = &error {
                    if matches!(condition.as_str(), "forbidden" | "not-allowed" | "not-authorized") {
                        // The service is not for us: say so once, then list files only.
                        self.lock().insert(domain.to_owned(), (Instant::now(), None));
                    }
                }
                return Err(error.into());
            }
        };
        let slot = payload
            .ok_or_else(|| UploadError::BadSlot("no <slot/>".into()))
            .and_then(|p| SlotResult::try_from(p).map_err(|e| UploadError::BadSlot(e.to_string())))?;
        let trusted = self.is_trusted(domain);
        check_url(&slot.put.url, trusted)?;
        check_url(&slot.get.url, trusted)?;
        self.note_origin(domain, &slot.get.url);
        let http = self.client_for(domain)?;
        let mut put = http
            .put(&slot.put.url)
            .header(reqwest::header::CONTENT_TYPE, &file.content_type)
            .body(file.content.clone());
        for header in &slot.put.headers {
            put = put.header(header.name.as_str(), &header.value);
        }
        let response = put.send().await.map_err(|e| UploadError::Http(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(UploadError::Http(format!("the server answered {}", response.status())));
        }
        Ok(slot.get.url)
    }

    /// Whether the administrator trusts `domain`'s servers as written
    /// (`registration.allowed_domains`).
    pub fn is_trusted(&self, domain: &str) -> bool {
        self.trusted_domains.iter().any(|trusted| trusted.eq_ignore_ascii_case(domain))
    }

    /// The HTTP client for `domain`'s services: the one that reaches only public
    /// addresses unless the administrator trusts the domain.
    ///
    /// # Errors
    /// [`UploadError::Setup`] when the client cannot be built.
    pub fn client_for(&self, domain: &str) -> Result<&reqwest::Client, UploadError> {
        if self.is_trusted(domain) { Ok(&self.http) } else { self.public_http() }
    }

    /// Where `domain`'s upload service serves files (`scheme://host:port`): the origins
    /// of the slots it gave, else learnt now by asking it for one small slot that is
    /// never used (no file is stored until a PUT). Empty when it has no service or gives
    /// the gateway no slot.
    pub async fn download_origins(&self, domain: &str) -> Vec<String> {
        let known = self.origins_lock().get(domain).cloned().unwrap_or_default();
        if !known.is_empty() {
            return known;
        }
        let Ok(service) = self.service(domain).await else { return Vec::new() };
        let request = SlotRequest { filename: "origin-probe.txt".into(), size: 1, content_type: Some("text/plain".into()) };
        let iq = self.iq(service.jid, Iq::from_get("", request));
        match self.requests.ask(&self.out, iq, IQ_TIMEOUT).await {
            Ok(Some(payload)) => match SlotResult::try_from(payload) {
                Ok(slot) => self.note_origin(domain, &slot.get.url),
                Err(error) => debug!(%domain, %error, "a malformed slot: no download origin learnt"),
            },
            Ok(None) => {}
            Err(error) => debug!(%domain, %error, "no slot: no download origin learnt"),
        }
        self.origins_lock().get(domain).cloned().unwrap_or_default()
    }

    /// Remembers the origin of `url`, a GET URL of `domain`'s upload service.
    fn note_origin(&self, domain: &str, url: &str) {
        let Some(origin) = origin_of(url) else { return };
        let mut origins = self.origins_lock();
        let known = origins.entry(domain.to_owned()).or_default();
        if !known.contains(&origin) {
            if known.len() >= ORIGINS_PER_DOMAIN {
                known.remove(0);
            }
            known.push(origin);
        }
    }

    fn origins_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<String>>> {
        self.origins.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The client for untrusted servers, built on first use.
    fn public_http(&self) -> Result<&reqwest::Client, UploadError> {
        if let Some(client) = self.public_http.get() {
            return Ok(client);
        }
        let client = client_builder()
            .dns_resolver(Arc::new(PublicOnly))
            .build()
            .map_err(|e| UploadError::Setup(e.without_url().to_string()))?;
        Ok(self.public_http.get_or_init(|| client))
    }

    /// The upload service of `domain`, from memory or found now.
    async fn service(&self, domain: &str) -> Result<Service, UploadError> {
        let known = self.lock().get(domain).cloned();
        let service = match known {
            Some((at, service)) if at.elapsed() < if service.is_some() { FOUND_FOR } else { NOT_FOUND_FOR } => service,
            _ => {
                let service = self.discover(domain).await;
                self.lock().insert(domain.to_owned(), (Instant::now(), service.clone()));
                service
            }
        };
        service.ok_or_else(|| UploadError::NoService(domain.to_owned()))
    }

    /// Asks `domain` for its items, and each item whether it is an upload service.
    async fn discover(&self, domain: &str) -> Option<Service> {
        let Ok(domain_jid) = domain.parse::<Jid>() else { return None };
        let items = self.iq(domain_jid, Iq::from_get("", DiscoItemsQuery { node: None, rsm: None }));
        let items = match self.requests.ask(&self.out, items, IQ_TIMEOUT).await {
            Ok(Some(payload)) => DiscoItemsResult::try_from(payload).ok()?,
            Ok(None) => return None,
            Err(error) => {
                info!(%domain, %error, "no disco#items: no HTTP upload for this domain");
                return None;
            }
        };
        for item in items.items {
            // Only a service of the user's own server: files go nowhere else.
            if !is_own_service(&item.jid, domain) {
                debug!(%domain, item = %item.jid, "an item of another domain is not asked");
                continue;
            }
            let info = self.iq(item.jid.clone(), Iq::from_get("", DiscoInfoQuery { node: None }));
            let Ok(Some(payload)) = self.requests.ask(&self.out, info, IQ_TIMEOUT).await else { continue };
            let Ok(info) = DiscoInfoResult::try_from(payload) else { continue };
            if let Some(service) = upload_service(item.jid, &info) {
                info!(%domain, service = %service.jid, max_size = ?service.max_size, "HTTP upload service found");
                return Some(service);
            }
        }
        debug!(%domain, "no HTTP upload service among the domain's items");
        None
    }

    /// `iq` addressed from us to `to`.
    fn iq(&self, to: Jid, iq: Iq) -> Iq {
        iq.with_from(self.gateway.clone()).with_to(to)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Option<Service>)>> {
        self.services.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether `service` belongs to `domain`: the domain itself or one of its subdomains
/// (`upload.example.org` of `example.org`).
fn is_own_service(service: &Jid, domain: &str) -> bool {
    let host = service.domain().as_str();
    host.eq_ignore_ascii_case(domain)
        || host.len() > domain.len()
            && host.get(host.len() - domain.len()..).is_some_and(|end| end.eq_ignore_ascii_case(domain))
            && host.as_bytes().get(host.len() - domain.len() - 1) == Some(&b'.')
}

/// A file to share with a user.
pub struct Job {
    /// The contact it came from (an email JID on the gateway).
    pub from: String,
    /// The user's bare JID.
    pub to: String,
    /// The file.
    pub file: Attachment,
}

/// One queue per user, each drained by its own task while it has work.
pub struct UploadQueues {
    /// Does the uploading.
    uploader: Arc<Uploader>,
    /// Where the messages with links go.
    out: Outbox,
    /// User -> their queue and the bytes waiting in it; a queue whose task has ended is
    /// replaced on the next push. Unbounded in count, bounded in bytes
    /// ([`QUEUED_BYTES_PER_USER`]).
    queues: HashMap<String, (mpsc::UnboundedSender<Job>, Arc<AtomicUsize>)>,
}

impl UploadQueues {
    /// Queues for files uploaded by `uploader`, announced through `out`.
    pub fn new(uploader: Arc<Uploader>, out: Outbox) -> Self {
        UploadQueues { uploader, out, queues: HashMap::new() }
    }

    /// Shares `job.file` with `job.to` after the files queued before it; tells the user
    /// it was not shared when too many bytes already wait.
    pub async fn push(&mut self, job: Job) {
        let size = job.file.content.len();
        let job = match self.queues.get(&job.to) {
            Some((queue, waiting)) => {
                let before = waiting.load(Ordering::Relaxed);
                if before + size > QUEUED_BYTES_PER_USER {
                    let text = format!(
                        "[attachment {} was not shared: {} MiB of attachments already wait to be uploaded; read it in your mail client]",
                        job.file.name,
                        before / (1024 * 1024)
                    );
                    return self.out.send(chat(&job.from, &job.to, text, None)).await;
                }
                waiting.fetch_add(size, Ordering::Relaxed);
                match queue.send(job) {
                    Ok(()) => return,
                    // The task ended (idle): start another with this job.
                    Err(mpsc::error::SendError(job)) => job,
                }
            }
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let user = job.to.clone();
        let waiting = Arc::new(AtomicUsize::new(size));
        let _ = tx.send(job);
        let span = info_span!("uploads", %user);
        tokio::spawn(drain(self.uploader.clone(), self.out.clone(), rx, waiting.clone()).instrument(span));
        self.queues.insert(user, (tx, waiting));
    }
}

/// Shares a user's files one after the other; ends when none came for a while.
async fn drain(uploader: Arc<Uploader>, out: Outbox, mut queue: mpsc::UnboundedReceiver<Job>, waiting: Arc<AtomicUsize>) {
    loop {
        let job = match tokio::time::timeout(QUEUE_IDLE, queue.recv()).await {
            Ok(Some(job)) => job,
            Ok(None) => return,
            // Idle: take no more (the next push starts a new queue), but finish what
            // slipped in meanwhile.
            Err(_) => {
                queue.close();
                match queue.try_recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            }
        };
        let domain = job.to.rsplit('@').next().unwrap_or_default().to_owned();
        let result = uploader.upload(&domain, &job.file).await;
        waiting.fetch_sub(job.file.content.len().min(waiting.load(Ordering::Relaxed)), Ordering::Relaxed);
        let text = match result {
            Ok(url) => {
                debug!(name = %job.file.name, size = job.file.content.len(), "attachment shared");
                out.send(link_message(&job.from, &job.to, &url, &job.file.name)).await;
                continue;
            }
            Err(UploadError::NoService(_)) => continue,
            Err(error) => {
                warn!(name = %job.file.name, %error, "attachment not shared");
                format!("[attachment {} was not shared: {error}]", job.file.name)
            }
        };
        out.send(chat(&job.from, &job.to, text, None)).await;
    }
}

/// Whether `info` describes an HTTP upload service, and its size limit.
pub fn upload_service(jid: Jid, info: &DiscoInfoResult) -> Option<Service> {
    if !info.features.contains(NS_HTTP_UPLOAD) {
        return None;
    }
    let max_size = info
        .extensions
        .iter()
        .filter(|form| form.form_type() == Some(NS_HTTP_UPLOAD))
        .flat_map(|form| &form.fields)
        .find(|field| field.var.as_deref() == Some("max-file-size"))
        .and_then(|field| field.values.first())
        .and_then(|value| value.trim().parse().ok());
    Some(Service { jid, max_size })
}

/// A file name fit for a slot request and a URL: the last path component only, no
/// control characters, not empty, at most [`MAX_FILENAME_CHARS`] characters (the
/// extension kept).
pub fn slot_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = base.chars().filter(|c| !c.is_control()).collect();
    let clean = clean.trim().trim_start_matches('.');
    if clean.is_empty() {
        return "attachment".to_owned();
    }
    if clean.chars().count() <= MAX_FILENAME_CHARS {
        return clean.to_owned();
    }
    let extension = clean.rsplit_once('.').map(|(_, ext)| ext).filter(|ext| ext.chars().count() <= 10).unwrap_or("");
    let keep = MAX_FILENAME_CHARS - extension.chars().count() - usize::from(!extension.is_empty());
    let stem: String = clean.chars().take(keep).collect();
    if extension.is_empty() { stem } else { format!("{stem}.{extension}") }
}

/// `scheme://host:port` of an http(s) URL (the port always written), lower-cased.
pub fn origin_of(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    if !matches!(url.scheme(), "https" | "http") {
        return None;
    }
    Some(format!("{}://{}:{}", url.scheme(), url.host_str()?.to_ascii_lowercase(), url.port_or_known_default()?))
}

/// Only http(s) URLs are followed or shared.
pub(crate) fn check_url(url: &str, trusted: bool) -> Result<(), UploadError> {
    let url = reqwest::Url::parse(url).map_err(|e| UploadError::BadSlot(format!("a slot URL that does not parse: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(UploadError::BadSlot("a slot URL that is not http(s)".into()));
    }
    // A host name is checked as it is resolved (`PublicOnly`); an address is checked here.
    let address = url.host_str().and_then(|host| host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().ok());
    if let Some(rule) = address.filter(|_| !trusted).and_then(bridge_net::non_global) {
        return Err(UploadError::BadSlot(format!("a slot URL on {rule}, where this gateway does not connect")));
    }
    Ok(())
}

/// The HTTP client's settings: a timeout, and no redirects (a slot URL may not send the
/// upload anywhere else).
fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("xmpp-gateway/", env!("CARGO_PKG_VERSION")))
}

/// reqwest's name resolution for untrusted servers: only public addresses, as
/// `bridge_net` decides for every connection a user can cause.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let addresses = bridge_net::resolve(name.as_str(), 0, bridge_net::Reach::PublicOnly).await?;
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// The message that shares an uploaded file: the URL as the whole body (so clients show
/// it inline) and as an XEP-0066 link described by the file name.
pub fn link_message(from: &str, to: &str, url: &str, name: &str) -> Element {
    let oob = Oob { url: url.to_owned(), desc: Some(name.to_owned()) };
    chat(from, to, url.to_owned(), Some(oob.into()))
}

/// A chat message from `from` to `to`, with an extra payload.
fn chat(from: &str, to: &str, body: String, payload: Option<Element>) -> Element {
    let mut message = Message::new_with_type(MessageType::Chat, to.parse::<Jid>().ok());
    message.from = from.parse().ok();
    message.bodies.insert(Lang::new(), body);
    message.payloads.extend(payload);
    message.into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_users_own_server_and_its_subdomains_serve_uploads() {
        let jid = |s: &str| s.parse::<Jid>().unwrap();
        assert!(is_own_service(&jid("upload.example.org"), "example.org"));
        assert!(is_own_service(&jid("Example.ORG"), "example.org"));
        assert!(!is_own_service(&jid("upload.evil.example"), "example.org"));
        assert!(!is_own_service(&jid("notexample.org"), "example.org"));
        assert!(!is_own_service(&jid("example.org.evil.example"), "example.org"));
    }

    use super::*;

    fn jid(text: &str) -> Jid {
        text.parse().unwrap()
    }

    fn info(xml: &str) -> DiscoInfoResult {
        DiscoInfoResult::try_from(xml.parse::<Element>().unwrap()).unwrap()
    }

    #[test]
    fn an_upload_service_is_found_with_its_limit() {
        // As Prosody 0.12's mod_http_file_share answers.
        let answer = info(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='store' type='file' name='HTTP File Upload'/>\
             <feature var='urn:xmpp:http:upload:0'/>\
             <x xmlns='jabber:x:data' type='result'>\
              <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:http:upload:0</value></field>\
              <field var='max-file-size'><value>16777216</value></field>\
             </x></query>",
        );
        assert_eq!(
            upload_service(jid("upload.example.org"), &answer),
            Some(Service { jid: jid("upload.example.org"), max_size: Some(16_777_216) })
        );
    }

    #[test]
    fn a_service_without_a_limit_or_another_service() {
        let no_limit = info("<query xmlns='http://jabber.org/protocol/disco#info'><feature var='urn:xmpp:http:upload:0'/></query>");
        assert_eq!(upload_service(jid("u"), &no_limit).unwrap().max_size, None);
        let muc = info(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='conference' type='text'/><feature var='http://jabber.org/protocol/muc'/></query>",
        );
        assert_eq!(upload_service(jid("rooms"), &muc), None);
    }

    #[test]
    fn file_names_are_made_safe() {
        assert_eq!(slot_filename("report.pdf"), "report.pdf");
        assert_eq!(slot_filename("Rapport été.pdf"), "Rapport été.pdf");
        assert_eq!(slot_filename("../../etc/passwd"), "passwd");
        assert_eq!(slot_filename("C:\\Users\\x\\a.doc"), "a.doc");
        assert_eq!(slot_filename("a\r\nb\0.txt"), "ab.txt");
        assert_eq!(slot_filename(""), "attachment");
        assert_eq!(slot_filename(".."), "attachment");
        assert_eq!(slot_filename(".hidden"), "hidden");
        let long = format!("{}.tar.gz", "x".repeat(300));
        let short = slot_filename(&long);
        assert_eq!(short.chars().count(), MAX_FILENAME_CHARS);
        assert!(short.ends_with("x.gz"), "{short}");
    }

    #[test]
    fn only_http_urls_to_allowed_addresses_are_followed() {
        assert!(check_url("https://upload.example.org/f/1/a.pdf", false).is_ok());
        assert!(check_url("http://127.0.0.1:5280/file_share/x", true).is_ok(), "a trusted server's own address");
        for untrusted in ["http://127.0.0.1:5280/file_share/x", "http://169.254.169.254/latest/meta-data", "http://[::1]/x", "http://10.0.0.1/x"] {
            assert!(check_url(untrusted, false).is_err(), "{untrusted}");
        }
        assert!(check_url("file:///etc/passwd", true).is_err());
        assert!(check_url("no scheme", true).is_err());
    }

    #[test]
    fn a_link_is_the_whole_body_and_an_oob_url() {
        let link = link_message(
            "bob\\40example.test@gateway.example.org",
            "alice@example.org",
            "https://upload.example.org/f/1/report.pdf",
            "report.pdf",
        );
        let message = Message::try_from(link).unwrap();
        assert_eq!(message.type_, MessageType::Chat);
        assert_eq!(message.bodies[""], "https://upload.example.org/f/1/report.pdf");
        let oob = message.payloads.iter().find_map(|p| Oob::try_from(p.clone()).ok()).unwrap();
        assert_eq!(oob.url, "https://upload.example.org/f/1/report.pdf");
        assert_eq!(oob.desc.as_deref(), Some("report.pdf"));
        assert_eq!(message.from.unwrap().to_string(), "bob\\40example.test@gateway.example.org");
    }
}
