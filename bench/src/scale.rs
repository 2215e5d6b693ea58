//! Scale: `users` users, each joining a channel of their own through the gateway
//! (one bridged IRC connection each), on a freshly started Prosody with only that
//! gateway attached (Prosody stays slower after many logins) and a freshly started IRC
//! server (ngIRCd, or InspIRCd with `--irc-server inspircd`: [`IrcKind`]). Logins (and
//! biboumi's per-user configuration, seeded into its database) happen before the clock
//! starts; then every join is sent at once and the clock stops at the last self-presence.
//! Before xmpp-gateway's part, the same joins against the IRC server alone
//! ([`irc_server_alone`]): the least any gateway's joins could take there.
//!
//! Then the cost of a delivery with every user there (issue 12: flat from 1,000 to 10,000
//! users): one IRC client joins [`SAMPLE`] of the users' channels, spread over all of
//! them, and sends lines to them in turn (one delivery to one XMPP user each); then those
//! users write to their rooms (one IRC line each, plus the reflection), counted at the IRC
//! client. About [`DELIVERIES`] each way; the gateway's CPU over each phase per delivery.
//! Between the two, [`PACED`] IRC lines one at a time, each waiting for the last to
//! arrive, so that no size batches more than another.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use testkit::irc::IrcServer;
use tokio::time::Instant;

use crate::irc::Irc;
use crate::peers::{wait_joined, Peer};
use crate::procstat;
use crate::report::{Measured, Spec};
use crate::rig::{log_tail, names, run_limited, settle, IrcKind, XmppSide};
use crate::xmpp::{body, XmppConn};

/// How many users' channels the delivery phases reach (fewer when there are fewer users).
const SAMPLE: usize = 100;
/// Deliveries per phase, about: enough CPU time that the clock's 10 ms ticks matter
/// little (some 0.1 CPU-s of the gateway), few enough that ngIRCd, whose every line costs
/// more with more clients, is not the whole run.
const DELIVERIES: usize = 5_000;
/// Deliveries of the phase that sends one line at a time (a 10 ms clock tick is some 5%
/// of the gateway's CPU over them).
const PACED: usize = 3_000;
/// How long the gateway's idle CPU is measured, every user joined.
const QUIET: Duration = Duration::from_secs(5);
/// How long a delivery phase may take before the run fails.
const DELIVERY_WAIT: Duration = Duration::from_secs(300);

/// The users' XMPP connections, by user.
type Slots = Arc<Vec<tokio::sync::Mutex<XmppConn>>>;

/// The figures of this scenario, those of the IRC server named after `irc`.
pub fn specs(irc: IrcKind) -> Vec<Spec> {
    let (ircd_cpu_per_join, paced_ms, alone_join_all, alone_cpu) = match irc {
        IrcKind::Ngircd => (
            "ngIRCd CPU per join (connection + registration + JOIN)",
            "time per line one at a time (IRC client -> ngIRCd -> gateway -> Prosody -> XMPP client)",
            "ngIRCd alone: the same IRC lines from the bench, no XMPP (the least any gateway could take)",
            "ngIRCd alone: its CPU per join",
        ),
        IrcKind::Inspircd => (
            "InspIRCd CPU per join (connection + registration + JOIN)",
            "time per line one at a time (IRC client -> InspIRCd -> gateway -> Prosody -> XMPP client)",
            "InspIRCd alone: the same IRC lines from the bench, no XMPP (the least any gateway could take)",
            "InspIRCd alone: its CPU per join",
        ),
    };
    vec![
        Spec { key: "join_all", label: "time until every user has joined", unit: "s", decimals: 2, target: "10,000 joins <= 15 s (issue 12); 1,000 <= 3 s" },
        Spec { key: "rss_per_conn", label: "gateway RSS per bridged IRC connection", unit: "KiB", decimals: 1, target: "<= 8 KiB (issue 12; biboumi 11.8)" },
        Spec { key: "cpu_per_join", label: "gateway CPU per join", unit: "ms", decimals: 3, target: "<= 0.2 ms (issue 12)" },
        Spec { key: "alone_join_all", label: alone_join_all, unit: "s", decimals: 2, target: "" },
        Spec { key: "alone_ircd_cpu_per_join", label: alone_cpu, unit: "ms", decimals: 3, target: "" },
        Spec { key: "prosody_cpu_per_join", label: "Prosody CPU per join", unit: "ms", decimals: 3, target: "" },
        Spec { key: "ircd_cpu_per_join", label: ircd_cpu_per_join, unit: "ms", decimals: 3, target: "" },
        Spec { key: "rss_after", label: "gateway RSS with every user joined", unit: "MiB", decimals: 1, target: "<= 100 MiB at 10,000 (issue 12)" },
        Spec { key: "i2x_cpu", label: "gateway CPU per IRC->XMPP delivery, every user joined", unit: "us", decimals: 1, target: "flat from 1,000 users on (issue 12)" },
        Spec { key: "i2x_paced_cpu", label: "the same, one line at a time (each waits for the last to arrive: no batching at any size)", unit: "us", decimals: 1, target: "flat from 1,000 users on (issue 12)" },
        Spec { key: "i2x_paced_busy_cpu", label: "the same, less the gateway's idle CPU over the phase's time", unit: "us", decimals: 1, target: "" },
        Spec { key: "i2x_paced_ms", label: paced_ms, unit: "ms", decimals: 2, target: "" },
        Spec { key: "idle_cpu", label: "gateway CPU with every user joined and nothing said, per second", unit: "ms/s", decimals: 2, target: "" },
        Spec { key: "x2i_cpu", label: "gateway CPU per XMPP->IRC message (incl. reflection), every user joined", unit: "us", decimals: 1, target: "flat from 1,000 users on (issue 12)" },
    ]
}

/// Runs the scenario against `peer` with its own Prosody and IRC server of kind `irc`.
pub async fn run(irc: IrcKind, peer: Peer, users: usize) -> Result<Measured> {
    // Once per run, with ours; alone on the machine like each gateway's part.
    let alone = if peer == Peer::Ours { Some(irc_server_alone(irc, users).await?) } else { None };
    let ircd = irc.start();
    let side = XmppSide::start(&*ircd, &[peer])?;
    // The users' XMPP connections, kept until the IRC server is gone.
    let mut kept = None;
    let outcome = measure(irc, &*ircd, &side, peer, users, &mut kept).await;
    if outcome.is_err() {
        eprintln!("bench: {}", log_tail(&*ircd, 30));
    }
    // The IRC server goes first (TERM, KILL after 5 s): ngIRCd with 10,000 clients spends
    // seconds on each one that leaves, and would otherwise see every user quit one by one.
    drop(ircd);
    drop(side);
    drop(kept);
    let mut m = outcome?;
    if let Some((join_all, cpu_per_join)) = alone {
        m.set("alone_join_all", join_all);
        m.set("alone_ircd_cpu_per_join", cpu_per_join);
    }
    Ok(m)
}

/// The scenario on servers started by [`run`]; the users' connections go to `kept` as
/// soon as they are made.
async fn measure(irc: IrcKind, ircd: &dyn IrcServer, side: &XmppSide, peer: Peer, users: usize, kept: &mut Option<Slots>) -> Result<Measured> {
    let t = peer.tag();
    let user_names = names(&format!("{t}s"), users);
    side.add_accounts(&user_names)?;
    let login_started = Instant::now();
    let conns = side.connect_all(&user_names).await?;
    let logins = login_started.elapsed();
    let port = ircd.plain_port();
    let slots: Slots = Arc::new(conns.into_iter().map(|c| tokio::sync::Mutex::new(c)).collect());
    *kept = Some(slots.clone());
    let prepared = Instant::now();
    if peer == Peer::Biboumi {
        // Written into its database: its `configure` commands take time in proportion to
        // the users configured before (see `seed_fair_configuration`).
        let biboumi = side.biboumi.as_ref().ok_or_else(|| anyhow!("biboumi is not running"))?;
        crate::peers::seed_fair_configuration(biboumi.dir.path(), &user_names, port)?;
    }
    let prepare = prepared.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let procs = side.procs(peer, ircd)?;
    procstat::reset_peak(procs[0].pid);
    let before = procstat::snapshot(&procs);
    let started = Instant::now();
    let within = Duration::from_secs(60 + users as u64 / 10);
    // Each user's outcome, so that a gateway that stalls is reported with how far it got.
    let outcomes = {
        let slots = slots.clone();
        let names = Arc::new(user_names.clone());
        run_limited(users, users, move |i| {
            let (slots, names) = (slots.clone(), names.clone());
            async move { Ok(join_one(&slots, &names, i, peer, started, within).await) }
        })
        .await?
    };
    let joined = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    if let Some(error) = outcomes.iter().find_map(|outcome| outcome.as_ref().err()) {
        let cpu = procstat::usage(&procs, &before, &procstat::snapshot(&procs)).first().map_or(0.0, |usage| usage.cpu_s);
        bail!("{joined} of {users} users joined within {:.0} s, when {} had used {cpu:.0} s of CPU; one of the failures: {error:#}", within.as_secs_f64(), peer.name());
    }
    let joins: Vec<(Duration, usize)> = outcomes.into_iter().collect::<Result<_>>()?;
    let retries: usize = joins.iter().map(|j| j.1).sum();
    let all = joins.iter().map(|j| j.0).max().ok_or_else(|| anyhow!("no users"))?;
    let after = procstat::snapshot(&procs);
    let usage = procstat::usage(&procs, &before, &after);

    let mut m = Measured::default();
    m.set("join_all", all.as_secs_f64());
    m.set("rss_per_conn", (after[0].rss_kib as f64 - before[0].rss_kib as f64) / users as f64);
    m.set("cpu_per_join", usage[0].cpu_s * 1000.0 / users as f64);
    m.set("prosody_cpu_per_join", usage[1].cpu_s * 1000.0 / users as f64);
    m.set("ircd_cpu_per_join", usage[2].cpu_s * 1000.0 / users as f64);
    m.set("rss_after", after[0].rss_kib as f64 / 1024.0);
    m.notes.push(format!(
        "{users} users, one channel each; logins took {:.1} s{} (not timed); gateway RSS {:.1} -> {:.1} MiB",
        logins.as_secs_f64(),
        if peer == Peer::Biboumi { format!(", the fair per-user configuration written into its database in {:.1} s", prepare.as_secs_f64()) } else { String::new() },
        before[0].rss_kib as f64 / 1024.0,
        after[0].rss_kib as f64 / 1024.0
    ));
    if irc == IrcKind::Inspircd {
        let ircv3 = if peer == Peer::Ours { "; it offers IRCv3 (echo-message, server-time, message-tags...), which xmpp-gateway negotiates: an XMPP->IRC message's reflection is then the server's echo" } else { "" };
        m.notes.push(format!(
            "IRC server InspIRCd 3 + Atheme (scripts/inspircd.sh): it completes registrations in a once-a-second check (each about 1 s after connecting, in parallel), which the join time includes{ircv3}"
        ));
    }
    if retries > 0 {
        let why = if irc == IrcKind::Ngircd { ": ngIRCd's listen backlog is 10" } else { "" };
        m.notes.push(format!("{retries} join attempt(s) were refused (IRC connect reset{why}) and retried by the bench; the retries' time counts"));
    }
    m.usage.push((format!("{users} joins"), usage));
    deliveries(&mut m, ircd, peer, &procs, &slots, &user_names).await.context("the delivery phases")?;
    Ok(m)
}

/// The IRC server alone, what any gateway's joins cost it at the least: `users`
/// connections from the bench itself to a fresh server of kind `irc`, each sending the
/// lines xmpp-gateway sends for a first join (`CAP LS 302`, `NICK`, `USER`; `CAP REQ` of
/// the capabilities it asks for that the server offers, `CAP END`; after the welcome
/// `JOIN` and `MODE`), [`bridge_irc::CONNECTING_AT_ONCE`] waiting for the server's first
/// word at a time as in the gateway, every connection kept open. The time until the last
/// has its channel (366) and the server's CPU per join (ms).
async fn irc_server_alone(irc: IrcKind, users: usize) -> Result<(f64, f64)> {
    let ircd = irc.start();
    let procs = [crate::rig::ircd_proc(&*ircd)?];
    let port = ircd.plain_port();
    let gate = Arc::new(tokio::sync::Semaphore::new(bridge_irc::CONNECTING_AT_ONCE));
    let before = procstat::snapshot(&procs);
    let started = Instant::now();
    let outcome = run_limited(users, users, move |i| {
        let gate = gate.clone();
        async move {
            // Reset connections (ngIRCd's listen backlog is 10) are tried again, as the
            // gateway's are; the clock keeps running.
            let mut tries = 0;
            loop {
                tries += 1;
                match join_alone(port, &format!("f{i}"), &gate).await {
                    Ok(irc) => return Ok(irc),
                    Err(error) if tries < 5 => eprintln!("bench: the IRC server alone, client {i} (try {tries}): {error:#}"),
                    Err(error) => return Err(error),
                }
            }
        }
    })
    .await;
    let took = started.elapsed();
    let usage = procstat::usage(&procs, &before, &procstat::snapshot(&procs));
    // The server goes before its clients (see `run`).
    drop(ircd);
    drop(outcome.context("the IRC server alone")?);
    Ok((took.as_secs_f64(), usage[0].cpu_s * 1000.0 / users as f64))
}

/// One connection of [`irc_server_alone`], joined to `#nick`: the lines xmpp-gateway's
/// IRC session writes, in the same writes.
async fn join_alone(port: u16, nick: &str, gate: &Arc<tokio::sync::Semaphore>) -> Result<Irc> {
    use bridge_irc::ircv3::{wanted, Caps};
    const WAIT: Duration = Duration::from_secs(120);
    let permit = gate.clone().acquire_owned().await?;
    let mut irc = Irc::open(port, nick).await?;
    irc.send(&format!("CAP LS 302\r\nNICK {nick}\r\nUSER {nick} 0 * :bench {nick}\r\n")).await?;
    // As in the gateway, the next connection may start at the server's first line, whatever
    // it is (InspIRCd's is a NOTICE, ngIRCd's the CAP answer).
    let mut line = irc.wait_for("the server's first line", WAIT, |_| true).await?;
    drop(permit);
    let mut offered = Caps::default();
    loop {
        if line.command == "CAP" {
            offered = offered.union(Caps::parse(line.params.last().map_or("", String::as_str)));
            // "CAP * LS * :..." goes on in the next line.
            if line.params.get(2).is_none_or(|p| p != "*") || line.params.len() < 4 {
                break;
            }
        }
        line = irc.wait_for("CAP LS", WAIT, |l| l.command == "CAP").await?;
    }
    match wanted(offered, false).request_line() {
        Some(request) => irc.send(&format!("{request}\r\nCAP END\r\n")).await?,
        None => irc.send("CAP END\r\n").await?,
    }
    irc.wait_for("the welcome (001)", WAIT, |l| l.command == "001").await?;
    irc.send(&format!("JOIN #{nick}\r\nMODE #{nick}\r\n")).await?;
    irc.wait_for("the end of NAMES (366)", WAIT, |l| l.command == "366").await?;
    Ok(irc)
}

/// Joins user `i` of `names` to their own channel through `peer`, on the connection in
/// `slots`: when they got in (since `started`) and how many tries were refused.
async fn join_one(slots: &Slots, names: &[String], i: usize, peer: Peer, started: Instant, within: Duration) -> Result<(Duration, usize)> {
    let mut conn = slots[i].lock().await;
    let nick = &names[i];
    let room = peer.room(&format!("#{nick}"));
    // ngIRCd listens with a backlog of 10: a burst of connects can be reset
    // (ECONNRESET), and a gateway then refuses the join. Up to 5 tries,
    // counted and reported; the clock keeps running. All within `within` of
    // the start: a gateway that stalls fails the run once, not five times.
    let mut tries = 0;
    loop {
        tries += 1;
        conn.writer.send(&peer.join_xml(&room, nick)).await?;
        let left = within.saturating_sub(started.elapsed());
        match wait_joined(&mut conn.reader, &room, left).await {
            Ok(()) => return Ok((started.elapsed(), tries - 1)),
            Err(error) if tries < 5 && started.elapsed() < within => {
                eprintln!("bench: {nick} joining {room} (try {tries}): {error:#}");
                tokio::time::sleep(Duration::from_millis(200 * tries as u64)).await;
            }
            Err(error) => return Err(error).with_context(|| format!("{nick} joining ({tries} tries)")),
        }
    }
}

/// The delivery phases (see the module's doc): IRC->XMPP, then XMPP->IRC, on
/// [`SAMPLE`] users' channels spread over all `names`.
async fn deliveries(m: &mut Measured, ircd: &dyn IrcServer, peer: Peer, procs: &[procstat::Proc], slots: &Slots, names: &[String]) -> Result<()> {
    let users = names.len();
    let sample: Vec<usize> = (0..SAMPLE.min(users)).map(|k| k * users / SAMPLE.min(users)).collect();
    // Ten per user at most: the smoke run's 20 users stay quick.
    let per_channel = DELIVERIES.min(10 * users).div_ceil(sample.len());
    let mut irc = Irc::connect(ircd.plain_port(), &format!("{}fan", peer.tag())).await?;
    for &i in &sample {
        irc.join(&format!("#{}", names[i])).await?;
    }
    settle().await;

    // IRC -> XMPP: each sampled user waits for its lines.
    let readers: Vec<_> = sample
        .iter()
        .map(|&i| {
            let (slots, room) = (slots.clone(), peer.room(&format!("#{}", names[i])));
            tokio::spawn(async move { wait_messages(&mut slots[i].lock().await.reader, &room, "i ", per_channel).await })
        })
        .collect();
    let before = procstat::snapshot(procs);
    for k in 0..per_channel {
        for &i in &sample {
            irc.queue(&format!("PRIVMSG #{} :i {k}\r\n", names[i])).await?;
        }
        irc.flush().await?;
    }
    for reader in readers {
        reader.await??;
    }
    let after = procstat::snapshot(procs);
    let usage = procstat::usage(procs, &before, &after);
    let delivered = per_channel * sample.len();
    m.set("i2x_cpu", usage[0].cpu_s * 1e6 / delivered as f64);
    m.usage.push((format!("{delivered} IRC->XMPP deliveries"), usage));
    settle().await;

    // What the gateway spends with every user joined and nothing said (timers, the
    // archive's flushes), per second: the paced phase below lasts longer at 10,000 users
    // (the IRC server is slower per line), so this part of its figure grows with the time.
    let before = procstat::snapshot(procs);
    let quiet = Instant::now();
    tokio::time::sleep(QUIET).await;
    let after = procstat::snapshot(procs);
    let idle_per_s = procstat::usage(procs, &before, &after)[0].cpu_s / quiet.elapsed().as_secs_f64();
    m.set("idle_cpu", idle_per_s * 1e3);

    // IRC -> XMPP again, one line at a time: how many lines come per read and per write
    // to the XMPP server depends on how fast the IRC server hands them out (ngIRCd's cost
    // per line grows with its clients), so the phase above batches more at 1,000 users
    // than at 10,000. Here every size pays for each line alone.
    let before = procstat::snapshot(procs);
    let paced = Instant::now();
    for k in 0..PACED {
        let i = sample[k % sample.len()];
        let room = peer.room(&format!("#{}", names[i]));
        irc.queue(&format!("PRIVMSG #{} :p {k}\r\n", names[i])).await?;
        irc.flush().await?;
        wait_messages(&mut slots[i].lock().await.reader, &room, "p ", 1).await?;
    }
    let after = procstat::snapshot(procs);
    let usage = procstat::usage(procs, &before, &after);
    m.set("i2x_paced_cpu", usage[0].cpu_s * 1e6 / PACED as f64);
    m.set("i2x_paced_busy_cpu", (usage[0].cpu_s - idle_per_s * paced.elapsed().as_secs_f64()).max(0.0) * 1e6 / PACED as f64);
    m.set("i2x_paced_ms", paced.elapsed().as_secs_f64() * 1e3 / PACED as f64);
    m.usage.push((format!("{PACED} IRC->XMPP deliveries one at a time"), usage));
    settle().await;

    // XMPP -> IRC: each sampled user writes its lines (and reads their reflections); the
    // IRC client counts them.
    let before = procstat::snapshot(procs);
    let writers: Vec<_> = sample
        .iter()
        .map(|&i| {
            let (slots, room) = (slots.clone(), peer.room(&format!("#{}", names[i])));
            tokio::spawn(async move {
                let mut conn = slots[i].lock().await;
                let mut xml = String::new();
                for k in 0..per_channel {
                    xml.push_str(&format!("<message to='{room}' type='groupchat'><body>x {k}</body></message>"));
                }
                conn.writer.send(&xml).await?;
                wait_messages(&mut conn.reader, &room, "x ", per_channel).await
            })
        })
        .collect();
    let goal = per_channel * sample.len();
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
    while received < goal {
        match irc.next_until(deadline).await? {
            Some(line) if line.command == "PRIVMSG" && line.text().starts_with("x ") => received += 1,
            Some(_) => {}
            None => anyhow::bail!("{received} of {goal} XMPP->IRC lines arrived within {DELIVERY_WAIT:?}"),
        }
    }
    for writer in writers {
        writer.await??;
    }
    let after = procstat::snapshot(procs);
    let usage = procstat::usage(procs, &before, &after);
    m.set("x2i_cpu", usage[0].cpu_s * 1e6 / goal as f64);
    m.usage.push((format!("{goal} XMPP->IRC messages"), usage));
    m.notes.push(format!("deliveries: {} channels of the {users} (every {}th user), {per_channel} lines each way in each", sample.len(), users / sample.len()));
    Ok(())
}

/// Reads `reader` until `count` messages whose body starts with `prefix` have come (the
/// user is in `room` only); fails after [`DELIVERY_WAIT`] for one of them.
async fn wait_messages(reader: &mut crate::xmpp::XmppReader, room: &str, prefix: &str, count: usize) -> Result<()> {
    for got in 0..count {
        reader
            .wait_for(&format!("message {got} ({prefix:?}) in {room}"), DELIVERY_WAIT, |e| e.name() == "message" && body(e).is_some_and(|b| b.starts_with(prefix)))
            .await?;
    }
    Ok(())
}
