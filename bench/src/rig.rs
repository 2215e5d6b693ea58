//! The servers under and around the test: one ngIRCd (no flood protection) shared by
//! everything (or, for the scale scenario, InspIRCd: [`IrcKind`]), and an XMPP side (a
//! private Prosody with our gateway and/or biboumi attached as components), plus bulk
//! accounts and bulk logins.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use testkit::biboumi::Biboumi;
use testkit::irc::{Inspircd, IrcServer, Ngircd};
use testkit::{Gateway, ServerKind, ServerOptions, XmppServer, SECRET};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::peers::{Peer, BIBOUMI_JID};
use crate::procstat::Proc;
use crate::xmpp::XmppConn;

/// Every benchmark account's password (the one testkit gives alice).
pub const PASSWORD: &str = "pw";
/// How many logins (or joins, configure commands) run at once during set-up.
pub const SETUP_CONCURRENCY: usize = 64;

/// A private Prosody with the gateways of `peers` attached.
pub struct XmppSide {
    /// The Prosody instance (components gw.localhost and, with biboumi, biboumi.localhost).
    pub server: XmppServer,
    /// Our gateway process, when it is one of the peers.
    pub gateway: Option<Gateway>,
    /// biboumi, when it is one of the peers (TCP_NODELAY shim loaded).
    pub biboumi: Option<Biboumi>,
}

impl XmppSide {
    /// Starts Prosody, then our gateway (IRC network 127.0.0.1 = `ircd`, no rate limit)
    /// and/or biboumi, as `peers` asks.
    pub fn start(ircd: &dyn IrcServer, peers: &[Peer]) -> Result<XmppSide> {
        Self::start_with(ircd, peers, "")
    }

    /// [`XmppSide::start`] with `gateway_extra` (TOML tables) at the end of our
    /// gateway's configuration.
    pub fn start_with(ircd: &dyn IrcServer, peers: &[Peer], gateway_extra: &str) -> Result<XmppSide> {
        let with_biboumi = peers.contains(&Peer::Biboumi);
        let options = ServerOptions { extra_components: if with_biboumi { vec![(BIBOUMI_JID.into(), SECRET.into())] } else { vec![] }, http_upload: false, ..ServerOptions::default() };
        let server = XmppServer::start_with(ServerKind::Prosody, options);
        let gateway = peers.contains(&Peer::Ours).then(|| Gateway::start_irc_with(&server, ircd, gateway_extra));
        let biboumi = if with_biboumi { Some(Biboumi::start(&server, BIBOUMI_JID, SECRET, true).map_err(|e| anyhow!(e))?) } else { None };
        Ok(XmppSide { server, gateway, biboumi })
    }

    /// An XMPP side with only Prosody (for the email scenario, which starts its own gateway).
    pub fn prosody_only() -> XmppSide {
        XmppSide { server: XmppServer::start(ServerKind::Prosody), gateway: None, biboumi: None }
    }

    /// The process of `peer`'s gateway.
    pub fn peer_proc(&self, peer: Peer) -> Result<Proc> {
        match peer {
            Peer::Ours => {
                let child = self.gateway.as_ref().and_then(|g| g.child.as_ref()).ok_or_else(|| anyhow!("our gateway is not running"))?;
                Ok(Proc::new(peer.name(), child.id()))
            }
            Peer::Biboumi => Ok(Proc::new(peer.name(), self.biboumi.as_ref().ok_or_else(|| anyhow!("biboumi is not running"))?.pid)),
        }
    }

    /// Prosody's process.
    pub fn prosody_proc(&self) -> Result<Proc> {
        Ok(Proc::new("Prosody", pidfile(&self.server.dir.path().join("prosody.pid"))?))
    }

    /// The processes to report for a scenario against `peer`: the gateway, Prosody,
    /// the IRC server and the bench itself.
    pub fn procs(&self, peer: Peer, ircd: &dyn IrcServer) -> Result<Vec<Proc>> {
        let mut procs = vec![self.peer_proc(peer)?, self.prosody_proc()?, ircd_proc(ircd)?, Proc::bench()];
        if peer == Peer::Ours && testkit::postgres::store_is_postgres() {
            procs.push(postgres_proc()?);
        }
        Ok(procs)
    }

    /// Creates the accounts `names`@localhost (password [`PASSWORD`]) at once: Prosody
    /// keeps one file per account whose SCRAM keys depend only on the password, so
    /// alice's (created by testkit with the same password) is copied. prosodyctl would
    /// take about 0.3 s per account.
    pub fn add_accounts(&self, names: &[String]) -> Result<()> {
        let dir = self.server.dir.path().join("data").join("localhost").join("accounts");
        let template = std::fs::read(dir.join("alice.dat")).with_context(|| format!("reading alice's account in {}", dir.display()))?;
        for name in names {
            anyhow::ensure!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "account names must be [a-z0-9]: {name}");
            std::fs::write(dir.join(format!("{name}.dat")), &template)?;
        }
        Ok(())
    }

    /// Logs in every account of `names` ([`SETUP_CONCURRENCY`] at a time), in order.
    pub async fn connect_all(&self, names: &[String]) -> Result<Vec<XmppConn>> {
        let port = self.server.c2s_port;
        let names: Arc<Vec<String>> = Arc::new(names.to_vec());
        let list = names.clone();
        run_limited(names.len(), SETUP_CONCURRENCY, move |i| {
            let list = list.clone();
            async move { XmppConn::connect(port, &list[i], "localhost", PASSWORD).await.with_context(|| format!("logging in {}", list[i])) }
        })
        .await
    }
}

/// The IRC server's process, named after its software.
pub fn ircd_proc(ircd: &dyn IrcServer) -> Result<Proc> {
    Ok(Proc::new(ircd.name(), pidfile(&ircd.pid_file())?))
}

/// Which IRC server a scenario runs against (`--irc-server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IrcKind {
    /// ngIRCd (scripts/ngircd.sh), no flood protection: every scenario.
    Ngircd,
    /// InspIRCd 3 with Atheme services (scripts/inspircd.sh; IRCv3: the gateway
    /// negotiates echo-message, server-time...): the scale scenario only.
    Inspircd,
}

impl IrcKind {
    /// The software's name, as the report gives it.
    pub fn name(self) -> &'static str {
        match self {
            IrcKind::Ngircd => "ngIRCd",
            IrcKind::Inspircd => "InspIRCd",
        }
    }

    /// Starts a fresh private server of this kind on a free port (stopped on drop);
    /// panics with its script's output if it cannot start, as testkit does.
    pub fn start(self) -> Box<dyn IrcServer> {
        match self {
            IrcKind::Ngircd => Box::new(Ngircd::start(false)),
            IrcKind::Inspircd => Box::new(Inspircd::start()),
        }
    }
}

/// The last `lines` lines of `ircd`'s log, for the error output of a failed run.
pub fn log_tail(ircd: &dyn IrcServer, lines: usize) -> String {
    let log = std::fs::read_to_string(ircd.log_file()).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(lines).collect();
    format!("{}'s last log lines:\n{}", ircd.name(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
}

/// The pid in a pidfile.
pub fn pidfile(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.trim().parse().with_context(|| format!("no pid in {}", path.display()))
}

/// Runs `f(0..n)` with at most `limit` at once, each as its own task; the results in
/// order, or the first error.
pub async fn run_limited<T, F, Fut>(n: usize, limit: usize, f: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limit.max(1)));
    let mut set = JoinSet::new();
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await?;
        let fut = f(i);
        set.spawn(async move {
            let out = fut.await;
            drop(permit);
            (i, out)
        });
    }
    let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, out) = joined.context("a set-up task panicked")?;
        results[i] = Some(out?);
    }
    Ok(results.into_iter().map(|r| r.expect("every task reported")).collect())
}

/// `prefix` + index names, e.g. `gt0`, `gt1`, ...
pub fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Sleeps briefly so stragglers of a set-up phase settle before a measurement.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The PostgreSQL cluster our gateways share under `GATEWAY_TEST_STORE=postgres`
/// (testkit's, started by the first gateway): the postmaster with its children (background
/// workers and one backend per connection), whose CPU is the database's side of the
/// gateway's writes and reads.
pub fn postgres_proc() -> Result<Proc> {
    let cluster = testkit::postgres::shared();
    let path = cluster.dir.join("data").join("postmaster.pid");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    // Its first line is the postmaster's pid (then the data directory, start time, port...).
    let pid = text.lines().next().unwrap_or_default().trim().parse().with_context(|| format!("no pid in {}", path.display()))?;
    Ok(Proc::with_children("PostgreSQL (server + backends)", pid))
}
