//! One user's connection to one IRC server: its own task, shared by all the user's
//! resources. It logs in (SASL PLAIN where offered, else NickServ where the network is
//! configured to run it; see [`Sasl`]), joins what the user
//! wants, turns IRC lines into [`Event`]s and [`Command`]s into rate-limited IRC lines,
//! and reconnects (then rejoins) when the connection drops.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bridge_core::model::{
    Affiliation, Availability, CaseMapping, ChannelInfo, Command, Credentials, Departure, Event, FailureKind, Message, MessageKind, Occupant, Peer,
    Role, SessionKey, Typing,
};
use bridge_core::{Commands, EventSink, Secret, SessionEvent};
use irc::proto::{Command as IrcCommand, Message as IrcMessage, Response};
use tokio::io::{split, AsyncWriteExt, WriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use bridge_core::backoff::{sleep_until_opt, Backoff};

use crate::ircv3::{Batches, Cap, Caps, EchoQueue};
use crate::listing::{self, Listing};
use crate::channels::{Channels, State};
use crate::modes::{PrefixMap, ServerModes};
use crate::settings::{NetworkSettings, ServerLimits};
use crate::text;
use crate::transport::{self, IncomingRate, LineReader, Stream};

/// How long registration (up to RPL_WELCOME) may take.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an IRC connection with no channel and no private conversation stays open,
/// so that leaving and rejoining a room does not cost a reconnection.
const LINGER: Duration = Duration::from_secs(2);
/// How long after a raw command the server's numerics are shown to the user.
const RAW_REPLY_WINDOW: Duration = Duration::from_secs(10);
/// Lines that may wait for the rate limit; a message that would queue more is refused
/// (`resource-constraint`), not held: at the default rate that is minutes of backlog.
const MAX_QUEUED_LINES: usize = 1000;
/// Queued lines still sent at QUIT; beyond that the user is leaving anyway.
const QUIT_FLUSH_LINES: usize = 20;
/// First and last reconnection delays.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Quick retries of a first connection the network dropped (refused, reset, closed
/// before the welcome) before the user is told it failed: a server busy accepting
/// many connections at once resets some (ngIRCd's accept queue holds 10).
const FIRST_CONNECTION_RETRIES: u32 = 4;
/// The delay before the first of those, doubled each time and jittered.
const FIRST_CONNECTION_RETRY: Duration = Duration::from_millis(100);

/// A line waiting to be written.
#[derive(Debug)]
struct Queued {
    /// The line, without CR LF.
    line: String,
    /// For a line of one of the user's messages: the message, so that it is sent after
    /// a reconnection or reported as not sent, never dropped silently.
    origin: Option<Box<Origin>>,
}

/// The message a queued line belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    /// Whom it was for.
    peer: Peer,
    /// Its XMPP id, for the error the user's client matches to it.
    id: Option<String>,
}

/// The user's messages among queued lines, each once (a long message is several lines).
fn unsent_messages(queue: VecDeque<Queued>) -> Vec<Origin> {
    let mut messages: Vec<Origin> = Vec::new();
    for origin in queue.into_iter().filter_map(|queued| queued.origin) {
        if messages.last() != Some(&*origin) {
            messages.push(*origin);
        }
    }
    messages
}

/// What handling a command left to tell the gateway.
#[derive(Debug)]
enum Owed {
    /// A joined channel whose `Event::Joined` a repeated `Command::Join` asked for again
    /// (another XMPP resource of the user entering the room): the gateway keeps no
    /// occupant list of its own, so the session reports the current one (by name).
    Replay(String),
    /// A message refused for a full send queue.
    Refused(Origin),
    /// A private message the server took (for a receipt): to whom, its id.
    Accepted(Peer, String),
}

/// Why serving a connection stopped.
enum Outcome {
    /// The user or the gateway ended the session.
    Finished,
    /// The connection broke; reconnect.
    Lost(String),
    /// The network dropped the connection (refused, reset, closed, unwritable): the same
    /// as `Lost`, except that a first connection is tried again at once, a few times.
    Dropped(String),
    /// The network policy forbids connecting to the server (it resolves to a private
    /// address, say): no connection was attempted, none will be.
    Refused(String),
    /// The server sent lines faster than [`ServerLimits`] allow: it is cut off, and not
    /// reconnected to (it would do it again).
    Flooded(String),
}

/// Why a server is cut off for sending too fast, in words for the user.
fn flooded(server: &str, limits: &ServerLimits) -> String {
    format!(
        "disconnected from IRC server {server}: it sent more than {} lines a second (the gateway's limit, after a burst of {})",
        limits.lines_per_second, limits.lines_burst
    )
}

/// The state of one (user, server) session.
pub struct IrcSession {
    /// Whose session, on which server: the tag of every event.
    key: SessionKey,
    /// The server's host name.
    server: String,
    /// Port, TLS, rate limit.
    settings: NetworkSettings,
    /// Shared by the sessions to this server: a permit is held from connecting until the
    /// server's first line, so that only so many connections wait to be accepted.
    connecting: Arc<Semaphore>,
    /// The registered password for this network (SASL PLAIN or NickServ), if any: all the
    /// session keeps of the credentials (the nick is in `nick`), not the whole
    /// `Credentials`, whose email variant would make every IRC session larger.
    password: Option<Secret>,
    /// Events to the gateway.
    events: EventSink,
    /// Commands from the gateway.
    commands: Commands,
    /// Channels the user wants (rejoined after a reconnection), and where each stands
    /// on the current connection.
    channels: Channels,
    /// The nick to ask for at registration.
    wanted_nick: String,
    /// Our current nick on the server.
    nick: String,
    /// Length of `:nick!user@host ` as the server relays our lines.
    prefix_len: usize,
    /// PREFIX, CHANMODES and CASEMAPPING of this server (ISUPPORT), shared with every
    /// channel's privileges (one copy per connection).
    server_modes: Arc<ServerModes>,
    /// How this server compares channel names and nicks (ISUPPORT `CASEMAPPING`; rfc1459
    /// until it says): the keys of `private_peers` (`server_modes` has it too, for
    /// `channels` and every roster).
    casemapping: CaseMapping,
    /// Nicks the user talked with privately; their QUIT is shown as unavailable.
    private_peers: BTreeSet<String>,
    /// What commands left to tell the gateway, told once the command is handled
    /// ([`Owed`]). One list for both kinds: a session task's size is per connection.
    owed: Vec<Owed>,
    /// Lines waiting for the rate limit (and for registration). The user's own messages
    /// stay queued across a reconnection; at the end they are sent or reported failed.
    /// At most [`MAX_QUEUED_LINES`] of the user's messages.
    queue: VecDeque<Queued>,
    /// When the next queued line may go; the token bucket's clock.
    next_send: Instant,
    /// Lines still allowed at once before the interval applies.
    burst_left: u32,
    /// Whether registration completed on the current connection.
    registered: bool,
    /// Whether any connection ever completed registration (else failures end the session).
    ever_registered: bool,
    /// Commands received while not registered, replayed after RPL_WELCOME.
    pending: Vec<Command>,
    /// Where SASL stands on the current connection: the password goes out only in answer
    /// to the challenge of the exchange we started, and a failed SASL is not followed by
    /// NickServ.
    sasl: Sasl,
    /// The away state the server holds for this connection: 0 when not away, else a hash
    /// of the `AWAY` line sent. Each join tells the user's availability again; a line
    /// that would change nothing is not sent (one `AWAY` and its reply less per join).
    away_sent: u64,
    /// Since when the session has had no channel and no private conversation.
    idle_since: Option<Instant>,
    /// Until when numeric replies are answers to the user's raw commands (and shown).
    raw_reply_until: Option<Instant>,
    /// The server's channel list being fetched or kept a minute for discovery (boxed,
    /// and `None` for sessions that never list and once the minute is over).
    listing: Option<Box<Listing>>,
    /// IRCv3 capabilities offered so far on the current connection (`CAP LS` may take
    /// several lines).
    offered: Caps,
    /// IRCv3 capabilities the server acknowledged on the current connection.
    caps: Caps,
    /// What the IRCv3 capabilities need kept, made when the server acknowledges one that
    /// needs it: sessions on servers without them hold nothing.
    v3: Option<Box<V3State>>,
}

/// What a connection with IRCv3 capabilities keeps.
#[derive(Debug, Default)]
struct V3State {
    /// With `echo-message`: the user's lines written and not yet echoed.
    echoes: EchoQueue<Origin>,
    /// The lines of the message being echoed, until its last line comes back.
    echo_text: String,
    /// Open playback batches: their lines are delayed.
    batches: Batches,
    /// Away messages of others (`away-notify`), by folded nick.
    away: HashMap<String, String>,
    /// Services accounts of others (`account-notify`, `extended-join`), by folded nick.
    accounts: HashMap<String, String>,
    /// The server answers WHOX (ISUPPORT `WHOX`): a joined channel's members who are
    /// already away or logged in are asked for once (`ircv3::whox_query`).
    whox: bool,
}

impl IrcSession {
    /// A session for `key` on `server`; run it with [`IrcSession::run`].
    pub fn new(
        key: SessionKey,
        server: String,
        settings: NetworkSettings,
        connecting: Arc<Semaphore>,
        credentials: Credentials,
        events: EventSink,
        commands: Commands,
    ) -> Self {
        let (wanted_nick, password) = match credentials {
            Credentials::Irc { nick, password } => (nick, password),
            _ => (String::new(), None),
        };
        let burst = settings.flood_burst;
        IrcSession {
            key,
            server,
            settings,
            connecting,
            password,
            events,
            commands,
            channels: Channels::default(),
            nick: wanted_nick.clone(),
            wanted_nick,
            prefix_len: 0,
            server_modes: Arc::default(),
            private_peers: BTreeSet::new(),
            owed: Vec::new(),
            casemapping: CaseMapping::default(),
            queue: VecDeque::new(),
            next_send: Instant::now(),
            burst_left: burst,
            registered: false,
            ever_registered: false,
            pending: Vec::new(),
            sasl: Sasl::NotTried,
            away_sent: 0,
            idle_since: None,
            raw_reply_until: None,
            listing: None,
            offered: Caps::default(),
            caps: Caps::default(),
            v3: None,
        }
    }

    /// Runs until the session ends, reconnecting as needed.
    #[allow(clippy::manual_async_fn, reason = "an async fn would hold the session twice")]
    pub fn run(mut self) -> impl std::future::Future<Output = ()> + Send {
        // Not an `async fn run(mut self)`: that keeps the argument and the `mut` binding
        // as two copies of the session in the task (hundreds of bytes, times thousands
        // of idle sessions); this block holds one and lends it.
        // A panic ends the session properly (`bridge_core::end_if_panicked`).
        async move {
            let outcome = bridge_core::catch_panic(self.serve_until_ended()).await;
            bridge_core::end_if_panicked(outcome, &self.key, &self.events, &mut self.commands).await;
        }
    }

    /// The session's life: what `run` does.
    async fn serve_until_ended(&mut self) {
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        let mut first_backoff = Backoff::new(FIRST_CONNECTION_RETRY, FIRST_CONNECTION_RETRY * 2u32.pow(FIRST_CONNECTION_RETRIES));
        let mut first_retries = 0;
        // Wait for the first command: it says which nick to use when anonymous.
        let Some(first) = self.commands.recv().await else { return };
        if !self.take_first(first) {
            return;
        }
        let mut end_reason = "session closed".to_owned();
        // What runs only when a connection ends (failures reported, `Disconnected`, the
        // session's end) is boxed below: those futures hold an event being sent (`emit`,
        // 792 bytes; `fail_everything` 1,232), and inline they would size the task that
        // every idle session keeps while `serve` waits for lines.
        loop {
            let outcome = {
                // Held until the server's first line, or given back here if the connection
                // fails (never through the pauses below). The semaphore is never closed.
                let permit = self.connecting.clone().acquire_owned().await.ok();
                // Boxed: a TLS handshake's state is large and only lives while connecting.
                match Box::pin(transport::connect(&self.server, &self.settings)).await {
                    Ok(stream) => self.serve(stream, permit).await,
                    Err(error @ transport::ConnectError::Tcp { .. }) => Outcome::Dropped(error.to_string()),
                    Err(error @ transport::ConnectError::Refused { .. }) => Outcome::Refused(error.to_string()),
                    Err(error) => Outcome::Lost(error.to_string()),
                }
            };
            match outcome {
                Outcome::Finished => break,
                Outcome::Refused(reason) => {
                    warn!(server = %self.server, %reason, "IRC server refused by the network policy");
                    Box::pin(self.fail_everything(FailureKind::NotAllowed, &reason)).await;
                    break;
                }
                Outcome::Flooded(reason) => {
                    warn!(server = %self.server, %reason, "IRC server cut off");
                    // Channels still being joined fail; joined ones close with the reason.
                    self.channels.retain(|channel| !channel.is_joined());
                    Box::pin(self.fail_everything(FailureKind::Unavailable, &reason)).await;
                    end_reason = reason;
                    break;
                }
                Outcome::Dropped(reason) if !self.ever_registered && first_retries < FIRST_CONNECTION_RETRIES => {
                    first_retries += 1;
                    debug!(server = %self.server, %reason, attempt = first_retries, "first IRC connection dropped; trying again");
                    tokio::time::sleep(first_backoff.next_delay()).await;
                }
                Outcome::Lost(reason) | Outcome::Dropped(reason) if !self.ever_registered => {
                    Box::pin(self.fail_everything(FailureKind::Unavailable, &format!("cannot use IRC server {}: {reason}", self.server))).await;
                    break;
                }
                Outcome::Lost(reason) | Outcome::Dropped(reason) => {
                    warn!(server = %self.server, %reason, "IRC connection lost; reconnecting");
                    // Joined channels, and those still being joined: the user hears about
                    // both, and gets them back after the reconnection.
                    let channels: Vec<String> = self.channels.iter().map(|c| c.name.clone()).collect();
                    for channel in self.channels.iter_joined_mut() {
                        channel.unjoin();
                    }
                    if self.registered {
                        // The connection worked: the next one starts from the first delay.
                        backoff.reset();
                    }
                    self.registered = false;
                    Box::pin(self.emit(Event::Disconnected { channels, reason: reason.clone() })).await;
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                        command = self.commands.recv() => match command {
                            None | Some(Command::Shutdown { .. }) => break,
                            Some(command) => self.pending.push(command),
                        }
                    }
                }
            }
        }
        Box::pin(self.report_unsent("not sent to IRC: the session ended")).await;
        // Nothing more is taken; what arrived meanwhile goes back to the gateway.
        self.commands.close();
        let mut unhandled = std::mem::take(&mut self.pending);
        while let Some(command) = self.commands.try_recv() {
            if !matches!(command, Command::Shutdown { .. }) {
                unhandled.push(command);
            }
        }
        Box::pin(self.emit(Event::Ended { reason: end_reason, unhandled })).await;
    }

    /// Handles the command that opened the session; false if it ends it at once.
    fn take_first(&mut self, command: Command) -> bool {
        if self.wanted_nick.is_empty() {
            self.wanted_nick = match &command {
                Command::Join { nick, .. } => nick.clone(),
                // A private message first: the user's XMPP localpart is a fair nick.
                _ => self.key.user.0.split('@').next().unwrap_or("xmppuser").to_owned(),
            };
            self.nick = self.wanted_nick.clone();
        }
        match command {
            Command::Shutdown { .. } => false,
            command => {
                self.pending.push(command);
                true
            }
        }
    }

    /// The connection could never be made or used: tell the user why, once.
    async fn fail_everything(&mut self, kind: FailureKind, text: &str) {
        for command in std::mem::take(&mut self.pending) {
            let event = match command {
                Command::Join { channel, .. } => Event::JoinFailed { channel, kind, text: text.to_owned() },
                Command::Send(message) => Event::Failure { peer: Some(message.peer), id: message.id, kind, text: text.to_owned() },
                _ => continue,
            };
            self.emit(event).await;
        }
        let channels: Vec<String> = self.channels.take_all().map(|c| c.name).collect();
        for channel in channels {
            self.emit(Event::JoinFailed { channel, kind, text: text.to_owned() }).await;
        }
    }

    async fn emit(&self, event: Event) {
        let _ = self.events.send(SessionEvent { key: self.key.clone(), event }).await;
    }

    /// Serves one connection.
    async fn serve(&mut self, stream: Stream, mut connecting: Option<OwnedSemaphorePermit>) -> Outcome {
        let (read, mut write) = split(stream);
        let mut reader = LineReader::new(read, self.settings.limits.line_bytes as usize);
        let mut rate = IncomingRate::new(&self.settings.limits, Instant::now());
        self.registered = false;
        self.sasl = Sasl::NotTried;
        self.away_sent = 0;
        self.offered = Caps::default();
        self.caps = Caps::default();
        self.v3 = None;
        // Protocol lines are recomputed after the welcome (rejoins); the user's
        // messages wait for it and go out then.
        self.queue.retain(|queued| queued.origin.is_some());
        self.burst_left = self.settings.flood_burst;
        self.nick = self.wanted_nick.clone();
        // A listing of the last connection is not finished on this one: its waiters
        // are answered that the session could not list (their replies are dropped).
        self.listing = None;

        if let Err(error) = self.register(&mut write).await {
            return Outcome::Dropped(error.to_string());
        }
        let deadline = Instant::now() + REGISTRATION_TIMEOUT;
        loop {
            if let Err(error) = self.flush_queue(&mut write).await {
                return Outcome::Lost(error.to_string());
            }
            if !self.owed.is_empty() {
                // Boxed: rare (receipts), and the task's size is per connection.
                Box::pin(self.report_owed()).await;
            }
            let wait_send = (self.registered && !self.queue.is_empty()).then_some(self.next_send);
            // Nothing left to do here: linger a moment (a client "rejoin" is a leave and a
            // join back to back), then quit.
            let unused = self.registered && self.channels.is_empty() && self.private_peers.is_empty() && self.listing.is_none();
            let idle_until = if unused { *self.idle_since.get_or_insert_with(Instant::now) + LINGER } else {
                self.idle_since = None;
                deadline
            };
            // One timer for the four deadlines (linger, rate limit, listing, welcome),
            // told apart once it fires: every branch's future lives in the task while it
            // waits, enabled or not, and a `Sleep` is 112 bytes of every idle session.
            let wake = [unused.then_some(idle_until), wait_send, self.listing.as_ref().map(|l| l.deadline()), (!self.registered).then_some(deadline)]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                line = reader.next_line() => match line {
                    Ok(Some(line)) => {
                        // Accepted: the next connection to this server may start.
                        drop(connecting.take());
                        bridge_core::counters::count(&bridge_core::counters::COUNTERS.irc_lines_in);
                        // A LIST is a burst the server was asked for (50,000 lines on the
                        // largest networks): not cut off while it lasts (15 s at most,
                        // kept within `listing`'s bounds).
                        if !rate.take(&self.settings.limits, Instant::now()) && !listing::fetching(&self.listing) {
                            bridge_core::counters::count(&bridge_core::counters::COUNTERS.irc_servers_cut_off);
                            return Outcome::Flooded(flooded(&self.server, &self.settings.limits));
                        }
                        if let Some(outcome) = Box::pin(self.on_line(&line, &mut write)).await {
                            return outcome;
                        }
                    }
                    Ok(None) => return Outcome::Dropped("the server closed the connection".into()),
                    Err(error) => return Outcome::Dropped(error.to_string()),
                },
                // `quit` and `report_owed` boxed: they hold an event being sent (`emit`,
                // 792 bytes) and run once per session or only with something owed; inline,
                // every idle session's task would be sized for them.
                command = self.commands.recv(), if self.registered => match command {
                    None => return Box::pin(self.quit(&mut write, "gateway shutting down")).await,
                    Some(Command::Shutdown { reason }) => return Box::pin(self.quit(&mut write, &reason)).await,
                    Some(command) => {
                        if self.on_command(command) {
                            return Box::pin(self.quit(&mut write, "gateway shutting down")).await;
                        }
                        if !self.owed.is_empty() {
                            Box::pin(self.report_owed()).await;
                        }
                    }
                },
                () = sleep_until_opt(wake) => {
                    let now = Instant::now();
                    if !self.registered && now >= deadline {
                        return Outcome::Lost("no welcome from the server in time".into());
                    }
                    if unused && now >= idle_until {
                        return Box::pin(self.quit(&mut write, "left every channel")).await;
                    }
                    listing::tick(&mut self.listing, now);
                    // Else the rate limit's next line is due: the loop's top sends it.
                }
            }
        }
    }

    /// CAP negotiation (IRCv3 capabilities, SASL), NICK and USER.
    async fn register(&mut self, write: &mut WriteHalf<Stream>) -> std::io::Result<()> {
        let nick = format!("NICK {}", self.nick);
        let user = format!("USER {} 0 * :xmpp-gateway user", text::sanitize_word(&self.wanted_nick));
        transport::write_lines(write, ["CAP LS 302", &nick, &user]).await?;
        write.flush().await
    }

    fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// Sends what is still queued (a PART with its reason, say), then QUIT, and ends.
    async fn quit(&mut self, write: &mut WriteHalf<Stream>, reason: &str) -> Outcome {
        let mut written = 0;
        while written < QUIT_FLUSH_LINES {
            let Some(queued) = self.queue.front() else { break };
            if transport::write_line(write, &queued.line).await.is_err() {
                break;
            }
            self.queue.pop_front();
            written += 1;
        }
        self.report_unsent(&format!("not sent to IRC: the session ended ({reason})")).await;
        let reason = text::to_irc_lines(reason).into_iter().next().unwrap_or_default();
        let _ = transport::write_line(write, &format!("QUIT :{reason}")).await;
        let _ = write.shutdown().await;
        Outcome::Finished
    }

    /// Writes queued lines as the rate limit allows.
    async fn flush_queue(&mut self, write: &mut WriteHalf<Stream>) -> std::io::Result<()> {
        if !self.registered {
            return Ok(());
        }
        let unlimited = self.settings.flood_burst == 0;
        // How many lines at the queue's front the rate limit lets out now: written
        // together, then taken off the queue (a failed write leaves them queued, for
        // `report_unsent`).
        let mut due = 0;
        while due < self.queue.len() {
            let now = Instant::now();
            if !unlimited {
                if self.burst_left == 0 && now < self.next_send {
                    break;
                }
                if now >= self.next_send {
                    // Tokens come back at one per interval, up to the burst.
                    let elapsed = now - self.next_send;
                    let intervals = elapsed.as_millis() / self.settings.flood_interval.as_millis().max(1);
                    // Saturating: after weeks idle the count exceeds any burst, not wraps.
                    let regained = u32::try_from(intervals).unwrap_or(u32::MAX).saturating_add(1);
                    self.burst_left = self.burst_left.saturating_add(regained).min(self.settings.flood_burst);
                }
                self.burst_left -= 1;
                self.next_send = now + self.settings.flood_interval;
            }
            due += 1;
        }
        if due == 0 {
            return Ok(());
        }
        transport::write_lines(write, self.queue.iter().take(due).map(|queued| queued.line.as_str())).await?;
        write.flush().await?;
        for _ in 0..due {
            if let Some(queued) = self.queue.pop_front() {
                self.written(queued);
            }
        }
        Ok(())
    }

    /// A line went out: with `echo-message` a line of the user's now waits for its echo;
    /// without it, the last line of a private message is the server taking the message.
    fn written(&mut self, queued: Queued) {
        let Some(origin) = queued.origin else { return };
        let last = self.queue.front().is_none_or(|next| next.origin.as_ref() != Some(&origin));
        if let (true, Some(v3)) = (self.caps.has(Cap::EchoMessage), self.v3.as_mut()) {
            // Lines of messages are always `PRIVMSG target :payload` (send_message).
            let Some((target, payload)) = queued.line.strip_prefix("PRIVMSG ").and_then(|rest| rest.split_once(" :")) else { return };
            v3.echoes.written(self.casemapping.fold(target), payload.to_owned(), *origin, last);
        } else if let (true, Peer::Nick(_), Some(id)) = (last, &origin.peer, &origin.id) {
            self.owed.push(Owed::Accepted(Peer::clone(&origin.peer), id.clone()));
        }
    }

    /// Queues a protocol line (rate-limited).
    fn send(&mut self, line: String) {
        self.queue.push_back(Queued { line, origin: None });
    }

    /// Tells the user about each of their messages still queued, which will not be sent.
    async fn report_unsent(&mut self, text: &str) {
        let queue = std::mem::take(&mut self.queue);
        for origin in unsent_messages(queue) {
            let Origin { peer, id } = origin;
            self.emit(Event::Failure { peer: Some(peer), id, kind: FailureKind::Unavailable, text: text.to_owned() }).await;
        }
    }

    // ---------------------------------------------------------------------------------
    // From the gateway to IRC
    // ---------------------------------------------------------------------------------

    /// Handles a command; true when the session should end (nothing left to do).
    fn on_command(&mut self, command: Command) -> bool {
        match command {
            Command::Send(message) => self.send_message(message),
            Command::Join { channel, nick: _, password } => {
                let known = self.channels.get(&self.server_modes, &channel);
                if known.is_some_and(|c| c.is_reported()) {
                    // Another resource entering: the channel (and the key it was joined
                    // with, for rejoins) stays as it is.
                    self.owed.push(Owed::Replay(channel));
                    return false;
                }
                if !known.is_some_and(|c| c.is_joined()) {
                    let line = match &password {
                        Some(key) => format!("JOIN {channel} {}", text::sanitize_word(key.expose())),
                        None => format!("JOIN {channel}"),
                    };
                    self.send(line);
                    // The channel's own modes (+m, +k: shown by discovery) come in
                    // RPL_CHANNELMODEIS, after the JOIN's replies; asked in the JOIN's
                    // write (a refused JOIN's answer is ignored: not joined).
                    self.send(format!("MODE {channel}"));
                }
                self.channels.want(&self.server_modes, channel, password);
            }
            Command::Leave { channel, reason } => {
                // Forgotten at once, not when the server echoes the PART: a join that
                // follows straight away must send a new JOIN.
                if self.channels.remove(&self.server_modes, &channel).is_some_and(|c| c.is_joined()) {
                    let reason = reason.and_then(|r| text::to_irc_lines(&r).into_iter().next());
                    self.send(match reason {
                        Some(reason) => format!("PART {channel} :{reason}"),
                        None => format!("PART {channel}"),
                    });
                }
                // Whether the connection is still needed is the gateway's call (it sends
                // Shutdown): deciding here would race with a join already on its way.
            }
            Command::SetTopic { channel, topic } => {
                let topic = text::to_irc_lines(&topic).join(" ");
                self.send(format!("TOPIC {channel} :{topic}"));
            }
            Command::ChangeNick { nick } => self.send(format!("NICK {}", text::sanitize_word(&nick))),
            Command::Invite { channel, nick } => self.send(format!("INVITE {} {}", text::sanitize_word(&nick), text::sanitize_word(&channel))),
            Command::Typing { peer, typing } => {
                // Only where the server carries client tags; a hint, never worth an error.
                let target = match &peer {
                    Peer::Nick(target) | Peer::Channel(target) => target,
                    Peer::Server | Peer::EmailAddress(_) | Peer::EmailGroup(_) => return false,
                };
                if self.caps.has(Cap::MessageTags) {
                    self.send(crate::ircv3::typing_line(&text::sanitize_word(target), typing));
                }
            }
            Command::SetAvailability { availability, status } => {
                let line = match availability {
                    Availability::Available => "AWAY".to_owned(),
                    _ => {
                        let status = status
                            .and_then(|s| text::to_irc_lines(&s).into_iter().next())
                            .unwrap_or_else(|| "away".into());
                        format!("AWAY :{status}")
                    }
                };
                let sent = away_line_hash(&line);
                if sent != self.away_sent {
                    self.away_sent = sent;
                    self.send(line);
                }
            }
            Command::DescribeChannel { channel, nicks, reply } => reply.send(self.describe(&channel, nicks)),
            Command::ListChannels { reply } => {
                if listing::ask(&mut self.listing, reply, Instant::now()) {
                    self.send("LIST".to_owned());
                }
            }
            // IRC has no read state.
            Command::MarkRead { .. } => {}
            Command::Shutdown { .. } => return true,
        }
        false
    }

    /// What discovery shows of a channel the user is in (reported to the gateway).
    fn describe(&self, channel: &str, nicks: bool) -> Option<ChannelInfo> {
        let joined = self.channels.get(&self.server_modes, channel).filter(|c| c.is_reported())?;
        let modes = joined.privileges.channel_modes();
        Some(ChannelInfo {
            name: joined.name.clone(),
            topic: joined.topic.clone(),
            moderated: modes.moderated(),
            keyed: modes.keyed(),
            occupants: joined.privileges.len(),
            nicks: if nicks { joined.privileges.occupants().into_iter().map(|o| o.nick).collect() } else { Vec::new() },
        })
    }

    fn send_message(&mut self, message: Message) {
        let target = match &message.peer {
            Peer::Channel(channel) => channel.clone(),
            Peer::Nick(nick) => {
                self.private_peers.insert(self.casemapping.fold(nick));
                nick.clone()
            }
            Peer::Server => {
                // Raw commands from the user, one per line, on their own connection; the
                // server's numeric answers are shown for a while.
                for line in text::to_irc_lines(&message.body) {
                    if line.get(..4).is_some_and(|command| command.eq_ignore_ascii_case("AWAY")) {
                        // Whatever it set, the next availability is sent as it is.
                        self.away_sent = u64::MAX;
                    }
                    self.send(line);
                }
                self.raw_reply_until = Some(Instant::now() + RAW_REPLY_WINDOW);
                return;
            }
            Peer::EmailAddress(_) | Peer::EmailGroup(_) => return,
        };
        let origin = Origin { peer: message.peer.clone(), id: message.id.clone() };
        // The last guard (names are checked before they get here): a target that would
        // split the line or name several is refused, never sent somewhere else.
        if !text::is_one_target(&target) {
            self.owed.push(Owed::Refused(origin));
            return;
        }
        let (body, action) = match (message.kind, text::me_command(&message.body)) {
            (MessageKind::Action, _) => (message.body.as_str(), true),
            (_, Some(rest)) => (rest, true),
            _ => (message.body.as_str(), false),
        };
        let own_prefix = if self.prefix_len > 0 { self.prefix_len } else { text::estimated_prefix_len(&self.nick) };
        let budget = text::privmsg_budget(&target, own_prefix, action);
        let lines: Vec<String> = text::to_irc_lines(body)
            .iter()
            .flat_map(|line| text::split_to_fit(line, budget))
            .map(|chunk| {
                let payload = if action { text::encode_action(&chunk) } else { chunk };
                format!("PRIVMSG {target} :{payload}")
            })
            .collect();
        if self.queue.len() + lines.len() > MAX_QUEUED_LINES {
            self.owed.push(Owed::Refused(origin));
            return;
        }
        for line in lines {
            self.queue.push_back(Queued { line, origin: Some(Box::new(origin.clone())) });
        }
    }


    // ---------------------------------------------------------------------------------
    // From IRC to the gateway
    // ---------------------------------------------------------------------------------

    /// Handles one line; `Some` ends the connection.
    async fn on_line(&mut self, line: &str, write: &mut WriteHalf<Stream>) -> Option<Outcome> {
        let message: IrcMessage = match line.parse() {
            Ok(message) => message,
            Err(error) => {
                debug!(server = %self.server, %error, "unparsable IRC line ignored");
                return None;
            }
        };
        let source = message.source_nickname().map(str::to_owned);
        match message.command {
            #[allow(clippy::collapsible_match, reason = "the write is the action, not a guard")]
            IrcCommand::PING(server, _) => {
                // Answered at once: a late PONG gets us disconnected.
                if transport::write_line(write, &format!("PONG :{server}")).await.is_err() {
                    return Some(Outcome::Dropped("write failed".into()));
                }
            }
            IrcCommand::ERROR(reason) => return Some(Outcome::Lost(format!("server error: {reason}"))),
            IrcCommand::CAP(_, sub, arg1, arg2) => self.on_cap(sub, arg1, arg2, write).await,
            IrcCommand::AUTHENTICATE(ref challenge) => {
                // Only the challenge of the exchange we started gets the password, once: an
                // unsolicited `AUTHENTICATE +` gets nothing.
                if let (Sasl::Started, "+", Some(password)) = (self.sasl, challenge.as_str(), self.password()) {
                    let token = sasl_plain(&self.wanted_nick, password.expose());
                    self.sasl = Sasl::Answered;
                    let _ = transport::write_line(write, &format!("AUTHENTICATE {token}")).await;
                }
            }
            IrcCommand::Response(response, args) => return self.on_numeric(response, args, write).await,
            IrcCommand::JOIN(channel, account, realname) => {
                if let (Some(nick), Some(account), Some(_), true) = (&source, account, realname, self.caps.has(Cap::ExtendedJoin)) {
                    // `extended-join`: `JOIN #chan account :realname`, `*` when logged out.
                    self.set_account(nick, (account != "*").then_some(account));
                }
                self.on_join(source, &channel, message.prefix.as_ref()).await;
            }
            IrcCommand::PART(channel, reason) => {
                if let Some(nick) = source {
                    self.on_departure(&channel, &nick, Departure::Part, reason).await;
                }
            }
            IrcCommand::KICK(channel, nick, reason) => {
                let by = source.unwrap_or_default();
                self.on_departure(&channel, &nick, Departure::Kicked { by }, reason).await;
            }
            IrcCommand::QUIT(reason) => {
                if let Some(nick) = source {
                    self.on_quit(&nick, reason).await;
                    self.forget_if_gone(&nick);
                }
            }
            IrcCommand::AWAY(away) if self.caps.has(Cap::AwayNotify) => {
                if let Some(nick) = source.filter(|nick| !self.is_me(nick)) {
                    let folded = self.casemapping.fold(&nick);
                    if let Some(v3) = self.v3.as_mut() {
                        match away {
                            Some(text) => v3.away.insert(folded, text::strip_formatting(&text)),
                            None => v3.away.remove(&folded),
                        };
                    }
                    self.report_occupant(&nick).await;
                }
            }
            IrcCommand::ACCOUNT(account) if self.caps.has(Cap::AccountNotify) => {
                if let Some(nick) = source {
                    self.set_account(&nick, (account != "*").then_some(account));
                    self.report_occupant(&nick).await;
                }
            }
            IrcCommand::BATCH(reference, kind, _) => {
                if let Some(v3) = self.v3.as_mut() {
                    v3.batches.on_batch(&reference, kind.as_ref().map(irc::proto::BatchSubCommand::to_str));
                }
            }
            IrcCommand::NICK(new) => {
                if let Some(old) = source {
                    self.on_nick(&old, &new).await;
                }
            }
            IrcCommand::TOPIC(channel, Some(topic)) => {
                if let Some(joined) = self.channels.joined_mut(&self.server_modes, &channel) {
                    joined.topic = Some(topic.clone());
                    let channel = joined.name.clone();
                    self.emit(Event::Topic { channel, topic, by: source }).await;
                }
            }
            ref command @ IrcCommand::ChannelMODE(..) => {
                let raw = String::from(command);
                self.on_mode(&raw).await;
            }
            // Ours only: with invite-notify a channel operator also hears of others'.
            IrcCommand::INVITE(nick, channel) if self.casemapping.fold(&nick) == self.casemapping.fold(&self.nick) => {
                self.emit(Event::Invited { channel, by: source }).await;
            }
            IrcCommand::Raw(ref command, ref args) if command == "354" => {
                if let Some(member) = crate::ircv3::whox_member(args) {
                    self.on_whox_member(member).await;
                }
            }
            IrcCommand::Raw(ref command, ref args) if command == "TAGMSG" => {
                let typing = message.tags.as_deref().and_then(|tags| tags.iter().find(|tag| tag.0 == "+typing")).and_then(|tag| crate::ircv3::typing_of(tag.1.as_deref()));
                if let (Some(typing), Some(nick), Some(target)) = (typing, source, args.first()) {
                    self.on_typing(nick, target, typing).await;
                }
            }
            IrcCommand::PRIVMSG(target, body) => {
                let delay = self.delay_of(message.tags.as_deref());
                self.on_privmsg(source, &target, &body, false, delay).await;
            }
            IrcCommand::NOTICE(target, body) => {
                let delay = self.delay_of(message.tags.as_deref());
                self.on_privmsg(source, &target, &body, true, delay).await;
            }
            _ => {}
        }
        None
    }

    async fn on_cap(&mut self, sub: irc::proto::CapSubCommand, arg1: Option<String>, arg2: Option<String>, write: &mut WriteHalf<Stream>) {
        use irc::proto::CapSubCommand as Sub;
        // `CAP * LS * :caps` says more lines follow; the last one is `CAP * LS :caps`.
        let more = arg2.is_some() && arg1.as_deref() == Some("*");
        let list = Caps::parse(&arg2.or(arg1).unwrap_or_default());
        let line = match sub {
            Sub::LS if more => {
                self.offered = self.offered.union(list);
                return;
            }
            Sub::LS if !self.registered => {
                self.offered = self.offered.union(list);
                let wanted = crate::ircv3::wanted(self.offered, self.password().is_some());
                if wanted.has(Cap::Sasl) && self.sasl == Sasl::NotTried {
                    self.sasl = Sasl::Requested;
                }
                match wanted.request_line() {
                    // Without SASL nothing waits for the answer: the request and the end
                    // of negotiation go in one write, a round trip less per connection
                    // (the server handles them in order; ACK or NAK, registration goes on).
                    Some(request) if self.sasl == Sasl::NotTried => {
                        let _ = transport::write_lines(write, [request.as_str(), "CAP END"]).await;
                        return;
                    }
                    Some(request) => request,
                    None => "CAP END".to_owned(),
                }
            }
            Sub::ACK => {
                self.caps = self.caps.union(list);
                if self.v3.is_none() && self.caps.needs_state() {
                    self.v3 = Some(Box::default());
                }
                match (list.has(Cap::Sasl), self.sasl) {
                    (true, Sasl::Requested) => {
                        self.sasl = Sasl::Started;
                        "AUTHENTICATE PLAIN".to_owned()
                    }
                    _ if self.registered => return,
                    // CAP END went with the request (no SASL asked).
                    (_, Sasl::NotTried) => return,
                    _ => "CAP END".to_owned(),
                }
            }
            // The whole request refused: SASL alone is worth another try.
            Sub::NAK if self.sasl == Sasl::Requested && list != Caps::only(Cap::Sasl) && !self.registered => "CAP REQ :sasl".to_owned(),
            Sub::NAK => {
                let sasl_requested = self.sasl == Sasl::Requested;
                if sasl_requested {
                    // The server took back its offer: as if it had made none.
                    self.sasl = Sasl::NotTried;
                }
                if !sasl_requested || self.registered {
                    // CAP END went with a request without SASL.
                    return;
                }
                "CAP END".to_owned()
            }
            // `cap-notify` (implied by `CAP LS 302`): a capability went away.
            Sub::DEL => {
                self.caps = self.caps.without(list);
                return;
            }
            _ => return,
        };
        let _ = transport::write_line(write, &line).await;
    }

    async fn on_numeric(&mut self, response: Response, args: Vec<String>, write: &mut WriteHalf<Stream>) -> Option<Outcome> {
        match response {
            // A second welcome (a confused server) must not rejoin everything twice.
            Response::RPL_WELCOME if self.registered => {}
            Response::RPL_WELCOME => {
                self.registered = true;
                self.emit(Event::Echoes(self.caps.has(Cap::EchoMessage))).await;
                self.ever_registered = true;
                if let Some(nick) = args.first() {
                    self.nick = nick.clone();
                }
                info!(server = %self.server, nick = %self.nick, "IRC registration complete");
                if let (Some(password), Sasl::NotTried, true) = (self.password(), self.sasl, self.settings.nickserv) {
                    // No SASL on this server, and the network runs NickServ (configured:
                    // elsewhere anyone could hold that nick): right after the welcome.
                    let line = format!("PRIVMSG NickServ :IDENTIFY {}", text::sanitize_word(password.expose()));
                    if transport::write_line(write, &line).await.is_err() {
                        return Some(Outcome::Dropped("write failed".into()));
                    }
                }
                self.after_welcome();
                self.report_owed().await;
            }
            Response::RPL_SASLSUCCESS => {
                self.sasl = Sasl::Succeeded;
                let _ = transport::write_line(write, "CAP END").await;
            }
            Response::ERR_SASLFAIL | Response::ERR_SASLTOOLONG | Response::ERR_SASLABORT => {
                self.sasl = Sasl::Failed;
                let _ = transport::write_line(write, "CAP END").await;
                let text = args.last().cloned().unwrap_or_default();
                // Said as the server, since no request of the user's failed: the
                // connection goes on without an account (and NickServ is not tried).
                let body = format!("SASL login as {} failed: {text}", self.wanted_nick);
                let message = Message { peer: Peer::Server, sender: None, kind: MessageKind::Notice, body, subject: None, thread: None, id: None, delay: None, links: Vec::new() };
                self.emit(Event::Message(message)).await;
            }
            Response::RPL_ISUPPORT => {
                // The first argument is our nick; a server may send none at all.
                for token in args.iter().skip(1) {
                    if let Some(mapping) = token.strip_prefix("CASEMAPPING=").and_then(CaseMapping::from_isupport) {
                        self.set_casemapping(mapping);
                        self.emit(Event::CaseMapping(mapping)).await;
                    } else if let Some(value) = token.strip_prefix("PREFIX=") {
                        if let Some(map) = PrefixMap::from_isupport(value) {
                            Arc::make_mut(&mut self.server_modes).set_prefixes(map);
                        }
                    } else if token == "WHOX" {
                        if let Some(v3) = self.v3.as_mut() {
                            v3.whox = true;
                        }
                    } else if let Some(value) = token.strip_prefix("CHANMODES=") {
                        Arc::make_mut(&mut self.server_modes).set_chanmodes(value);
                    }
                }
            }
            Response::ERR_NICKNAMEINUSE | Response::ERR_NICKCOLLISION if !self.registered => {
                // Registration: try a variant (110 + 210 tell the user the nick given).
                self.nick = next_nick_variant(&self.nick);
                let _ = transport::write_line(write, &format!("NICK {}", self.nick)).await;
            }
            Response::ERR_ERRONEOUSNICKNAME if !self.registered => {
                let reason = format!("the server refused the nick {}: {}", self.nick, args.last().cloned().unwrap_or_default());
                self.fail_everything(FailureKind::Unavailable, &format!("cannot use IRC server {}: {reason}", self.server)).await;
                return Some(Outcome::Finished);
            }
            Response::RPL_TOPIC => {
                let [_, channel, topic, ..] = args.as_slice() else { return None };
                if let Some(joined) = self.channels.joined_mut(&self.server_modes, channel) {
                    joined.topic = Some(topic.clone());
                }
            }
            Response::RPL_CHANNELMODEIS => {
                let [_, channel, modes, params @ ..] = args.as_slice() else { return None };
                if let Some(joined) = self.channels.joined_mut(&self.server_modes, channel) {
                    let params: Vec<&str> = params.iter().map(String::as_str).collect();
                    joined.privileges.apply_mode(modes, &params);
                }
            }
            // Our LIST (a raw one of the user's, with no fetch under way, is shown).
            Response::RPL_LISTSTART if listing::fetching(&self.listing) => {}
            Response::RPL_LIST if listing::fetching(&self.listing) => {
                let [_, channel, users, rest @ ..] = args.as_slice() else { return None };
                let most = self.settings.limits.list_channels as usize;
                listing::entry(&mut self.listing, most, channel, users, rest.last().map_or("", String::as_str));
            }
            Response::RPL_LISTEND if listing::fetching(&self.listing) => listing::end(&mut self.listing, Instant::now()),
            Response::RPL_TRYAGAIN if listing::fetching(&self.listing) && args.get(1).is_some_and(|c| c.eq_ignore_ascii_case("LIST")) => {
                listing::refused(&mut self.listing, Instant::now(), args.last().map_or("", String::as_str));
            }
            Response::RPL_NAMREPLY => {
                let [_, _, channel, names, ..] = args.as_slice() else { return None };
                if let Some(joined) = self.channels.joined_mut(&self.server_modes, channel) {
                    let most = self.settings.limits.channel_members as usize;
                    for entry in names.split(' ').filter(|e| !e.is_empty()) {
                        joined.privileges.add_within(entry, most);
                    }
                }
            }
            Response::RPL_ENDOFNAMES => {
                let [_, channel, ..] = args.as_slice() else { return None };
                let nick = self.nick.clone();
                if let Some(joined) = self.channels.joined_mut(&self.server_modes, channel) {
                    if !joined.is_reported() {
                        joined.state = State::Reported;
                        let event = Event::Joined {
                            channel: joined.name.clone(),
                            nick,
                            occupants: joined.privileges.occupants(),
                            topic: joined.topic.clone(),
                        };
                        let (members, name) = (joined.privileges.len(), joined.name.clone());
                        let event = self.described_joined(event);
                        self.emit(event).await;
                        if self.asks_whox(members) {
                            self.send(crate::ircv3::whox_query(&name));
                        }
                    }
                }
            }
            Response::ERR_BANNEDFROMCHAN
            | Response::ERR_INVITEONLYCHAN
            | Response::ERR_BADCHANNELKEY
            | Response::ERR_CHANNELISFULL
            | Response::ERR_NOSUCHCHANNEL
            | Response::ERR_TOOMANYCHANNELS
            | Response::ERR_BADCHANMASK => {
                let [_, channel, ..] = args.as_slice() else { return None };
                // A channel being joined (a joined one's JOIN is behind it).
                if let Some(wanted) = self.channels.get(&self.server_modes, channel).filter(|c| !c.is_joined()) {
                    let name = wanted.name.clone();
                    self.channels.remove(&self.server_modes, channel);
                    let kind = match response {
                        Response::ERR_BANNEDFROMCHAN => FailureKind::Forbidden,
                        Response::ERR_INVITEONLYCHAN => FailureKind::RegistrationRequired,
                        Response::ERR_BADCHANNELKEY => FailureKind::NotAuthorized,
                        Response::ERR_NOSUCHCHANNEL | Response::ERR_BADCHANMASK => FailureKind::NotFound,
                        _ => FailureKind::Unavailable,
                    };
                    let text = args.last().cloned().unwrap_or_default();
                    self.emit(Event::JoinFailed { channel: name, kind, text }).await;
                }
            }
            // A line the channel refused (moderated, banned, not joined).
            Response::ERR_CANNOTSENDTOCHAN => {
                let [_, channel, ..] = args.as_slice() else { return None };
                let text = args.last().cloned().unwrap_or_default();
                let folded = self.casemapping.fold(channel);
                let refused = self.v3.as_mut().and_then(|v3| v3.echoes.refused(&folded));
                let (peer, id) = match refused {
                    Some(Origin { peer, id }) => (peer, id),
                    // Without echoes the message is not known: the room says so anyway.
                    None => (Peer::Channel(self.channels.joined(&self.server_modes, channel).map_or_else(|| channel.clone(), |j| j.name.clone())), None),
                };
                self.emit(Event::Failure { peer: Some(peer), id, kind: FailureKind::Forbidden, text }).await;
            }
            Response::ERR_NOSUCHNICK => {
                let [_, nick, ..] = args.as_slice() else { return None };
                let text = args.last().cloned().unwrap_or_default();
                self.emit(Event::Failure { peer: Some(Peer::Nick(nick.clone())), id: None, kind: FailureKind::NotFound, text }).await;
            }
            // The answer to a raw command the user sent to the server JID (VERSION, MOTD,
            // WHOIS...): shown as the server's words, without our own nick.
            _ if self.raw_reply_until.is_some_and(|until| Instant::now() < until) => {
                let body = args.iter().skip(1).map(String::as_str).collect::<Vec<_>>().join(" ");
                let body = text::strip_formatting(&body);
                if !body.trim().is_empty() {
                    let message = Message { peer: Peer::Server, sender: None, kind: MessageKind::Notice, body, subject: None, thread: None, id: None, delay: None, links: Vec::new() };
                    self.emit(Event::Message(message)).await;
                }
            }
            _ => {}
        }
        None
    }
}

/// What [`IrcSession::away_sent`] keeps of an `AWAY` line: 0 for the bare `AWAY` (not
/// away, as every connection starts), else a hash of the line.
fn away_line_hash(line: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    if line == "AWAY" {
        return 0;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    line.hash(&mut hasher);
    hasher.finish().clamp(1, u64::MAX - 1)
}

impl IrcSession {
    /// Compares names as `mapping` says from now on; what is kept by name is keyed again.
    fn set_casemapping(&mut self, mapping: CaseMapping) {
        if mapping == self.casemapping {
            return;
        }
        self.casemapping = mapping;
        Arc::make_mut(&mut self.server_modes).set_mapping(mapping);
        self.channels.rekey(&self.server_modes);
        self.private_peers = std::mem::take(&mut self.private_peers).iter().map(|p| mapping.fold(p)).collect();
    }

    /// Tells the gateway what handling commands left owed.
    async fn report_owed(&mut self) {
        for owed in std::mem::take(&mut self.owed) {
            match owed {
                Owed::Replay(channel) => {
                    let Some(joined) = self.channels.joined(&self.server_modes, &channel) else { continue };
                    let event = Event::Joined {
                        channel: joined.name.clone(),
                        nick: self.nick.clone(),
                        occupants: joined.privileges.occupants(),
                        topic: joined.topic.clone(),
                    };
                    let event = self.described_joined(event);
                    self.emit(event).await;
                }
                Owed::Accepted(peer, id) => self.emit(Event::Accepted { peer, id }).await,
                Owed::Refused(Origin { peer, id }) => {
                    let text = format!(
                        "not sent: {} lines already wait for the IRC server's rate limit, the most this gateway queues",
                        self.queue.len()
                    );
                    self.emit(Event::Failure { peer: Some(peer), id, kind: FailureKind::ResourceConstraint, text }).await;
                }
            }
        }
    }

    /// Registration done: rejoin what the user wants, then replay waiting commands.
    fn after_welcome(&mut self) {
        // Messages kept from the last connection go after the rejoins, or a channel
        // would refuse them.
        let kept = std::mem::take(&mut self.queue);
        let rejoin: Vec<(String, Option<Secret>)> = self.channels.iter().map(|c| (c.name.clone(), c.key.clone())).collect();
        for (channel, password) in rejoin {
            self.on_command(Command::Join { channel, nick: String::new(), password });
        }
        self.queue.extend(kept);
        for command in std::mem::take(&mut self.pending) {
            self.on_command(command);
        }
    }

    fn is_me(&self, nick: &str) -> bool {
        self.casemapping.fold(nick) == self.casemapping.fold(&self.nick)
    }

    async fn on_join(&mut self, source: Option<String>, channel: &str, prefix: Option<&irc::proto::Prefix>) {
        let Some(nick) = source else { return };
        if self.is_me(&nick) {
            // Only channels the user asked for: a server joining us to others (forwards,
            // SAJOIN, a hostile server joining us to a million) costs nothing.
            let Some(wanted) = self.channels.get_mut(&self.server_modes, channel) else {
                debug!(server = %self.server, %channel, "joined to a channel nobody asked for; ignored");
                return;
            };
            wanted.join(&self.server_modes);
            if let Some(irc::proto::Prefix::Nickname(n, u, h)) = prefix {
                // `:nick!user@host ` exactly as the server relays our lines.
                self.prefix_len = 1 + n.len() + 1 + u.len() + 1 + h.len() + 1;
            }
            return;
        }
        if let Some(joined) = self.channels.joined_mut(&self.server_modes, channel) {
            let Some(occupant) = joined.privileges.add_within(&nick, self.settings.limits.channel_members as usize) else { return };
            if joined.is_reported() {
                let channel = joined.name.clone();
                let occupant = self.described(occupant);
                self.emit(Event::Occupant { channel, occupant }).await;
            }
        }
    }

    async fn on_departure(&mut self, channel: &str, nick: &str, departure: Departure, reason: Option<String>) {
        let Some(joined) = self.channels.joined_mut(&self.server_modes, channel) else { return };
        let occupant = joined.privileges.remove(nick).unwrap_or_else(|| ordinary(nick));
        let name = joined.name.clone();
        if self.is_me(nick) {
            self.channels.remove(&self.server_modes, channel);
        }
        let reason = reason.map(|r| text::strip_formatting(&r)).filter(|r| !r.is_empty());
        self.emit(Event::Left { channel: name, occupant, departure, reason }).await;
        self.forget_if_gone(nick);
    }

    async fn on_quit(&mut self, nick: &str, reason: Option<String>) {
        let reason = reason.map(|r| text::strip_formatting(&r)).filter(|r| !r.is_empty());
        let mut departures = Vec::new();
        for joined in self.channels.iter_joined_mut() {
            if let Some(occupant) = joined.privileges.remove(nick) {
                departures.push((joined.name.clone(), occupant));
            }
        }
        for (channel, occupant) in departures {
            self.emit(Event::Left { channel, occupant, departure: Departure::Quit, reason: reason.clone() }).await;
        }
        if self.private_peers.contains(&self.casemapping.fold(nick)) {
            self.emit(Event::PeerQuit { nick: nick.to_owned(), reason }).await;
        }
    }

    async fn on_nick(&mut self, old: &str, new: &str) {
        if self.is_me(old) {
            self.nick = new.to_owned();
        }
        let mut changes = Vec::new();
        for joined in self.channels.iter_joined_mut() {
            if joined.privileges.rename(old, new) {
                if let Some(occupant) = joined.privileges.occupant(new) {
                    changes.push((joined.name.clone(), occupant));
                }
            }
        }
        if let Some(v3) = self.v3.as_mut() {
            let (old, new) = (self.casemapping.fold(old), self.casemapping.fold(new));
            if let Some(away) = v3.away.remove(&old) {
                v3.away.insert(new.clone(), away);
            }
            if let Some(account) = v3.accounts.remove(&old) {
                v3.accounts.insert(new, account);
            }
        }
        for (channel, occupant) in changes {
            let occupant = self.described(occupant);
            self.emit(Event::NickChanged { channel, old: old.to_owned(), occupant }).await;
        }
    }

    async fn on_mode(&mut self, raw: &str) {
        // "MODE #chan +ov-v a b c"
        let mut words = raw.split(' ').skip(1);
        let (Some(channel), Some(modes)) = (words.next(), words.next()) else { return };
        let args: Vec<&str> = words.collect();
        let Some(joined) = self.channels.joined_mut(&self.server_modes, channel) else { return };
        let changed = joined.privileges.apply_mode(modes, &args);
        let name = joined.name.clone();
        for occupant in changed {
            let occupant = self.described(occupant);
            self.emit(Event::Occupant { channel: name.clone(), occupant }).await;
        }
    }

    async fn on_privmsg(&mut self, source: Option<String>, target: &str, body: &str, notice: bool, delay: Option<std::time::SystemTime>) {
        if self.caps.has(Cap::EchoMessage) && source.as_deref().is_some_and(|nick| self.is_me(nick)) {
            return self.on_echo(target, body).await;
        }
        let is_channel = target.starts_with(['#', '&', '+', '!']);
        let (body, action) = match text::ctcp_action(body) {
            Some(action) => (action, true),
            None if text::is_ctcp(body) => return,
            None => (body, false),
        };
        // Formatting went with the line's other codes as it was read (`text::decode_line`).
        if body.trim().is_empty() {
            return;
        }
        let kind = match (action, notice, is_channel) {
            (true, _, _) => MessageKind::Action,
            (_, true, _) => MessageKind::Notice,
            (_, _, true) => MessageKind::Group,
            _ => MessageKind::Chat,
        };
        let body = body.to_owned();
        let message = match source {
            // A server notice (no nick prefix, or before we know anyone).
            None => Message { peer: Peer::Server, sender: None, kind: MessageKind::Notice, body, subject: None, thread: None, id: None, delay, links: Vec::new() },
            Some(nick) if is_channel => {
                let Some(joined) = self.channels.joined(&self.server_modes, target) else { return };
                Message { peer: Peer::Channel(joined.name.clone()), sender: Some(nick), kind, body, subject: None, thread: None, id: None, delay, links: Vec::new() }
            }
            Some(nick) if !self.registered || nick.contains('.') => {
                Message { peer: Peer::Server, sender: None, kind: MessageKind::Notice, body, subject: None, thread: None, id: None, delay, links: Vec::new() }
            }
            Some(nick) => {
                self.private_peers.insert(self.casemapping.fold(&nick));
                Message { peer: Peer::Nick(nick), sender: None, kind, body, subject: None, thread: None, id: None, delay, links: Vec::new() }
            }
        };
        self.emit(Event::Message(message)).await;
    }
}

impl IrcSession {
    // ---------------------------------------------------------------------------------
    // IRCv3: echoes, delays, others' away and account
    // ---------------------------------------------------------------------------------

    /// When a line was sent, if its `server-time` says it is played back or old.
    fn delay_of(&self, tags: Option<&[irc::proto::message::Tag]>) -> Option<std::time::SystemTime> {
        if !self.caps.has(Cap::ServerTime) {
            return None;
        }
        let tag = |name: &str| tags?.iter().find(|tag| tag.0 == name).and_then(|tag| tag.1.as_deref());
        let played_back = self.v3.as_ref().is_some_and(|v3| v3.batches.is_playback(tag("batch")));
        crate::ircv3::delay(tag("time"), played_back, std::time::SystemTime::now())
    }

    /// An echo of one of the user's lines (`echo-message`): once a message's last line is
    /// back, a channel message goes to the room as its reflection (with the XMPP id, and
    /// the text as the server took it), a private one counts as taken (a receipt).
    async fn on_echo(&mut self, target: &str, body: &str) {
        let folded = self.casemapping.fold(target);
        let Some(v3) = self.v3.as_mut() else { return };
        // Not a line of a message of the user's (a raw command's): nothing to reflect.
        let Some(echoed) = v3.echoes.echo(&folded, body) else { return };
        let (line, action) = match text::ctcp_action(body) {
            Some(action) => (action, true),
            None => (body, false),
        };
        if !v3.echo_text.is_empty() {
            v3.echo_text.push('\n');
        }
        v3.echo_text.push_str(line);
        let body = if echoed.last { std::mem::take(&mut v3.echo_text) } else { String::new() };
        for Origin { peer, id } in echoed.skipped {
            let text = "the IRC server did not take this message".to_owned();
            self.emit(Event::Failure { peer: Some(peer), id, kind: FailureKind::NotAcceptable, text }).await;
        }
        if !echoed.last {
            return;
        }
        match echoed.origin.peer {
            Peer::Channel(channel) => {
                let channel = self.channels.joined(&self.server_modes, &channel).map_or(channel.clone(), |joined| joined.name.clone());
                let kind = if action { MessageKind::Action } else { MessageKind::Group };
                let sender = Some(self.nick.clone());
                let message = Message { peer: Peer::Channel(channel), sender, kind, body, subject: None, thread: None, id: echoed.origin.id, delay: None, links: Vec::new() };
                self.emit(Event::Message(message)).await;
            }
            peer => {
                if let Some(id) = echoed.origin.id {
                    self.emit(Event::Accepted { peer, id }).await;
                }
            }
        }
    }

    /// Someone's `+typing`: privately to the user, or in a joined channel (not the user's
    /// own, echoed back).
    async fn on_typing(&mut self, nick: String, target: &str, typing: Typing) {
        if self.is_me(&nick) {
            return;
        }
        let event = if target.starts_with(['#', '&', '+', '!']) {
            let Some(joined) = self.channels.joined(&self.server_modes, target) else { return };
            Event::Typing { peer: Peer::Channel(joined.name.clone()), sender: Some(nick), typing }
        } else if self.is_me(target) {
            Event::Typing { peer: Peer::Nick(nick), sender: None, typing }
        } else {
            return;
        };
        self.emit(event).await;
    }

    /// Records the services account `nick` is logged in to (`None`: logged out).
    fn set_account(&mut self, nick: &str, account: Option<String>) {
        let folded = self.casemapping.fold(nick);
        let Some(v3) = self.v3.as_mut() else { return };
        match account {
            Some(account) => v3.accounts.insert(folded, account),
            None => v3.accounts.remove(&folded),
        };
    }

    /// Whether a channel just joined with `members` is asked who in it is away or logged
    /// in: when the server answers WHOX and the session follows either.
    fn asks_whox(&self, members: usize) -> bool {
        let follows = self.caps.has(Cap::AwayNotify) || self.caps.has(Cap::AccountNotify);
        follows && members <= crate::ircv3::WHOX_MOST_MEMBERS && self.v3.as_deref().is_some_and(|v3| v3.whox)
    }

    /// A member's status from the WHOX query: recorded where the session follows its
    /// changes (an away state without `away-notify` would never be cleared) and only for
    /// members of the user's channels, and the rooms hear of it when it is news.
    async fn on_whox_member(&mut self, member: crate::ircv3::WhoxMember) {
        // Only members of a channel the user is in: a server's replies nobody asked for
        // (a million nicks) keep nothing.
        if self.is_me(&member.nick) || !self.channels.iter_joined().any(|joined| joined.privileges.contains(&member.nick)) {
            return;
        }
        let folded = self.casemapping.fold(&member.nick);
        let (away_notify, account_notify) = (self.caps.has(Cap::AwayNotify), self.caps.has(Cap::AccountNotify));
        let Some(v3) = self.v3.as_mut() else { return };
        let mut news = false;
        if away_notify && member.away && !v3.away.contains_key(&folded) {
            v3.away.insert(folded.clone(), String::new());
            news = true;
        }
        if let Some(account) = member.account.filter(|_| account_notify) {
            if v3.accounts.get(&folded) != Some(&account) {
                v3.accounts.insert(folded, account);
                news = true;
            }
        }
        if news {
            self.report_occupant(&member.nick).await;
        }
    }

    /// Forgets what is kept of `nick` once they share no channel with the user.
    fn forget_if_gone(&mut self, nick: &str) {
        let Some(v3) = self.v3.as_mut() else { return };
        if v3.away.is_empty() && v3.accounts.is_empty() {
            return;
        }
        if !self.channels.iter_joined().any(|joined| joined.privileges.contains(nick)) {
            let folded = self.casemapping.fold(nick);
            v3.away.remove(&folded);
            v3.accounts.remove(&folded);
        }
    }

    /// `occupant` with their away message and account, where the server tells them.
    fn described(&self, mut occupant: Occupant) -> Occupant {
        if let Some(v3) = self.v3.as_deref().filter(|v3| !v3.away.is_empty() || !v3.accounts.is_empty()) {
            let folded = self.casemapping.folded(&occupant.nick);
            occupant.away = v3.away.get(folded.as_ref()).cloned();
            occupant.account = v3.accounts.get(folded.as_ref()).cloned();
        }
        occupant
    }

    /// A `Joined` event with each occupant [`described`](Self::described).
    fn described_joined(&self, event: Event) -> Event {
        match event {
            Event::Joined { channel, nick, occupants, topic } => {
                let occupants = occupants.into_iter().map(|occupant| self.described(occupant)).collect();
                Event::Joined { channel, nick, occupants, topic }
            }
            event => event,
        }
    }

    /// `nick`'s presence changed (away, account): the rooms they are in hear of it.
    async fn report_occupant(&mut self, nick: &str) {
        let in_channels: Vec<(String, Occupant)> =
            self.channels.iter_joined().filter(|joined| joined.is_reported()).filter_map(|joined| Some((joined.name.clone(), joined.privileges.occupant(nick)?))).collect();
        for (channel, occupant) in in_channels {
            let occupant = self.described(occupant);
            self.emit(Event::Occupant { channel, occupant }).await;
        }
    }
}

/// Where SASL stands on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sasl {
    /// Not asked for (no password, or the server offered no SASL): NickServ may follow,
    /// where the network is configured to run it.
    NotTried,
    /// `CAP REQ :sasl` sent.
    Requested,
    /// `AUTHENTICATE PLAIN` sent: the next `AUTHENTICATE +` is the server's challenge.
    Started,
    /// The credentials went out; the server's verdict is awaited.
    Answered,
    /// Logged in.
    Succeeded,
    /// Refused: the connection goes on without an account, and NickServ is not tried.
    Failed,
}

/// An occupant we know nothing more about than the nick.
fn ordinary(nick: &str) -> Occupant {
    Occupant::new(nick.to_owned(), Role::Participant, Affiliation::None)
}

/// A nick variant after a collision: `nick_`, then `nick1`, `nick2`...
pub fn next_nick_variant(nick: &str) -> String {
    let stem = nick.trim_end_matches(|c: char| c.is_ascii_digit() || c == '_');
    // What was trimmed: `_`s and digits (ASCII, so `stem.len()` is a char boundary).
    let suffix = nick.get(stem.len()..).unwrap_or_default();
    let base = if stem.is_empty() { "xmpp" } else { stem };
    if suffix.is_empty() {
        return format!("{base}_");
    }
    let number: u32 = suffix.trim_start_matches('_').parse().unwrap_or(0);
    format!("{base}{}", number.saturating_add(1))
}

/// The SASL PLAIN token: base64 of `\0user\0password`.
fn sasl_plain(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nick_variants_after_collisions() {
        assert_eq!(next_nick_variant("alice"), "alice_");
        assert_eq!(next_nick_variant("alice_"), "alice1");
        assert_eq!(next_nick_variant("alice1"), "alice2");
        assert_eq!(next_nick_variant("alice_9"), "alice10");
    }

    #[test]
    fn nick_variants_of_nicks_made_only_of_underscores_and_digits_do_not_panic() {
        // Issue 9: these panicked (slicing past the end of the nick).
        assert_eq!(next_nick_variant("_"), "xmpp1");
        assert_eq!(next_nick_variant("__"), "xmpp1");
        assert_eq!(next_nick_variant("_1"), "xmpp2");
        assert_eq!(next_nick_variant(""), "xmpp_");
        assert_eq!(next_nick_variant("a99999999999999999999"), "a1", "a number too large starts again");
    }

    #[test]
    fn unsent_messages_are_each_reported_once_and_protocol_lines_not_at_all() {
        let origin = |id: &str| Some(Box::new(Origin { peer: Peer::Channel("#c".into()), id: Some(id.into()) }));
        let queue = VecDeque::from([
            Queued { line: "JOIN #c".into(), origin: None },
            Queued { line: "PRIVMSG #c :long 1".into(), origin: origin("m1") },
            Queued { line: "PRIVMSG #c :long 2".into(), origin: origin("m1") },
            Queued { line: "PRIVMSG #c :short".into(), origin: origin("m2") },
        ]);
        let ids: Vec<Option<String>> = unsent_messages(queue).into_iter().map(|o| o.id).collect();
        assert_eq!(ids, [Some("m1".to_owned()), Some("m2".to_owned())]);
    }
}
