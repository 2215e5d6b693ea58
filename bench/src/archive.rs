//! The message archive (issue 11): what archiving costs the live path, how fast a client
//! reads it back, and its size on disk, beside biboumi's own history (`record_history`,
//! one SQLite commit per line).
//!
//! - cost: the throughput scenario against our gateway with `[archive] enabled = false`
//!   then `true`, alternating, on fresh servers each run. Every IRC->XMPP delivery is
//!   archived (each user keeps their own copy, as each has their own IRC connection);
//!   the figures are the CPU per 1,000 of them with and without, and the ratio.
//! - paired cost: three of our gateways at once, one archiving, each with its own users
//!   in one channel, fed the same IRC lines in the same seconds; the archiving one's CPU
//!   per delivery against the other two's, and theirs against each other as a control
//!   (sequential runs on this shared machine differ by more than the archive costs).
//! - query: one user in one channel; `small_fill` lines from IRC are archived, then
//!   `queries` XEP-0313 queries for the room's last 50 lines, one at a time (round trip
//!   through Prosody: p50, p99), and the bytes the archive grew on disk per line; then
//!   the same at `fill` lines (100,000).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use testkit::irc::Ngircd;
use tokio::time::Instant;

use crate::irc::Irc;
use crate::peers::{configure, wait_joined, Peer};
use crate::procstat;
use crate::report::{Measured, Spec};
use crate::rig::{names, settle, XmppSide};
use crate::stats;
use crate::throughput;
use crate::xmpp::{body, XmppConn, XmppReader};

const NS_MAM: &str = "urn:xmpp:mam:2";
/// A filling IRC client waits for the deliveries to catch up this close.
const FILL_WINDOW: usize = 500;

/// The figures of the cost part.
pub fn cost_specs() -> Vec<Spec> {
    vec![
        Spec { key: "i2x_cpu_off", label: "gateway CPU per 1,000 IRC->XMPP deliveries, archive off", unit: "CPU-s", decimals: 4, target: "" },
        Spec { key: "i2x_cpu_on", label: "gateway CPU per 1,000 IRC->XMPP deliveries, each archived", unit: "CPU-s", decimals: 4, target: "" },
        Spec { key: "i2x_cpu_ratio", label: "archived / not archived (paired per run)", unit: "x", decimals: 2, target: "<= 1.20" },
        Spec { key: "x2i_cpu_off", label: "gateway CPU per 1,000 XMPP->IRC messages (incl. fan-out), archive off", unit: "CPU-s", decimals: 3, target: "" },
        Spec { key: "x2i_cpu_on", label: "gateway CPU per 1,000 XMPP->IRC messages (incl. fan-out), archived", unit: "CPU-s", decimals: 3, target: "" },
        Spec { key: "x2i_cpu_ratio", label: "archived / not archived (paired per run)", unit: "x", decimals: 2, target: "<= 1.20" },
        Spec { key: "i2x_rate_off", label: "IRC->XMPP deliveries/s, archive off", unit: "/s", decimals: 0, target: "" },
        Spec { key: "i2x_rate_on", label: "IRC->XMPP deliveries/s, archived", unit: "/s", decimals: 0, target: "" },
        Spec { key: "i2x_prosody_off", label: "Prosody CPU per 1,000 IRC->XMPP deliveries, archive off", unit: "CPU-s", decimals: 4, target: "" },
        Spec { key: "i2x_prosody_on", label: "Prosody CPU per 1,000 IRC->XMPP deliveries, archived (stanza-ids make stanzas longer)", unit: "CPU-s", decimals: 4, target: "" },
        Spec { key: "i2x_lost", label: "IRC->XMPP deliveries lost, archive on", unit: "", decimals: 0, target: "0" },
    ]
}

/// One run of the cost part: throughput with the archive off, then on.
pub async fn cost(users: usize, messages: usize) -> Result<Measured> {
    let mut m = Measured::default();
    let mut figures = Vec::new();
    for enabled in [false, true] {
        let ircd = &Ngircd::start(false);
        let side = XmppSide::start_with(ircd, &[Peer::Ours], &format!("[archive]\nenabled = {enabled}\n"))?;
        eprintln!("bench: archive cost, archive {}", if enabled { "on" } else { "off" });
        figures.push(throughput::run(&side, ircd, Peer::Ours, users, messages).await?);
    }
    let (off, on) = (&figures[0].values, &figures[1].values);
    let get = |values: &std::collections::BTreeMap<&'static str, f64>, key: &str| values.get(key).copied().ok_or_else(|| anyhow!("throughput gave no {key}"));
    m.set("i2x_cpu_off", get(off, "i2x_cpu")?);
    m.set("i2x_cpu_on", get(on, "i2x_cpu")?);
    m.set("i2x_cpu_ratio", get(on, "i2x_cpu")? / get(off, "i2x_cpu")?);
    m.set("x2i_cpu_off", get(off, "x2i_cpu")?);
    m.set("x2i_cpu_on", get(on, "x2i_cpu")?);
    m.set("x2i_cpu_ratio", get(on, "x2i_cpu")? / get(off, "x2i_cpu")?);
    m.set("i2x_rate_off", get(off, "i2x_rate")?);
    m.set("i2x_rate_on", get(on, "i2x_rate")?);
    m.set("i2x_prosody_off", get(off, "i2x_prosody_cpu")?);
    m.set("i2x_prosody_on", get(on, "i2x_prosody_cpu")?);
    m.set("i2x_lost", get(on, "i2x_lost")?);
    // Where the CPU went, by thread (the archive's own thread among them).
    for (figures, archive) in figures.iter().zip(["off", "on"]) {
        m.notes.extend(figures.notes.iter().map(|note| format!("archive {archive}: {note}")));
    }
    Ok(m)
}

/// Gateways the paired part runs at once: one archiving, two not (the control pair).
const PAIRED: usize = 3;

/// The figures of the paired part.
pub fn paired_specs() -> Vec<Spec> {
    vec![
        Spec { key: "cpu_on", label: "gateway CPU per 1,000 IRC->XMPP deliveries, each archived", unit: "CPU-s", decimals: 4, target: "" },
        Spec { key: "cpu_off", label: "the same, archive off (mean of the two gateways without)", unit: "CPU-s", decimals: 4, target: "" },
        Spec { key: "ratio", label: "archived / not archived, the same lines in the same seconds", unit: "x", decimals: 2, target: "<= 1.20" },
        Spec { key: "control", label: "control: one gateway without / the other without (what the ratio can resolve)", unit: "x", decimals: 2, target: "1.00" },
        Spec { key: "rate", label: "IRC->XMPP deliveries/s, each gateway", unit: "/s", decimals: 0, target: "" },
        Spec { key: "lost", label: "IRC->XMPP deliveries lost, all gateways", unit: "", decimals: 0, target: "0" },
    ]
}

/// One run of the paired part: [`PAIRED`] of our gateways, each attached to its own
/// Prosody, `users` users of each in one IRC channel; `messages` lines said in it reach
/// all of them in the same seconds, so what the shared machine does to one it does to
/// the others. One gateway archives (which one turns with `run`), the other two do not:
/// the archive's cost is its CPU per delivery against theirs, and the two without
/// against each other show how finely this machine resolves a ratio.
pub async fn paired_cost(users: usize, messages: usize, line_chars: usize, run: usize) -> Result<Measured> {
    let mut m = Measured::default();
    let ircd = &Ngircd::start(false);
    let channel = "#gpair";
    let room = Peer::Ours.room(channel);
    let archiving = run % PAIRED;
    let mut sides = Vec::new();
    let (mut readers, mut writers) = (Vec::new(), Vec::new());
    let counters: Vec<Arc<AtomicU64>> = (0..PAIRED).map(|_| Arc::new(AtomicU64::new(0))).collect();
    for (i, counter) in counters.iter().enumerate() {
        let side = XmppSide::start_with(ircd, &[Peer::Ours], &format!("[archive]\nenabled = {}\n", i == archiving))?;
        // Nicks are unique on the one ngIRCd: each gateway's users get their own letter.
        let user_names = names(&format!("gp{}", char::from(b'a' + i as u8)), users);
        side.add_accounts(&user_names)?;
        let (conns, retries) = throughput::join_all(&side, ircd.port, Peer::Ours, &room, &user_names).await?;
        if retries > 0 {
            m.notes.push(format!("gateway {i}: {retries} join(s) failed once and were retried (see stderr)"));
        }
        for conn in conns {
            readers.push(tokio::spawn(count_lines(conn.reader, counter.clone())));
            // Kept open: a closed half would end the session.
            writers.push(conn.writer);
        }
        sides.push(side);
    }
    let mut irc = Irc::connect(ircd.port, "gpairirc").await?;
    irc.join(channel).await?;
    settle().await;

    let mut procs = Vec::new();
    for (i, side) in sides.iter().enumerate() {
        let mut proc = side.peer_proc(Peer::Ours)?;
        proc.name = format!("xmpp-gateway {i} ({})", role(i == archiving));
        procs.push(proc);
    }
    let threads_before: Vec<_> = procs.iter().map(|p| procstat::threads(p.pid)).collect();
    let before = procstat::snapshot(&procs);
    let started = Instant::now();
    throughput::flood_padded(&mut irc, channel, messages, line_chars).await?;
    let goal = (messages * users) as u64;
    let total = || counters.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>();
    throughput::wait_count(goal * PAIRED as u64, Duration::from_secs(1800), total).await;
    let elapsed = started.elapsed().as_secs_f64();
    let after = procstat::snapshot(&procs);
    let usage = procstat::usage(&procs, &before, &after);
    let per_thousand: Vec<f64> = usage.iter().zip(&counters).map(|(u, c)| u.cpu_s / (c.load(Ordering::Relaxed).max(1) as f64 / 1000.0)).collect();
    let off: Vec<f64> = (0..PAIRED).filter(|&i| i != archiving).filter_map(|i| per_thousand.get(i).copied()).collect();
    let (Some(&on), [first, second]) = (per_thousand.get(archiving), off.as_slice()) else { bail!("{PAIRED} gateways measured, not {}", per_thousand.len()) };
    m.set("cpu_on", on);
    m.set("cpu_off", (first + second) / 2.0);
    m.set("ratio", on / ((first + second) / 2.0));
    m.set("control", first / second);
    m.set("rate", goal as f64 / elapsed);
    m.set("lost", (goal * PAIRED as u64).saturating_sub(total()) as f64);
    for (i, (proc, before)) in procs.iter().zip(&threads_before).enumerate() {
        m.notes.push(format!("gateway {i} ({}): CPU by thread: {}", role(i == archiving), procstat::thread_usage(before, &procstat::threads(proc.pid))));
    }
    let length = if line_chars > 0 { format!("lines of {line_chars} characters or so") } else { "lines `i N`".to_owned() };
    m.notes.push(format!("{messages} {length} to {users} users on each of {PAIRED} gateways, all delivered or given up after {elapsed:.2} s"));
    m.usage.push((format!("IRC->XMPP {messages} lines x {users} users x {PAIRED} gateways"), usage));
    for reader in readers {
        reader.abort();
    }
    drop(writers);
    Ok(m)
}

/// What a gateway of the paired part does with its lines.
fn role(archiving: bool) -> &'static str {
    if archiving {
        "archiving"
    } else {
        "not archiving"
    }
}

/// Counts one occupant's lines from IRC (bodies `i ...`) until aborted.
async fn count_lines(mut reader: XmppReader, counter: Arc<AtomicU64>) -> Result<()> {
    loop {
        let Some(e) = reader.next_until(Instant::now() + Duration::from_secs(3600)).await? else { continue };
        if e.name() == "message" && body(&e).is_some_and(|b| b.starts_with("i ")) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The figures of the query part.
pub fn query_specs() -> Vec<Spec> {
    vec![
        Spec { key: "small_fill", label: "lines archived", unit: "", decimals: 0, target: "" },
        Spec { key: "small_p50", label: "MAM query for the last 50 lines, p50", unit: "ms", decimals: 2, target: "" },
        Spec { key: "small_p99", label: "MAM query for the last 50 lines, p99", unit: "ms", decimals: 2, target: "<= 5 ms" },
        Spec { key: "small_bytes", label: "archive on disk per line", unit: "B", decimals: 0, target: "" },
        Spec { key: "small_rate", label: "lines archived per second while filling", unit: "/s", decimals: 0, target: "" },
        Spec { key: "floor_p50", label: "floor: 51 stanzas of that size through the XMPP server alone (no gateway), p50", unit: "ms", decimals: 2, target: "" },
        Spec { key: "floor_p99", label: "floor: the same, p99", unit: "ms", decimals: 2, target: "" },
        Spec { key: "fill", label: "lines archived", unit: "", decimals: 0, target: "" },
        Spec { key: "rate", label: "lines archived per second while filling", unit: "/s", decimals: 0, target: "" },
        Spec { key: "p50", label: "MAM query for the last 50 lines at that size, p50", unit: "ms", decimals: 2, target: "" },
        Spec { key: "p99", label: "MAM query for the last 50 lines at that size, p99", unit: "ms", decimals: 2, target: "<= 5 ms" },
        Spec { key: "bytes", label: "archive on disk per line at that size", unit: "B", decimals: 0, target: "" },
    ]
}

/// One run of the query part against `peer`.
pub async fn query(peer: Peer, small_fill: usize, fill: usize, queries: usize) -> Result<Measured> {
    let mut m = Measured::default();
    let ircd = &Ngircd::start(false);
    // Filling sends lines at socket speed, past what the gateway takes from an IRC server
    // by default (`irc_lines_per_second`, against floods).
    let side = XmppSide::start_with(ircd, &[peer], "[limits]\nirc_lines_per_second = 0\n")?;
    let t = peer.tag();
    let channel = format!("#{t}arch");
    let room = peer.room(&channel);
    let user = format!("{t}archuser");
    side.add_accounts(std::slice::from_ref(&user))?;
    let mut conn = side.connect_all(std::slice::from_ref(&user)).await?.pop().ok_or_else(|| anyhow!("no connection"))?;
    peer.prepare_user_recording(&mut conn, ircd.port, true).await?;
    conn.writer.send(&peer.join_xml(&room, &user)).await?;
    wait_joined(&mut conn.reader, &room, Duration::from_secs(60)).await?;
    let mut irc = Irc::connect(ircd.port, &format!("{t}archirc")).await?;
    irc.join(&channel).await?;
    settle().await;

    let disk = |side: &XmppSide| -> Result<u64> {
        match peer {
            Peer::Ours => dir_bytes(&testkit::db_path(side.gateway.as_ref().ok_or_else(|| anyhow!("no gateway"))?)),
            Peer::Biboumi => dir_bytes(side.biboumi.as_ref().ok_or_else(|| anyhow!("no biboumi"))?.dir.path()),
        }
    };
    let empty = disk(&side)?;
    let started = Instant::now();
    fill_lines(&mut irc, &mut conn, &channel, 0, small_fill).await?;
    m.set("small_rate", small_fill as f64 / started.elapsed().as_secs_f64());
    m.set("small_fill", small_fill as f64);
    // sled writes its log out within half a second; SQLite at each commit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    m.set("small_bytes", disk(&side)?.saturating_sub(empty) as f64 / small_fill as f64);
    let (p50, p99) = time_queries(&mut conn, &room, queries).await?;
    m.set("small_p50", p50);
    m.set("small_p99", p99);
    let (p50, p99) = time_floor(&mut conn, queries).await?;
    m.set("floor_p50", p50);
    m.set("floor_p99", p99);
    if fill > small_fill {
        let started = Instant::now();
        fill_lines(&mut irc, &mut conn, &channel, small_fill, fill).await?;
        m.set("rate", (fill - small_fill) as f64 / started.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(2)).await;
        m.set("fill", fill as f64);
        m.set("bytes", disk(&side)?.saturating_sub(empty) as f64 / fill as f64);
        let (p50, p99) = time_queries(&mut conn, &room, queries).await?;
        m.set("p50", p50);
        m.set("p99", p99);
    }
    Ok(m)
}

/// The figures of the always-on part.
pub fn always_on_specs() -> Vec<Spec> {
    vec![
        Spec { key: "channels", label: "always-on channels kept for a user with no client online", unit: "", decimals: 0, target: "" },
        Spec { key: "rss_joined", label: "gateway RSS per channel, joined by the user (online)", unit: "KiB", decimals: 2, target: "" },
        Spec { key: "rss_configured", label: "the same, after each was made always on (settings written)", unit: "KiB", decimals: 2, target: "" },
        Spec { key: "rss_per_channel", label: "gateway RSS per always-on channel with nobody joined (user offline)", unit: "KiB", decimals: 2, target: "" },
        Spec { key: "rss_restarted", label: "the same in a restarted gateway (channels rejoined at start, no churn)", unit: "KiB", decimals: 2, target: "" },
    ]
}

/// One run of the always-on part against `peer`: one user joins `channels` channels and
/// makes each always on (the room's `configure` command, `persistent`, in both
/// gateways), then goes offline; the gateway's RSS once it settled, less its RSS before
/// the first join, per channel (also after the joins and after the settings). An IRC
/// observer in the first channel checks that the gateway stayed (no PART or QUIT). Ours
/// is then restarted: the same channels, rejoined by a process that never saw the joins
/// and the settings writes (biboumi is not restarted here).
pub async fn always_on(peer: Peer, channels: usize) -> Result<Measured> {
    let mut m = Measured::default();
    let ircd = &Ngircd::start(false);
    // Past our default of 50 channels per user (biboumi has no such limit).
    let mut side = XmppSide::start_with(ircd, &[peer], "[limits]\nchannels_per_user = 10000\n")?;
    let pid = side.peer_proc(peer)?.pid;
    let t = peer.tag();
    let user = format!("{t}keeper");
    side.add_accounts(std::slice::from_ref(&user))?;
    let mut conn = side.connect_all(std::slice::from_ref(&user)).await?.pop().ok_or_else(|| anyhow!("no connection"))?;
    peer.prepare_user_recording(&mut conn, ircd.port, true).await?;
    if peer == Peer::Ours {
        // Always-on is a setting of a registered user.
        let form = testkit::register_form(&[("irc_nick", &user)]);
        let answer = conn.iq("set", Some(peer.component()), &form, Duration::from_secs(30)).await?;
        if answer.attr("type") != Some("result") {
            bail!("registration with {} failed: {answer:?}", peer.name());
        }
    }
    let mut observer = Irc::connect(ircd.port, &format!("{t}keepobs")).await?;
    observer.join(&format!("#{t}keep0")).await?;
    settle().await;
    let before = procstat::sample(pid)?.rss_kib;
    let mut phases = Vec::new();
    for i in 0..channels {
        let room = peer.room(&format!("#{t}keep{i}"));
        conn.writer.send(&peer.join_xml(&room, &user)).await?;
        wait_joined(&mut conn.reader, &room, Duration::from_secs(60)).await?;
    }
    settle().await;
    phases.push(procstat::sample(pid)?.rss_kib);
    for i in 0..channels {
        let room = peer.room(&format!("#{t}keep{i}"));
        configure(&mut conn, &room, &[("persistent", &["1"])]).await.with_context(|| format!("making {room} always on"))?;
    }
    settle().await;
    phases.push(procstat::sample(pid)?.rss_kib);
    drop(conn);
    // Let the offline presences arrive and the memory settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(line) = observer.next_until(deadline).await? {
        if matches!(line.command.as_str(), "PART" | "QUIT") {
            bail!("{} left the channel when its user went offline: {}", peer.name(), line.raw);
        }
    }
    let after = procstat::sample(pid)?.rss_kib;
    let per_channel = |rss: u64| rss.saturating_sub(before) as f64 / channels as f64;
    m.set("rss_joined", per_channel(phases[0]));
    m.set("rss_configured", per_channel(phases[1]));
    if let (Peer::Ours, Some(gateway)) = (peer, side.gateway.as_mut()) {
        // The same channels in a process that never saw the joins and settings writes:
        // restarted, the gateway joins its users' always-on channels by itself.
        gateway.signal("TERM");
        gateway.wait_exit(Duration::from_secs(20));
        gateway.spawn();
        let pid = side.peer_proc(peer)?.pid;
        observer.wait_for("the gateway back in the channel", Duration::from_secs(60), |l| l.command == "JOIN").await?;
        // All of them: the last channel's JOIN is not seen from here; give it time.
        tokio::time::sleep(Duration::from_secs(5)).await;
        m.set("rss_restarted", procstat::sample(pid)?.rss_kib.saturating_sub(before) as f64 / channels as f64);
    }
    m.set("channels", channels as f64);
    m.set("rss_per_channel", after.saturating_sub(before) as f64 / channels as f64);
    Ok(m)
}

/// Lines `from..to` said on IRC, each waited for at the XMPP client (at most
/// [`FILL_WINDOW`] ahead), so that every one is archived when this returns.
async fn fill_lines(irc: &mut Irc, conn: &mut XmppConn, channel: &str, from: usize, to: usize) -> Result<()> {
    let mut received = from;
    let mut sent = from;
    while received < to {
        if sent < to && sent - received < FILL_WINDOW / 2 {
            while sent < to && sent - received < FILL_WINDOW {
                irc.queue(&format!("PRIVMSG {channel} :archived line {sent} with a little text after it, as people write\r\n")).await?;
                sent += 1;
            }
            irc.flush().await?;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let Some(e) = conn.reader.next_until(deadline).await? else { bail!("filling: {received} of {to} lines arrived") };
        if e.name() == "message" && body(&e).is_some_and(|b| b.starts_with("archived line ")) {
            received += 1;
        }
    }
    Ok(())
}

/// What any query answered with 50 messages costs through the XMPP server alone: `n`
/// rounds of 50 messages the client sends itself, each about as long as a MAM result
/// (forwarded line, delay, ids), then a ping to its server, timed until the pong. What
/// the server takes to route 51 stanzas to a client, with no gateway in the way.
async fn time_floor(conn: &mut XmppConn, n: usize) -> Result<(f64, f64)> {
    // A MAM result of the bench's lines is about 480 bytes on the wire.
    let body = "archived line 0 with a little text after it, as people write ".repeat(6);
    let mut times = Vec::with_capacity(n);
    for q in 0..n {
        let id = format!("floor{q}");
        let started = Instant::now();
        // Written at once, as a gateway writes its answer.
        let mut burst: String = (0..50).map(|i| format!("<message to='{}' id='{id}-{i}' type='chat'><body>{body}</body></message>", conn.jid)).collect();
        burst.push_str(&format!("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"));
        conn.writer.send(&burst).await?;
        let mut messages = 0;
        loop {
            let e = conn.reader.next(Instant::now() + Duration::from_secs(30)).await.with_context(|| format!("floor round {q}"))?;
            if e.name() == "message" && e.attr("id").is_some_and(|i| i.starts_with(&format!("{id}-"))) {
                messages += 1;
            } else if e.name() == "iq" && e.attr("id") == Some(id.as_str()) {
                break;
            }
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        if messages != 50 {
            bail!("floor round {q}: {messages} messages came back, not 50");
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((stats::quantile(&times, 0.5), stats::quantile(&times, 0.99)))
}

/// `n` queries for the last 50 lines of `room`, one after the other; p50 and p99 in ms.
async fn time_queries(conn: &mut XmppConn, room: &str, n: usize) -> Result<(f64, f64)> {
    let mut times = Vec::with_capacity(n);
    for q in 0..n {
        let id = format!("mamq{q}");
        let started = Instant::now();
        conn.writer
            .send(&format!(
                "<iq type='set' id='{id}' to='{room}'><query xmlns='{NS_MAM}' queryid='{id}'>\
                 <set xmlns='http://jabber.org/protocol/rsm'><max>50</max><before/></set></query></iq>"
            ))
            .await?;
        let mut results = 0;
        loop {
            let e = conn.reader.next(Instant::now() + Duration::from_secs(30)).await.with_context(|| format!("query {q}"))?;
            if e.name() == "message" && e.get_child("result", NS_MAM).is_some_and(|r| r.attr("queryid") == Some(id.as_str())) {
                results += 1;
            } else if e.name() == "iq" && e.attr("id") == Some(id.as_str()) {
                if e.attr("type") != Some("result") {
                    bail!("query {q} failed: {}", testkit::error_text(&e));
                }
                break;
            }
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        if results != 50 {
            bail!("query {q} returned {results} messages, not 50");
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((stats::quantile(&times, 0.5), stats::quantile(&times, 0.99)))
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += dir_bytes(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}
