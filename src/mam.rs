//! XEP-0313 Message Archive Management on the wire: a client's query to a room (its IRC
//! channel's archive) or to the gateway (its private conversations), the archived
//! messages it gets back, the `<fin/>` that ends them (XEP-0059 paging), and the
//! XEP-0359 stanza-id every live message carries. Pure; the archive is `archive/`.

use minidom::Element;
use rxml::xml_ncname;
use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType};
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::archive::{Direction, Item, Page, MAX_PAGE};
use crate::disco::Refusal;

/// XEP-0313.
pub const NS_MAM: &str = "urn:xmpp:mam:2";
/// XEP-0359.
pub const NS_SID: &str = "urn:xmpp:sid:0";
const NS_RSM: &str = "http://jabber.org/protocol/rsm";
const NS_FORWARD: &str = "urn:xmpp:forward:0";
const NS_DELAY: &str = "urn:xmpp:delay";
/// Archived messages are forwarded as a client would see them.
const NS_CLIENT: &str = "jabber:client";
/// A page when the client names no `max`.
const DEFAULT_PAGE: usize = 100;

/// A client's query, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Echoed in every result, so the client matches them to its query.
    pub queryid: Option<String>,
    /// The form's `with`: one private conversation.
    pub with: Option<String>,
    /// The form's `start`, in microseconds since the epoch.
    pub start: Option<u64>,
    /// The form's `end`.
    pub end: Option<u64>,
    /// RSM `after` (or the form's `after-id`).
    pub after: Option<u64>,
    /// RSM `before`; `Some(None)` for an empty `<before/>`: the last page.
    pub before: Option<Option<u64>>,
    /// RSM `max`, capped.
    pub max: usize,
    /// `<flip-page/>`: the page newest first.
    pub flip: bool,
}

/// An archive id as clients see it.
pub fn id_text(id: u64) -> String {
    id.to_string()
}

/// An archive id a client sent back; `item-not-found` when it is none of ours.
fn parse_id(text: &str) -> Result<u64, Refusal> {
    text.trim().parse().map_err(|_| (DefinedCondition::ItemNotFound, format!("{text:?} is not an id of this archive")))
}

/// A XEP-0082 time in microseconds since the epoch.
fn parse_time(field: &str, text: &str) -> Result<u64, Refusal> {
    let time: xmpp_parsers::date::DateTime = text.trim().parse().map_err(|_| (DefinedCondition::BadRequest, format!("{field}: {text:?} is not a XEP-0082 date and time")))?;
    Ok(u64::try_from(time.0.timestamp_micros()).unwrap_or(0))
}

/// The XEP-0082 form of a time in microseconds since the epoch.
pub fn stamp(micros: u64) -> String {
    let time = chrono::DateTime::from_timestamp_micros(i64::try_from(micros).unwrap_or(i64::MAX)).unwrap_or_default();
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Reads the `<query xmlns='urn:xmpp:mam:2'/>` of an `<iq type='set'/>`.
pub fn parse(payload: &Element) -> Result<Request, Refusal> {
    let query = xmpp_parsers::mam::Query::try_from(payload.clone()).map_err(|e| (DefinedCondition::BadRequest, format!("malformed archive query: {e}")))?;
    let mut request = Request {
        queryid: query.queryid.map(|q| q.0),
        with: None,
        start: None,
        end: None,
        after: None,
        before: None,
        max: DEFAULT_PAGE,
        flip: query.flip_page,
    };
    for field in query.form.iter().flat_map(|form| &form.fields) {
        let var = field.var.as_deref().unwrap_or_default();
        let Some(value) = field.values.first() else { continue };
        match var {
            "FORM_TYPE" if value == NS_MAM => {}
            "FORM_TYPE" => return Err((DefinedCondition::BadRequest, format!("the form is {value}, not {NS_MAM}"))),
            "with" => request.with = Some(value.clone()),
            "start" => request.start = Some(parse_time(var, value)?),
            "end" => request.end = Some(parse_time(var, value)?),
            "after-id" => request.after = Some(parse_id(value)?),
            "before-id" => request.before = Some(Some(parse_id(value)?)),
            other => return Err((DefinedCondition::BadRequest, format!("the archive cannot filter by {other:?}"))),
        }
    }
    if let Some(set) = query.set {
        request.max = set.max.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE);
        if let Some(after) = set.after {
            request.after = Some(parse_id(&after)?);
        }
        if let Some(before) = set.before {
            request.before = Some(if before.trim().is_empty() { None } else { Some(parse_id(&before)?) });
        }
        if set.index.is_some() {
            return Err((DefinedCondition::FeatureNotImplemented, "paging by index is not supported: use after or before".into()));
        }
    }
    Ok(request)
}

/// The query form (an `<iq type='get'/>`'s answer): the fields the archive filters by.
pub fn form() -> Element {
    let fields = vec![Field::new("with", FieldType::JidSingle), Field::new("start", FieldType::TextSingle), Field::new("end", FieldType::TextSingle)];
    let form = DataForm::new(DataFormType::Form, NS_MAM, fields);
    Element::builder("query", NS_MAM).append(Element::from(form)).build()
}

/// Where an archive's messages were said, to rebuild them.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The JID queried: the room, or the gateway; the `from` of the results.
    pub archive: &'a str,
    /// The user's bare JID: the other end of private messages.
    pub user: &'a str,
    /// Whose full JID asked: the `to` of the results.
    pub to: &'a str,
}

/// One archived message in answer to `queryid`.
pub fn result(origin: Origin<'_>, queryid: Option<&str>, item: &Item) -> Element {
    let (from, to, kind) = match item.direction {
        Direction::Room if item.who.is_empty() => (origin.archive.to_owned(), None, "groupchat"),
        Direction::Room => (format!("{}/{}", origin.archive, item.who), None, "groupchat"),
        Direction::FromContact => (item.who.clone(), Some(origin.user), "chat"),
        Direction::ToContact => (origin.user.to_owned(), Some(item.who.as_str()), "chat"),
    };
    let mut message = Element::builder("message", NS_CLIENT).attr(xml_ncname!("from").into(), from).attr(xml_ncname!("type").into(), kind);
    if let Some(to) = to {
        message = message.attr(xml_ncname!("to").into(), to);
    }
    let message = message.append(Element::builder("body", NS_CLIENT).append(item.body.as_str()));
    let forwarded = Element::builder("forwarded", NS_FORWARD)
        .append(Element::builder("delay", NS_DELAY).attr(xml_ncname!("stamp").into(), stamp(item.id)))
        .append(message);
    let mut result = Element::builder("result", NS_MAM).attr(xml_ncname!("id").into(), id_text(item.id));
    if let Some(queryid) = queryid {
        result = result.attr(xml_ncname!("queryid").into(), queryid);
    }
    let ns = xmpp_parsers::ns::DEFAULT_NS;
    Element::builder("message", ns)
        .attr(xml_ncname!("from").into(), origin.archive)
        .attr(xml_ncname!("to").into(), origin.to)
        .append(result.append(forwarded))
        .build()
}

/// The results of `page` in the order they are sent (newest first when flipped).
pub fn in_order(page: &Page, flip: bool) -> Box<dyn Iterator<Item = &Item> + Send + '_> {
    if flip {
        Box::new(page.items.iter().rev())
    } else {
        Box::new(page.items.iter())
    }
}

/// The `<fin/>` after the results: the page's first and last ids (oldest and newest,
/// whichever order they were sent in) and whether it is the end.
pub fn fin(page: &Page) -> Element {
    let mut set = Element::builder("set", NS_RSM);
    if let (Some(first), Some(last)) = (page.items.first(), page.items.last()) {
        set = set.append(Element::builder("first", NS_RSM).append(id_text(first.id))).append(Element::builder("last", NS_RSM).append(id_text(last.id)));
    }
    let complete = if page.complete { "true" } else { "false" };
    Element::builder("fin", NS_MAM).attr(xml_ncname!("complete").into(), complete).append(set).build()
}

/// An archived line of `room` sent to `to` as room history on joining (XEP-0045
/// §7.2.15): from its speaker, with its time (XEP-0203, from the room) and its archive id.
pub fn history_message(room: &str, to: &str, item: &Item) -> Element {
    let from = if item.who.is_empty() { room.to_owned() } else { format!("{room}/{}", item.who) };
    let mut message = crate::muc::groupchat(&from, to, &item.body, None, Some(&id_text(item.id)));
    message.append_child(Element::builder("delay", NS_DELAY).attr(xml_ncname!("stamp").into(), stamp(item.id)).attr(xml_ncname!("from").into(), room).build());
    message
}

/// XEP-0359: the archive id (as [`id_text`] wrote it) of a live message, assigned `by`
/// the room (or the gateway).
pub fn stanza_id(id: &str, by: &str) -> Element {
    Element::builder("stanza-id", NS_SID).attr(xml_ncname!("id").into(), id).attr(xml_ncname!("by").into(), by).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(xml: &str) -> Result<Request, Refusal> {
        parse(&xml.parse::<Element>().unwrap())
    }

    #[test]
    fn reads_a_form_with_times_and_rsm_paging() {
        let request = query(
            "<query xmlns='urn:xmpp:mam:2' queryid='f27'>
               <x xmlns='jabber:x:data' type='submit'>
                 <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>
                 <field var='with'><value>bob%irc.x@gw</value></field>
                 <field var='start'><value>2010-06-07T00:00:00Z</value></field>
                 <field var='end'><value>2010-07-07T13:23:54.000001+02:00</value></field>
               </x>
               <set xmlns='http://jabber.org/protocol/rsm'><max>10</max><after>1275868800000005</after></set>
             </query>",
        )
        .unwrap();
        assert_eq!(request.queryid.as_deref(), Some("f27"));
        assert_eq!(request.with.as_deref(), Some("bob%irc.x@gw"));
        assert_eq!(request.start, Some(1_275_868_800_000_000));
        assert_eq!(request.end, Some(1_278_501_834_000_001));
        assert_eq!((request.after, request.before, request.max, request.flip), (Some(1_275_868_800_000_005), None, 10, false));
    }

    #[test]
    fn an_empty_before_asks_for_the_last_page_and_max_is_capped() {
        let request = query("<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><max>100000</max><before/></set><flip-page/></query>").unwrap();
        assert_eq!((request.before, request.max, request.flip), (Some(None), MAX_PAGE, true));
        let request = query("<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><before>42</before></set></query>").unwrap();
        assert_eq!((request.before, request.max), (Some(Some(42)), DEFAULT_PAGE));
    }

    #[test]
    fn bad_queries_get_the_condition_xep_0313_names() {
        let condition = |xml: &str| query(xml).unwrap_err().0;
        assert_eq!(condition("<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><after>not-ours</after></set></query>"), DefinedCondition::ItemNotFound);
        let field = |var: &str, value: &str| format!("<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'><field var='{var}'><value>{value}</value></field></x></query>");
        assert_eq!(condition(&field("start", "yesterday")), DefinedCondition::BadRequest);
        assert_eq!(condition(&field("fulltext", "hello")), DefinedCondition::BadRequest);
        assert_eq!(condition(&field("FORM_TYPE", "urn:xmpp:mam:1")), DefinedCondition::BadRequest);
        assert_eq!(condition("<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><index>3</index></set></query>"), DefinedCondition::FeatureNotImplemented);
    }

    /// The message a result forwards, as a client reads it (`jabber:client`), and its delay.
    fn forwarded(stanza: &Element) -> (Element, Element) {
        let forwarded = stanza.get_child("result", NS_MAM).unwrap().get_child("forwarded", NS_FORWARD).unwrap();
        (forwarded.get_child("message", NS_CLIENT).unwrap().clone(), forwarded.get_child("delay", NS_DELAY).unwrap().clone())
    }

    #[test]
    fn a_room_result_forwards_the_line_as_the_occupant_said_it() {
        let item = Item { id: 1_275_868_800_000_005, direction: Direction::Room, who: "bob".into(), body: "hi <there>".into() };
        let origin = Origin { archive: "#rust%irc.x@gw", user: "alice@x", to: "alice@x/phone" };
        let xml = String::from_utf8(crate::xml_stream::to_bytes(&result(origin, Some("q1"), &item))).unwrap();
        let stanza: Element = xml.parse().unwrap();
        assert_eq!((stanza.attr("from"), stanza.attr("to")), (Some("#rust%irc.x@gw"), Some("alice@x/phone")));
        let result = stanza.get_child("result", NS_MAM).unwrap();
        assert_eq!((result.attr("id"), result.attr("queryid")), (Some("1275868800000005"), Some("q1")));
        let (inner, delay) = forwarded(&stanza);
        let delay = xmpp_parsers::delay::Delay::try_from(delay).unwrap();
        assert_eq!(delay.stamp.0.timestamp_micros(), 1_275_868_800_000_005);
        assert_eq!((inner.attr("from"), inner.attr("type")), (Some("#rust%irc.x@gw/bob"), Some("groupchat")));
        assert_eq!(inner.get_child("body", NS_CLIENT).unwrap().text(), "hi <there>");
        let from_room = super::result(origin, None, &Item { who: String::new(), ..item });
        assert_eq!(forwarded(&from_room).0.attr("from"), Some("#rust%irc.x@gw"));
    }

    #[test]
    fn private_results_go_between_the_user_and_the_contact() {
        let origin = Origin { archive: "gw", user: "alice@x", to: "alice@x/phone" };
        let from_bob = result(origin, None, &Item { id: 1, direction: Direction::FromContact, who: "bob%irc.x@gw".into(), body: "hi".into() });
        let inner = |stanza: &Element| forwarded(stanza).0;
        assert_eq!((inner(&from_bob).attr("from"), inner(&from_bob).attr("to"), inner(&from_bob).attr("type")), (Some("bob%irc.x@gw"), Some("alice@x"), Some("chat")));
        let to_bob = result(origin, None, &Item { id: 2, direction: Direction::ToContact, who: "bob%irc.x@gw".into(), body: "yo".into() });
        assert_eq!((inner(&to_bob).attr("from"), inner(&to_bob).attr("to")), (Some("alice@x"), Some("bob%irc.x@gw")));
        assert_eq!(from_bob.get_child("result", NS_MAM).unwrap().attr("queryid"), None);
    }

    #[test]
    fn fin_carries_the_pages_ends_and_completeness() {
        let item = |id| Item { id, direction: Direction::Room, who: String::new(), body: String::new() };
        let page = Page { items: vec![item(5), item(6), item(9)], complete: false };
        let fin = xmpp_parsers::mam::Fin::try_from(fin(&page)).unwrap();
        assert!(!fin.complete);
        assert_eq!((fin.set.first.unwrap().item.as_str(), fin.set.last.as_deref()), ("5", Some("9")));
        let empty = xmpp_parsers::mam::Fin::try_from(super::fin(&Page { items: vec![], complete: true })).unwrap();
        assert!(empty.complete && empty.set.first.is_none());
        let flipped: Vec<u64> = in_order(&page, true).map(|i| i.id).collect();
        assert_eq!(flipped, [9, 6, 5]);
    }

    #[test]
    fn stanza_ids_and_stamps_read_back() {
        let sid = xmpp_parsers::stanza_id::StanzaId::try_from(stanza_id(&id_text(42), "#rust%irc.x@gw")).unwrap();
        assert_eq!((sid.id.as_str(), sid.by.to_string().as_str()), ("42", "#rust%irc.x@gw"));
        assert_eq!(stamp(1_275_868_800_000_005), "2010-06-07T00:00:00.000005Z");
        let form = form();
        assert!(DataForm::try_from(form.get_child("x", "jabber:x:data").unwrap().clone()).is_ok());
    }
}
