//! In-band registration (XEP-0077) with an XEP-0004 form: the IRC nick and a password
//! per IRC network, the email address, password, login and servers, and whether
//! delivered mail is marked read.
//!
//! An IRC password is given for one network and only ever goes there: one field
//! `irc_password/<host>` per network under `[irc.networks]`, and `irc_network` with
//! `irc_network_password` for a network the admin did not configure. The legacy fields
//! (`username` = IRC nick, `password` = IRC password), and the single `irc_password` of
//! earlier forms, are taken only where exactly one IRC network is configured (then the
//! password is that network's); elsewhere they are refused, naming the fields to use.
//!
//! Building the form, reading a submission and merging it into the stored record are
//! pure functions; the router does the storing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bridge_core::Secret;
use minidom::Element;
use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType};

use crate::address::{self, Address};
use crate::config::{self, Config};
use crate::store::{EmailAccount, IrcAccount, UserRecord};

/// The `jabber:iq:register` namespace.
pub const NS_REGISTER: &str = "jabber:iq:register";
/// The data forms namespace.
const NS_DATA: &str = "jabber:x:data";

/// The form's IRC fields before the per-network passwords: var, type, label.
const IRC_FIELDS: &[(&str, FieldType, &str)] = &[("irc_nick", FieldType::TextSingle, "IRC nick (leave empty to use each room's nick)")];

/// The var of a configured network's password field is this followed by the host.
const NETWORK_PASSWORD: &str = "irc_password/";

/// The password for a network that is not configured, and which network that is.
const OTHER_NETWORK_FIELDS: &[(&str, FieldType, &str)] = &[
    ("irc_network", FieldType::TextSingle, "Another IRC network (host name) to give a password for"),
    ("irc_network_password", FieldType::TextPrivate, "IRC password on that network (SASL PLAIN)"),
    ("irc_forget_password", FieldType::TextSingle, "An IRC network (host name) whose stored password to forget"),
];

/// The one IRC password of earlier forms and of the legacy fields (see the module's doc).
const SINGLE_IRC_PASSWORD: &str = "irc_password";

/// The form's email fields: var, type, label. Order is the order users see.
const EMAIL_FIELDS: &[(&str, FieldType, &str)] = &[
    ("email_address", FieldType::TextSingle, "Email address"),
    ("email_password", FieldType::TextPrivate, "Email password"),
    ("email_login", FieldType::TextSingle, "Email login, if not the address"),
    ("imap_server", FieldType::TextSingle, "IMAP server host:port, if not preset"),
    ("smtp_server", FieldType::TextSingle, "SMTP server host:port, if not preset"),
    ("email_mark_seen", FieldType::Boolean, "Mark mail read in the mailbox once delivered here"),
    ("email_save_sent", FieldType::Boolean, "Keep a copy of mail sent from here in the mailbox's Sent folder"),
    ("email_display_name", FieldType::TextSingle, "Your name, shown beside your address on mail sent"),
    ("email_mark_displayed", FieldType::Boolean, "Mark mail read in the mailbox when your client shows it read"),
    ("email_folders", FieldType::TextSingle, "Folders to watch besides INBOX, comma-separated"),
    ("email_import_contacts", FieldType::TextSingle, "Add the people of your last N mails to your roster (0: none)"),
];

/// Most folders watched besides INBOX (`email_folders`): each is one more IMAP connection.
const EXTRA_FOLDERS_MAX: usize = 4;
/// Most mails whose correspondents are imported (`email_import_contacts`).
const IMPORT_CONTACTS_MAX: u32 = 500;

/// The most characters of a display name (`email_display_name`).
const DISPLAY_NAME_MAX: usize = 100;

/// Instructions shown above the form.
const INSTRUCTIONS: &str = "Give your IRC nick and your password on each IRC network \
(each password goes only to its network), and/or your email account. Leave a network's \
fields empty to not use it. Passwords are stored encrypted; leave a password empty to \
keep the stored one.";

/// The form's fields for `config`: var, type, label, in the order users see them.
fn fields(config: &Config) -> Vec<(String, FieldType, String)> {
    let fixed = |fields: &[(&str, FieldType, &str)]| -> Vec<(String, FieldType, String)> {
        fields.iter().map(|(var, type_, label)| ((*var).to_owned(), type_.clone(), (*label).to_owned())).collect()
    };
    let mut all = fixed(IRC_FIELDS);
    all.extend(config.irc.networks.keys().map(|host| {
        let label = format!("IRC password on {host} (SASL PLAIN, or NickServ where it runs)");
        (format!("{NETWORK_PASSWORD}{}", host.to_ascii_lowercase()), FieldType::TextPrivate, label)
    }));
    all.extend(fixed(OTHER_NETWORK_FIELDS));
    all.extend(fixed(EMAIL_FIELDS));
    all
}

/// A form field whose value was refused; becomes `not-acceptable` with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field}: {reason}")]
pub struct FieldError {
    /// The form var (`irc_nick`, `email_address`, ...).
    pub field: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

fn field_error(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError { field: field.to_owned(), reason: reason.into() }
}

/// What a `set` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `<remove/>`: forget the user.
    Remove,
    /// New or updated values, by form var; absent or empty vars are empty strings.
    Submit(BTreeMap<String, String>),
}

/// The `<query/>` answering a `get`: the blank form, or `<registered/>` with the stored
/// values (never a password).
pub fn query_for(record: Option<&UserRecord>, config: &Config) -> Element {
    let irc = record.and_then(|r| r.irc.as_ref());
    let email = record.and_then(|r| r.email.as_ref());
    let value = |var: &str| -> Option<String> {
        match var {
            "irc_nick" => irc.map(|i| i.nick.clone()),
            "email_address" => email.map(|e| e.address.clone()),
            "email_login" => email.and_then(|e| e.login.clone()),
            "imap_server" => email.and_then(|e| e.imap_server.clone()),
            "smtp_server" => email.and_then(|e| e.smtp_server.clone()),
            "email_mark_seen" => email.map(|e| if e.mark_seen { "1" } else { "0" }.to_owned()),
            // Shown checked on a blank form too: a client submits what it shows.
            "email_save_sent" => Some(if email.is_none_or(|e| e.save_sent) { "1" } else { "0" }.to_owned()),
            "email_display_name" => email.and_then(|e| e.display_name.clone()),
            "email_mark_displayed" => email.map(|e| if e.mark_displayed { "1" } else { "0" }.to_owned()),
            "email_folders" => email.map(|e| e.folders.join(", ")).filter(|f| !f.is_empty()),
            "email_import_contacts" => email.map(|e| e.import_contacts.to_string()),
            _ => None,
        }
    };
    let fields = fields(config)
        .into_iter()
        .map(|(var, type_, label)| {
            let mut field = Field::new(&var, type_);
            field.label = Some(label);
            field.values.extend(value(&var));
            field
        })
        .collect();
    let mut form = DataForm::new(DataFormType::Form, NS_REGISTER, fields);
    form.title = Some("xmpp-gateway registration".into());
    form.instructions = Some(INSTRUCTIONS.into());

    let mut query = Element::builder("query", NS_REGISTER)
        .append(Element::builder("instructions", NS_REGISTER).append(INSTRUCTIONS))
        .append(Element::builder("username", NS_REGISTER).append(value("irc_nick").unwrap_or_default()))
        .append(Element::bare("password", NS_REGISTER));
    if record.is_some() {
        query = query.append(Element::bare("registered", NS_REGISTER));
    }
    query.append(Element::from(form)).build()
}

/// Reads the `<query/>` of a `set`: `<remove/>`, a submitted form, or legacy fields.
pub fn parse_request(query: &Element, config: &Config) -> Result<Request, FieldError> {
    if query.has_child("remove", NS_REGISTER) {
        return Ok(Request::Remove);
    }
    let known = fields(config);
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    if let Some(x) = query.get_child("x", NS_DATA) {
        let form = DataForm::try_from(x.clone())
            .map_err(|e| field_error("FORM_TYPE", format!("the data form is invalid: {e}")))?;
        if form.type_ != DataFormType::Submit {
            return Err(field_error("FORM_TYPE", "the form must have type='submit'"));
        }
        if let Some(form_type) = form.form_type() {
            if form_type != NS_REGISTER {
                return Err(field_error("FORM_TYPE", format!("expected {NS_REGISTER}, got {form_type}")));
            }
        }
        for field in &form.fields {
            let Some(var) = field.var.as_deref() else { continue };
            if var == "FORM_TYPE" {
                continue;
            }
            if var != SINGLE_IRC_PASSWORD && !known.iter().any(|(v, _, _)| v == var) {
                return Err(field_error("FORM_TYPE", format!("unknown field {var:?}")));
            }
            if field.values.len() > 1 {
                return Err(field_error(var, "takes one value"));
            }
            values.insert(var.to_owned(), field.values.first().cloned().unwrap_or_default());
        }
    } else {
        let legacy = |name: &str| query.get_child(name, NS_REGISTER).map(Element::text);
        values.insert("irc_nick".into(), legacy("username").or_else(|| legacy("nick")).unwrap_or_default());
        values.insert(SINGLE_IRC_PASSWORD.into(), legacy("password").unwrap_or_default());
    }
    for value in values.values_mut() {
        *value = value.trim().to_owned();
    }
    Ok(Request::Submit(values))
}

/// A boolean field's value: `default` when absent.
fn boolean(value: Option<&str>, var: &str, default: bool) -> Result<bool, FieldError> {
    match value {
        None => Ok(default),
        Some("0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(other) => Err(field_error(var, format!("{other:?} is not a boolean (0, 1, false, true)"))),
    }
}

/// A display name as given, trimmed: at most [`DISPLAY_NAME_MAX`] characters, no control
/// characters (it goes into a mail header; lettre encodes the rest).
fn display_name(value: &str) -> Result<String, FieldError> {
    let name = value.trim();
    if name.chars().any(char::is_control) {
        return Err(field_error("email_display_name", "a name cannot hold line breaks or control characters"));
    }
    if name.chars().count() > DISPLAY_NAME_MAX {
        return Err(field_error("email_display_name", format!("at most {DISPLAY_NAME_MAX} characters")));
    }
    Ok(name.to_owned())
}

/// The folders to watch besides INBOX, from a comma-separated list: trimmed, INBOX and
/// repeats left out, at most [`EXTRA_FOLDERS_MAX`], each a name IMAP can carry (no
/// control characters, `"` or `\\`, at most 200 bytes).
fn folders(value: &str) -> Result<Vec<String>, FieldError> {
    let mut folders: Vec<String> = Vec::new();
    for name in value.split(',').map(str::trim).filter(|name| !name.is_empty()) {
        if name.chars().any(|c| c.is_control() || c == '"' || c == '\\') || name.len() > 200 {
            return Err(field_error("email_folders", format!("{name:?} is not a folder name this gateway can watch (no quotes, backslashes or control characters, at most 200 bytes)")));
        }
        if !name.eq_ignore_ascii_case("INBOX") && !folders.iter().any(|known| known == name) {
            folders.push(name.to_owned());
        }
    }
    if folders.len() > EXTRA_FOLDERS_MAX {
        return Err(field_error("email_folders", format!("at most {EXTRA_FOLDERS_MAX} folders besides INBOX")));
    }
    Ok(folders)
}

/// How many mails' correspondents to import: a whole number up to [`IMPORT_CONTACTS_MAX`].
fn import_count(value: &str) -> Result<u32, FieldError> {
    match value.trim().parse::<u32>() {
        Ok(count) if count <= IMPORT_CONTACTS_MAX => Ok(count),
        _ => Err(field_error("email_import_contacts", format!("{value:?} is not a number of mails from 0 to {IMPORT_CONTACTS_MAX}"))),
    }
}

/// Merges a submission into the stored record (if any), validating every value. Empty
/// passwords keep the stored password of the same account.
pub fn apply(
    existing: Option<&UserRecord>,
    values: &BTreeMap<String, String>,
    config: &Config,
) -> Result<UserRecord, FieldError> {
    let get = |var: &str| values.get(var).map(String::as_str).filter(|v| !v.is_empty());
    // Settings made elsewhere than in this form stay.
    let mut record = UserRecord { persistent_channels: existing.map(|r| r.persistent_channels.clone()).unwrap_or_default(), ..UserRecord::default() };

    let passwords = irc_passwords(&get, config)?;
    if let Some(nick) = get("irc_nick") {
        address::parse_occupant_nick(nick).map_err(|e| field_error("irc_nick", e.to_string()))?;
        // The same nick keeps its stored passwords; a new nick starts without any.
        let mut account = existing
            .and_then(|r| r.irc.clone())
            .filter(|irc| irc.nick == nick)
            .unwrap_or_else(|| IrcAccount::new(nick));
        account.passwords.extend(passwords);
        if let Some(host) = get("irc_forget_password") {
            let host = address::normalize_server(host).map_err(|e| field_error("irc_forget_password", format!("{host:?}: {e}")))?;
            account.passwords.remove(&host);
        }
        record.irc = Some(account);
    } else if let Some((var, _)) = values.iter().find(|(var, value)| is_irc_password(var) && !value.is_empty()) {
        return Err(field_error("irc_nick", format!("{var} needs an IRC nick")));
    }

    if let Some(raw) = get("email_address") {
        // An address is valid exactly when it has a JID on the gateway.
        let address = match address::parse_localpart(&address::escape_localpart(raw)) {
            Ok(Address::Email { address }) => address,
            Ok(_) => return Err(field_error("email_address", format!("{raw:?} is not an email address such as alice@example.org"))),
            Err(e) => return Err(field_error("email_address", e.to_string())),
        };
        let kept = existing
            .and_then(|r| r.email.as_ref())
            .filter(|e| e.address == address)
            .map(|e| e.password.clone());
        let password = get("email_password")
            .map(Secret::new)
            .or(kept)
            .ok_or_else(|| field_error("email_password", "required with an email address"))?;
        let server = |var: &'static str| -> Result<Option<String>, FieldError> {
            let Some(value) = get(var) else { return Ok(None) };
            config::check_host_port(value).map_err(|e| field_error(var, e))?;
            let (host, port) = value.rsplit_once(':').and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?))).unwrap_or_default();
            let allowed = &config.email.user_server_ports;
            if !allowed.contains(&port) && !config.email.is_preset_server(host, port) {
                let ports: Vec<String> = allowed.iter().map(u16::to_string).collect();
                let reason = format!("port {port} is not a mail port this gateway connects to (allowed: {})", ports.join(", "));
                return Err(field_error(var, reason));
            }
            Ok(Some(value.to_owned()))
        };
        let imap_server = server("imap_server")?;
        let smtp_server = server("smtp_server")?;
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        if !config.email.providers.contains_key(domain) {
            if imap_server.is_none() {
                return Err(field_error("imap_server", format!("required: there is no preset for {domain}")));
            }
            if smtp_server.is_none() {
                return Err(field_error("smtp_server", format!("required: there is no preset for {domain}")));
            }
        }
        let mark_seen = boolean(get("email_mark_seen"), "email_mark_seen", false)?;
        let save_sent = boolean(get("email_save_sent"), "email_save_sent", true)?;
        let display_name = get("email_display_name").map(display_name).transpose()?;
        let mark_displayed = boolean(get("email_mark_displayed"), "email_mark_displayed", false)?;
        let folders = get("email_folders").map(folders).transpose()?.unwrap_or_default();
        let import_contacts = get("email_import_contacts").map(import_count).transpose()?.unwrap_or(0);
        record.email = Some(EmailAccount {
            address,
            password,
            login: get("email_login").map(str::to_owned),
            imap_server,
            smtp_server,
            mark_seen,
            save_sent,
            display_name,
            mark_displayed,
            import_contacts,
            folders,
        });
    } else if let Some(var) = [
        "email_password",
        "email_login",
        "imap_server",
        "smtp_server",
        "email_mark_seen",
        "email_display_name",
        "email_mark_displayed",
        "email_folders",
        "email_import_contacts",
    ]
        .into_iter()
        .find(|v| get(v).is_some())
    {
        return Err(field_error("email_address", format!("{var} needs an email address")));
    }

    if record.irc.is_none() && record.email.is_none() {
        return Err(field_error("irc_nick", "give an IRC nick or an email account (or <remove/> to unregister)"));
    }
    Ok(record)
}

/// Whether `var` carries an IRC password (or the network of one).
fn is_irc_password(var: &str) -> bool {
    var.starts_with(NETWORK_PASSWORD) || var == SINGLE_IRC_PASSWORD || var == "irc_network" || var == "irc_network_password" || var == "irc_forget_password"
}

/// The IRC passwords a submission gives, by network host in lower case.
fn irc_passwords<'v>(get: &impl Fn(&str) -> Option<&'v str>, config: &Config) -> Result<BTreeMap<String, Secret>, FieldError> {
    let mut passwords = BTreeMap::new();
    for host in config.irc.networks.keys() {
        let host = host.to_ascii_lowercase();
        if let Some(password) = get(&format!("{NETWORK_PASSWORD}{host}")) {
            passwords.insert(host, Secret::new(password));
        }
    }
    match (get("irc_network"), get("irc_network_password")) {
        (Some(host), Some(password)) => {
            let host = address::normalize_server(host).map_err(|e| field_error("irc_network", format!("{host:?}: {e}")))?;
            passwords.insert(host, Secret::new(password));
        }
        (Some(_), None) => return Err(field_error("irc_network_password", "required with irc_network")),
        (None, Some(_)) => return Err(field_error("irc_network", "required with irc_network_password: the network the password is for")),
        (None, None) => {}
    }
    if let Some(password) = get(SINGLE_IRC_PASSWORD) {
        let mut hosts = config.irc.networks.keys();
        let (Some(host), None) = (hosts.next(), hosts.next()) else {
            let reason = "this gateway does not have exactly one IRC network, so a password must say which network it is for: \
                          use the form's field of that network, or irc_network with irc_network_password";
            return Err(field_error(SINGLE_IRC_PASSWORD, reason));
        };
        passwords.insert(host.to_ascii_lowercase(), Secret::new(password));
    }
    Ok(passwords)
}

/// New registrations per XMPP domain over the last hour (`[limits]
/// registrations_per_domain_per_hour`): one server cannot have its users register
/// thousands of accounts at once. Kept in memory since the gateway started.
#[derive(Debug, Default)]
pub struct NewRegistrations {
    /// Registrations a domain may make an hour; 0: no limit.
    per_hour: usize,
    /// When each domain's registrations of the last hour were made, oldest first.
    recent: HashMap<String, VecDeque<Instant>>,
}

/// The window the limit counts over.
const HOUR: Duration = Duration::from_secs(3600);

impl NewRegistrations {
    /// At most `per_hour` registrations per domain an hour (0: any number).
    #[must_use]
    pub fn new(per_hour: usize) -> Self {
        NewRegistrations { per_hour, recent: HashMap::new() }
    }

    /// Counts a new registration from `domain` at `now`; false (not counted) when the
    /// domain already made its share this hour.
    pub fn admit(&mut self, domain: &str, now: Instant) -> bool {
        if self.per_hour == 0 {
            return true;
        }
        // What is older than an hour goes, for every domain now and then: the map holds
        // only domains active within the hour.
        if self.recent.len() > 1024 {
            self.recent.retain(|_, times| times.back().is_some_and(|&t| now.duration_since(t) < HOUR));
        }
        let times = self.recent.entry(domain.to_ascii_lowercase()).or_default();
        while times.front().is_some_and(|&t| now.duration_since(t) >= HOUR) {
            times.pop_front();
        }
        if times.len() >= self.per_hour {
            return false;
        }
        times.push_back(now);
        true
    }

    /// The limit, for the refusal's text.
    #[must_use]
    pub fn per_hour(&self) -> usize {
        self.per_hour
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration with `irc` as its `[irc.networks]` part.
    fn config_with(irc: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            format!(
                "[component]\njid = \"gw.localhost\"\nsecret = \"s\"\n[storage]\npath = \"/tmp/x\"\n\
                 [email.providers.\"example.test\"]\nimap = \"127.0.0.1:1143\"\nsmtp = \"127.0.0.1:2525\"\n{irc}"
            ),
        )
        .unwrap();
        Config::load_with_env(&path, std::iter::empty()).unwrap()
    }

    /// One IRC network, `irc.one`.
    fn config() -> Config {
        config_with("[irc.networks.\"irc.one\"]\n")
    }

    fn two_networks() -> Config {
        config_with("[irc.networks.\"irc.one\"]\n[irc.networks.\"Irc.Two\"]\n")
    }

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    fn submit(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn password<'r>(record: &'r UserRecord, network: &str) -> Option<&'r str> {
        record.irc.as_ref()?.password_for(network).map(Secret::expose)
    }

    #[test]
    fn blank_form_has_a_password_field_per_network_and_legacy_fields() {
        let c = two_networks();
        let q = query_for(None, &c);
        assert!(!q.has_child("registered", NS_REGISTER));
        assert!(q.has_child("username", NS_REGISTER) && q.has_child("password", NS_REGISTER));
        let form = DataForm::try_from(q.get_child("x", NS_DATA).unwrap().clone()).unwrap();
        assert_eq!(form.form_type(), Some(NS_REGISTER));
        let vars: Vec<_> = form.fields.iter().filter_map(|f| f.var.clone()).collect();
        for var in ["irc_nick", "irc_password/irc.one", "irc_password/irc.two", "irc_network", "irc_network_password", "email_address", "email_mark_seen", "email_save_sent", "email_display_name"] {
            assert!(vars.iter().any(|v| v == var), "{var} in {vars:?}");
        }
        assert!(!vars.iter().any(|v| v == "irc_password"), "no password for every network at once");
    }

    #[test]
    fn registered_form_shows_values_but_never_passwords() {
        let record = UserRecord {
            irc: Some(IrcAccount { passwords: [("irc.one".to_owned(), Secret::new("irc-pw"))].into(), ..IrcAccount::new("alice") }),
            email: Some(EmailAccount {
                address: "alice@example.test".into(),
                password: Secret::new("mail-pw"),
                login: None,
                imap_server: None,
                smtp_server: None,
                mark_seen: false,
                save_sent: true,
                display_name: Some("Alice Liddell".into()),
                mark_displayed: false,
                import_contacts: 0,
                folders: vec!["Lists".into()],
            }), ..UserRecord::default() 
        };
        let q = query_for(Some(&record), &config());
        assert!(q.has_child("registered", NS_REGISTER));
        let xml = String::from_utf8(crate::xml_stream::to_bytes(&q)).unwrap();
        assert!(xml.contains("alice@example.test") && xml.contains(">alice<") && xml.contains(">Alice Liddell<"), "{xml}");
        assert!(!xml.contains("irc-pw") && !xml.contains("mail-pw"), "{xml}");
    }

    #[test]
    fn parses_form_legacy_and_remove() {
        let c = config();
        let form = parse(
            "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>jabber:iq:register</value></field>\
             <field var='irc_nick'><value> alice </value></field>\
             <field var='irc_password/irc.one'><value>pw</value></field>\
             <field var='email_address'><value>a@example.test</value></field></x></query>",
        );
        assert_eq!(
            parse_request(&form, &c).unwrap(),
            Request::Submit(submit(&[("irc_nick", "alice"), ("irc_password/irc.one", "pw"), ("email_address", "a@example.test")]))
        );
        let legacy = parse("<query xmlns='jabber:iq:register'><username>bob</username><password>pw</password></query>");
        assert_eq!(parse_request(&legacy, &c).unwrap(), Request::Submit(submit(&[("irc_nick", "bob"), ("irc_password", "pw")])));
        let remove = parse("<query xmlns='jabber:iq:register'><remove/></query>");
        assert_eq!(parse_request(&remove, &c).unwrap(), Request::Remove);
    }

    #[test]
    fn refuses_unknown_fields_and_wrong_form_types() {
        let c = config();
        for var in ["favourite_colour", "irc_password/not.configured"] {
            let unknown = parse(&format!(
                "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='{var}'><value>blue</value></field></x></query>"
            ));
            assert!(parse_request(&unknown, &c).unwrap_err().reason.contains(var), "{var}");
        }
        let wrong = parse(
            "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>urn:other</value></field></x></query>",
        );
        assert_eq!(parse_request(&wrong, &c).unwrap_err().field, "FORM_TYPE");
    }

    #[test]
    fn each_irc_password_is_kept_for_its_network_only() {
        let c = two_networks();
        let r = apply(
            None,
            &submit(&[("irc_nick", "alice"), ("irc_password/irc.one", "one-pw"), ("irc_network", "Irc.Elsewhere.Example"), ("irc_network_password", "else-pw")]),
            &c,
        )
        .unwrap();
        assert_eq!(password(&r, "irc.one"), Some("one-pw"));
        assert_eq!(password(&r, "IRC.ONE"), Some("one-pw"), "host names compare without case");
        assert_eq!(password(&r, "irc.two"), None, "nothing given for irc.two: nothing sent there");
        assert_eq!(password(&r, "irc.elsewhere.example"), Some("else-pw"));
        assert_eq!(password(&r, "evil.example"), None);
        // A later submission adds to what is kept, network by network.
        let later = apply(Some(&r), &submit(&[("irc_nick", "alice"), ("irc_password/irc.two", "two-pw")]), &c).unwrap();
        assert_eq!((password(&later, "irc.one"), password(&later, "irc.two")), (Some("one-pw"), Some("two-pw")));
    }

    #[test]
    fn a_stored_irc_password_can_be_forgotten_network_by_network() {
        let c = two_networks();
        let given = submit(&[("irc_nick", "alice"), ("irc_password/irc.one", "one-pw"), ("irc_network", "irc.else.example"), ("irc_network_password", "e")]);
        let r = apply(None, &given, &c).unwrap();
        let forgot = apply(Some(&r), &submit(&[("irc_nick", "alice"), ("irc_forget_password", "IRC.Else.Example")]), &c).unwrap();
        assert_eq!((password(&forgot, "irc.one"), password(&forgot, "irc.else.example")), (Some("one-pw"), None));
        let bad = apply(Some(&r), &submit(&[("irc_nick", "alice"), ("irc_forget_password", "bad host:1")]), &c).unwrap_err();
        assert_eq!(bad.field, "irc_forget_password");
    }

    #[test]
    fn a_single_password_is_taken_only_with_a_single_network() {
        let legacy = submit(&[("irc_nick", "bob"), ("irc_password", "pw")]);
        let one = apply(None, &legacy, &config()).unwrap();
        assert_eq!(password(&one, "irc.one"), Some("pw"));
        let err = apply(None, &legacy, &two_networks()).unwrap_err();
        assert_eq!(err.field, "irc_password");
        assert!(err.reason.contains("irc_network"), "{err}");
        assert_eq!(apply(None, &legacy, &config_with("")).unwrap_err().field, "irc_password");
    }

    #[test]
    fn applies_and_validates_values() {
        let c = config();
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("irc_nick", "bad nick")], "irc_nick"),
            (&[("irc_nick", "#chan")], "irc_nick"),
            (&[("irc_password", "pw")], "irc_nick"),
            (&[("irc_password/irc.one", "pw")], "irc_nick"),
            (&[("irc_nick", "a"), ("irc_network", "irc.x")], "irc_network_password"),
            (&[("irc_nick", "a"), ("irc_network_password", "pw")], "irc_network"),
            (&[("irc_nick", "a"), ("irc_network", "evil host:6667"), ("irc_network_password", "pw")], "irc_network"),
            (&[("email_address", "not-an-address"), ("email_password", "x")], "email_address"),
            (&[("email_address", "a@example.test")], "email_password"),
            (&[("email_address", "a@elsewhere.org"), ("email_password", "x")], "imap_server"),
            (&[("email_address", "a@elsewhere.org"), ("email_password", "x"), ("imap_server", "imap.elsewhere.org")], "imap_server"),
            (&[("email_login", "x")], "email_address"),
            (&[("email_address", "a@elsewhere.org"), ("email_password", "x"), ("imap_server", "imap.elsewhere.org:22"), ("smtp_server", "smtp.elsewhere.org:465")], "imap_server"),
            (&[("email_address", "a@elsewhere.org"), ("email_password", "x"), ("imap_server", "imap.elsewhere.org:993"), ("smtp_server", "127.0.0.1:6379")], "smtp_server"),
            (&[], "irc_nick"),
            (&[("email_address", "a@example.test"), ("email_password", "x"), ("email_display_name", "Eve\r\nBcc: all@x")], "email_display_name"),
            (&[("email_address", "a@example.test"), ("email_password", "x"), ("email_display_name", &"x".repeat(101))], "email_display_name"),
            (&[("email_address", "a@example.test"), ("email_password", "x"), ("email_save_sent", "maybe")], "email_save_sent"),
            (&[("irc_nick", "alice"), ("email_display_name", "Alice")], "email_address"),
            (&[("email_address", "a@example.test"), ("email_password", "x"), ("email_folders", "Lists, \"quoted\"")], "email_folders"),
            (&[("email_address", "a@example.test"), ("email_password", "x"), ("email_folders", "a, b, c, d, e")], "email_folders"),
            (&[("email_address", "a@example.test"), ("email_password", "x"), ("email_import_contacts", "501")], "email_import_contacts"),
            (&[("email_address", "a@example.test"), ("email_password", "x"), ("email_import_contacts", "-1")], "email_import_contacts"),
            (&[("irc_nick", "alice"), ("email_folders", "Lists")], "email_address"),
        ];
        for (values, field) in cases {
            let err = apply(None, &submit(values), &c).unwrap_err();
            assert_eq!(err.field, *field, "{values:?}: {err}");
        }
        let ok = apply(
            None,
            &submit(&[
                ("email_address", "A@Elsewhere.ORG"),
                ("email_password", "x"),
                ("imap_server", "imap.elsewhere.org:993"),
                ("smtp_server", "smtp.elsewhere.org:465"),
            ]),
            &c,
        )
        .unwrap();
        let email = ok.email.unwrap();
        assert_eq!(email.address, "A@elsewhere.org");
        assert!(email.save_sent && email.display_name.is_none(), "a copy in Sent unless asked otherwise");
        assert!(!email.mark_displayed && email.import_contacts == 0 && email.folders.is_empty(), "read state, imports and folders off unless asked");
        let more = apply(
            None,
            &submit(&[
                ("email_address", "a@example.test"),
                ("email_password", "x"),
                ("email_mark_displayed", "1"),
                ("email_folders", " Lists/rust , INBOX, Archive,Lists/rust,"),
                ("email_import_contacts", "50"),
            ]),
            &c,
        )
        .unwrap()
        .email
        .unwrap();
        assert!(more.mark_displayed);
        assert_eq!(more.folders, ["Lists/rust", "Archive"], "INBOX and repeats left out");
        assert_eq!(more.import_contacts, 50);
        let named = submit(&[("email_address", "a@example.test"), ("email_password", "x"), ("email_save_sent", "0"), ("email_display_name", " Alice Liddell ")]);
        let email = apply(None, &named, &c).unwrap().email.unwrap();
        assert!(!email.save_sent);
        assert_eq!(email.display_name.as_deref(), Some("Alice Liddell"));
        // The blank form's checked box, submitted by an IRC-only user, needs no address.
        assert!(apply(None, &submit(&[("irc_nick", "alice"), ("email_save_sent", "1")]), &c).is_ok());
        // A preset's own server may use its port, also when a user names it.
        let preset = submit(&[("email_address", "a@elsewhere.org"), ("email_password", "x"), ("imap_server", "127.0.0.1:1143"), ("smtp_server", "127.0.0.1:2525")]);
        assert!(apply(None, &preset, &c).is_ok());
    }

    #[test]
    fn empty_password_keeps_the_stored_one_for_the_same_account() {
        let c = config();
        let first = apply(
            None,
            &submit(&[("irc_nick", "alice"), ("irc_password/irc.one", "pw"), ("email_address", "a@example.test"), ("email_password", "m")]),
            &c,
        )
        .unwrap();
        let update = apply(Some(&first), &submit(&[("irc_nick", "alice"), ("email_address", "a@example.test")]), &c).unwrap();
        assert_eq!(password(&update, "irc.one"), Some("pw"));
        assert_eq!(update.email.unwrap().password.expose(), "m");
        let renamed = apply(Some(&first), &submit(&[("irc_nick", "alice2")]), &c).unwrap();
        assert_eq!(password(&renamed, "irc.one"), None, "a new nick does not inherit a password");
        assert!(renamed.email.is_none(), "an empty email part removes the email account");
    }

    proptest::proptest! {
        /// Any fields with any values (the fuzz target `registration_form` goes further):
        /// parsed and applied without panic, and a refusal names a field.
        #[test]
        fn prop_any_submission_is_taken_or_refused_naming_a_field(
            fields in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        proptest::strategy::Just("irc_nick".to_owned()),
                        proptest::strategy::Just("irc_password/irc.one".to_owned()),
                        proptest::strategy::Just("irc_password".to_owned()),
                        proptest::strategy::Just("irc_network".to_owned()),
                        proptest::strategy::Just("irc_network_password".to_owned()),
                        proptest::strategy::Just("email_address".to_owned()),
                        proptest::strategy::Just("imap_server".to_owned()),
                        proptest::strategy::Just("email_mark_seen".to_owned()),
                        "[a-z_/.]{0,12}",
                    ],
                    "\\PC{0,30}",
                ),
                0..8,
            )
        ) {
            let c = config();
            let mut xml = String::from("<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>");
            for (var, value) in &fields {
                let escape = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;").replace('\'', "&apos;");
                xml.push_str(&format!("<field var='{}'><value>{}</value></field>", escape(var), escape(value)));
            }
            xml.push_str("</x></query>");
            let Ok(query) = xml.parse::<Element>() else { return Ok(()) };
            match parse_request(&query, &c) {
                Ok(Request::Submit(values)) => {
                    if let Err(error) = apply(None, &values, &c) {
                        proptest::prop_assert!(!error.field.is_empty());
                    }
                }
                Ok(Request::Remove) => {}
                Err(error) => proptest::prop_assert!(!error.field.is_empty()),
            }
        }
    }

    #[test]
    fn a_domain_registers_its_share_an_hour_and_others_are_not_counted_with_it() {
        let start = Instant::now();
        let mut limit = NewRegistrations::new(2);
        assert!(limit.admit("a.example", start) && limit.admit("A.example", start));
        assert!(!limit.admit("a.example", start + Duration::from_secs(60)), "a third within the hour");
        assert!(limit.admit("b.example", start), "another domain has its own share");
        assert!(limit.admit("a.example", start + HOUR), "an hour later");
        let mut unlimited = NewRegistrations::new(0);
        assert!((0..1000).all(|_| unlimited.admit("a.example", start)));
    }
}
