//! The XML stream reader on any bytes a server could send: no panic, bounded memory
//! (the stanza limits), and every stanza it hands out written back by our encoder
//! (cleaned if need be) parses again as the same stanza.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_gateway::xml_stream::{self, StanzaLimits, StanzaReader, StreamEvent};

const HEADER: &[u8] = b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='f'>";

fuzz_target!(|data: &[u8]| {
    let input = [HEADER, data].concat();
    let mut reader = StanzaReader::new(input.as_slice()).with_limits(StanzaLimits { bytes: 64 * 1024, depth: 16 });
    futures::executor::block_on(async {
        for _ in 0..1000 {
            match reader.next().await {
                Ok(StreamEvent::Stanza(stanza)) => {
                    let mut bytes = Vec::new();
                    if xml_stream::append_bytes(&stanza, &mut bytes) {
                        let text = String::from_utf8(bytes).expect("the encoder writes UTF-8");
                        let again: minidom::Element = text.parse().expect("what the encoder writes parses");
                        assert_eq!(again.name(), stanza.name());
                    }
                }
                Ok(StreamEvent::Header(_) | StreamEvent::TooLarge(..) | StreamEvent::Unreadable(..)) => {}
                Ok(StreamEvent::End) | Err(_) => break,
            }
        }
    });
});
