//! Who owns which user: the instances' heartbeats and the owners' table in PostgreSQL.
//!
//! - Each instance has a row in `cluster_instances` (its peer link's address, a heartbeat
//!   renewed every [`HEARTBEAT`] by the database's clock) and holds a session advisory lock
//!   on its id for as long as its heartbeat connection lives.
//! - `cluster_owners` gives each user's owner. The first instance to need a user that has
//!   none takes it ([`Lease::resolve`]); a user changes owner only when its owner is dead
//!   ([`watch`]), never while it lives.
//! - **Dead** means: the heartbeat is older than [`GRACE`] and the lock is free (a killed
//!   process's connection closes, and PostgreSQL releases its lock at once: takeover within
//!   about 2.5 s), or the heartbeat is older than the lease (an instance cut off from the
//!   database, whose connection PostgreSQL still believes in). Nobody is judged in the
//!   first lease after the database started, when every instance is still reconnecting.
//! - **Fencing**: an instance that could not renew its heartbeat for the lease minus
//!   [`FENCE_MARGIN`] ends its users' sessions itself ([`LeaseEvent::Fenced`]) before anyone
//!   may take them, so no user has two IRC connections. Expiry is judged by the database's
//!   clock only, fencing by the instance's monotonic clock only.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::store::backend::BackendError;
use crate::store::postgres::PgTarget;

/// How often an instance renews its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// A heartbeat older than this, with the instance's lock free, means the instance died.
pub const GRACE: Duration = Duration::from_secs(2);
/// How often an instance looks for dead ones.
pub const WATCH: Duration = Duration::from_millis(500);
/// An instance fences itself this long before its lease can expire.
pub const FENCE_MARGIN: Duration = Duration::from_secs(3);
/// How long one conversation with the database may take (connecting, a statement):
/// a database that went silent, rather than refusing, must not hold anything forever.
pub const DB_TIMEOUT: Duration = Duration::from_secs(2);

/// `work`, or a timeout error after [`DB_TIMEOUT`].
async fn timely<T>(work: impl std::future::Future<Output = Result<T, BackendError>>) -> Result<T, BackendError> {
    tokio::time::timeout(DB_TIMEOUT, work).await.map_err(|_| BackendError::Timeout(DB_TIMEOUT))?
}

/// What the lease tasks tell the instance.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// These users are ours now (taken from a dead instance): start their sessions.
    Adopted(Vec<String>),
    /// After a reconnection to the database: the users the database says are ours. Any
    /// other user we serve was taken while we were away.
    Owned(HashSet<String>),
    /// We could not renew our heartbeat in time: end every session now.
    Fenced,
    /// The live instances and their peer addresses.
    Instances(HashMap<String, String>),
}

/// An owner as the database gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRow {
    /// The owning instance's id.
    pub instance: String,
    /// Its peer link's address, when it still has an instance row.
    pub peer: Option<String>,
    /// How many times the user changed owner, plus one: above one, the owner took the
    /// user over from a dead instance.
    pub epoch: i64,
}

/// The database side of the cluster, for one instance.
pub struct Lease {
    /// The database.
    target: PgTarget,
    /// Our instance id.
    me: String,
    /// Our peer link's address, for the others.
    peer: String,
    /// How long a silent instance keeps its users.
    lease: Duration,
    /// The connection for resolutions and the watcher (the heartbeat has its own: its lock
    /// must live exactly as long as it does). Reopened when it breaks.
    client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
    /// Whether we are fenced (our sessions ended, waiting for the database): then this
    /// instance takes no stanza, from the server or from the others.
    fenced: tokio::sync::watch::Sender<bool>,
}

/// The advisory lock key of an instance: a hash of its id in a range of our own.
pub fn lock_key(id: &str) -> i64 {
    // FNV-1a, 32 bits: stable across versions and platforms.
    let hash = id.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    (0x7867_7702_i64 << 32) | i64::from(hash)
}

/// Seconds as PostgreSQL's `interval` arithmetic gives them.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Lease {
    /// The lease of instance `me`, whose peer link listens at `peer`.
    pub fn new(target: PgTarget, me: String, peer: String, lease: Duration) -> Arc<Lease> {
        let (fenced, _) = tokio::sync::watch::channel(false);
        Arc::new(Lease { target, me, peer, lease, client: tokio::sync::Mutex::new(None), fenced })
    }

    /// Whether we are fenced, as it changes.
    pub fn fenced(&self) -> tokio::sync::watch::Receiver<bool> {
        self.fenced.subscribe()
    }

    /// We fence ourselves: our sessions end and we take no stanza until the database
    /// answers again.
    fn fence(&self, events: &mpsc::UnboundedSender<LeaseEvent>) {
        self.fenced.send_replace(true);
        let _ = events.send(LeaseEvent::Fenced);
    }

    /// Our instance id.
    pub fn me(&self) -> &str {
        &self.me
    }

    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, BackendError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = Arc::new(self.target.connect().await?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// The owner of `user`, taken by us if it has none.
    pub async fn resolve(&self, user: &str) -> Result<OwnerRow, BackendError> {
        timely(self.resolve_now(user)).await
    }

    async fn resolve_now(&self, user: &str) -> Result<OwnerRow, BackendError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "WITH ins AS (INSERT INTO cluster_owners (jid, instance) VALUES ($1, $2) ON CONFLICT (jid) DO NOTHING RETURNING instance, epoch),
                      own AS (SELECT instance, epoch FROM ins UNION ALL SELECT instance, epoch FROM cluster_owners WHERE jid = $1 LIMIT 1)
                 SELECT own.instance, i.peer, own.epoch FROM own LEFT JOIN cluster_instances i ON i.id = own.instance",
                &[&user, &self.me],
            )
            .await?;
        Ok(OwnerRow { instance: row.get(0), peer: row.get(1), epoch: row.get(2) })
    }

    /// Of `users`, those we own, taking those nobody owns.
    pub async fn claim(&self, users: &[String]) -> Result<Vec<String>, BackendError> {
        timely(self.claim_now(users)).await
    }

    async fn claim_now(&self, users: &[String]) -> Result<Vec<String>, BackendError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO cluster_owners (jid, instance) SELECT unnest($1::text[]), $2 ON CONFLICT (jid) DO NOTHING",
                &[&users, &self.me],
            )
            .await?;
        let rows = client.query("SELECT jid FROM cluster_owners WHERE instance = $1 AND jid = ANY($2)", &[&self.me, &users]).await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// We stop cleanly: our heartbeat is made old, so that the others take our users at
    /// their next look instead of after the lease.
    pub async fn leave(&self) -> Result<(), BackendError> {
        timely(async {
            let client = self.client().await?;
            client
                .execute("UPDATE cluster_instances SET heartbeat = now() - interval '1 day' WHERE id = $1", &[&self.me])
                .await?;
            Ok(())
        })
        .await
    }
}

/// Keeps our instance row and lock alive, reconnecting as needed; tells `events` when we
/// must fence ourselves and, after each reconnection, which users are still ours.
pub async fn heartbeat(lease: Arc<Lease>, events: mpsc::UnboundedSender<LeaseEvent>) {
    let fence_after = lease.lease.saturating_sub(FENCE_MARGIN).max(HEARTBEAT * 2);
    let mut last_renewal = Instant::now();
    let mut fenced = false;
    let mut registered_once = false;
    let mut retry = Duration::from_millis(100);
    loop {
        let connected = async {
            let client = lease.target.connect().await?;
            let inserted: bool = client
                .query_one(
                    "INSERT INTO cluster_instances (id, peer) VALUES ($1, $2)
                     ON CONFLICT (id) DO UPDATE SET peer = excluded.peer, heartbeat = now()
                     RETURNING (xmax = 0)",
                    &[&lease.me, &lease.peer],
                )
                .await?
                .get(0);
            client.execute("SELECT pg_advisory_lock($1)", &[&lock_key(&lease.me)]).await?;
            let owned = client.query("SELECT jid FROM cluster_owners WHERE instance = $1", &[&lease.me]).await?;
            Ok::<_, BackendError>((client, inserted, owned.iter().map(|row| row.get(0)).collect::<HashSet<String>>()))
        };
        let (client, inserted, owned) = match timely(connected).await {
            Ok(connected) => connected,
            Err(error) => {
                if !fenced && last_renewal.elapsed() > fence_after {
                    warn!(%error, "no heartbeat for too long: ending this instance's sessions before another takes its users");
                    fenced = true;
                    lease.fence(&events);
                }
                debug!(%error, "cluster heartbeat: database unreachable");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        retry = Duration::from_millis(100);
        if registered_once && inserted && !fenced {
            // Our row was gone: the others judged us dead and took our users.
            warn!("this instance was taken for dead while away from the database; ending its sessions");
            lease.fence(&events);
        }
        let reconnected = registered_once;
        if registered_once {
            info!(instance = %lease.me, owned = owned.len(), "cluster heartbeat: the database answers again");
        } else {
            info!(instance = %lease.me, peer = %lease.peer, "joined the cluster");
        }
        registered_once = true;
        fenced = false;
        lease.fenced.send_replace(false);
        last_renewal = Instant::now();
        // After a reconnection only: at the first registration nothing is ours yet, and
        // users claimed meanwhile must not look taken.
        if reconnected {
            let _ = events.send(LeaseEvent::Owned(owned));
        }
        let mut ticker = tokio::time::interval(HEARTBEAT);
        loop {
            ticker.tick().await;
            let renewed = tokio::time::timeout(DB_TIMEOUT, client.execute("UPDATE cluster_instances SET heartbeat = now() WHERE id = $1", &[&lease.me])).await;
            match renewed {
                Ok(Ok(1)) => last_renewal = Instant::now(),
                Ok(Ok(_)) => {
                    warn!("this instance's row was removed by the others; ending its sessions");
                    fenced = true;
                    lease.fence(&events);
                    break;
                }
                Ok(Err(error)) => {
                    debug!(%error, "cluster heartbeat failed");
                    break;
                }
                Err(_) if last_renewal.elapsed() > fence_after => break,
                Err(_) => {}
            }
        }
        if !fenced && last_renewal.elapsed() > fence_after {
            warn!("no heartbeat for too long: ending this instance's sessions before another takes its users");
            fenced = true;
            lease.fence(&events);
        }
    }
}

/// Looks for dead instances every [`WATCH`] and takes a share of their users.
pub async fn watch(lease: Arc<Lease>, events: mpsc::UnboundedSender<LeaseEvent>) {
    let mut ticker = tokio::time::interval(WATCH);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(error) = timely(look(&lease, &events)).await {
            debug!(%error, "cluster watch: database unreachable");
            // A look cut short may hold a dead instance's lock: the connection goes,
            // and the lock with it.
            *lease.client.lock().await = None;
        }
    }
}

/// One look: the live instances, and the users of the dead ones.
async fn look(lease: &Lease, events: &mpsc::UnboundedSender<LeaseEvent>) -> Result<(), BackendError> {
    let client = lease.client().await?;
    let rows = client
        .query(
            "SELECT id, peer, extract(epoch FROM now() - heartbeat)::float8,
                    extract(epoch FROM now() - pg_postmaster_start_time())::float8
             FROM cluster_instances",
            &[],
        )
        .await?;
    let instances: Vec<(String, String, f64, f64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    let _ = events.send(LeaseEvent::Instances(instances.iter().map(|(id, peer, ..)| (id.clone(), peer.clone())).collect()));
    let alive = instances.iter().filter(|(_, _, age, _)| *age <= secs(GRACE)).count().max(1) as i64;
    for (id, _, age, uptime) in &instances {
        if *id == lease.me || *uptime < secs(lease.lease) || *age <= secs(GRACE) {
            continue;
        }
        let key = lock_key(id);
        let locked = if *age > secs(lease.lease) {
            false
        } else {
            let free: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await?.get(0);
            if !free {
                continue;
            }
            true
        };
        let taken = take_share(&client, &lease.me, id, alive).await;
        if locked {
            client.execute("SELECT pg_advisory_unlock($1)", &[&key]).await?;
        }
        let taken = taken?;
        if !taken.is_empty() {
            info!(dead = %id, taken = taken.len(), "took over the users of a dead instance");
            let _ = events.send(LeaseEvent::Adopted(taken));
        }
    }
    Ok(())
}

/// Moves our share of a dead instance's users to us (the others take the rest), and drops
/// its row once it has none.
async fn take_share(client: &tokio_postgres::Client, me: &str, dead: &str, alive: i64) -> Result<Vec<String>, BackendError> {
    let left: i64 = client.query_one("SELECT count(*) FROM cluster_owners WHERE instance = $1", &[&dead]).await?.get(0);
    let share = left / alive + 1;
    let rows = client
        .query(
            "UPDATE cluster_owners SET instance = $1, epoch = epoch + 1
             WHERE jid IN (SELECT jid FROM cluster_owners WHERE instance = $2 ORDER BY jid LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING jid",
            &[&me, &dead, &share],
        )
        .await?;
    client
        .execute(
            "DELETE FROM cluster_instances WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM cluster_owners WHERE instance = $1)",
            &[&dead],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_distinct_and_in_our_range() {
        assert_eq!(lock_key("a1b2c3d4"), lock_key("a1b2c3d4"));
        assert_ne!(lock_key("a1b2c3d4"), lock_key("a1b2c3d5"));
        assert_eq!(lock_key("x") >> 32, 0x7867_7702);
    }
}
