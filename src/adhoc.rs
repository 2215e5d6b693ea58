//! Ad-hoc commands (XEP-0050): the user's settings as a command (for clients that offer
//! commands rather than registration), and the administrators' commands (`admin`).
//!
//! Pure: the router supplies the data and does the storing.

use minidom::Element;
use xmpp_parsers::disco::Item;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::disco::{Refusal, NS_COMMANDS};

/// The settings command: the registration form, filled in.
pub const NODE_CONFIGURE: &str = "configure";
/// The user's command that lists the network contacts the gateway gave their roster and
/// puts them there again (`roster.rs`).
pub const NODE_CONTACTS: &str = "contacts";
/// Data forms.
const NS_DATA: &str = "jabber:x:data";

/// What a `<command/>` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Start a command (`action='execute'` or none, without a form).
    Execute {
        /// The command node.
        node: String,
    },
    /// Finish a command with a submitted form.
    Complete {
        /// The command node.
        node: String,
        /// The session id we gave.
        session: String,
        /// The submitted `<x type='submit'/>`.
        form: Element,
    },
    /// The user gave up.
    Cancel {
        /// The command node.
        node: String,
        /// The session id we gave.
        session: String,
    },
}

/// Reads a `<command/>` element.
pub fn parse(command: &Element) -> Result<Request, Refusal> {
    let node = command
        .attr("node")
        .ok_or_else(|| (DefinedCondition::BadRequest, "the command has no node".to_owned()))?
        .to_owned();
    let session = command.attr("sessionid").unwrap_or_default().to_owned();
    match (command.attr("action").unwrap_or("execute"), command.get_child("x", NS_DATA)) {
        ("cancel", _) => Ok(Request::Cancel { node, session }),
        ("execute" | "complete" | "next", Some(form)) if !session.is_empty() => {
            Ok(Request::Complete { node, session, form: form.clone() })
        }
        ("execute", None) => Ok(Request::Execute { node }),
        (action, _) => Err((DefinedCondition::BadRequest, format!("unexpected action {action:?} for {node}"))),
    }
}

/// The commands `user` may run, for disco#items on the commands node.
pub fn items(gateway: &Jid, is_admin: bool) -> Vec<Item> {
    let mut items = vec![
        Item { jid: gateway.clone(), node: Some(NODE_CONFIGURE.to_owned()), name: Some("Configure IRC and email accounts".to_owned()) },
        Item { jid: gateway.clone(), node: Some(NODE_CONTACTS.to_owned()), name: Some("List my contacts and put them in my roster again".to_owned()) },
    ];
    if is_admin {
        items.extend(crate::admin::COMMANDS.iter().map(|(node, name)| Item {
            jid: gateway.clone(),
            node: Some((*node).to_owned()),
            name: Some((*name).to_owned()),
        }));
    }
    items
}

/// A `<command/>` that asks the user to fill in `form`.
/// The commands of a room: its `configure`.
pub fn room_items(room: &Jid) -> Vec<Item> {
    vec![Item { jid: room.clone(), node: Some(NODE_CONFIGURE.to_owned()), name: Some("Configure this channel".to_owned()) }]
}

/// The field of a room's `configure` form that keeps the channel always on.
const PERSISTENT: &str = "persistent";

/// A room's `configure` form, showing whether the channel is always on.
pub fn room_form(persistent: bool) -> Element {
    use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType};
    let mut field = Field::new(PERSISTENT, FieldType::Boolean);
    field.label = Some("Always on: stay in the channel and keep its history while none of your clients is in it".to_owned());
    field.values = vec![if persistent { "1" } else { "0" }.to_owned()];
    let mut form = DataForm::new(DataFormType::Form, "", vec![field]);
    form.title = Some("Channel settings".to_owned());
    form.into()
}

/// Whether a submitted room form keeps the channel always on.
pub fn room_persistent(form: &Element) -> Result<bool, Refusal> {
    let value = form
        .children()
        .find(|f| f.name() == "field" && f.attr("var") == Some(PERSISTENT))
        .and_then(|f| f.children().find(|v| v.name() == "value"))
        .map(Element::text);
    match value.as_deref().map(str::trim) {
        Some("1" | "true") => Ok(true),
        Some("0" | "false") => Ok(false),
        Some(other) => Err((DefinedCondition::BadRequest, format!("persistent: {other:?} is not a boolean"))),
        None => Err((DefinedCondition::BadRequest, "the form has no persistent field".to_owned())),
    }
}

pub fn executing(node: &str, session: &str, form: Element) -> Element {
    Element::builder("command", NS_COMMANDS)
        .attr(rxml::xml_ncname!("node").into(), node)
        .attr(rxml::xml_ncname!("sessionid").into(), session)
        .attr(rxml::xml_ncname!("status").into(), "executing")
        .append(
            Element::builder("actions", NS_COMMANDS)
                .attr(rxml::xml_ncname!("execute").into(), "complete")
                .append(Element::bare("complete", NS_COMMANDS)),
        )
        .append(form)
        .build()
}

/// A finished `<command/>` with a note for the user and an optional result form.
pub fn completed(node: &str, session: &str, note: &str, form: Option<Element>) -> Element {
    let mut command = Element::builder("command", NS_COMMANDS)
        .attr(rxml::xml_ncname!("node").into(), node)
        .attr(rxml::xml_ncname!("sessionid").into(), session)
        .attr(rxml::xml_ncname!("status").into(), "completed")
        .append(
            Element::builder("note", NS_COMMANDS)
                .attr(rxml::xml_ncname!("type").into(), "info")
                .append(note),
        );
    if let Some(form) = form {
        command = command.append(form);
    }
    command.build()
}

/// A cancelled `<command/>`.
pub fn canceled(node: &str, session: &str) -> Element {
    Element::builder("command", NS_COMMANDS)
        .attr(rxml::xml_ncname!("node").into(), node)
        .attr(rxml::xml_ncname!("sessionid").into(), session)
        .attr(rxml::xml_ncname!("status").into(), "canceled")
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_xml(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn reads_execute_complete_and_cancel() {
        let c = parse_xml("<command xmlns='http://jabber.org/protocol/commands' node='configure' action='execute'/>");
        assert_eq!(parse(&c).unwrap(), Request::Execute { node: "configure".into() });
        let c = parse_xml("<command xmlns='http://jabber.org/protocol/commands' node='configure'/>");
        assert_eq!(parse(&c).unwrap(), Request::Execute { node: "configure".into() });
        let c = parse_xml(
            "<command xmlns='http://jabber.org/protocol/commands' node='configure' sessionid='s1'>\
             <x xmlns='jabber:x:data' type='submit'/></command>",
        );
        assert!(matches!(parse(&c).unwrap(), Request::Complete { session, .. } if session == "s1"));
        let c = parse_xml("<command xmlns='http://jabber.org/protocol/commands' node='configure' sessionid='s1' action='cancel'/>");
        assert_eq!(parse(&c).unwrap(), Request::Cancel { node: "configure".into(), session: "s1".into() });
        let c = parse_xml("<command xmlns='http://jabber.org/protocol/commands'/>");
        assert_eq!(parse(&c).unwrap_err().0, DefinedCondition::BadRequest);
        let c = parse_xml("<command xmlns='http://jabber.org/protocol/commands' node='configure' action='prev'/>");
        assert_eq!(parse(&c).unwrap_err().0, DefinedCondition::BadRequest);
    }

    #[test]
    fn admins_see_their_commands() {
        let gw: Jid = "gw.localhost".parse().unwrap();
        let users: Vec<_> = items(&gw, false).into_iter().filter_map(|i| i.node).collect();
        assert_eq!(users, [NODE_CONFIGURE, NODE_CONTACTS]);
        let nodes: Vec<_> = items(&gw, true).into_iter().filter_map(|i| i.node).collect();
        assert_eq!(nodes.len(), 2 + crate::admin::COMMANDS.len());
        assert!(nodes.iter().any(|n| n == "status") && nodes.iter().any(|n| n.ends_with("#announce")));
    }

    #[test]
    fn the_room_form_reads_back_what_it_shows() {
        let form = room_form(true);
        let submitted = |value: &str| parse_xml(&format!("<x xmlns='jabber:x:data' type='submit'><field var='persistent'><value>{value}</value></field></x>"));
        assert_eq!(room_persistent(&form), Ok(true));
        assert_eq!(room_persistent(&room_form(false)), Ok(false));
        assert_eq!(room_persistent(&submitted("true")), Ok(true));
        assert_eq!(room_persistent(&submitted("0")), Ok(false));
        assert_eq!(room_persistent(&submitted("maybe")).unwrap_err().0, DefinedCondition::BadRequest);
        assert_eq!(room_persistent(&parse_xml("<x xmlns='jabber:x:data' type='submit'/>")).unwrap_err().0, DefinedCondition::BadRequest);
    }

    #[test]
    fn responses_carry_node_session_and_status() {
        let form: Element = "<x xmlns='jabber:x:data' type='form'/>".parse().unwrap();
        let e = executing("configure", "s1", form.clone());
        assert_eq!((e.attr("status"), e.attr("sessionid"), e.attr("node")), (Some("executing"), Some("s1"), Some("configure")));
        assert!(e.has_child("x", NS_DATA) && e.has_child("actions", NS_COMMANDS));
        let done = completed("status", "s2", "ok", Some(form));
        assert_eq!(done.attr("status"), Some("completed"));
        assert!(done.has_child("x", NS_DATA));
        assert_eq!(canceled("configure", "s1").attr("status"), Some("canceled"));
    }
}
