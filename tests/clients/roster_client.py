#!/usr/bin/env python3
"""A real XMPP client for tests/roster.rs: slixmpp (Debian's python3-slixmpp), as a
user's client would run it.

Logs in as JID with PASSWORD on 127.0.0.1:PORT (no TLS: the test servers allow plain
SASL on loopback), fetches its roster, sends its presence, prints "ready", then prints
"roster <json>" with every roster item (name, groups, subscription) whenever the roster
changes. Subscription requests are answered as slixmpp does by default: accepted, and
asked back. Runs until killed.

Usage: roster_client.py PORT JID PASSWORD
"""
import json
import sys

import slixmpp


class RosterClient(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("roster_update", self.dump)
        self.add_event_handler("roster_subscription_request", self.dump)
        self.add_event_handler("failed_auth", self.failed)

    async def start(self, _event):
        await self.get_roster()
        self.send_presence()
        print("ready", flush=True)
        self.dump()

    def failed(self, _event):
        print("failed: login refused", flush=True)
        sys.exit(1)

    def dump(self, _event=None):
        roster = self.client_roster
        items = {
            str(jid): {
                "name": roster[jid]["name"],
                "groups": sorted(roster[jid]["groups"]),
                "subscription": roster[jid]["subscription"],
            }
            for jid in roster
        }
        print("roster " + json.dumps(items, sort_keys=True), flush=True)


def main():
    port, jid, password = sys.argv[1:4]
    client = RosterClient(jid, password)
    client["feature_mechanisms"].unencrypted_plain = True
    client.connect(("127.0.0.1", int(port)), disable_starttls=True)
    client.process(forever=True)


if __name__ == "__main__":
    main()
