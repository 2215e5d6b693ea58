//! The address parser on any localpart: no panic, and what parses formats back to an
//! address that parses to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_gateway::address;

fuzz_target!(|local: &str| {
    if let Ok(parsed) = address::parse_localpart(local) {
        let formatted = address::format_localpart(&parsed);
        assert_eq!(address::parse_localpart(&formatted).ok(), Some(parsed), "{local:?} -> {formatted:?}");
    }
    let _ = address::parse_occupant_nick(local);
    let _ = address::from_legacy_prompt(local);
});
