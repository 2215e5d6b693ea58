//! A registration (or ad-hoc `configure`) submission from any user: any XML in the
//! query, parsed as a form, then applied. No panic; a refusal names a field.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use xmpp_gateway::config::Config;
use xmpp_gateway::registration::{self, Request};

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("fuzz-gw-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[component]\njid = \"gw.localhost\"\nsecret = \"s\"\n[storage]\npath = \"/tmp/x\"\n\
             [irc.networks.\"irc.one\"]\n[irc.networks.\"irc.two\"]\n\
             [email.providers.\"example.test\"]\nimap = \"127.0.0.1:1143\"\nsmtp = \"127.0.0.1:2525\"\n",
        )
        .unwrap();
        Config::load_with_env(&path, std::iter::empty()).unwrap()
    })
}

fuzz_target!(|xml: &str| {
    let wrapped = format!("<query xmlns='jabber:iq:register'>{xml}</query>");
    let Ok(query) = wrapped.parse::<minidom::Element>() else { return };
    match registration::parse_request(&query, config()) {
        Ok(Request::Submit(values)) => {
            if let Err(error) = registration::apply(None, &values, config()) {
                assert!(!error.field.is_empty());
            }
        }
        Ok(Request::Remove) => {}
        Err(error) => assert!(!error.field.is_empty()),
    }
});
