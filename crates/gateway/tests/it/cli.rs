//! The binary: `keys create --admin`, `migrate`, `products import/export`, and start-up refusals.

use std::process::Command;

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

fn gateway(db_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_purchase-gateway"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GATEWAY_DATABASE_URL", db_url)
        .env("GATEWAY_LOG_LEVEL", "warn");
    cmd
}

async fn cli_story(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let out = gateway(&db.url).args(["migrate"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gateway(&db.url)
        .args(["keys", "create", "--admin"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout.lines().last().unwrap().trim().to_owned();
    assert!(key.starts_with("sk_") && key.len() > 40, "{stdout}");

    let out = gateway(&db.url).args(["keys", "list"]).output().unwrap();
    let listing = String::from_utf8(out.stdout).unwrap();
    let id = listing.split_whitespace().next().unwrap().to_owned();
    assert!(
        id.starts_with("key_") && listing.contains("(all apps)") && !listing.contains(&key),
        "{listing}"
    );
    let out = gateway(&db.url)
        .args(["keys", "create", "--admin"])
        .output()
        .unwrap();
    let spare = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    let out = gateway(&db.url).args(["keys", "list"]).output().unwrap();
    let spare_id = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let out = gateway(&db.url)
        .args(["keys", "revoke", &spare_id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gateway(&db.url)
        .args(["keys", "revoke", &spare_id])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a revoked key cannot be revoked again"
    );
    let db = std::sync::Arc::new(db);
    let app = spawn_on(backend, db.clone()).await;
    app.request(
        Method::POST,
        "/v1/apps",
        Some(&key),
        Some(json!({"id": "acme", "name": "Acme"})),
        &[],
    )
    .await
    .expect(201);
    app.request(Method::GET, "/v1/apps", Some(&spare), None, &[])
        .await
        .error(401, "unauthorized");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("catalog.csv");
    let mut csv = String::from("product_id,kind,entitlements,app_store\n");
    for i in 0..300 {
        csv.push_str(&format!("course{i},non_consumable,course-{i},sku.{i}\n"));
    }
    std::fs::write(&file, &csv).unwrap();
    let out = gateway(&db.url)
        .args([
            "products",
            "import",
            file.to_str().unwrap(),
            "--app",
            "acme",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 300 products"));
    assert_eq!(
        app.get("/v1/apps/acme/products").await.expect(200)["products"]
            .as_array()
            .unwrap()
            .len(),
        300
    );

    std::fs::write(
        &file,
        "product_id,kind,entitlements\nok,non_consumable,e\nbad,weird,e\n",
    )
    .unwrap();
    let out = gateway(&db.url)
        .args([
            "products",
            "import",
            file.to_str().unwrap(),
            "--app",
            "acme",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("nothing was imported"),
        "{err}"
    );

    let out = gateway(&db.url)
        .args(["products", "export", "--app", "acme"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 301);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_creates_keys_and_imports_on_sqlite() {
    cli_story(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_creates_keys_and_imports_on_postgres() {
    cli_story(Backend::Postgres).await;
}

#[test]
fn a_bad_configuration_stops_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/x.db", dir.path().display());
    let cases = [
        ("GATEWAY_LISTEN", "not-an-address", "GATEWAY_LISTEN"),
        (
            "GATEWAY_DATABASE_URL",
            "mysql://localhost/x",
            "GATEWAY_DATABASE_URL",
        ),
        (
            "GATEWAY_BOOTSTRAP_ADMIN_KEY",
            "short",
            "GATEWAY_BOOTSTRAP_ADMIN_KEY",
        ),
        ("GATEWAY_LOG_FORMAT", "xml", "GATEWAY_LOG_FORMAT"),
    ];
    for (var, value, named) in cases {
        let out = gateway(&url).env(var, value).arg("serve").output().unwrap();
        assert!(!out.status.success(), "{var}={value} must stop start-up");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{var}: {err}");
    }
    let out = gateway(&url)
        .args(["--config", "/nonexistent.toml", "migrate"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, "listen = 8080\n").unwrap();
    let out = gateway(&url)
        .args(["--config", file.to_str().unwrap(), "migrate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));
}

#[test]
fn a_sqlite_file_and_its_folder_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/gateway.db");
    let out = gateway(&format!("sqlite://{}", path.display()))
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(path.is_file());
}

#[test]
fn unrelated_gateway_variables_do_not_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/x.db", dir.path().display());
    let out = gateway(&url)
        .env("GATEWAY_SERVICE_HOST", "10.0.0.1")
        .env("GATEWAY_PORT", "tcp://10.0.0.1:80")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_demo_tells_the_whole_story_and_keeps_serving() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_purchase-gateway"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let reader = BufReader::new(child.stdout.take().unwrap());
    for line in reader.lines() {
        let line = line.unwrap();
        out.push_str(&line);
        out.push('\n');
        if line.contains("keeps serving") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for expected in [
        "answer: \"granted\"",
        "entitlement_granted",
        "notification: \"decided\"",
        "entitlement_revoked",
        "entitlement_renewed",
        "acknowledged to Google Play: yes",
        "Stripe event checkout.session.completed",
        "linus #",
        "notification: HTTP 200",
        "keeps serving",
    ] {
        assert!(
            out.contains(expected),
            "the demo should print {expected:?}:\n{out}"
        );
    }
}
