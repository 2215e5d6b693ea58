//! biboumi, the XMPP-IRC gateway the benchmarks compare with, started by
//! `scripts/biboumi.sh` as a second component of a test Prosody (declare it with
//! [`crate::ServerOptions::extra_components`]). Stopped on drop.
//!
//! The per-user configuration a fair comparison needs (two ad-hoc `configure`
//! commands) is documented in the script's header; the benchmark client sends it.

use std::path::Path;
use std::process::Command;

use crate::{repo, try_script_env, XmppServer};

/// A private biboumi attached to a test server, with its own directory (config,
/// SQLite settings, logs).
pub struct Biboumi {
    /// Everything of the instance: `biboumi.cfg`, `biboumi.log`, `biboumi.sqlite`, ...
    pub dir: tempfile::TempDir,
    /// The component JID it serves, e.g. `biboumi.localhost`.
    pub jid: String,
    /// Its process id (as printed by the script).
    pub pid: u32,
}

impl Biboumi {
    /// Starts biboumi as the component `jid` (with `secret`) of `server`, at log level
    /// warning. `tcp_nodelay` preloads the script's shim that sets TCP_NODELAY on every
    /// socket biboumi connects (`BIBOUMI_TCP_NODELAY=1`), which removes the delayed-ACK
    /// stall biboumi has as shipped. `Err` holds the script's output.
    pub fn start(server: &XmppServer, jid: &str, secret: &str, tcp_nodelay: bool) -> Result<Biboumi, String> {
        let dir = tempfile::Builder::new().prefix("gw-biboumi-").tempdir().map_err(|e| e.to_string())?;
        let port = server.component_port.to_string();
        let path = dir.path().to_str().ok_or("temp dir is not UTF-8")?.to_owned();
        let nodelay = if tcp_nodelay { "1" } else { "0" };
        let out = try_script_env("biboumi.sh", &["start", &path, &port, jid, secret], &[("BIBOUMI_TCP_NODELAY", nodelay)])?;
        let pid = out
            .lines()
            .rev()
            .find_map(|line| line.trim().parse::<u32>().ok())
            .ok_or_else(|| format!("scripts/biboumi.sh printed no pid: {out}"))?;
        Ok(Biboumi { dir, jid: jid.to_owned(), pid })
    }

    /// Stops the instance (idempotent).
    pub fn stop(&self) {
        stop(self.dir.path());
    }
}

impl Drop for Biboumi {
    fn drop(&mut self) {
        stop(self.dir.path());
    }
}

fn stop(dir: &Path) {
    let _ = Command::new("bash").arg(repo().join("scripts").join("biboumi.sh")).arg("stop").arg(dir).output();
}
