//! "A gateway under test": ours or biboumi. How to address a channel, and the per-user
//! setup each needs before joining (none for ours; biboumi's two ad-hoc `configure`
//! commands for a fair comparison, see the header of scripts/biboumi.sh, or the rows
//! they write, seeded into its database for many users at once).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use minidom::Element;

use crate::xmpp::{has_status, XmppConn, XmppReader, NS_MUC};

/// The component JID biboumi gets on the benchmark's Prosody.
pub const BIBOUMI_JID: &str = "biboumi.localhost";
/// The IRC server as both gateways name it.
pub const IRC_SERVER: &str = "127.0.0.1";

const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
const NS_DATA: &str = "jabber:x:data";
/// How long an ad-hoc command may take.
const COMMAND_WAIT: Duration = Duration::from_secs(30);

/// Which gateway a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// xmpp-gateway, this project (component `gw.localhost`).
    Ours,
    /// biboumi 9 (component `biboumi.localhost`), configured fairly per user.
    Biboumi,
}

impl Peer {
    /// Both, in the order a run measures them.
    pub const ALL: [Peer; 2] = [Peer::Ours, Peer::Biboumi];

    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Ours => "xmpp-gateway",
            Peer::Biboumi => "biboumi",
        }
    }

    /// One letter that keeps user names, nicks and channels of the two runs apart
    /// (nicks are unique per IRC server, and both gateways share one ngIRCd).
    pub fn tag(self) -> char {
        match self {
            Peer::Ours => 'g',
            Peer::Biboumi => 'b',
        }
    }

    /// The component JID.
    pub fn component(self) -> &'static str {
        match self {
            Peer::Ours => testkit::GW,
            Peer::Biboumi => BIBOUMI_JID,
        }
    }

    /// The room JID of an IRC channel on the benchmark's ngIRCd, e.g.
    /// `#chan%127.0.0.1@gw.localhost`.
    pub fn room(self, channel: &str) -> String {
        format!("{channel}%{IRC_SERVER}@{}", self.component())
    }

    /// The join presence for `room` as `nick` (no history).
    pub fn join_xml(self, room: &str, nick: &str) -> String {
        format!("<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>")
    }

    /// What a user must do once before their first join: nothing for ours; for biboumi
    /// the fair configuration (ports = `ircd_port`, no TLS ports, throttle_limit -1 on
    /// the IRC server; record_history false globally).
    pub async fn prepare_user(self, conn: &mut XmppConn, ircd_port: u16) -> Result<()> {
        self.prepare_user_recording(conn, ircd_port, false).await
    }

    /// [`Peer::prepare_user`], with biboumi's `record_history` as `record` (its archive,
    /// which commits every line to SQLite). Ours archives as its configuration says.
    pub async fn prepare_user_recording(self, conn: &mut XmppConn, ircd_port: u16, record: bool) -> Result<()> {
        if self == Peer::Ours {
            return Ok(());
        }
        let port = ircd_port.to_string();
        let server_jid = format!("{IRC_SERVER}@{BIBOUMI_JID}");
        configure(conn, &server_jid, &[("ports", &[port.as_str()]), ("tls_ports", &[]), ("throttle_limit", &["-1"])]).await?;
        configure(conn, BIBOUMI_JID, &[("record_history", &[if record { "true" } else { "false" }])]).await?;
        Ok(())
    }
}

/// biboumi's fair configuration (what [`Peer::prepare_user`] sets, record_history false)
/// for every user of `users`@localhost, written straight into the database of the
/// biboumi running in `dir`, in one transaction: the same rows its two `configure`
/// commands write. For many users: biboumi looks a user's settings up by a scan of its
/// tables (they have no index on the owner), so its commands cost it time in proportion
/// to the users already configured, and 10,000 users' commands did not finish in ten
/// minutes. Needs the `sqlite3` program.
pub fn seed_fair_configuration(dir: &Path, users: &[String], ircd_port: u16) -> Result<()> {
    let quoted = |text: &str| format!("'{}'", text.replace('\'', "''"));
    let server = quoted(IRC_SERVER);
    let ports = quoted(&format!("{ircd_port};"));
    let mut sql = String::from("BEGIN;\n");
    for user in users {
        let owner = quoted(&format!("{user}@localhost"));
        sql.push_str(&format!(
            "INSERT INTO ircserveroptions_ (owner_,server_,pass_,tlsports_,ports_,username_,realname_,verifycert_,trustedfingerprint_,encodingout_,encodingin_,maxhistorylength_,address_,nick_,saslpassword_,throttlelimit_) VALUES ({owner},{server},'','',{ports},'','',1,'','','',20,{server},'','',-1);\n\
             INSERT INTO globaloptions_ (owner_,maxhistorylength_,recordhistory_,persistent_) VALUES ({owner},20,0,0);\n"
        ));
    }
    sql.push_str("COMMIT;\n");
    let database = dir.join("biboumi.sqlite");
    let mut child = Command::new("sqlite3")
        .arg("-bail")
        .arg(&database)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running sqlite3 (apt-get install sqlite3) to configure biboumi's users")?;
    child.stdin.take().ok_or_else(|| anyhow!("no stdin for sqlite3"))?.write_all(sql.as_bytes()).context("writing to sqlite3")?;
    let out = child.wait_with_output().context("waiting for sqlite3")?;
    if !out.status.success() {
        bail!("sqlite3 on {} failed ({}): {}", database.display(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs the ad-hoc command `configure` on `to`: executes it, then submits every field
/// of the returned form with its current values except those in `set` (a submitted
/// form replaces the stored settings as a whole).
pub async fn configure(conn: &mut XmppConn, to: &str, set: &[(&str, &[&str])]) -> Result<()> {
    let executing = conn.iq("set", Some(to), &format!("<command xmlns='{NS_COMMANDS}' node='configure' action='execute'/>"), COMMAND_WAIT).await?;
    let command = executing.get_child("command", NS_COMMANDS).ok_or_else(|| anyhow!("no command in {executing:?}"))?;
    let session = command.attr("sessionid").ok_or_else(|| anyhow!("no sessionid from {to}"))?.to_owned();
    let form = command.get_child("x", NS_DATA).ok_or_else(|| anyhow!("no form from {to}"))?;
    let mut fields = String::new();
    let mut applied = 0;
    for field in form.children().filter(|c| c.name() == "field") {
        let Some(var) = field.attr("var") else { continue };
        let values: Vec<String> = match set.iter().find(|(v, _)| *v == var) {
            Some((_, values)) => {
                applied += 1;
                values.iter().map(|v| v.to_string()).collect()
            }
            None => field.children().filter(|c| c.name() == "value").map(Element::text).collect(),
        };
        fields.push_str(&format!("<field var='{var}'>"));
        for value in values {
            fields.push_str(&format!("<value>{}</value>", escape(&value)));
        }
        fields.push_str("</field>");
    }
    if applied != set.len() {
        bail!("the configure form of {to} lacks some of {:?}", set.iter().map(|(v, _)| *v).collect::<Vec<_>>());
    }
    let done = conn
        .iq(
            "set",
            Some(to),
            &format!("<command xmlns='{NS_COMMANDS}' node='configure' sessionid='{session}'><x xmlns='{NS_DATA}' type='submit'>{fields}</x></command>"),
            COMMAND_WAIT,
        )
        .await?;
    let status = done.get_child("command", NS_COMMANDS).and_then(|c| c.attr("status"));
    if status != Some("completed") {
        bail!("configure on {to} did not complete: {done:?}");
    }
    Ok(())
}

/// Waits for the self-presence (status 110) of a join of `room`.
pub async fn wait_joined(reader: &mut XmppReader, room: &str, within: Duration) -> Result<()> {
    let prefix = format!("{room}/");
    let presence = reader
        .wait_for(&format!("the self-presence in {room}"), within, |e| {
            e.name() == "presence" && e.attr("from").is_some_and(|f| f.starts_with(&prefix)) && (has_status(e, "110") || e.attr("type") == Some("error"))
        })
        .await?;
    if presence.attr("type") == Some("error") {
        bail!(
            "joining {room} failed: {} ({})",
            testkit::error_condition(&presence).unwrap_or_default(),
            testkit::error_text(&presence)
        );
    }
    Ok(())
}

/// Escapes text for XML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;")
}
