//! PostgreSQL for the tests: private clusters started by `scripts/postgres.sh`, and the
//! switch that runs the gateways of a test process on it (`GATEWAY_TEST_STORE=postgres`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use crate::{free_port, script, try_script};

/// The superuser's password in every test cluster.
pub const PASSWORD: &str = "pg-test-pw-4Hq9";

/// Which engine the test gateways use: `GATEWAY_TEST_STORE=postgres` for PostgreSQL,
/// unset (or `sled`) for sled. Anything else fails the test rather than run on a default.
#[must_use]
pub fn store_is_postgres() -> bool {
    match std::env::var("GATEWAY_TEST_STORE").as_deref() {
        Err(_) | Ok("" | "sled") => false,
        Ok("postgres") => true,
        Ok(other) => panic!("GATEWAY_TEST_STORE must be sled or postgres, not {other:?}"),
    }
}

/// A private PostgreSQL cluster on 127.0.0.1; killed (and its files deleted) on drop, or
/// by its watchdog when the test process is gone.
pub struct Postgres {
    /// The cluster's directory (data, certificate, logs).
    pub dir: PathBuf,
    /// Its TCP port.
    pub port: u16,
}

impl Postgres {
    /// Starts a new cluster (initdb, a self-signed certificate, TLS offered).
    #[must_use]
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new().prefix("pg-").tempdir().expect("a temporary directory").keep();
        // On another port, the same cluster: a start rewrites the port in its
        // configuration (the server's log says "Address already in use" when taken).
        let port = crate::on_free_ports("postgres.sh", || {
            let port = free_port();
            try_script("postgres.sh", &["start", &dir.display().to_string(), &port.to_string(), PASSWORD]).map(|_| port)
        });
        Postgres { dir, port }
    }

    /// Starts the cluster again after [`Postgres::kill`] or [`Postgres::stop`] (its data kept).
    pub fn start_again(&self) {
        script("postgres.sh", &["start", &self.dir.display().to_string(), &self.port.to_string(), PASSWORD]);
    }

    /// Stops the server at once (a crash: no shutdown, clients cut off).
    pub fn kill(&self) {
        script("postgres.sh", &["kill", &self.dir.display().to_string()]);
    }

    /// A new, empty database; its name.
    #[must_use]
    pub fn create_database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("gw_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        script("postgres.sh", &["createdb", &self.dir.display().to_string(), &self.port.to_string(), &name]);
        name
    }

    /// The connection string of `database` without TLS (the tests' default: the TLS path
    /// has tests of its own).
    #[must_use]
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres:{PASSWORD}@127.0.0.1:{}/{database}?sslmode=disable", self.port)
    }

    /// The server's certificate, to trust as a CA.
    #[must_use]
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("tls/cert.pem")
    }

    /// Runs `sql` on `database` with psql, as the superuser; its output.
    #[must_use]
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = std::process::Command::new("psql")
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(format!("host=127.0.0.1 port={} user=postgres dbname={database} sslmode=disable", self.port))
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("psql (package postgresql-client) must be installed");
        assert!(out.status.success(), "psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(crate::repo().join("scripts/postgres.sh"))
            .args(["destroy", &self.dir.display().to_string()])
            .output();
    }
}

/// The cluster this test process's gateways share when they run on PostgreSQL (a
/// database each); started on first use, destroyed by its watchdog when the process ends.
pub fn shared() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    SHARED.get_or_init(Postgres::start)
}
