//! A line from an IRC server, as the session reads it: decoded (any bytes), stripped of
//! what must not reach XMPP, then parsed. No panic, and nothing XML forbids survives.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let line = bridge_irc::text::decode_line(bytes);
    assert!(
        !line.chars().any(|c| c < '\x20' && c != '\t' && c != '\x01'),
        "a control character survived: {line:?}"
    );
    if let Ok(message) = line.parse::<irc::proto::Message>() {
        let _ = message.source_nickname();
        // IRCv3 `server-time`: any text in the tag.
        for tag in message.tags.iter().flatten() {
            let _ = bridge_irc::ircv3::delay(tag.1.as_deref(), true, std::time::SystemTime::now());
        }
        if let irc::proto::Command::PRIVMSG(_, text) = &message.command {
            let _ = bridge_irc::text::ctcp_action(text);
        }
    }
});
