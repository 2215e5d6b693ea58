//! Latency: one user in a channel, ping-pong round trips XMPP client -> Prosody ->
//! gateway -> ngIRCd -> IRC client, whose reply goes back the same way. The floor is the
//! same path without a gateway: an XMPP client <-> XMPP client round trip through Prosody
//! plus an IRC client <-> IRC client round trip through ngIRCd. Floor and gateway round
//! trips alternate, one of each per step, so both see the same machine (it is shared and
//! noisy); the added latency is the quantiles of the per-step differences (gateway round
//! trip minus the floor round trip measured next to it).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use testkit::irc::Ngircd;

use crate::irc::Irc;
use crate::peers::{wait_joined, Peer};
use crate::procstat;
use crate::report::{Measured, Spec};
use crate::stats::{self, quantile};
use crate::rig::XmppSide;
use crate::xmpp::body;

/// How long one leg may take before the run fails.
const LEG_WAIT: Duration = Duration::from_secs(10);
/// Round trips before the measured ones (connections warm, caches filled).
const WARMUP: usize = 20;

/// The figures of this scenario.
pub fn specs() -> Vec<Spec> {
    vec![
        Spec { key: "added_p50", label: "gateway-added latency p50", unit: "ms", decimals: 3, target: "biboumi 0.01 ms" },
        Spec { key: "added_p99", label: "gateway-added latency p99", unit: "ms", decimals: 3, target: "<= 0.3 ms (biboumi 0.27 ms)" },
        Spec { key: "rtt_p50", label: "round trip p50 (with gateway)", unit: "ms", decimals: 3, target: "" },
        Spec { key: "rtt_p99", label: "round trip p99 (with gateway)", unit: "ms", decimals: 3, target: "" },
        Spec { key: "floor_p50", label: "floor p50 (XMPP<->XMPP + IRC<->IRC, no gateway)", unit: "ms", decimals: 3, target: "" },
        Spec { key: "floor_p99", label: "floor p99", unit: "ms", decimals: 3, target: "" },
        Spec { key: "leg_p50", label: "XMPP->IRC leg p50 (with gateway)", unit: "ms", decimals: 3, target: "" },
    ]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The path without a gateway: two XMPP clients and two IRC clients.
struct Floor {
    /// XMPP client that pings.
    a: crate::xmpp::XmppConn,
    /// XMPP client that answers.
    b: crate::xmpp::XmppConn,
    /// IRC client that pings.
    c: Irc,
    /// IRC client that answers.
    d: Irc,
    /// The IRC clients' channel.
    channel: String,
}

impl Floor {
    async fn connect(side: &XmppSide, ircd: &Ngircd, peer: Peer) -> Result<Floor> {
        let t = peer.tag();
        let names = vec![format!("{t}fa"), format!("{t}fb")];
        side.add_accounts(&names)?;
        let mut conns = side.connect_all(&names).await?;
        let b = conns.pop().expect("two");
        let a = conns.pop().expect("two");
        let channel = format!("#{t}floor");
        let mut c = Irc::connect(ircd.port, &format!("{t}fc")).await?;
        let mut d = Irc::connect(ircd.port, &format!("{t}fd")).await?;
        c.join(&channel).await?;
        d.join(&channel).await?;
        Ok(Floor { a, b, c, d, channel })
    }

    /// One round trip XMPP<->XMPP plus one IRC<->IRC.
    async fn round_trip(&mut self, i: usize) -> Result<Duration> {
        let Floor { a, b, c, d, channel } = self;
        let started = Instant::now();
        a.writer.send(&format!("<message to='{}' type='chat'><body>f{i}</body></message>", b.jid)).await?;
        let want = format!("f{i}");
        b.reader.wait_for("the floor ping", LEG_WAIT, |e| body(e).as_deref() == Some(want.as_str())).await?;
        b.writer.send(&format!("<message to='{}' type='chat'><body>r{i}</body></message>", a.jid)).await?;
        let want = format!("r{i}");
        a.reader.wait_for("the floor pong", LEG_WAIT, |e| body(e).as_deref() == Some(want.as_str())).await?;
        c.send(&format!("PRIVMSG {channel} :f{i}\r\n")).await?;
        let want = format!("f{i}");
        d.wait_for("the floor ping", LEG_WAIT, |l| l.is_privmsg_to(channel) && l.text() == want).await?;
        d.send(&format!("PRIVMSG {channel} :r{i}\r\n")).await?;
        let want = format!("r{i}");
        c.wait_for("the floor pong", LEG_WAIT, |l| l.is_privmsg_to(channel) && l.text() == want).await?;
        Ok(started.elapsed())
    }
}

/// Runs the scenario against `peer`: `n` measured round trips, each beside a floor one.
pub async fn run(side: &XmppSide, ircd: &Ngircd, peer: Peer, n: usize) -> Result<Measured> {
    let mut floor_path = Floor::connect(side, ircd, peer).await.context("connecting the floor's clients")?;
    let mut floor = Vec::with_capacity(n);
    let t = peer.tag();
    let nick = format!("{t}l0");
    side.add_accounts(std::slice::from_ref(&nick))?;
    let mut xmpp = side.connect_all(std::slice::from_ref(&nick)).await?.pop().expect("one");
    peer.prepare_user(&mut xmpp, ircd.port).await?;
    let channel = format!("#{t}lat");
    let mut echo = Irc::connect(ircd.port, &format!("{t}echo")).await?;
    echo.join(&channel).await?;
    let room = peer.room(&channel);
    xmpp.writer.send(&peer.join_xml(&room, &nick)).await?;
    wait_joined(&mut xmpp.reader, &room, Duration::from_secs(30)).await?;
    let from_echo = format!("{room}/{t}echo");

    let procs = side.procs(peer, ircd)?;
    let before = procstat::snapshot(&procs);
    let mut rtts = Vec::with_capacity(n);
    let mut legs = Vec::with_capacity(n);
    for i in 0..n + WARMUP {
        let floor_trip = floor_path.round_trip(i).await.context("a floor round trip")?;
        let started = Instant::now();
        xmpp.writer.send(&format!("<message to='{room}' type='groupchat'><body>p{i}</body></message>")).await?;
        let want = format!("p{i}");
        echo.wait_for("the ping through the gateway", LEG_WAIT, |l| l.is_privmsg_to(&channel) && l.text() == want).await?;
        let leg = started.elapsed();
        echo.send(&format!("PRIVMSG {channel} :q{i}\r\n")).await?;
        let want = format!("q{i}");
        xmpp.reader
            .wait_for("the pong through the gateway", LEG_WAIT, |e| e.attr("from") == Some(from_echo.as_str()) && body(e).as_deref() == Some(want.as_str()))
            .await?;
        if i >= WARMUP {
            rtts.push(ms(started.elapsed()));
            legs.push(ms(leg));
            floor.push(ms(floor_trip));
        }
    }
    let after = procstat::snapshot(&procs);
    let added = stats::paired_differences(&rtts, &floor);
    rtts.sort_by(f64::total_cmp);
    legs.sort_by(f64::total_cmp);
    floor.sort_by(f64::total_cmp);

    let mut m = Measured::default();
    m.set("rtt_p50", quantile(&rtts, 0.5));
    m.set("rtt_p99", quantile(&rtts, 0.99));
    m.set("floor_p50", quantile(&floor, 0.5));
    m.set("floor_p99", quantile(&floor, 0.99));
    m.set("added_p50", quantile(&added, 0.5));
    m.set("added_p99", quantile(&added, 0.99));
    m.set("leg_p50", quantile(&legs, 0.5));
    m.usage.push((format!("{n} round trips"), procstat::usage(&procs, &before, &after)));
    Ok(m)
}
