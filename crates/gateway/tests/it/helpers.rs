//! `spawn_app(Backend)`: a gateway on `127.0.0.1:0` over a fresh database, with a fixed clock, an admin
//! key and request helpers.

use std::{path::PathBuf, sync::Arc};

use gateway::{
    config::{Config, LogFormat},
    db::Db,
    model::Secret,
};
use gateway_core::{FixedClock, Timestamp};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const ADMIN_KEY: &str = "sk_test_bootstrap_admin_key_0123456789";

/// The instant every test starts at.
pub fn t0() -> Timestamp {
    Timestamp::parse_rfc3339("2026-11-22T10:00:00Z").unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where PostgreSQL tests create their databases.
fn pg_admin_url() -> String {
    std::env::var("PURCHASE_GATEWAY_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Says once per run, past the test harness's output capture, that PostgreSQL tests were skipped.
fn say_postgres_skipped(why: &str) {
    use std::{io::Write, sync::Once};
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // `std::io::stderr()` is not captured by the harness (only the print macros are).
        let _ = writeln!(
            std::io::stderr(),
            "\nPostgreSQL skipped: {} does not answer ({why}); only SQLite was tested.\n",
            pg_admin_url()
        );
    });
}

/// A database for one test, removed when dropped.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    /// A fresh database, or `None` (with a line saying so) when PostgreSQL does not answer.
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path: PathBuf = dir.path().join("nested/gateway.db");
                Some(TestDb {
                    url: format!("sqlite://{}", path.display()),
                    _dir: Some(dir),
                    pg_name: None,
                })
            }
            Backend::Postgres => {
                sqlx::any::install_default_drivers();
                use sqlx::Connection;
                // One plain connection: it fails at once when nothing listens (a pool would retry).
                let mut admin = match sqlx::AnyConnection::connect(&pg_admin_url()).await {
                    Ok(c) => c,
                    Err(e) => {
                        say_postgres_skipped(&e.to_string());
                        return None;
                    }
                };
                let name = format!("gwtest_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                let _ = admin.close().await;
                let base = pg_admin_url();
                let url = match base.rsplit_once('/') {
                    Some((head, _)) => format!("{head}/{name}"),
                    None => base,
                };
                Some(TestDb {
                    url,
                    _dir: None,
                    pg_name: Some(name),
                })
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // A test's runtime may be gone: drop the database from a thread of our own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(admin) = sqlx::AnyPool::connect(&pg_admin_url()).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&admin)
                        .await;
                        admin.close().await;
                    }
                });
            })
            .join();
        }
    }
}

pub struct TestApp {
    pub addr: String,
    pub client: reqwest::Client,
    pub clock: FixedClock,
    pub db: Db,
    /// The use cases' context of the running gateway (its committer, its token keys).
    pub cx: gateway::service::Context,
    pub backend: Backend,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
    pub test_db: Arc<TestDb>,
}

pub fn config(url: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        database_url: url.into(),
        bootstrap_admin_key: Some(Secret::new(ADMIN_KEY)),
        log_format: LogFormat::Pretty,
        log_level: "warn".into(),
    }
}

/// Starts a gateway over a new database; `None` when the back end is not available here.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    let db = Arc::new(TestDb::new(backend).await?);
    Some(spawn_on(backend, db).await)
}

/// Starts a gateway over an existing test database (a restart).
pub async fn spawn_on(backend: Backend, test_db: Arc<TestDb>) -> TestApp {
    let clock = FixedClock::new(t0());
    let state = gateway::prepare(config(&test_db.url), Arc::new(clock.clone()))
        .await
        .expect("gateway starts");
    let cx = state.cx.clone();
    let db = cx.db.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let server = tokio::spawn(async move {
        gateway::run(state, listener, token).await.unwrap();
    });
    TestApp {
        addr,
        client: reqwest::Client::new(),
        clock,
        db,
        cx,
        backend,
        shutdown,
        server: Some(server),
        test_db,
    }
}

/// An answer: status and JSON body (or `Value::String` for a body that is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        self.body
    }

    /// Asserts an error answer of the documented shape and returns its code.
    #[track_caller]
    pub fn error(self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        assert_eq!(
            self.body["error"]["code"], code,
            "unexpected error: {}",
            self.body
        );
        let message = self.body["error"]["message"]
            .as_str()
            .expect("an error has a message");
        assert!(message.len() > 10, "the message is a sentence: {message:?}");
        self.body
    }
}

impl TestApp {
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.addr, path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("the server answers");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request(Method::GET, path, Some(ADMIN_KEY), None, &[])
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.request(Method::POST, path, Some(ADMIN_KEY), Some(body), &[])
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> Answer {
        self.request(Method::PUT, path, Some(ADMIN_KEY), Some(body), &[])
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Answer {
        self.request(Method::PATCH, path, Some(ADMIN_KEY), Some(body), &[])
            .await
    }

    pub async fn delete(&self, path: &str, body: Option<Value>) -> Answer {
        self.request(Method::DELETE, path, Some(ADMIN_KEY), body, &[])
            .await
    }

    /// Sends a raw body with a content type.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Answer {
        let res = self
            .client
            .request(method, format!("{}{}", self.addr, path))
            .bearer_auth(ADMIN_KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("the server answers");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            body,
            headers,
        }
    }

    /// Creates an app `id` with an App Store section.
    pub async fn create_app(&self, id: &str) -> Value {
        self.post(
            "/v1/apps",
            json!({"id": id, "name": "Acme Courses", "app_store": {"bundle_id": "edu.acme.app", "environment": "Sandbox", "shared_secret": "apple-shared-secret-value"}}),
        )
        .await
        .expect(201)
    }

    /// Creates an app with a small catalog: a course, coins, a subscription and a 30-day pass.
    pub async fn seed_catalog(&self, app: &str) {
        self.create_app(app).await;
        let base = format!("/v1/apps/{app}/products");
        self.put(&format!("{base}/cs101"), json!({
            "kind": "non_consumable",
            "store_skus": {"app_store": "edu.acme.cs101", "play_store": "cs101"},
            "entitlements": [{"id": "course-v1:Acme+CS101+2026", "attributes": {"course_id": "course-v1:Acme+CS101+2026", "mode": "verified"}}]
        })).await.expect(201);
        self.put(&format!("{base}/coins100"), json!({
            "kind": "consumable", "store_skus": {"app_store": "edu.acme.coins100"}, "consumable": {"currency": "COINS", "amount": 100}
        })).await.expect(201);
        self.put(&format!("{base}/premium"), json!({
            "kind": "subscription", "store_skus": {"app_store": "edu.acme.premium"}, "entitlements": [{"id": "premium"}]
        })).await.expect(201);
        self.put(
            &format!("{base}/pass30"),
            json!({
                "kind": "non_renewing", "access_duration": "P30D", "entitlements": [{"id": "pass"}]
            }),
        )
        .await
        .expect(201);
    }

    /// A secret key of `app` with `scopes`.
    pub async fn key(&self, app: &str, kind: &str, scopes: &[&str]) -> String {
        let body = self
            .post(
                &format!("/v1/apps/{app}/keys"),
                json!({"kind": kind, "scopes": scopes}),
            )
            .await
            .expect(201);
        body["key"].as_str().unwrap().to_owned()
    }

    /// The outbox events of a customer of app `acme`, in delivery order.
    pub async fn outbox(&self, customer: &str) -> Vec<gateway::db::outbox::OutboxEvent> {
        gateway::db::outbox::for_customer(
            &self.db,
            &"acme".parse().unwrap(),
            &customer.parse().unwrap(),
        )
        .await
        .unwrap()
    }

    /// The types of [`TestApp::outbox`].
    pub async fn outbox_types(&self, customer: &str) -> Vec<String> {
        self.outbox(customer)
            .await
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }

    /// Counts rows of a table, for "changed nothing" checks.
    /// Waits (10 s at most) until a pending delivery of `acme` has failed an attempt; that delivery
    /// and every pending one.
    pub async fn failed_delivery(&self) -> (Value, Vec<Value>) {
        let mut pending = Vec::new();
        for _ in 0..200 {
            pending = self
                .get("/v1/apps/acme/deliveries?status=pending")
                .await
                .expect(200)["deliveries"]
                .as_array()
                .unwrap()
                .clone();
            if let Some(d) = pending.iter().find(|d| d["last_error"].is_string()) {
                return (d.clone(), pending);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("no pending delivery failed an attempt: {pending:#?}");
    }

    /// Entitlement `id` of customer `customer` of app `acme` as its snapshot shows it (`null` when it
    /// has none).
    pub async fn entitlement(&self, customer: &str, id: &str) -> Value {
        let snap = self
            .get(&format!("/v1/apps/acme/customers/{customer}"))
            .await
            .expect(200);
        snap["entitlements"]
            .as_array()
            .and_then(|all| all.iter().find(|e| e["id"] == id))
            .cloned()
            .unwrap_or(Value::Null)
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(self.db.reader())
            .await
            .unwrap()
    }

    /// Row counts of every table a decision writes.
    pub async fn counts(&self) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for t in [
            "apps",
            "api_keys",
            "products",
            "customers",
            "inbound",
            "manual_facts",
            "entitlements",
            "ledger_entries",
            "audit_log",
            "outbox",
            "orders",
        ] {
            out.push((t.to_owned(), self.count(t).await));
        }
        out
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) -> Arc<TestDb> {
        self.shutdown.cancel();
        if let Some(s) = self.server.take() {
            s.await.unwrap();
        }
        self.db.close().await;
        self.test_db.clone()
    }
}

/// Defines one test per back end from an `async fn(TestApp)`.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = $crate::helpers::spawn_app($crate::helpers::Backend::Sqlite)
                    .await
                    .expect("SQLite is always there");
                ($body)(app).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(app) =
                    $crate::helpers::spawn_app($crate::helpers::Backend::Postgres).await
                else {
                    return;
                };
                ($body)(app).await;
            }
        }
    };
}

/// A directory holding an npm package (`name@version`), installed into the test target's scratch
/// directory on first use; `require(path.join(dir, 'node_modules', name))` loads it.
pub fn node_package(name: &str, version: &str) -> std::path::PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("node-{name}-{version}"));
    if !dir
        .join("node_modules")
        .join(name)
        .join("package.json")
        .exists()
    {
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .arg(format!("{name}@{version}"))
            .output()
            .expect("npm runs");
        assert!(
            out.status.success(),
            "installing {name} from npm failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// A Python interpreter with a PyPI package (`name==version`) installed, in a virtual environment
/// under the test target's scratch directory, made on first use.
pub fn python_with(name: &str, version: &str) -> std::path::PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let venv =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("py-{name}-{version}"));
    let python = venv.join("bin").join("python");
    let ready = venv.join(".installed");
    if !ready.exists() {
        let out = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(format!("{name}=={version}"))
            .output()
            .expect("pip runs");
        assert!(
            out.status.success(),
            "installing {name} from PyPI failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&ready, b"").unwrap();
    }
    python
}
