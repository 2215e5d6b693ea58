//! Email (our gateway only; biboumi has no email): `users` registered email users, each
//! with an IMAP IDLE session on Dovecot. A warm-up mail to everyone proves every session
//! is up; then `rounds` mails per user, one user after the other, each timed from the
//! start of its SMTP submission to the XMPP message. Gateway RSS per IMAP session is
//! (RSS with every session up - RSS before any registration) / users.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use testkit::mail::MailServer;
use testkit::{register_form, Gateway, GW};
use tokio::time::Instant;

use crate::peers::Peer;
use crate::procstat::{self, Proc};
use crate::report::{Measured, Spec};
use crate::stats::quantile;
use crate::rig::{names, run_limited, XmppSide};
use crate::xmpp::{body, NS_CLIENT};

/// How long one mail may take to arrive before the run fails, plus [`ARRIVAL_PER_USER`]
/// per user: a round's mails go one after the other (1,000 users: a minute or more).
const ARRIVAL_WAIT: Duration = Duration::from_secs(60);
/// See [`ARRIVAL_WAIT`].
const ARRIVAL_PER_USER: Duration = Duration::from_millis(200);

/// The figures of this scenario.
pub fn specs() -> Vec<Spec> {
    vec![
        Spec { key: "mail_p50", label: "SMTP submission -> XMPP message p50", unit: "s", decimals: 3, target: "<= 0.7 s (Dovecot's 0.5 s notify delay + 0.2 s)" },
        Spec { key: "mail_p99", label: "SMTP submission -> XMPP message p99", unit: "s", decimals: 3, target: "" },
        Spec { key: "rss_per_imap", label: "gateway RSS per IMAP IDLE session", unit: "KiB", decimals: 1, target: "" },
        Spec { key: "register_s", label: "time to register every user (real IMAP+SMTP login check each)", unit: "s", decimals: 2, target: "" },
    ]
}

fn mail(to: &str, token: &str) -> Vec<u8> {
    format!(
        "From: Bench <bench@example.test>\r\nTo: {to}\r\nSubject: {token}\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <{token}@example.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbench mail {token}\r\n"
    )
    .into_bytes()
}

/// Sends one mail to each of `addresses` in turn (blocking SMTP); the start time of each.
async fn send_round(mail_server: Arc<MailServer>, addresses: Arc<Vec<String>>, round: usize) -> Result<Vec<Instant>> {
    tokio::task::spawn_blocking(move || {
        let mut starts = Vec::with_capacity(addresses.len());
        for (i, to) in addresses.iter().enumerate() {
            let started = Instant::now();
            mail_server.try_send_raw("bench@example.test", &[to], &mail(to, &format!("tok{round}x{i}"))).map_err(|e| anyhow!("sending to {to}: {e}"))?;
            starts.push(started);
        }
        Ok(starts)
    })
    .await?
}

/// Runs the scenario (our gateway only).
pub async fn run(users: usize, rounds: usize) -> Result<Measured> {
    let arrival_wait = ARRIVAL_WAIT + ARRIVAL_PER_USER * u32::try_from(users).unwrap_or(u32::MAX);
    let side = XmppSide::prosody_only();
    let mail_server = Arc::new(MailServer::start());
    let addresses: Arc<Vec<String>> = Arc::new((0..users).map(|i| format!("e{i}@example.test")).collect());
    // The bench's own sender mailbox (mail to it is never read).
    mail_server.add_user("bench@example.test", "bench-pw");
    for address in addresses.iter() {
        mail_server.add_user(address, "mail-pw");
    }
    let gateway = Gateway::start_mail(&side.server, &mail_server, false);
    let gw_pid = gateway.child.as_ref().ok_or_else(|| anyhow!("the gateway is not running"))?.id();
    let procs = vec![Proc::new(Peer::Ours.name(), gw_pid), side.prosody_proc()?, Proc::bench()];

    let user_names = names("e", users);
    side.add_accounts(&user_names)?;
    let conns = side.connect_all(&user_names).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procstat::snapshot(&procs);
    let registering = Instant::now();
    let slots: Arc<Vec<_>> = Arc::new(conns.into_iter().map(tokio::sync::Mutex::new).collect());
    {
        let (slots, addresses) = (slots.clone(), addresses.clone());
        run_limited(users, 16, move |i| {
            let (slots, addresses) = (slots.clone(), addresses.clone());
            async move {
                let mut conn = slots[i].lock().await;
                let form = register_form(&[("email_address", &addresses[i]), ("email_password", "mail-pw")]);
                conn.iq("set", Some(GW), &form, Duration::from_secs(60)).await.with_context(|| format!("registering {}", addresses[i]))?;
                Ok(())
            }
        })
        .await?;
    }
    let register_s = registering.elapsed().as_secs_f64();

    // Readers: each user waits for its mails of every round in order.
    let warmed = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for i in 0..users {
        let (slots, warmed) = (slots.clone(), warmed.clone());
        readers.push(tokio::spawn(async move {
            let mut conn = slots[i].lock().await;
            let mut arrivals = Vec::with_capacity(rounds + 1);
            for round in 0..=rounds {
                let token = format!("tok{round}x{i}");
                conn.reader
                    .wait_for(&format!("mail {token}"), arrival_wait, |e| {
                        e.name() == "message"
                            && (body(e).is_some_and(|b| b.contains(&token)) || e.get_child("subject", NS_CLIENT).is_some_and(|s| s.text().contains(&token)))
                    })
                    .await?;
                arrivals.push(Instant::now());
                if round == 0 {
                    warmed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, anyhow::Error>(arrivals)
        }));
    }
    // Round 0 warms up: once every user has it, every IDLE session is up.
    let mut starts = vec![send_round(mail_server.clone(), addresses.clone(), 0).await?];
    let warm_until = Instant::now() + arrival_wait;
    while warmed.load(Ordering::Relaxed) < users {
        if Instant::now() > warm_until {
            anyhow::bail!("only {} of {users} warm-up mails arrived within {arrival_wait:?}", warmed.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = procstat::snapshot(&procs);
    for round in 1..=rounds {
        starts.push(send_round(mail_server.clone(), addresses.clone(), round).await?);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let mut latencies = Vec::new();
    for (i, reader) in readers.into_iter().enumerate() {
        let arrivals = reader.await?.with_context(|| format!("user e{i}"))?;
        for round in 1..=rounds {
            latencies.push(arrivals[round].duration_since(starts[round][i]).as_secs_f64());
        }
    }
    let after = procstat::snapshot(&procs);
    latencies.sort_by(f64::total_cmp);

    let mut m = Measured::default();
    m.set("mail_p50", quantile(&latencies, 0.5));
    m.set("mail_p99", quantile(&latencies, 0.99));
    m.set("rss_per_imap", (during[0].rss_kib as f64 - before[0].rss_kib as f64) / users as f64);
    m.set("register_s", register_s);
    m.notes.push(format!(
        "{users} users, {rounds} timed mails each (one user after the other) after a warm-up mail; gateway RSS {:.1} MiB before registration, {:.1} MiB with every IDLE session up",
        before[0].rss_kib as f64 / 1024.0,
        during[0].rss_kib as f64 / 1024.0
    ));
    m.usage.push(("registration + mails".into(), procstat::usage(&procs, &before, &after)));
    drop(slots);
    drop(gateway);
    Ok(m)
}
