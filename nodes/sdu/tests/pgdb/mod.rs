//! A fresh PostgreSQL database per test, dropped after it, so that tests run in parallel and
//! again and again. The server is `SHEP_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432`, trust authentication); when it is unreachable the
//! test FAILS, naming it: these tests are the PostgreSQL backend's only proof.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

/// The server the tests use, without a database name.
pub fn server() -> String {
    std::env::var("SHEP_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A database created for one test and dropped with this value.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    name: String,
}

/// Runs `sql` on the database at `url`, on a thread of its own (so that it works inside and
/// outside tokio), and returns the server's error message, if any.
fn run_sql(url: String, sql: String) -> Result<(), String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| match std::error::Error::source(&e) {
                    Some(cause) => format!("connecting to {url}: {e}: {cause}"),
                    None => format!("connecting to {url}: {e}"),
                })?;
            let driver = tokio::spawn(conn);
            let r = client
                .batch_execute(&sql)
                .await
                .map_err(|e| format!("{sql}: {e}"));
            drop(client);
            let _ = driver.await;
            r
        })
    })
    .join()
    .expect("the SQL thread panicked")
}

impl TestDb {
    /// Creates a database with a name of its own. Panics when PostgreSQL is unreachable.
    pub fn new() -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "sdu_test_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let server = server();
        if let Err(e) = run_sql(
            format!("{server}/postgres"),
            format!("CREATE DATABASE {name}"),
        ) {
            panic!(
                "these tests need PostgreSQL at {server} (set SHEP_TEST_POSTGRES to another server): {e}"
            );
        }
        TestDb {
            url: format!("{server}/{name}"),
            name,
        }
    }

    /// Runs SQL on this database (to damage it, or look under the store).
    pub fn exec(&self, sql: &str) {
        run_sql(self.url.clone(), sql.to_owned()).unwrap();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let r = run_sql(
            format!("{}/postgres", server()),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        if let Err(e) = r
            && !std::thread::panicking()
        {
            panic!("dropping the test database: {e}");
        }
    }
}
