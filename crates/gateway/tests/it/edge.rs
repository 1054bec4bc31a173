//! The edge: what a caller controls never reaches a metric label, a database key or a text column
//! unchecked.

use std::collections::BTreeSet;

use reqwest::Method;

use crate::helpers::*;

/// `/metrics`, and its request series that a request with an invented method, or a GET of a path no
/// route takes, can land in.
async fn request_series(app: &TestApp) -> (String, BTreeSet<String>) {
    let text = app
        .request(Method::GET, "/metrics", None, None, &[])
        .await
        .expect(200)
        .as_str()
        .unwrap()
        .to_owned();
    let series = text
        .lines()
        .filter(|l| l.starts_with("gateway_http_"))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_owned()))
        .filter(|s| {
            let method = s
                .split_once("method=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map_or("", |(m, _)| m);
            let standard = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
            !standard.contains(&method) || (s.contains("route=\"unmatched\"") && method == "GET")
        })
        .collect();
    (text, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_and_paths_add_no_metric_series() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let send = |method: String, path: String| {
        let client = app.client.clone();
        let url = format!("{}{path}", app.addr);
        async move {
            client
                .request(Method::from_bytes(method.as_bytes()).unwrap(), url)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // One request of each shape first: the bounded series they land in may be new to this process.
    for i in ["warm-up".to_owned(), "warm-up-2".to_owned()] {
        send(format!("PROBE-{i}"), format!("/probe-{i}/x")).await;
        send(format!("PROBE-{i}"), format!("/v1/apps/probe-{i}")).await;
        send("GET".into(), format!("/probe-{i}/x")).await;
    }
    let (_, before) = request_series(&app).await;
    assert!(!before.is_empty());

    // The metrics registry is the process's, shared with tests running beside this one: only the
    // series these requests can land in are compared.
    for i in 0..1000 {
        let status = match i % 3 {
            0 => send(format!("PROBE{i}"), format!("/probe-{i}/x")).await,
            1 => send(format!("PROBE{i}"), format!("/v1/apps/probe-{i}")).await,
            _ => send("GET".into(), format!("/probe-{i}/x")).await,
        };
        assert!(status.is_client_error(), "{i}: {status}");
    }
    let (text, after) = request_series(&app).await;
    let added: Vec<&String> = after.difference(&before).collect();
    assert!(
        added.is_empty(),
        "invented methods and paths added {} series to /metrics, such as {:?}",
        added.len(),
        &added[..added.len().min(3)]
    );
    for invented in ["PROBE1", "probe-2", "PROBE999"] {
        assert!(
            !text.contains(invented),
            "a label carries {invented:?} from a request"
        );
    }
}
