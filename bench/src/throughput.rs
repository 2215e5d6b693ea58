//! Throughput: `users` XMPP users in one channel through the gateway, plus one IRC
//! client in it.
//!
//! - XMPP -> IRC: the users send `messages` groupchat messages in all (each keeps at
//!   most [`WINDOW`] of its own messages unreflected: the gateway's MUC reflection is the
//!   flow control, so nobody's queues grow without bound); the IRC client counts what
//!   arrives. Every message also fans out to the other `users - 1` occupants through
//!   their own IRC connections: that is counted too, and the CPU covers it.
//! - IRC -> XMPP: the IRC client sends `messages` lines as fast as the socket takes
//!   them; each fans out to every XMPP occupant (`messages * users` deliveries).
//!
//! Loss: whatever has not arrived [`IDLE`] after the last arrival, once sending is done.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use testkit::irc::Ngircd;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::irc::Irc;
use crate::peers::{wait_joined, Peer};
use crate::procstat;
use crate::report::{Measured, Spec};
use crate::rig::{names, run_limited, settle, XmppSide, SETUP_CONCURRENCY};
use crate::xmpp::{body, XmppConn, XmppReader};

/// Unreflected messages each XMPP sender may have in flight.
const WINDOW: usize = 32;
/// Counting stops this long after the last arrival (once sending has finished).
const IDLE: Duration = Duration::from_secs(10);
/// A sender waiting this long for a reflection fails the run.
const STALL: Duration = Duration::from_secs(60);

/// The figures of this scenario.
pub fn specs() -> Vec<Spec> {
    vec![
        Spec { key: "x2i_rate", label: "XMPP->IRC messages/s", unit: "msg/s", decimals: 0, target: "" },
        Spec { key: "x2i_lost", label: "XMPP->IRC messages lost", unit: "", decimals: 0, target: "0" },
        Spec { key: "x2i_fanout_lost", label: "XMPP->IRC fan-out deliveries to the other occupants lost", unit: "", decimals: 0, target: "0" },
        Spec { key: "x2i_cpu", label: "gateway CPU per 1,000 XMPP->IRC messages (incl. fan-out)", unit: "CPU-s", decimals: 3, target: "<= half of biboumi (biboumi 3.5 CPU-s)" },
        Spec { key: "x2i_prosody_cpu", label: "Prosody CPU per 1,000 XMPP->IRC messages", unit: "CPU-s", decimals: 3, target: "" },
        Spec { key: "i2x_rate", label: "IRC->XMPP deliveries/s", unit: "/s", decimals: 0, target: "" },
        Spec { key: "i2x_lost", label: "IRC->XMPP deliveries lost", unit: "", decimals: 0, target: "0" },
        Spec { key: "i2x_cpu", label: "gateway CPU per 1,000 IRC->XMPP deliveries", unit: "CPU-s", decimals: 4, target: "<= half of biboumi (biboumi 0.020 CPU-s)" },
        Spec { key: "i2x_prosody_cpu", label: "Prosody CPU per 1,000 IRC->XMPP deliveries", unit: "CPU-s", decimals: 4, target: "" },
        Spec { key: "x2i_pg_cpu", label: "PostgreSQL CPU (server + backends) per 1,000 XMPP->IRC messages (GATEWAY_TEST_STORE=postgres only)", unit: "CPU-s", decimals: 3, target: "" },
        Spec { key: "x2i_gw_pg_cpu", label: "gateway + PostgreSQL CPU per 1,000 XMPP->IRC messages", unit: "CPU-s", decimals: 3, target: "" },
        Spec { key: "i2x_pg_cpu", label: "PostgreSQL CPU (server + backends) per 1,000 IRC->XMPP deliveries (GATEWAY_TEST_STORE=postgres only)", unit: "CPU-s", decimals: 4, target: "" },
        Spec { key: "i2x_gw_pg_cpu", label: "gateway + PostgreSQL CPU per 1,000 IRC->XMPP deliveries", unit: "CPU-s", decimals: 4, target: "" },
        Spec { key: "peak_rss", label: "gateway peak RSS (whole throughput run)", unit: "MiB", decimals: 1, target: "<= biboumi (biboumi 130 MB)" },
    ]
}

/// What the occupants' readers count.
#[derive(Default)]
struct Counters {
    /// Reflections of the reader's own XMPP->IRC messages.
    reflections: AtomicU64,
    /// Other occupants' XMPP->IRC messages seen (fan-out).
    fanout: AtomicU64,
    /// IRC->XMPP messages.
    from_irc: AtomicU64,
    /// Nanoseconds since the phase started of the latest arrival.
    last_ns: AtomicU64,
}

/// Counts one occupant's deliveries until aborted; frees a window slot per reflection.
async fn count(mut reader: XmppReader, own: String, window: Arc<Semaphore>, counters: Arc<Counters>, base: Arc<std::sync::Mutex<Instant>>) -> Result<()> {
    loop {
        let Some(e) = reader.next_until(Instant::now() + Duration::from_secs(3600)).await? else { continue };
        if e.name() != "message" {
            continue;
        }
        let Some(text) = body(&e) else { continue };
        if text.starts_with("x ") {
            if e.attr("from") == Some(own.as_str()) {
                window.add_permits(1);
                counters.reflections.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.fanout.fetch_add(1, Ordering::Relaxed);
            }
        } else if text.starts_with("i ") {
            counters.from_irc.fetch_add(1, Ordering::Relaxed);
            let since = base.lock().map(|b| b.elapsed()).unwrap_or_default();
            counters.last_ns.fetch_max(since.as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

/// Waits until `current()` reaches `goal`, or nothing new arrived for [`IDLE`], or
/// `cap` passed; returns the last value.
pub async fn wait_count(goal: u64, cap: Duration, current: impl Fn() -> u64) -> u64 {
    let end = Instant::now() + cap;
    let (mut last, mut last_change) = (current(), Instant::now());
    while last < goal && last_change.elapsed() < IDLE && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = current();
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
    }
    last
}

/// Logs in the accounts `user_names` (created already) and joins each to `room` through
/// `peer` ([`SETUP_CONCURRENCY`] at a time, each retried once); the connections in
/// order and how many joins needed their retry.
pub async fn join_all(side: &XmppSide, ircd_port: u16, peer: Peer, room: &str, user_names: &[String]) -> Result<(Vec<XmppConn>, usize)> {
    let conns = side.connect_all(user_names).await?;
    let slots: Vec<_> = conns.into_iter().map(|c| Arc::new(tokio::sync::Mutex::new(Some(c)))).collect();
    let slots_for_join = slots.clone();
    let names: Arc<Vec<String>> = Arc::new(user_names.to_vec());
    let room: Arc<str> = room.into();
    let retries = run_limited(names.len(), SETUP_CONCURRENCY, move |i| {
        let slot = slots_for_join[i].clone();
        let room = room.clone();
        let nick = names[i].clone();
        async move {
            let mut guard = slot.lock().await;
            let conn = guard.as_mut().ok_or_else(|| anyhow!("no connection"))?;
            peer.prepare_user(conn, ircd_port).await?;
            // One retry: on this shared machine a gateway's IRC connect was once reset.
            let mut retried = 0;
            loop {
                conn.writer.send(&peer.join_xml(&room, &nick)).await?;
                match wait_joined(&mut conn.reader, &room, Duration::from_secs(60)).await {
                    Ok(()) => return Ok(retried),
                    Err(error) if retried == 0 => {
                        eprintln!("bench: {nick} joining {room}: {error:#}; trying once more");
                        retried += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(error) => return Err(error).with_context(|| format!("{nick} joining")),
                }
            }
        }
    })
    .await?;
    let mut conns = Vec::with_capacity(slots.len());
    for slot in slots {
        conns.push(slot.lock().await.take().ok_or_else(|| anyhow!("no connection"))?);
    }
    Ok((conns, retries.iter().sum()))
}

/// Says `messages` lines `i 0`, `i 1`... in `channel` as fast as the socket takes them;
/// how long that took. Then checks that the sender is still connected (or a loss would
/// be the bench's own).
pub async fn flood(irc: &mut Irc, channel: &str, messages: usize) -> Result<Duration> {
    flood_padded(irc, channel, messages, 0).await
}

/// [`flood`] with lines of at least `chars` characters: `i N` then words up to that length.
pub async fn flood_padded(irc: &mut Irc, channel: &str, messages: usize, chars: usize) -> Result<Duration> {
    let started = Instant::now();
    for k in 0..messages {
        irc.queue(&format!("PRIVMSG {channel} :{}\r\n", padded_line(k, chars))).await?;
        if k % 64 == 63 {
            irc.flush().await?;
        }
    }
    irc.flush().await?;
    let sent_in = started.elapsed();
    irc.send("PING :bench-alive\r\n").await?;
    irc.wait_for("the PONG after sending", Duration::from_secs(120), |l| l.command == "PONG").await.context("the IRC sender after sending")?;
    Ok(sent_in)
}

/// Line `k` of a flood: `i k`, then words of ordinary text until it has `chars` characters.
fn padded_line(k: usize, chars: usize) -> String {
    const WORDS: &str = "so the build went green again after the fix to the parser, shall we tag the release tonight or wait for the review";
    let mut line = format!("i {k}");
    let mut words = WORDS.split(' ').cycle();
    while line.len() < chars {
        line.push(' ');
        line.push_str(words.next().unwrap_or("x"));
    }
    line
}

/// Runs the scenario against `peer`.
pub async fn run(side: &XmppSide, ircd: &Ngircd, peer: Peer, users: usize, messages: usize) -> Result<Measured> {
    let mut m = Measured::default();
    let t = peer.tag();
    let channel = format!("#{t}tp");
    let room = peer.room(&channel);
    let mut irc = Irc::connect(ircd.port, &format!("{t}tpirc")).await?;
    irc.join(&channel).await?;

    let user_names = names(&format!("{t}t"), users);
    side.add_accounts(&user_names)?;
    let (conns, retries) = join_all(side, ircd.port, peer, &room, &user_names).await?;
    if retries > 0 {
        m.notes.push(format!("{retries} join(s) failed once and were retried (see stderr)"));
    }
    settle().await;

    // Readers count; senders keep their writers.
    let counters = Arc::new(Counters::default());
    let base = Arc::new(std::sync::Mutex::new(Instant::now()));
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let window = Arc::new(Semaphore::new(WINDOW));
        let own = format!("{room}/{}", user_names[i]);
        readers.push(tokio::spawn(count(conn.reader, own, window.clone(), counters.clone(), base.clone())));
        writers.push((conn.writer, window));
    }

    let procs = side.procs(peer, ircd)?;
    procstat::reset_peak(procs[0].pid);

    // The PostgreSQL cluster, when the gateway runs on it, is the last of `procs`.
    let pg = procs.iter().position(|p| p.children);
    let gw_pid = procs[0].pid;

    // XMPP -> IRC.
    let threads_before = procstat::threads(gw_pid);
    let before = procstat::snapshot(&procs);
    let started = Instant::now();
    let irc_counter = tokio::spawn(async move {
        let mut received = 0usize;
        let mut last = Duration::ZERO;
        let mut idle_since = Instant::now();
        let end = Instant::now() + Duration::from_secs(1800);
        while received < messages && Instant::now() < end {
            match irc.next_until(Instant::now() + Duration::from_millis(200)).await? {
                Some(line) if line.command == "PRIVMSG" && line.text().starts_with("x ") => {
                    received += 1;
                    last = started.elapsed();
                    idle_since = Instant::now();
                }
                Some(_) => {}
                None if idle_since.elapsed() > IDLE * 6 => break,
                None => {}
            }
        }
        Ok::<_, anyhow::Error>((irc, received, last))
    });
    let per_user = messages / users;
    let extra = messages % users;
    let mut senders = Vec::new();
    for (i, (mut writer, window)) in writers.into_iter().enumerate() {
        let count = per_user + usize::from(i < extra);
        let room = room.clone();
        senders.push(tokio::spawn(async move {
            for k in 0..count {
                let permit = tokio::time::timeout(STALL, window.acquire()).await.map_err(|_| anyhow!("no reflection of our own message within {STALL:?}"))??;
                permit.forget();
                writer.send(&format!("<message to='{room}' type='groupchat'><body>x {i} {k}</body></message>")).await?;
            }
            Ok::<_, anyhow::Error>(writer)
        }));
    }
    let mut writers = Vec::new();
    for sender in senders {
        writers.push(sender.await??);
    }
    let sent_in = started.elapsed();
    let (mut irc, received, last) = irc_counter.await??;
    let fanout_goal = (messages * (users - 1)) as u64;
    let fanout = wait_count(fanout_goal, Duration::from_secs(1800), || counters.fanout.load(Ordering::Relaxed)).await;
    let after = procstat::snapshot(&procs);
    let usage = procstat::usage(&procs, &before, &after);
    let thousands = messages as f64 / 1000.0;
    m.set("x2i_rate", received as f64 / last.as_secs_f64().max(1e-9));
    m.set("x2i_lost", (messages - received) as f64);
    m.set("x2i_fanout_lost", fanout_goal.saturating_sub(fanout) as f64);
    m.set("x2i_cpu", usage[0].cpu_s / thousands);
    m.set("x2i_prosody_cpu", usage[1].cpu_s / thousands);
    if let Some(pg) = pg {
        m.set("x2i_pg_cpu", usage[pg].cpu_s / thousands);
        m.set("x2i_gw_pg_cpu", (usage[0].cpu_s + usage[pg].cpu_s) / thousands);
    }
    m.notes.push(format!("XMPP->IRC: gateway CPU by thread: {}", procstat::thread_usage(&threads_before, &procstat::threads(gw_pid))));
    m.notes.push(format!(
        "XMPP->IRC: {messages} messages from {users} users (window {WINDOW} unreflected each), sent in {:.2} s, last received at the IRC client after {:.2} s; fan-out {fanout}/{fanout_goal}",
        sent_in.as_secs_f64(),
        last.as_secs_f64()
    ));
    m.usage.push((format!("XMPP->IRC {messages} msgs"), usage));
    settle().await;

    // IRC -> XMPP.
    let goal = (messages * users) as u64;
    let threads_before = procstat::threads(gw_pid);
    let before = procstat::snapshot(&procs);
    *base.lock().map_err(|_| anyhow!("poisoned"))? = Instant::now();
    counters.last_ns.store(0, Ordering::Relaxed);
    let sent_in = flood(&mut irc, &channel, messages).await?;
    let delivered = wait_count(goal, Duration::from_secs(1800), || counters.from_irc.load(Ordering::Relaxed)).await;
    let after = procstat::snapshot(&procs);
    let usage = procstat::usage(&procs, &before, &after);
    let last = Duration::from_nanos(counters.last_ns.load(Ordering::Relaxed));
    let thousands = delivered.max(1) as f64 / 1000.0;
    m.set("i2x_rate", delivered as f64 / last.as_secs_f64().max(1e-9));
    m.set("i2x_lost", goal.saturating_sub(delivered) as f64);
    m.set("i2x_cpu", usage[0].cpu_s / thousands);
    m.set("i2x_prosody_cpu", usage[1].cpu_s / thousands);
    if let Some(pg) = pg {
        m.set("i2x_pg_cpu", usage[pg].cpu_s / thousands);
        m.set("i2x_gw_pg_cpu", (usage[0].cpu_s + usage[pg].cpu_s) / thousands);
    }
    m.notes.push(format!("IRC->XMPP: gateway CPU by thread: {}", procstat::thread_usage(&threads_before, &procstat::threads(gw_pid))));
    m.set("peak_rss", usage[0].hwm_kib as f64 / 1024.0);
    m.notes.push(format!(
        "IRC->XMPP: {messages} lines sent in {:.2} s, {delivered}/{goal} deliveries, the last after {:.2} s",
        sent_in.as_secs_f64(),
        last.as_secs_f64()
    ));
    m.usage.push((format!("IRC->XMPP {messages} msgs x {users}"), usage));

    let mut ended = Vec::new();
    for reader in readers {
        if reader.is_finished() {
            ended.push(match reader.await {
                Ok(Err(error)) => format!("{error:#}"),
                other => format!("{other:?}"),
            });
        } else {
            reader.abort();
        }
    }
    if !ended.is_empty() {
        m.notes.push(format!("{} occupant stream(s) ended during the run: {}", ended.len(), ended[0]));
    }
    drop(writers);
    drop(irc);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::padded_line;

    #[test]
    fn a_padded_line_keeps_its_number_first_and_reaches_the_length_asked() {
        assert_eq!(padded_line(7, 0), "i 7", "no padding asked: the short line");
        let line = padded_line(1234, 60);
        assert!(line.starts_with("i 1234 ") && line.len() >= 60 && line.len() < 80, "{line:?}");
        assert!(!line.contains(['\r', '\n']));
    }
}
