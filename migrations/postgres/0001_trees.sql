-- 0001: the store's trees, as the embedded (sled) store keeps them: bytes under byte keys,
-- ordered bytewise (bytea's order), so that both engines hold the same entries and
-- `xmpp-gateway migrate-store` copies them verbatim. The formats (JSON user records with
-- sealed passwords, archive keys) are described in src/store/mod.rs and src/archive/keyed.rs.
-- Applied by the gateway at start (src/store/postgres.rs); never edit a shipped migration.

-- One record per registered user, keyed by bare JID.
CREATE TABLE users (key bytea PRIMARY KEY, value bytea NOT NULL);
-- The bridges' durable state (outbox, IMAP checkpoints), keyed `user \0 key`.
CREATE TABLE bridge_state (key bytea PRIMARY KEY, value bytea NOT NULL);
-- Always-on channels, keyed `user \0 server \0 folded channel`.
CREATE TABLE persistent (key bytea PRIMARY KEY, value bytea NOT NULL);
-- The store's own facts (key check, ban list).
CREATE TABLE meta (key bytea PRIMARY KEY, value bytea NOT NULL);
-- The message archive (channel logs, users' spans of them, private messages).
CREATE TABLE archive (key bytea PRIMARY KEY, value bytea NOT NULL);
