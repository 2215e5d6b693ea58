//! What a user's XMPP message extensions become as IRC text, which has none of them:
//! XEP-0308 corrections, XEP-0461 replies, XEP-0444 reactions, XEP-0066 links. Pure: the
//! IRC side (`irc_side`) looks up what they refer to and sends the result.
//!
//! The mapping (README, "Modern clients"):
//! - a correction sends the lines of the new text from the first one that changed, the
//!   first marked with a leading `* ` (IRC's usual sign for "I meant"); a correction that
//!   changes nothing sends nothing; one of an older message than the last sends the
//!   whole new text, marked;
//! - a reply in a room is prefixed with the nick replied to (`bob: ...`), its quoted
//!   fallback removed; in a private conversation only the fallback is removed;
//! - a reaction is an action: `/me reacted 👍 to bob: "the start of the message"`;
//! - a link (`jabber:x:oob`, as HTTP upload clients send it) is added to the text when
//!   the body does not carry it already.

use bridge_core::model::Typing;
use minidom::Element;

use crate::connection::NS_COMPONENT;

/// XEP-0308 Last Message Correction.
pub const NS_CORRECT: &str = "urn:xmpp:message-correct:0";
/// XEP-0461 Message Replies.
pub const NS_REPLY: &str = "urn:xmpp:reply:0";
/// XEP-0428 Fallback Indication (the quoted text of a reply).
pub const NS_FALLBACK: &str = "urn:xmpp:fallback:0";
/// XEP-0444 Message Reactions.
pub const NS_REACTIONS: &str = "urn:xmpp:reactions:0";
/// XEP-0066 Out of Band Data (links to uploaded files).
pub const NS_OOB: &str = "jabber:x:oob";
/// XEP-0184 Message Delivery Receipts.
pub const NS_RECEIPTS: &str = "urn:xmpp:receipts";
/// XEP-0085 Chat State Notifications.
pub const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";

/// How long a quoted excerpt of a reacted-to message may be, in characters.
const EXCERPT_CHARS: usize = 40;

/// The user's last message in a conversation, for corrections of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Said {
    /// Its XMPP id (corrections keep pointing at the first message's id).
    pub id: String,
    /// Its text as last corrected.
    pub body: String,
}

/// What a user's message asks to send to IRC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// This text (lines, `/me` as usual).
    Text(String),
    /// A correction that changes nothing: nothing goes to IRC.
    Unchanged,
    /// Reactions to the message with this id (a room's stanza-id, or a private message's
    /// id): the emojis, none when reactions were taken back.
    Reaction {
        /// The id the reactions point at.
        to: String,
        /// The reactions, in order.
        emojis: Vec<String>,
    },
    /// No body and nothing else to carry (a chat state, a marker, a receipt).
    Nothing,
}

/// What `stanza` sends to IRC, `last` being the user's last message in the same
/// conversation (for corrections), `groupchat` whether it goes to a room.
pub fn irc_text(stanza: &Element, last: Option<&Said>, groupchat: bool) -> Outgoing {
    if let Some(reactions) = stanza.get_child("reactions", NS_REACTIONS) {
        let to = reactions.attr("id").unwrap_or_default().to_owned();
        let emojis = reactions.children().filter(|c| c.is("reaction", NS_REACTIONS)).map(|r| r.text().trim().to_owned()).filter(|r| !r.is_empty()).collect();
        return Outgoing::Reaction { to, emojis };
    }
    let Some(body) = stanza.get_child("body", NS_COMPONENT).map(Element::text) else { return Outgoing::Nothing };
    let mut text = without_reply_fallback(stanza, &body);
    if let Some(url) = stanza.get_child("x", NS_OOB).and_then(|x| x.get_child("url", NS_OOB)).map(Element::text) {
        let url = url.trim();
        if !url.is_empty() && !text.contains(url) {
            text = if text.trim().is_empty() { url.to_owned() } else { format!("{} {url}", text.trim_end()) };
        }
    }
    if groupchat {
        if let Some(nick) = reply_nick(stanza) {
            if !text.starts_with(nick) {
                text = format!("{nick}: {text}");
            }
        }
    }
    match stanza.get_child("replace", NS_CORRECT).and_then(|r| r.attr("id")) {
        Some(id) => correction(last.filter(|said| said.id == id).map(|said| said.body.as_str()), &text),
        None => Outgoing::Text(text),
    }
}

/// What a correction to `text` sends, `old` being the corrected text when it is the
/// user's last message.
fn correction(old: Option<&str>, text: &str) -> Outgoing {
    let Some(old) = old else { return Outgoing::Text(format!("* {text}")) };
    if old == text {
        return Outgoing::Unchanged;
    }
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = text.lines().collect();
    let same = old_lines.iter().zip(&new_lines).take_while(|(a, b)| a == b).count();
    let changed = new_lines.get(same..).unwrap_or_default().join("\n");
    if changed.trim().is_empty() {
        // Lines only taken away: IRC cannot take them back; say the whole text again.
        return Outgoing::Text(format!("* {text}"));
    }
    Outgoing::Text(format!("* {changed}"))
}

/// The body without the quote a XEP-0461 reply carries for clients without replies
/// (marked by XEP-0428 `<fallback for='urn:xmpp:reply:0'><body start end/>`, offsets in
/// characters).
fn without_reply_fallback(stanza: &Element, body: &str) -> String {
    let range = stanza
        .children()
        .filter(|c| c.is("fallback", NS_FALLBACK) && c.attr("for") == Some(NS_REPLY))
        .find_map(|fallback| fallback.get_child("body", NS_FALLBACK))
        .and_then(|b| Some((b.attr("start")?.parse::<usize>().ok()?, b.attr("end")?.parse::<usize>().ok()?)));
    let Some((start, end)) = range.filter(|(start, end)| start < end) else { return body.to_owned() };
    let kept: String = body.chars().enumerate().filter(|(i, _)| *i < start || *i >= end).map(|(_, c)| c).collect();
    kept.trim_start().to_owned()
}

/// The occupant a reply in a room answers: the resource of `<reply to='room/nick'>`.
fn reply_nick(stanza: &Element) -> Option<&str> {
    let to = stanza.get_child("reply", NS_REPLY)?.attr("to")?;
    to.split_once('/').map(|(_, nick)| nick).filter(|nick| !nick.is_empty())
}

/// The action text of reactions: `reacted 👍 to bob: "hello th…"` (`to`: who said what,
/// when known; who is empty in a private conversation).
pub fn reaction_text(emojis: &[String], to: Option<(&str, &str)>) -> String {
    let emojis = emojis.join(" ");
    match to {
        Some((who, said)) => {
            let first_line = said.lines().next().unwrap_or_default();
            let mut excerpt: String = first_line.chars().take(EXCERPT_CHARS).collect();
            if excerpt.len() < said.len() {
                excerpt.push('…');
            }
            if who.is_empty() {
                // Privately: whose message it was goes without saying.
                format!("reacted {emojis} to \"{excerpt}\"")
            } else {
                format!("reacted {emojis} to {who}: \"{excerpt}\"")
            }
        }
        None => format!("reacted {emojis}"),
    }
}

/// The XEP-0085 chat state of `stanza` as IRCv3 typing: `composing` is typing, `paused`
/// paused, the others (`active`, `inactive`, `gone`) done.
pub fn chat_state(stanza: &Element) -> Option<Typing> {
    stanza.children().filter(|child| child.ns() == NS_CHATSTATES).find_map(|state| match state.name() {
        "composing" => Some(Typing::Active),
        "paused" => Some(Typing::Paused),
        "active" | "inactive" | "gone" => Some(Typing::Done),
        _ => None,
    })
}

/// The chat state element of IRCv3 typing (`done` is `active`: attentive, not typing).
pub fn chat_state_element(typing: Typing) -> Element {
    let name = match typing {
        Typing::Active => "composing",
        Typing::Paused => "paused",
        Typing::Done => "active",
    };
    Element::builder(name, NS_CHATSTATES).build()
}

/// Whether `stanza` asks for a XEP-0184 receipt.
pub fn wants_receipt(stanza: &Element) -> bool {
    stanza.has_child("request", NS_RECEIPTS) && stanza.attr("id").is_some()
}

/// The receipt for message `id`, from the contact `from` to `to`.
pub fn receipt(from: &str, to: &str, id: &str) -> Element {
    Element::builder("message", NS_COMPONENT)
        .attr(rxml::xml_ncname!("from").into(), from)
        .attr(rxml::xml_ncname!("to").into(), to)
        .append(Element::builder("received", NS_RECEIPTS).attr(rxml::xml_ncname!("id").into(), id))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stanza(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    fn said(id: &str, body: &str) -> Said {
        Said { id: id.into(), body: body.into() }
    }

    #[test]
    fn a_plain_message_is_its_body_and_a_bodyless_one_is_nothing() {
        let plain = stanza("<message xmlns='jabber:component:accept' type='groupchat' id='1'><body>hello</body></message>");
        assert_eq!(irc_text(&plain, None, true), Outgoing::Text("hello".into()));
        let marker = stanza("<message xmlns='jabber:component:accept' type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='x'/></message>");
        assert_eq!(irc_text(&marker, None, false), Outgoing::Nothing);
        let state = stanza("<message xmlns='jabber:component:accept' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>");
        assert_eq!(irc_text(&state, None, false), Outgoing::Nothing);
    }

    #[test]
    fn corrections_send_the_changed_lines_marked_or_nothing() {
        let fix = stanza("<message xmlns='jabber:component:accept' type='groupchat' id='2'><body>hello world</body><replace xmlns='urn:xmpp:message-correct:0' id='1'/></message>");
        assert_eq!(irc_text(&fix, Some(&said("1", "helo world")), true), Outgoing::Text("* hello world".into()));
        assert_eq!(irc_text(&fix, Some(&said("1", "hello world")), true), Outgoing::Unchanged);
        assert_eq!(irc_text(&fix, Some(&said("0", "older")), true), Outgoing::Text("* hello world".into()), "not the last message: all of it");
        assert_eq!(irc_text(&fix, None, true), Outgoing::Text("* hello world".into()));
        let multi = stanza("<message xmlns='jabber:component:accept' type='groupchat' id='3'><body>line one\nline 2\nline 3</body><replace xmlns='urn:xmpp:message-correct:0' id='1'/></message>");
        assert_eq!(irc_text(&multi, Some(&said("1", "line one\nline two\nline 3")), true), Outgoing::Text("* line 2\nline 3".into()));
        let shorter = stanza("<message xmlns='jabber:component:accept' type='groupchat' id='4'><body>line one</body><replace xmlns='urn:xmpp:message-correct:0' id='1'/></message>");
        assert_eq!(irc_text(&shorter, Some(&said("1", "line one\nline two")), true), Outgoing::Text("* line one".into()));
    }

    #[test]
    fn replies_name_the_nick_in_rooms_and_drop_the_quoted_fallback() {
        // Conversations' form: the quote, then the answer.
        let reply = stanza(
            "<message xmlns='jabber:component:accept' type='groupchat' id='5'>\
               <body>&gt; bob: is it up?\nyes it is</body>\
               <reply xmlns='urn:xmpp:reply:0' to='#c%irc.test@gw/bob' id='42'/>\
               <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start='0' end='17'/></fallback>\
             </message>",
        );
        assert_eq!(irc_text(&reply, None, true), Outgoing::Text("bob: yes it is".into()));
        assert_eq!(irc_text(&reply, None, false), Outgoing::Text("yes it is".into()), "private: no nick prefix");
        let already = stanza("<message xmlns='jabber:component:accept' type='groupchat'><body>bob: sure</body><reply xmlns='urn:xmpp:reply:0' to='#c%irc.test@gw/bob' id='42'/></message>");
        assert_eq!(irc_text(&already, None, true), Outgoing::Text("bob: sure".into()));
        let bad_range = stanza("<message xmlns='jabber:component:accept' type='groupchat'><body>hi</body><fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start='5' end='99'/></fallback></message>");
        assert_eq!(irc_text(&bad_range, None, true), Outgoing::Text("hi".into()), "a range past the end removes nothing there");
    }

    #[test]
    fn reactions_are_read_and_written_as_actions() {
        let react = stanza("<message xmlns='jabber:component:accept' type='groupchat'><reactions xmlns='urn:xmpp:reactions:0' id='1234'><reaction>👍</reaction><reaction>🎉</reaction></reactions><body>👍🎉</body></message>");
        assert_eq!(irc_text(&react, None, true), Outgoing::Reaction { to: "1234".into(), emojis: vec!["👍".into(), "🎉".into()] });
        let none = stanza("<message xmlns='jabber:component:accept' type='groupchat'><reactions xmlns='urn:xmpp:reactions:0' id='1234'/></message>");
        assert_eq!(irc_text(&none, None, true), Outgoing::Reaction { to: "1234".into(), emojis: vec![] });
        let emojis = ["👍".to_owned()];
        assert_eq!(reaction_text(&emojis, Some(("bob", "short"))), "reacted 👍 to bob: \"short\"");
        assert_eq!(
            reaction_text(&emojis, Some(("bob", "a message far longer than forty characters, cut"))),
            "reacted 👍 to bob: \"a message far longer than forty characte…\""
        );
        assert_eq!(reaction_text(&emojis, None), "reacted 👍");
        assert_eq!(reaction_text(&emojis, Some(("", "hi"))), "reacted 👍 to \"hi\"", "privately");
    }

    #[test]
    fn links_are_added_unless_the_body_has_them() {
        let upload = stanza("<message xmlns='jabber:component:accept' type='chat'><body>https://up.example/a.jpg</body><x xmlns='jabber:x:oob'><url>https://up.example/a.jpg</url></x></message>");
        assert_eq!(irc_text(&upload, None, false), Outgoing::Text("https://up.example/a.jpg".into()));
        let captioned = stanza("<message xmlns='jabber:component:accept' type='chat'><body>look</body><x xmlns='jabber:x:oob'><url>https://up.example/a.jpg</url></x></message>");
        assert_eq!(irc_text(&captioned, None, false), Outgoing::Text("look https://up.example/a.jpg".into()));
    }

    #[test]
    fn chat_states_are_typing_both_ways() {
        let state = |name: &str| stanza(&format!("<message xmlns='jabber:component:accept' type='chat'><{name} xmlns='http://jabber.org/protocol/chatstates'/></message>"));
        assert_eq!(chat_state(&state("composing")), Some(Typing::Active));
        assert_eq!(chat_state(&state("paused")), Some(Typing::Paused));
        assert_eq!(chat_state(&state("gone")), Some(Typing::Done));
        assert_eq!(chat_state(&stanza("<message xmlns='jabber:component:accept'><body>x</body></message>")), None);
        assert!(chat_state_element(Typing::Active).is("composing", NS_CHATSTATES));
        assert!(chat_state_element(Typing::Done).is("active", NS_CHATSTATES));
    }

    #[test]
    fn receipts_are_asked_with_an_id_and_answered_from_the_contact() {
        let asks = stanza("<message xmlns='jabber:component:accept' type='chat' id='r1'><body>hi</body><request xmlns='urn:xmpp:receipts'/></message>");
        assert!(wants_receipt(&asks));
        let no_id = stanza("<message xmlns='jabber:component:accept' type='chat'><body>hi</body><request xmlns='urn:xmpp:receipts'/></message>");
        assert!(!wants_receipt(&no_id));
        let receipt = receipt("bob%irc.test@gw", "alice@localhost/phone", "r1");
        assert_eq!(receipt, stanza("<message xmlns='jabber:component:accept' from='bob%irc.test@gw' to='alice@localhost/phone'><received xmlns='urn:xmpp:receipts' id='r1'/></message>"));
    }
}
