//! Any stanza a user's server could route to the gateway, through the real router and
//! both XMPP sides (IRC, email), with sessions that only record the commands they get.
//! No panic, and every stanza the gateway writes reaches the wire (through the real
//! writer task) as XML that parses again, and that minidom writes and parses once more.
//!
//! Input: UTF-8 text. Starting with `<`, it is one literal stanza written without its
//! namespace (`<message to='...'>...</message>`: `jabber:component:accept` is added);
//! otherwise the first character picks `message`, `presence` or `iq` and the rest is its
//! attributes and content (`to='gw.localhost' type='get'><query .../>`). A stanza without
//! `from` comes from `user@example.test/fuzz`, a registered user.
//!
//! One router lives across inputs (as in the gateway: joins, registrations and online
//! resources stay), rebuilt from scratch every `REBUILD_EVERY` inputs so that its state,
//! and the store on tmpfs, stay bounded. A crash may therefore need the inputs before it.
#![no_main]

use std::cell::RefCell;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bridge_core::model::{Credentials, NetworkId, SessionKey};
use bridge_core::{Bridge, Commands, EventSink, Secret, Session, SessionEvent};
use futures::FutureExt;
use libfuzzer_sys::fuzz_target;
use minidom::Element;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use xmpp_gateway::archive::{Archive, Retention};
use xmpp_gateway::config::Config;
use xmpp_gateway::email_side::EmailSide;
use xmpp_gateway::irc_side::{IrcPolicy, IrcSide};
use xmpp_gateway::requests::Requests;
use xmpp_gateway::router::Router;
use xmpp_gateway::sessions::Sessions;
use xmpp_gateway::side::NetworkSide;
use xmpp_gateway::store::{EmailAccount, IrcAccount, Store, UserRecord};
use xmpp_gateway::writer::{self, Control, Outbox};
use xmpp_gateway::xml_stream;

const NS: &str = "jabber:component:accept";
const GATEWAY: &str = "gw.localhost";
/// The `from` of a stanza without one: registered at start-up (IRC and email).
const DEFAULT_FROM: &str = "user@example.test/fuzz";
const DEFAULT_USER: &str = "user@example.test";
/// A fresh router, store and sessions after this many inputs.
const REBUILD_EVERY: u64 = 20_000;
/// Session command queues kept; older ones are dropped (their sessions look ended, as
/// after a crash of the session task, and are started again on the next command).
const MAX_QUEUES: usize = 256;
/// How long the router's spawned work (store writes on tmpfs) may take per input.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);
/// How long the writer may take to put a stanza on the socket.
const WIRE_LIMIT: Duration = Duration::from_secs(8);

/// A bridge for every network whose sessions are command queues read by the harness.
#[derive(Default)]
struct Recorder {
    queues: Mutex<Vec<Commands>>,
}

impl Bridge for Recorder {
    fn serves(&self, _: &NetworkId) -> bool {
        true
    }

    fn start(&self, _key: SessionKey, _credentials: Credentials, _events: EventSink) -> Box<dyn Session> {
        let (tx, rx) = bridge_core::command_queue();
        let mut queues = self.queues.lock().unwrap();
        if queues.len() >= MAX_QUEUES {
            queues.drain(..MAX_QUEUES / 2);
        }
        queues.push(rx);
        Box::new(tx)
    }
}

impl Recorder {
    /// Reads every command waiting in any session's queue.
    fn drain(&self) -> usize {
        let mut queues = self.queues.lock().unwrap();
        let mut n = 0;
        for queue in queues.iter_mut() {
            while let Some(command) = queue.try_recv() {
                std::hint::black_box(format!("{command:?}"));
                n += 1;
            }
        }
        n
    }
}

struct Fixture {
    // Field order is drop order: the router and everything holding the store first, the
    // runtime after them, the temporary directory last.
    router: Router,
    out: Outbox,
    recorder: Arc<Recorder>,
    /// The server's end of the writer's socket.
    peer: TcpStream,
    /// Bytes read past the last sentinel (whitespace keepalives).
    carry: Vec<u8>,
    _events: mpsc::Receiver<SessionEvent>,
    _control: mpsc::Sender<Control>,
    _client_read: tokio::net::tcp::OwnedReadHalf,
    _writer: tokio::task::JoinHandle<()>,
    _config_file: tempfile::NamedTempFile,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    inputs: u64,
    sentinels: u64,
    seed: RandomState,
}

fn build() -> Fixture {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // tmpfs: the store's fsyncs cost nothing.
    let dir = tempfile::Builder::new()
        .prefix("fuzz-stanza-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let mut config_file = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
    let toml = format!(
        "[component]\njid = \"{GATEWAY}\"\nsecret = \"s\"\n\
         [storage]\npath = \"{}\"\n\
         [registration]\nadmins = [\"admin@example.test\"]\n\
         [irc.networks.\"irc.one\"]\n[irc.networks.\"irc.two\"]\n\
         [email.providers.\"example.test\"]\nimap = \"127.0.0.1:1143\"\nsmtp = \"127.0.0.1:2525\"\n",
        dir.path().join("db").display()
    );
    std::io::Write::write_all(&mut config_file, toml.as_bytes()).unwrap();
    let config = Config::load_with_env(config_file.path(), std::iter::empty()).unwrap();
    let recorder = Arc::new(Recorder::default());

    let (router, out, peer, events, control, client_read, writer) = runtime.block_on(async {
        let store = Store::open(&config.storage.path, &config.key_file()).unwrap();
        let mut irc = IrcAccount::new("user");
        irc.passwords.insert("irc.one".into(), Secret::new("irc-pw"));
        let record = UserRecord {
            irc: Some(irc),
            email: Some(EmailAccount {
                address: DEFAULT_USER.into(),
                password: Secret::new("mail-pw"),
                login: None,
                imap_server: None,
                smtp_server: None,
                mark_seen: false,
            }),
            persistent_channels: Vec::new(),
        };
        store.put_user(DEFAULT_USER, &record).await.unwrap();

        let config = Arc::new(config);
        let (out, control, writer) = writer::spawn(config.keepalive());
        // The writer writes to a real socket whose other end the harness reads.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        let (client_read, client_write) = client.into_split();
        control.send(Control::Attach(client_write)).await.unwrap();

        let (events_tx, events_rx) = mpsc::channel(4096);
        let gateway = config.component.jid.to_ascii_lowercase();
        let archive = Archive::start(store.archive().unwrap(), Retention { max_age: None, max_count: None }).unwrap();
        let sides: Vec<Box<dyn NetworkSide>> = vec![
            Box::new(IrcSide::new(
                &gateway,
                out.clone(),
                store.clone(),
                Sessions::new(vec![recorder.clone()], events_tx.clone()),
                IrcPolicy::of(&config),
                archive.clone(),
            )),
            Box::new(EmailSide::new(
                &gateway,
                out.clone(),
                store.clone(),
                Sessions::new(vec![recorder.clone()], events_tx),
                None,
                config.limits.message_bytes_email,
            )),
        ];
        let email: Arc<dyn Bridge> = recorder.clone();
        let router = Router::new(config.clone(), store, out.clone(), sides, email, Requests::default(), archive);
        (router, out, peer, events_rx, control, client_read, writer)
    });
    let mut fixture = Fixture {
        router,
        out,
        recorder,
        peer,
        carry: Vec::new(),
        _events: events,
        _control: control,
        _client_read: client_read,
        _writer: writer,
        _config_file: config_file,
        runtime,
        _dir: dir,
        inputs: 0,
        sentinels: 0,
        seed: RandomState::new(),
    };
    // As after a connection: probes to the registered user, their email session started.
    let fixture_ref = &mut fixture;
    fixture_ref.runtime.block_on(async {
        let baseline = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        fixture_ref.router.on_connected().await;
        settle(&mut fixture_ref.router, baseline).await;
    });
    fixture.read_and_check();
    fixture
}

/// Handles the work the router's spawned tasks hand back (registrations stored, checked,
/// removed) until none of them is running.
async fn settle(router: &mut Router, baseline: usize) {
    let metrics = tokio::runtime::Handle::current().metrics();
    let start = tokio::time::Instant::now();
    loop {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        while let Some(task) = router.next_task().now_or_never() {
            router.handle_task(task).await;
        }
        if metrics.num_alive_tasks() <= baseline {
            return;
        }
        if start.elapsed() > SETTLE_LIMIT {
            panic!("the router's spawned work did not finish within {SETTLE_LIMIT:?}");
        }
        tokio::select! {
            task = router.next_task() => router.handle_task(task).await,
            () = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Fixture {
    /// Reads what the writer put on the socket up to a sentinel queued now, and checks it.
    fn read_and_check(&mut self) {
        self.sentinels += 1;
        let nonce = self.seed.hash_one(self.sentinels);
        let sentinel: Element = format!("<fuzz-sentinel xmlns='urn:fuzz:sentinel' n='{nonce:016x}'/>").parse().unwrap();
        let sentinel_bytes = xml_stream::to_bytes(&sentinel);
        let (out, peer, carry) = (&self.out, &mut self.peer, &mut self.carry);
        let wire = self.runtime.block_on(async {
            let (_, wire) = tokio::join!(out.send(sentinel), read_until(peer, carry, &sentinel_bytes));
            wire
        });
        check(&wire);
    }

    fn stanza(&mut self, stanza: Element) {
        self.inputs += 1;
        let (router, out, peer, carry) = (&mut self.router, &self.out, &mut self.peer, &mut self.carry);
        self.sentinels += 1;
        let nonce = self.seed.hash_one(self.sentinels);
        let sentinel: Element = format!("<fuzz-sentinel xmlns='urn:fuzz:sentinel' n='{nonce:016x}'/>").parse().unwrap();
        let sentinel_bytes = xml_stream::to_bytes(&sentinel);
        let wire = self.runtime.block_on(async {
            let baseline = tokio::runtime::Handle::current().metrics().num_alive_tasks();
            // The router may write more than the socket holds: the socket is read while
            // it works.
            let work = async {
                router.handle_stanza(stanza).await;
                settle(router, baseline).await;
                out.send(sentinel).await;
            };
            let (_, wire) = tokio::join!(work, read_until(peer, carry, &sentinel_bytes));
            wire
        });
        let commands = self.recorder.drain();
        if std::env::var_os("STANZA_FUZZ_DEBUG").is_some() {
            eprintln!("commands to sessions: {commands}");
        }
        check(&wire);
    }
}

/// Reads the socket until `sentinel`; returns what came before it and keeps what came
/// after it in `carry`.
async fn read_until(peer: &mut TcpStream, carry: &mut Vec<u8>, sentinel: &[u8]) -> Vec<u8> {
    let mut buf = std::mem::take(carry);
    let mut searched: usize = 0;
    loop {
        let from = searched.saturating_sub(sentinel.len());
        if let Some(at) = find(&buf[from..], sentinel) {
            let at = from + at;
            *carry = buf[at + sentinel.len()..].to_vec();
            buf.truncate(at);
            return buf;
        }
        searched = buf.len();
        match tokio::time::timeout(WIRE_LIMIT, peer.read_buf(&mut buf)).await {
            Ok(Ok(0)) => panic!("the writer closed its socket"),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("reading the writer's socket: {error}"),
            Err(_) => panic!("the writer wrote nothing for {WIRE_LIMIT:?}; waiting for the sentinel"),
        }
    }
}

/// What the gateway wrote: stanzas (and whitespace keepalives) that parse, and that
/// minidom writes back and parses again as the same stanzas.
fn check(wire: &[u8]) {
    if std::env::var_os("STANZA_FUZZ_DEBUG").is_some() {
        eprintln!("wire: {}", String::from_utf8_lossy(wire));
    }
    if wire.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let text = std::str::from_utf8(wire).expect("the writer writes UTF-8");
    let wrapped = format!("<fuzz-wire xmlns='{NS}'>{text}</fuzz-wire>");
    let root: Element = match wrapped.parse() {
        Ok(root) => root,
        Err(error) => panic!("the gateway wrote XML that does not parse ({error}):\n{text}"),
    };
    for node in root.nodes() {
        if let Some(text) = node.as_text() {
            assert!(text.chars().all(char::is_whitespace), "text between stanzas: {text:?}");
        }
    }
    for stanza in root.children() {
        assert!(
            stanza.ns() == NS && matches!(stanza.name(), "message" | "presence" | "iq"),
            "not a stanza: {}",
            String::from_utf8_lossy(&xml_stream::to_bytes(stanza))
        );
        let mut again = Vec::new();
        stanza.write_to(&mut again).expect("minidom writes a stanza it parsed");
        let again = String::from_utf8(again).expect("minidom writes UTF-8");
        let back: Element = match again.parse() {
            Ok(back) => back,
            Err(error) => panic!("minidom's writing does not parse again ({error}):\n{again}"),
        };
        assert_eq!(&back, stanza, "minidom's writing parses as another stanza:\n{again}");
    }
}

/// The stanza of an input, `None` when it does not parse or is no stanza.
fn parse(data: &[u8]) -> Option<Element> {
    let text = std::str::from_utf8(data).ok()?;
    let first = text.chars().next()?;
    let (name, rest, close) = if first == '<' {
        let body = &text[1..];
        let end = body.find(|c: char| c.is_whitespace() || c == '>' || c == '/').unwrap_or(body.len());
        (&body[..end], &body[end..], String::new())
    } else {
        let name = ["message", "presence", "iq"][first as usize % 3];
        (name, &text[first.len_utf8()..], format!("</{name}>"))
    };
    if !matches!(name, "message" | "presence" | "iq") {
        return None;
    }
    let sep = if first == '<' { "" } else { " " };
    let stanza: Element = format!("<{name} xmlns='{NS}'{sep}{rest}{close}").parse().ok()?;
    if stanza.attr("from").is_some() {
        return Some(stanza);
    }
    format!("<{name} xmlns='{NS}' from='{DEFAULT_FROM}'{sep}{rest}{close}").parse().ok()
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let Some(stanza) = parse(data) else { return };
    FIXTURE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_some_and(|f| f.inputs >= REBUILD_EVERY) {
            *slot = None;
        }
        let fixture = slot.get_or_insert_with(build);
        fixture.stanza(stanza);
    });
});
