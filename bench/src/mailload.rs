//! Channel latency under mail load (issue 9; our gateway only): does anything the email
//! sessions do (store flushes per mail, IMAP) stall the one thread the IRC sessions and
//! the XMPP writer share? One gateway serves both ngIRCd and Postfix+Dovecot. An XMPP
//! user sits in a channel; an IRC client says a line, and the time until the XMPP client
//! has it is one sample (IRC line -> XMPP occupant). The same samples are taken twice in
//! the same run: without mail, then while `MAILS_PER_SECOND` mails arrive for
//! `MAIL_USERS` email-registered users of the same gateway.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use testkit::irc::Ngircd;
use testkit::mail::MailServer;
use testkit::{register_form, Gateway, GW};
use tokio::time::Instant;

use crate::irc::Irc;
use crate::peers::{wait_joined, Peer};
use crate::procstat::{self, Proc};
use crate::report::{Measured, Spec};
use crate::rig::{names, XmppSide};
use crate::stats::quantile;
use crate::xmpp::body;

/// Mail arrival rate during the loaded phase (issue 9).
const MAILS_PER_SECOND: u64 = 50;
/// Email-registered users the mail goes to, round robin.
const MAIL_USERS: usize = 20;
/// How long one channel line may take before the run fails.
const LINE_WAIT: Duration = Duration::from_secs(10);
/// Pause between channel lines, so that each is a latency sample, not a throughput one.
const LINE_GAP: Duration = Duration::from_millis(10);

/// The figures of this scenario.
pub fn specs() -> Vec<Spec> {
    vec![
        Spec { key: "idle_p50", label: "IRC line -> XMPP occupant p50, no mail", unit: "ms", decimals: 3, target: "" },
        Spec { key: "idle_p99", label: "IRC line -> XMPP occupant p99, no mail", unit: "ms", decimals: 3, target: "" },
        Spec { key: "loaded_p50", label: "IRC line -> XMPP occupant p50, 50 mails/s arriving", unit: "ms", decimals: 3, target: "" },
        Spec { key: "loaded_p99", label: "IRC line -> XMPP occupant p99, 50 mails/s arriving", unit: "ms", decimals: 3, target: "" },
        Spec { key: "p99_ratio", label: "p99 with mail / p99 without (1 = no stall)", unit: "", decimals: 2, target: "" },
        Spec { key: "mails_delivered", label: "mails delivered during the loaded phase", unit: "", decimals: 0, target: "" },
    ]
}

/// Sets its flag when dropped: the mail sender's stop, on every way out of the run.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// `n` channel lines from `irc` to `xmpp`, each timed; sorted, in ms.
async fn samples(irc: &mut Irc, xmpp: &mut crate::xmpp::XmppConn, channel: &str, tag: &str, n: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!("{tag}{i}");
        let started = Instant::now();
        irc.send(&format!("PRIVMSG {channel} :{text}\r\n")).await?;
        xmpp.reader.wait_for("the channel line", LINE_WAIT, |e| body(e).as_deref() == Some(text.as_str())).await?;
        out.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(LINE_GAP).await;
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// Runs the scenario with `n` samples per phase.
pub async fn run(ircd: &Ngircd, n: usize) -> Result<Measured> {
    let side = XmppSide::prosody_only();
    let mail_server = Arc::new(MailServer::start());
    mail_server.add_user("bench@example.test", "bench-pw");
    let addresses: Vec<String> = (0..MAIL_USERS).map(|i| format!("ml{i}@example.test")).collect();
    for address in &addresses {
        mail_server.add_user(address, "mail-pw");
    }
    let gateway = Gateway::start_irc_networks(
        &side.server,
        &format!(
            "[irc.networks.\"127.0.0.1\"]\nport = {}\ntls = false\nflood_burst = 0\n\
             [email.providers.\"example.test\"]\nimap = \"127.0.0.1:{}\"\nimap_security = \"plain\"\n\
             smtp = \"127.0.0.1:{}\"\nsmtp_security = \"plain\"\n",
            ircd.port, mail_server.imap_port, mail_server.submission_port
        ),
    );
    let gw_pid = gateway.child.as_ref().ok_or_else(|| anyhow!("the gateway is not running"))?.id();
    let procs = vec![Proc::new(Peer::Ours.name(), gw_pid), side.prosody_proc()?, Proc::bench()];

    // The mail users: registered, each reading (and dropping) what arrives.
    let mail_names = names("ml", MAIL_USERS);
    side.add_accounts(&mail_names)?;
    let delivered = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for (i, mut conn) in side.connect_all(&mail_names).await?.into_iter().enumerate() {
        let form = register_form(&[("email_address", &addresses[i]), ("email_password", "mail-pw")]);
        let reply = conn.iq("set", Some(GW), &form, Duration::from_secs(60)).await.with_context(|| format!("registering {}", addresses[i]))?;
        anyhow::ensure!(reply.attr("type") == Some("result"), "registering {} was refused: {}", addresses[i], testkit::error_text(&reply));
        let delivered = delivered.clone();
        readers.push(tokio::spawn(async move {
            // The whole connection, not only its reader: a dropped write half closes it.
            let mut conn = conn;
            while let Ok(e) = conn.reader.wait_for("mail", Duration::from_secs(3600), |e| e.name() == "message").await {
                if body(&e).is_some_and(|b| b.contains("load mail")) {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // The channel: one XMPP occupant, one IRC speaker.
    let nick = "mlx".to_owned();
    side.add_accounts(std::slice::from_ref(&nick))?;
    let mut xmpp = side.connect_all(std::slice::from_ref(&nick)).await?.pop().expect("one");
    let channel = "#mailload".to_owned();
    let mut irc = Irc::connect(ircd.port, "mlspeaker").await?;
    irc.join(&channel).await?;
    let room = Peer::Ours.room(&channel);
    xmpp.writer.send(&Peer::Ours.join_xml(&room, &nick)).await?;
    wait_joined(&mut xmpp.reader, &room, Duration::from_secs(30)).await?;
    samples(&mut irc, &mut xmpp, &channel, "w", 20).await?;

    let idle = samples(&mut irc, &mut xmpp, &channel, "i", n).await?;

    // Loaded: mail at a steady rate from a blocking thread (SMTP client), while sampling.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, mail_server, addresses) = (stop.clone(), mail_server.clone(), addresses.clone());
        tokio::task::spawn_blocking(move || -> Result<(usize, Duration)> {
            let gap = Duration::from_micros(1_000_000 / MAILS_PER_SECOND);
            let started = std::time::Instant::now();
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let to = &addresses[sent % addresses.len()];
                let raw = format!(
                    "From: Bench <bench@example.test>\r\nTo: {to}\r\nSubject: load {sent}\r\nMessage-ID: <load{sent}@example.test>\r\n\r\nload mail {sent}\r\n"
                );
                mail_server.try_send_raw("bench@example.test", &[to], raw.as_bytes()).map_err(|e| anyhow!("sending to {to}: {e}"))?;
                sent += 1;
                let due = gap * sent as u32;
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            Ok((sent, started.elapsed()))
        })
    };
    // The sender stops whatever happens below (a blocking thread would keep the process).
    let _stop_sender = StopOnDrop(stop.clone());
    // Let the mail start flowing through the gateway before sampling.
    let flowing_by = Instant::now() + Duration::from_secs(30);
    while delivered.load(Ordering::Relaxed) < 10 {
        if Instant::now() > flowing_by {
            if sender.is_finished() {
                stop.store(true, Ordering::Relaxed);
                let outcome = sender.await?;
                anyhow::bail!("the mail sender stopped: {outcome:?}");
            }
            let log = gateway.log_text();
            let tail: Vec<&str> = log.lines().filter(|l| !l.contains("sled::")).rev().take(20).collect();
            let in_inbox = mail_server.inbox(&addresses[0], "mail-pw").len();
            anyhow::bail!(
                "no load mail reached the XMPP side within 30 s ({in_inbox} in {}'s INBOX); the gateway's last log lines:\n{}",
                addresses[0],
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = procstat::snapshot(&procs);
    let at_start = delivered.load(Ordering::Relaxed);
    let loaded = samples(&mut irc, &mut xmpp, &channel, "l", n).await;
    let during = delivered.load(Ordering::Relaxed) - at_start;
    let after = procstat::snapshot(&procs);
    stop.store(true, Ordering::Relaxed);
    let (sent, sending) = sender.await?.context("the mail sender")?;
    let loaded = loaded?;
    for reader in readers {
        reader.abort();
    }

    let mut m = Measured::default();
    let (idle_p99, loaded_p99) = (quantile(&idle, 0.99), quantile(&loaded, 0.99));
    m.set("idle_p50", quantile(&idle, 0.5));
    m.set("idle_p99", idle_p99);
    m.set("loaded_p50", quantile(&loaded, 0.5));
    m.set("loaded_p99", loaded_p99);
    m.set("p99_ratio", loaded_p99 / idle_p99);
    m.set("mails_delivered", during as f64);
    m.notes.push(format!(
        "{n} channel lines per phase, {LINE_GAP:?} apart; {sent} mails sent to {MAIL_USERS} users at {:.1}/s achieved ({MAILS_PER_SECOND}/s asked), {during} delivered during the loaded phase",
        sent as f64 / sending.as_secs_f64()
    ));
    m.usage.push(("loaded phase".into(), procstat::usage(&procs, &before, &after)));
    drop(gateway);
    Ok(m)
}
