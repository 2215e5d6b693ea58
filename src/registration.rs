//! In-band registration (XEP-0077) with an XEP-0004 form: the IRC nick and password, the
//! email address, password, login and servers, and whether delivered mail is marked read.
//!
//! The form and the legacy fields (`username` = IRC nick, `password` = IRC password) are
//! offered together. Building the form, reading a submission and merging it into the
//! stored record are pure functions; the router does the storing.

use std::collections::BTreeMap;

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

/// The form's fields: var, type, label. Order is the order users see.
const FIELDS: &[(&str, FieldType, &str)] = &[
    ("irc_nick", FieldType::TextSingle, "IRC nick (leave empty to use each room's nick)"),
    ("irc_password", FieldType::TextPrivate, "IRC password (SASL PLAIN, else NickServ)"),
    ("email_address", FieldType::TextSingle, "Email address"),
    ("email_password", FieldType::TextPrivate, "Email password"),
    ("email_login", FieldType::TextSingle, "Email login, if not the address"),
    ("imap_server", FieldType::TextSingle, "IMAP server host:port, if not preset"),
    ("smtp_server", FieldType::TextSingle, "SMTP server host:port, if not preset"),
    ("email_mark_seen", FieldType::Boolean, "Mark mail read in the mailbox once delivered here"),
];

/// Instructions shown above the form.
const INSTRUCTIONS: &str = "Give your IRC nick and password and/or your email account. \
Leave a network's fields empty to not use it. Passwords are stored encrypted; leave a \
password empty to keep the stored one.";

/// A form field whose value was refused; becomes `not-acceptable` with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field}: {reason}")]
pub struct FieldError {
    /// The form var (`irc_nick`, `email_address`, ...).
    pub field: &'static str,
    /// What is wrong and what is expected.
    pub reason: String,
}

fn field_error(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError { field, reason: reason.into() }
}

/// What a `set` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `<remove/>`: forget the user.
    Remove,
    /// New or updated values, by form var; absent or empty vars are empty strings.
    Submit(BTreeMap<&'static str, String>),
}

/// The `<query/>` answering a `get`: the blank form, or `<registered/>` with the stored
/// values (never a password).
pub fn query_for(record: Option<&UserRecord>) -> Element {
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
            _ => None,
        }
    };
    let fields = FIELDS
        .iter()
        .map(|(var, type_, label)| {
            let mut field = Field::new(var, type_.clone());
            field.label = Some((*label).to_owned());
            field.values.extend(value(var));
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
pub fn parse_request(query: &Element) -> Result<Request, FieldError> {
    if query.has_child("remove", NS_REGISTER) {
        return Ok(Request::Remove);
    }
    let mut values: BTreeMap<&'static str, String> = BTreeMap::new();
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
            let Some((known, _, _)) = FIELDS.iter().find(|(v, _, _)| *v == var) else {
                return Err(field_error("FORM_TYPE", format!("unknown field {var:?}")));
            };
            if field.values.len() > 1 {
                return Err(field_error(known, "takes one value"));
            }
            values.insert(known, field.values.first().cloned().unwrap_or_default());
        }
    } else {
        let legacy = |name: &str| query.get_child(name, NS_REGISTER).map(Element::text);
        values.insert("irc_nick", legacy("username").or_else(|| legacy("nick")).unwrap_or_default());
        values.insert("irc_password", legacy("password").unwrap_or_default());
    }
    for value in values.values_mut() {
        *value = value.trim().to_owned();
    }
    Ok(Request::Submit(values))
}

/// Merges a submission into the stored record (if any), validating every value. Empty
/// passwords keep the stored password of the same account.
pub fn apply(
    existing: Option<&UserRecord>,
    values: &BTreeMap<&'static str, String>,
    config: &Config,
) -> Result<UserRecord, FieldError> {
    let get = |var: &str| values.get(var).map(String::as_str).filter(|v| !v.is_empty());
    let mut record = UserRecord::default();

    if let Some(nick) = get("irc_nick") {
        address::parse_occupant_nick(nick).map_err(|e| field_error("irc_nick", e.to_string()))?;
        let kept = existing
            .and_then(|r| r.irc.as_ref())
            .filter(|irc| irc.nick == nick)
            .and_then(|irc| irc.password.clone());
        record.irc = Some(IrcAccount {
            nick: nick.to_owned(),
            password: get("irc_password").map(Secret::new).or(kept),
        });
    } else if get("irc_password").is_some() {
        return Err(field_error("irc_nick", "an IRC password needs an IRC nick"));
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
            get(var)
                .map(|v| config::check_host_port(v).map(|()| v.to_owned()).map_err(|e| field_error(var, e)))
                .transpose()
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
        let mark_seen = match get("email_mark_seen") {
            None | Some("0" | "false") => false,
            Some("1" | "true") => true,
            Some(other) => return Err(field_error("email_mark_seen", format!("{other:?} is not a boolean (0, 1, false, true)"))),
        };
        record.email = Some(EmailAccount {
            address,
            password,
            login: get("email_login").map(str::to_owned),
            imap_server,
            smtp_server,
            mark_seen,
        });
    } else if let Some(var) = ["email_password", "email_login", "imap_server", "smtp_server", "email_mark_seen"]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            "[component]\njid = \"gw.localhost\"\nsecret = \"s\"\n[storage]\npath = \"/tmp/x\"\n\
             [email.providers.\"example.test\"]\nimap = \"127.0.0.1:1143\"\nsmtp = \"127.0.0.1:2525\"\n",
        )
        .unwrap();
        Config::load_with_env(&path, std::iter::empty()).unwrap()
    }

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    fn submit(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn blank_form_has_every_field_and_legacy_fields() {
        let q = query_for(None);
        assert!(!q.has_child("registered", NS_REGISTER));
        assert!(q.has_child("username", NS_REGISTER) && q.has_child("password", NS_REGISTER));
        let form = DataForm::try_from(q.get_child("x", NS_DATA).unwrap().clone()).unwrap();
        assert_eq!(form.form_type(), Some(NS_REGISTER));
        let vars: Vec<_> = form.fields.iter().filter_map(|f| f.var.clone()).collect();
        for (var, _, _) in FIELDS {
            assert!(vars.iter().any(|v| v == var), "{var}");
        }
    }

    #[test]
    fn registered_form_shows_values_but_never_passwords() {
        let record = UserRecord {
            irc: Some(IrcAccount { nick: "alice".into(), password: Some(Secret::new("irc-pw")) }),
            email: Some(EmailAccount {
                address: "alice@example.test".into(),
                password: Secret::new("mail-pw"),
                login: None,
                imap_server: None,
                smtp_server: None,
                mark_seen: false,
            }),
        };
        let q = query_for(Some(&record));
        assert!(q.has_child("registered", NS_REGISTER));
        let xml = String::from_utf8(crate::xml_stream::to_bytes(&q)).unwrap();
        assert!(xml.contains("alice@example.test") && xml.contains(">alice<"), "{xml}");
        assert!(!xml.contains("irc-pw") && !xml.contains("mail-pw"), "{xml}");
    }

    #[test]
    fn parses_form_legacy_and_remove() {
        let form = parse(
            "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>jabber:iq:register</value></field>\
             <field var='irc_nick'><value> alice </value></field>\
             <field var='email_address'><value>a@example.test</value></field></x></query>",
        );
        assert_eq!(
            parse_request(&form).unwrap(),
            Request::Submit(submit(&[("irc_nick", "alice"), ("email_address", "a@example.test")]))
        );
        let legacy = parse("<query xmlns='jabber:iq:register'><username>bob</username><password>pw</password></query>");
        assert_eq!(
            parse_request(&legacy).unwrap(),
            Request::Submit(submit(&[("irc_nick", "bob"), ("irc_password", "pw")]))
        );
        let remove = parse("<query xmlns='jabber:iq:register'><remove/></query>");
        assert_eq!(parse_request(&remove).unwrap(), Request::Remove);
    }

    #[test]
    fn refuses_unknown_fields_and_wrong_form_types() {
        let unknown = parse(
            "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>\
             <field var='favourite_colour'><value>blue</value></field></x></query>",
        );
        assert!(parse_request(&unknown).unwrap_err().reason.contains("favourite_colour"));
        let wrong = parse(
            "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>urn:other</value></field></x></query>",
        );
        assert_eq!(parse_request(&wrong).unwrap_err().field, "FORM_TYPE");
    }

    #[test]
    fn applies_and_validates_values() {
        let c = config();
        let r = apply(None, &submit(&[("irc_nick", "alice"), ("irc_password", "pw")]), &c).unwrap();
        assert_eq!(r.irc.as_ref().unwrap().password.as_ref().unwrap().expose(), "pw");
        assert!(r.email.is_none());

        let cases: &[(&[(&'static str, &str)], &str)] = &[
            (&[("irc_nick", "bad nick")], "irc_nick"),
            (&[("irc_nick", "#chan")], "irc_nick"),
            (&[("irc_password", "pw")], "irc_nick"),
            (&[("email_address", "not-an-address"), ("email_password", "x")], "email_address"),
            (&[("email_address", "a@example.test")], "email_password"),
            (&[("email_address", "a@elsewhere.org"), ("email_password", "x")], "imap_server"),
            (&[("email_address", "a@elsewhere.org"), ("email_password", "x"), ("imap_server", "imap.elsewhere.org")], "imap_server"),
            (&[("email_login", "x")], "email_address"),
            (&[], "irc_nick"),
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
        assert_eq!(ok.email.unwrap().address, "A@elsewhere.org");
    }

    #[test]
    fn empty_password_keeps_the_stored_one_for_the_same_account() {
        let c = config();
        let first = apply(
            None,
            &submit(&[("irc_nick", "alice"), ("irc_password", "pw"), ("email_address", "a@example.test"), ("email_password", "m")]),
            &c,
        )
        .unwrap();
        let update = apply(Some(&first), &submit(&[("irc_nick", "alice"), ("email_address", "a@example.test")]), &c).unwrap();
        assert_eq!(update.irc.unwrap().password.unwrap().expose(), "pw");
        assert_eq!(update.email.unwrap().password.expose(), "m");
        let renamed = apply(Some(&first), &submit(&[("irc_nick", "alice2")]), &c).unwrap();
        assert!(renamed.irc.unwrap().password.is_none(), "a new nick does not inherit a password");
        assert!(renamed.email.is_none(), "an empty email part removes the email account");
    }
}
