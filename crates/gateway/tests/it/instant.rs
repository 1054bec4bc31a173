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
        let mut req = app
            .client
            .get(format!("{}{path}", app.addr))
            .bearer_auth(ADMIN_KEY);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
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
