//! Instant client updates: server-sent events and long polls answer when the commit that changes the
//! snapshot lands, on this instance or, through PostgreSQL LISTEN/NOTIFY, on another.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{both, helpers::*};

const COURSE: &str = "course-v1:Acme+CS101+2026";

/// An open event stream.
struct Stream {
    res: reqwest::Response,
    buffer: String,
}

impl Stream {
    async fn open(app: &TestApp, path: &str, last_event_id: Option<&str>) -> Stream {
        let headers: Vec<(&str, &str)> = last_event_id
            .map(|id| ("last-event-id", id))
            .into_iter()
            .collect();
        Self::open_with(app, path, ADMIN_KEY, &headers).await
    }

    async fn open_with(app: &TestApp, path: &str, key: &str, headers: &[(&str, &str)]) -> Stream {
        let mut req = app
            .client
            .get(format!("{}{path}", app.addr))
            .bearer_auth(key);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Stream {
            res,
            buffer: String::new(),
        }
    }

    /// The next event (name, id, data), skipping keep-alive comments; `None` after `within`.
    async fn next(&mut self, within: Duration) -> Option<(String, String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut name, mut id, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if name.is_empty() {
                    continue; // a comment
                }
                return Some((name, id, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
            let chunk = tokio::time::timeout_at(deadline, self.res.chunk())
                .await
                .ok()?;
            let bytes = chunk.unwrap()?;
            self.buffer.push_str(&String::from_utf8_lossy(&bytes));
        }
    }

    /// Every event until the server ends the stream; panics if it is still open after `within`.
    async fn rest(&mut self, within: Duration) -> Vec<(String, String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(event) => events.push(event),
                None => {
                    let ended = tokio::time::timeout_at(deadline, self.res.chunk()).await;
                    assert!(
                        matches!(ended, Ok(Ok(None))),
                        "the stream is still open after {within:?}; events: {events:?}"
                    );
                    return events;
                }
            }
        }
    }
}

/// A new key of app `acme`: (id, key).
async fn new_key(app: &TestApp, kind: &str, scopes: &[&str]) -> (String, String) {
    let body = app
        .post(
            "/v1/apps/acme/keys",
            json!({"kind": kind, "scopes": scopes}),
        )
        .await
        .expect(201);
    (
        body["id"].as_str().unwrap().to_owned(),
        body["key"].as_str().unwrap().to_owned(),
    )
}

/// A long poll on `customer` with `key` (and more headers), answered later: (status, body).
fn long_poll(
    app: &TestApp,
    customer: &str,
    key: &str,
    headers: &[(&str, &str)],
) -> tokio::task::JoinHandle<(u16, Value)> {
    let mut req = app
        .client
        .get(format!(
            "{}/v1/apps/acme/customers/{customer}?wait=30&after_version=0",
            app.addr
        ))
        .bearer_auth(key);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    tokio::spawn(async move {
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap())
    })
}

/// A long poll's answer: refused with 401 `code`.
#[track_caller]
fn refused_with((status, body): (u16, Value), code: &str) {
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!(code)),
        "{body}"
    );
}

/// Asserts that a stream's last events are one `error` with `code` and nothing else: no snapshot.
#[track_caller]
fn ended_with(events: &[(String, String, Value)], code: &str) {
    assert_eq!(events.len(), 1, "only the closing event: {events:?}");
    let (name, _, data) = &events[0];
    assert_eq!(name, "error", "{events:?}");
    assert_eq!(data["error"]["code"], code, "{events:?}");
}

async fn grant(app: &TestApp, customer: &str) {
    app.post(
        &format!("/v1/apps/acme/customers/{customer}/grants"),
        json!({"product_id": "cs101", "reason": "x"}),
    )
    .await
    .expect(201);
}

both!(
    an_event_stream_sends_each_new_snapshot_as_it_is_committed,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let path = "/v1/apps/acme/customers/u1/events";
        let mut stream = Stream::open(&app, path, None).await;
        let (name, id, first) = stream.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!((name.as_str(), id.as_str()), ("snapshot", "0"));
        assert_eq!(first["version"], 0);
        assert!(
            stream.next(Duration::from_millis(300)).await.is_none(),
            "nothing new"
        );

        grant(&app, "u1").await;
        let (_, id, snap) = stream.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!(id, "1");
        assert_eq!(snap["entitlements"][0]["id"], COURSE);
        assert!(snap["entitlement_token"].is_string());

        // A reconnect names the last event it saw and gets only what is newer.
        let mut again = Stream::open(&app, path, Some("1")).await;
        assert!(again.next(Duration::from_millis(300)).await.is_none());
        app.clock.advance_millis(1000);
        app.delete(
            &format!("/v1/apps/acme/customers/u1/grants/{COURSE}"),
            Some(json!({"reason": "x"})),
        )
        .await
        .expect(200);
        let (_, id, snap) = again.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!(id, "2");
        assert_eq!(snap["entitlements"][0]["status"], "revoked");
    }
);

/// Two gateways on one PostgreSQL: a client waiting on one learns of a grant committed through the
/// other from its NOTIFY, not from the ten-second re-read that covers gaps in listening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instances_commit_wakes_long_polls_and_streams_at_once() {
    let Some(a) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let b = spawn_on(Backend::Postgres, a.test_db.clone()).await;
    a.seed_catalog("acme").await;
    let mut stream = Stream::open(&b, "/v1/apps/acme/customers/u2/events", Some("0")).await;
    let poll = {
        let client = b.client.clone();
        let url = format!(
            "{}/v1/apps/acme/customers/u1?wait=30&after_version=0",
            b.addr
        );
        tokio::spawn(async move {
            let res = client.get(url).bearer_auth(ADMIN_KEY).send().await.unwrap();
            (Instant::now(), res.json::<Value>().await.unwrap())
        })
    };
    // Let the poll and the listener settle before committing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed = Instant::now();
    grant(&a, "u1").await;
    let (answered, snap) = poll.await.unwrap();
    assert_eq!(snap["version"], 1);
    assert!(
        answered.duration_since(committed) < Duration::from_secs(5),
        "woken by the notification, not by the re-read: {:?}",
        answered.duration_since(committed)
    );
    grant(&a, "u2").await;
    let (_, id, _) = stream.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(id, "1");
    b.stop().await;
}

/// Revokes key `id` of app `acme` through `app`.
async fn revoke_key(app: &TestApp, id: &str) {
    app.delete(&format!("/v1/apps/acme/keys/{id}"), None)
        .await
        .expect(204);
}

both!(
    a_revoked_key_ends_its_event_streams_and_long_polls,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let (reader_id, reader) = new_key(&app, "secret", &["read"]).await;
        let (pk_id, pk) = new_key(&app, "publishable", &[]).await;
        let mut stream =
            Stream::open_with(&app, "/v1/apps/acme/customers/u1/events", &reader, &[]).await;
        let (_, id, _) = stream.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!(id, "0");
        let mut by_pk =
            Stream::open_with(&app, "/v1/apps/acme/customers/u1/events", &pk, &[]).await;
        by_pk.next(Duration::from_secs(5)).await.unwrap();
        let poll = long_poll(&app, "u1", &reader, &[]);
        // A stream and a poll of a key that stays live see the change.
        let (_, live) = new_key(&app, "secret", &["read"]).await;
        let mut kept =
            Stream::open_with(&app, "/v1/apps/acme/customers/u1/events", &live, &[]).await;
        kept.next(Duration::from_secs(5)).await.unwrap();
        let kept_poll = long_poll(&app, "u1", &live, &[]);
        // Let the poll settle into its wait before the revocation.
        tokio::time::sleep(Duration::from_millis(300)).await;

        revoke_key(&app, &reader_id).await;
        revoke_key(&app, &pk_id).await;
        grant(&app, "u1").await;

        refused_with(poll.await.unwrap(), "key_revoked");
        ended_with(&stream.rest(Duration::from_secs(10)).await, "key_revoked");
        ended_with(&by_pk.rest(Duration::from_secs(10)).await, "key_revoked");
        let (status, body) = kept_poll.await.unwrap();
        assert_eq!((status, &body["version"]), (200, &json!(1)), "{body}");
        let (name, id, _) = kept.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!((name.as_str(), id.as_str()), ("snapshot", "1"));
    }
);

both!(
    a_key_revoked_by_another_process_ends_its_reads_within_seconds,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let (reader_id, reader) = new_key(&app, "secret", &["read"]).await;
        let mut stream =
            Stream::open_with(&app, "/v1/apps/acme/customers/u1/events", &reader, &[]).await;
        stream.next(Duration::from_secs(5)).await.unwrap();
        let poll = long_poll(&app, "u1", &reader, &[]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // As `purchase-gateway keys revoke` does: its own connection, none of this server's state.
        let cli = gateway::db::Db::connect(&app.test_db.url).await.unwrap();
        assert!(
            gateway::db::keys::revoke_any(&cli, &reader_id, t0())
                .await
                .unwrap()
        );
        cli.close().await;
        // PostgreSQL announces it; on SQLite the server finds it when it reads the key again.
        let within = gateway::db::keys::LIVE_RECHECK * 4;
        refused_with(
            tokio::time::timeout(within, poll).await.unwrap().unwrap(),
            "key_revoked",
        );
        ended_with(&stream.rest(within).await, "key_revoked");
    }
);

/// Two gateways on one PostgreSQL: a key revoked through one ends the reads it holds open on the
/// other before a later change reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_another_instance_ends_its_reads_there() {
    let Some(a) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let b = spawn_on(Backend::Postgres, a.test_db.clone()).await;
    a.seed_catalog("acme").await;
    let (reader_id, reader) = new_key(&a, "secret", &["read"]).await;
    let mut stream = Stream::open_with(&b, "/v1/apps/acme/customers/u1/events", &reader, &[]).await;
    stream.next(Duration::from_secs(5)).await.unwrap();
    let poll = long_poll(&b, "u1", &reader, &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    revoke_key(&a, &reader_id).await;
    grant(&a, "u1").await;
    refused_with(poll.await.unwrap(), "key_revoked");
    ended_with(&stream.rest(Duration::from_secs(10)).await, "key_revoked");
    b.stop().await;
}

both!(
    a_customer_token_ends_its_event_stream_and_long_poll_when_it_expires,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let idp = crate::customers::IdentityProvider::start().await;
        app.patch(
            "/v1/apps/acme",
            json!({"customer_auth": {"mode": "jwt", "jwks_url": idp.jwks_url}}),
        )
        .await
        .expect(200);
        let (_, pk) = new_key(&app, "publishable", &[]).await;
        let now = crate::customers::unix_now();
        let short = idp.token(json!({"sub": "u1", "exp": now + 2}));
        let long = idp.token(json!({"sub": "u1", "exp": now + 600}));
        let path = "/v1/apps/acme/customers/u1/events";
        let mut stream =
            Stream::open_with(&app, path, &pk, &[("x-customer-token", short.as_str())]).await;
        let (name, _, _) = stream.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!(name, "snapshot");
        let poll = long_poll(&app, "u1", &pk, &[("x-customer-token", short.as_str())]);
        let mut kept =
            Stream::open_with(&app, path, &pk, &[("x-customer-token", long.as_str())]).await;
        kept.next(Duration::from_secs(5)).await.unwrap();

        refused_with(poll.await.unwrap(), "customer_token_expired");
        ended_with(
            &stream.rest(Duration::from_secs(20)).await,
            "customer_token_expired",
        );
        // A stream whose token is still good goes on.
        grant(&app, "u1").await;
        let (name, id, _) = kept.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!((name.as_str(), id.as_str()), ("snapshot", "1"));
    }
);
