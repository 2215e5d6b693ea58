//! The administrators' commands (XEP-0133 nodes over XEP-0050) as pure functions: the
//! forms they show and read, the ban list, and the figures of the `status` command. The
//! router runs them (`Router::handle_admin_command`) for the JIDs in
//! `registration.admins` only.

use std::collections::BTreeSet;

use bridge_core::counters::{read, COUNTERS};
use minidom::Element;
use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType};
use xmpp_parsers::jid::Jid;

/// Lists registered users.
pub const NODE_REGISTERED_USERS: &str = "http://jabber.org/protocol/admin#get-registered-users-list";
/// Lists online users with their networks, rooms and mailbox sessions.
pub const NODE_ONLINE_USERS: &str = "http://jabber.org/protocol/admin#get-online-users-list";
/// Ends users' sessions (IRC connections, mailbox watchers).
pub const NODE_END_SESSIONS: &str = "http://jabber.org/protocol/admin#end-user-session";
/// Deletes users' registrations.
pub const NODE_DELETE_USERS: &str = "http://jabber.org/protocol/admin#delete-user";
/// Shows and replaces the ban list (JIDs and whole domains).
pub const NODE_BANS: &str = "http://jabber.org/protocol/admin#edit-blacklist";
/// Sends a message to every online user.
pub const NODE_ANNOUNCE: &str = "http://jabber.org/protocol/admin#announce";
/// Figures: users, sessions, rooms, counters, memory.
pub const NODE_STATUS: &str = "status";

/// Every administrators' command: node and name, as disco#items lists them.
pub const COMMANDS: [(&str, &str); 7] = [
    (NODE_STATUS, "Gateway status and counters"),
    (NODE_REGISTERED_USERS, "List registered users"),
    (NODE_ONLINE_USERS, "List online users and their sessions"),
    (NODE_END_SESSIONS, "Disconnect users"),
    (NODE_DELETE_USERS, "Delete users' registrations"),
    (NODE_BANS, "Ban or unban JIDs and domains"),
    (NODE_ANNOUNCE, "Send an announcement to online users"),
];

/// Where the form fields of the commands come from: XEP-0133's names.
pub const FIELD_JIDS: &str = "accountjids";
/// The ban list's field.
pub const FIELD_BANS: &str = "blacklistjids";
/// The announcement's subject and text.
pub const FIELD_SUBJECT: &str = "subject";
/// The announcement's text.
pub const FIELD_BODY: &str = "body";

const FORM_TYPE: &str = "http://jabber.org/protocol/admin";

/// Who may not use the gateway: bare JIDs and whole domains, lower-case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bans(BTreeSet<String>);

impl Bans {
    /// From the stored list; entries that are not JIDs are dropped.
    pub fn new(entries: impl IntoIterator<Item = String>) -> Self {
        Bans(entries.into_iter().filter_map(|e| normalise_ban(&e)).collect())
    }

    /// Whether `from` is banned, by its bare JID or its domain.
    pub fn covers(&self, from: &Jid) -> bool {
        !self.0.is_empty() && (self.0.contains(&from.to_bare().to_string().to_lowercase()) || self.0.contains(&from.domain().as_str().to_lowercase()))
    }

    /// The entries, sorted.
    pub fn entries(&self) -> impl Iterator<Item = &String> {
        self.0.iter()
    }
}

/// A ban entry as stored: a bare JID or a domain, lower-case; `None` if it is neither.
pub fn normalise_ban(entry: &str) -> Option<String> {
    let jid: Jid = entry.trim().parse().ok()?;
    Some(jid.to_bare().to_string().to_lowercase())
}

/// What the `status` command and the metrics endpoint show besides the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Registered users.
    pub registered: usize,
    /// Users with at least one online resource.
    pub online: usize,
    /// Live IRC connections, one per (user, IRC server).
    pub irc_connections: usize,
    /// Live mailbox sessions, one per user with an email account in use.
    pub mail_sessions: usize,
    /// Rooms joined through the gateway, over all users.
    pub rooms: usize,
    /// The process's resident memory, KiB.
    pub rss_kib: u64,
}

/// The process's resident memory in KiB (`VmRSS` of `/proc/self/status`), 0 if unknown.
#[must_use]
pub fn rss_kib() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return 0 };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn field(var: &str, label: &str, kind: FieldType, values: Vec<String>) -> Field {
    let mut field = Field::new(var, kind);
    field.label = Some(label.to_owned());
    field.values = values;
    field
}

fn form(kind: DataFormType, title: &str, fields: Vec<Field>) -> Element {
    let mut form = DataForm::new(kind, FORM_TYPE, fields);
    form.title = Some(title.to_owned());
    form.into()
}

/// The status as a result form: gauges, then the counters since start.
#[must_use]
pub fn status_form(gauges: Gauges) -> Element {
    let number = |var: &str, label: &str, value: u64| field(var, label, FieldType::TextSingle, vec![value.to_string()]);
    let c = &COUNTERS;
    form(
        DataFormType::Result_,
        "Gateway status",
        vec![
            number("registered", "Registered users", gauges.registered as u64),
            number("online", "Online users", gauges.online as u64),
            number("irc_connections", "IRC connections", gauges.irc_connections as u64),
            number("mail_sessions", "Mailbox sessions", gauges.mail_sessions as u64),
            number("rooms", "Joined rooms", gauges.rooms as u64),
            number("rss_kib", "Resident memory (KiB)", gauges.rss_kib),
            number("stanzas_in", "Stanzas in", read(&c.stanzas_in)),
            number("stanzas_out", "Stanzas out", read(&c.stanzas_out)),
            number("errors_out", "Error stanzas out", read(&c.errors_out)),
            number("irc_lines_in", "IRC lines in", read(&c.irc_lines_in)),
            number("irc_lines_out", "IRC lines out", read(&c.irc_lines_out)),
            number("mails_in", "Mails in", read(&c.mails_in)),
            number("mails_out", "Mails out", read(&c.mails_out)),
            number("irc_servers_cut_off", "IRC servers cut off for flooding", read(&c.irc_servers_cut_off)),
        ],
    )
}

/// A result form listing `jids` (jid-multi `var`), and `details` (text-multi) if any.
#[must_use]
pub fn jids_result(title: &str, var: &str, jids: Vec<String>, details: Option<Vec<String>>) -> Element {
    let mut fields = vec![field(var, title, FieldType::JidMulti, jids)];
    if let Some(lines) = details {
        fields.push(field("sessions", "Open networks, rooms and mailboxes", FieldType::TextMulti, lines));
    }
    form(DataFormType::Result_, title, fields)
}

/// The form asking for JIDs (`var`), filled with `current`.
#[must_use]
pub fn jids_request(title: &str, var: &str, label: &str, current: Vec<String>) -> Element {
    form(DataFormType::Form, title, vec![field(var, label, FieldType::JidMulti, current)])
}

/// The announcement form.
#[must_use]
pub fn announce_request() -> Element {
    form(
        DataFormType::Form,
        "Send an announcement to online users",
        vec![
            field(FIELD_SUBJECT, "Subject", FieldType::TextSingle, Vec::new()),
            field(FIELD_BODY, "Announcement", FieldType::TextMulti, Vec::new()),
        ],
    )
}

/// The values of field `var` in a submitted form (none if the form or field is missing).
#[must_use]
pub fn values(form: &Element, var: &str) -> Vec<String> {
    let Ok(form) = DataForm::try_from(form.clone()) else { return Vec::new() };
    form.fields.into_iter().find(|f| f.var.as_deref() == Some(var)).map(|f| f.values).unwrap_or_default()
}

/// The submitted JIDs of field `var`: bare, lower-case, each once; an error names the
/// first value that is not a JID.
///
/// # Errors
///
/// The text for a `bad-request`.
pub fn jids(form: &Element, var: &str) -> Result<Vec<String>, String> {
    let mut all = BTreeSet::new();
    for value in values(form, var).iter().filter(|v| !v.trim().is_empty()) {
        all.insert(normalise_ban(value).ok_or_else(|| format!("field {var}: {value:?} is not a JID"))?);
    }
    Ok(all.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submitted(var: &str, values: &[&str]) -> Element {
        let values: String = values.iter().map(|v| format!("<value>{v}</value>")).collect();
        format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{FORM_TYPE}</value></field>\
             <field var='{var}'>{values}</field></x>"
        )
        .parse()
        .unwrap()
    }

    #[test]
    fn bans_cover_a_jid_and_every_jid_of_a_domain() {
        let bans = Bans::new(["Mallory@Evil.example".to_owned(), "spam.example".to_owned(), "not a jid@@".to_owned()]);
        assert_eq!(bans.entries().collect::<Vec<_>>(), ["mallory@evil.example", "spam.example"]);
        let jid = |s: &str| s.parse::<Jid>().unwrap();
        assert!(bans.covers(&jid("mallory@evil.example/phone")));
        assert!(bans.covers(&jid("anyone@SPAM.example/x")));
        assert!(!bans.covers(&jid("alice@evil.example/x")));
        assert!(!Bans::default().covers(&jid("a@b")));
    }

    #[test]
    fn submitted_jids_are_read_bare_and_lower_case_and_a_bad_one_is_named() {
        let form = submitted(FIELD_JIDS, &["Bob@Localhost/res", "alice@localhost", "", "bob@localhost"]);
        assert_eq!(jids(&form, FIELD_JIDS).unwrap(), ["alice@localhost", "bob@localhost"]);
        let bad = submitted(FIELD_JIDS, &["a@b@c"]);
        assert!(jids(&bad, FIELD_JIDS).unwrap_err().contains("\"a@b@c\" is not a JID"));
        assert!(jids(&submitted("other", &["x@y"]), FIELD_JIDS).unwrap().is_empty());
    }

    #[test]
    fn the_status_form_holds_gauges_and_counters() {
        let gauges = Gauges { registered: 3, online: 2, irc_connections: 4, mail_sessions: 1, rooms: 5, rss_kib: 9000 };
        let form = DataForm::try_from(status_form(gauges)).unwrap();
        let value = |var: &str| form.fields.iter().find(|f| f.var.as_deref() == Some(var)).map(|f| f.values[0].clone());
        assert_eq!(value("registered").as_deref(), Some("3"));
        assert_eq!(value("irc_connections").as_deref(), Some("4"));
        assert!(value("stanzas_in").is_some() && value("mails_out").is_some());
    }
}
