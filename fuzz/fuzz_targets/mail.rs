//! A mail from anyone, as the IMAP side fetches it: MIME parsing and the text the user
//! is shown. No panic, whatever the nesting, charsets or encodings.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    if let Ok(mail) = bridge_email::incoming::parse_mail(raw) {
        let _ = bridge_email::incoming::render_body(&mail);
    }
});
