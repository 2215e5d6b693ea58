//! Scale: `users` users, each joining a channel of their own through the gateway
//! (one bridged IRC connection each), on a freshly started Prosody with only that
//! gateway attached (Prosody stays slower after many logins). Logins (and biboumi's
//! per-user configuration) happen before the clock starts; then every join is sent at
//! once and the clock stops at the last self-presence.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use testkit::irc::Ngircd;
use tokio::time::Instant;

use crate::peers::{wait_joined, Peer};
use crate::procstat;
use crate::report::{Measured, Spec};
use crate::rig::{names, run_limited, XmppSide, SETUP_CONCURRENCY};

/// The figures of this scenario.
pub fn specs() -> Vec<Spec> {
    vec![
        Spec { key: "join_all", label: "time until every user has joined", unit: "s", decimals: 2, target: "1,000 joins <= 3 s (biboumi 5.9 s)" },
        Spec { key: "rss_per_conn", label: "gateway RSS per bridged IRC connection", unit: "KiB", decimals: 1, target: "<= biboumi (biboumi 11.7 KiB)" },
        Spec { key: "cpu_per_join", label: "gateway CPU per join", unit: "ms", decimals: 3, target: "" },
        Spec { key: "prosody_cpu_per_join", label: "Prosody CPU per join", unit: "ms", decimals: 3, target: "" },
        Spec { key: "rss_after", label: "gateway RSS with every user joined", unit: "MiB", decimals: 1, target: "" },
    ]
}

/// Runs the scenario against `peer` with its own Prosody.
pub async fn run(ircd: &Ngircd, peer: Peer, users: usize) -> Result<Measured> {
    let side = XmppSide::start(ircd, &[peer])?;
    let t = peer.tag();
    let user_names = names(&format!("{t}s"), users);
    side.add_accounts(&user_names)?;
    let login_started = Instant::now();
    let conns = side.connect_all(&user_names).await?;
    let logins = login_started.elapsed();
    let port = ircd.port;
    let slots: Arc<Vec<_>> = Arc::new(conns.into_iter().map(|c| tokio::sync::Mutex::new(c)).collect());
    let prepared = Instant::now();
    if peer == Peer::Biboumi {
        let slots = slots.clone();
        run_limited(users, SETUP_CONCURRENCY, move |i| {
            let slots = slots.clone();
            async move { peer.prepare_user(&mut *slots[i].lock().await, port).await }
        })
        .await?;
    }
    let prepare = prepared.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let procs = side.procs(peer, ircd)?;
    procstat::reset_peak(procs[0].pid);
    let before = procstat::snapshot(&procs);
    let started = Instant::now();
    let within = Duration::from_secs(60 + users as u64 / 10);
    let joins = {
        let slots = slots.clone();
        let names = Arc::new(user_names.clone());
        run_limited(users, users, move |i| {
            let (slots, names) = (slots.clone(), names.clone());
            async move {
                let mut conn = slots[i].lock().await;
                let nick = &names[i];
                let room = peer.room(&format!("#{nick}"));
                // ngIRCd listens with a backlog of 10: a burst of connects can be reset
                // (ECONNRESET), and a gateway then refuses the join. Up to 5 tries,
                // counted and reported; the clock keeps running.
                let mut tries = 0;
                loop {
                    tries += 1;
                    conn.writer.send(&peer.join_xml(&room, nick)).await?;
                    match wait_joined(&mut conn.reader, &room, within).await {
                        Ok(()) => return Ok((started.elapsed(), tries - 1)),
                        Err(error) if tries < 5 => {
                            eprintln!("bench: {nick} joining {room} (try {tries}): {error:#}");
                            tokio::time::sleep(Duration::from_millis(200 * tries as u64)).await;
                        }
                        Err(error) => return Err(error).with_context(|| format!("{nick} joining ({tries} tries)")),
                    }
                }
            }
        })
        .await?
    };
    let retries: usize = joins.iter().map(|j| j.1).sum();
    let all = joins.iter().map(|j| j.0).max().ok_or_else(|| anyhow!("no users"))?;
    let after = procstat::snapshot(&procs);
    let usage = procstat::usage(&procs, &before, &after);

    let mut m = Measured::default();
    m.set("join_all", all.as_secs_f64());
    m.set("rss_per_conn", (after[0].rss_kib as f64 - before[0].rss_kib as f64) / users as f64);
    m.set("cpu_per_join", usage[0].cpu_s * 1000.0 / users as f64);
    m.set("prosody_cpu_per_join", usage[1].cpu_s * 1000.0 / users as f64);
    m.set("rss_after", after[0].rss_kib as f64 / 1024.0);
    m.notes.push(format!(
        "{users} users, one channel each; logins took {:.1} s{} (not timed); gateway RSS {:.1} -> {:.1} MiB",
        logins.as_secs_f64(),
        if peer == Peer::Biboumi { format!(", the fair per-user configuration {:.1} s", prepare.as_secs_f64()) } else { String::new() },
        before[0].rss_kib as f64 / 1024.0,
        after[0].rss_kib as f64 / 1024.0
    ));
    if retries > 0 {
        m.notes.push(format!("{retries} join attempt(s) were refused (IRC connect reset: ngIRCd's listen backlog is 10) and retried by the bench; the retries' time counts"));
    }
    m.usage.push((format!("{users} joins"), usage));
    drop(slots);
    drop(side);
    Ok(m)
}
