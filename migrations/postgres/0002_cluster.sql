-- 0002: several gateway instances on one domain (src/cluster/). Only read and written when
-- `[cluster]` is configured; a single instance leaves both tables empty.

-- The running instances: where their peer link listens, and their heartbeat (the
-- database's clock). An instance also holds a session advisory lock on its id while it
-- runs, so that a killed one is seen at once (see src/cluster/lease.rs).
CREATE TABLE cluster_instances (
    id text PRIMARY KEY,
    peer text NOT NULL,
    started timestamptz NOT NULL DEFAULT now(),
    heartbeat timestamptz NOT NULL DEFAULT now()
);
-- Which instance owns each user's live sessions (IRC connections, IMAP IDLE). `epoch`
-- grows at every takeover.
CREATE TABLE cluster_owners (
    jid text PRIMARY KEY,
    instance text NOT NULL,
    epoch bigint NOT NULL DEFAULT 1
);
CREATE INDEX cluster_owners_by_instance ON cluster_owners (instance);
