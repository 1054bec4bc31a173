//! The return page of a web purchase, `GET /pay/{app}/return?session_id=…`: where Stripe Checkout's
//! `success_url` may send the customer. It shows "Processing…" until the gateway has granted the
//! purchase, then sends the customer on to the product's `url` (for Open edX, the course); or says
//! plainly that the payment is still clearing, failed, or that the checkout expired. It is rendered
//! on the server and asks `GET /pay/{app}/status?session_id=…&wait=…` (a long poll) from a few
//! lines of inline script; without script it reloads itself. Nothing is loaded from elsewhere.

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{AppState, error::ApiError, parse_app};
use crate::service::{apps, checkout};

#[derive(Debug, Deserialize)]
pub struct ReturnQuery {
    #[serde(default)]
    session_id: Option<String>,
    /// Seconds the status may wait for a change (at most 25).
    #[serde(default)]
    wait: Option<u64>,
}

/// The longest the page's status call waits.
const MAX_WAIT_SECS: u64 = 25;

/// `GET /pay/{app}/status`: where a checkout stands, as JSON.
pub async fn status(
    State(s): State<AppState>,
    Path(app): Path<String>,
    Query(q): Query<ReturnQuery>,
) -> Result<Json<checkout::CheckoutStatus>, ApiError> {
    let app = apps::get(&s.cx.db, &parse_app(&app)?).await?;
    let session = q.session_id.unwrap_or_default();
    let wait = std::time::Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let answer = checkout::status(&s.cx, &app, &session, wait, s.clock.as_ref()).await?;
    Ok(Json(answer))
}

/// `GET /pay/{app}/return`: the page.
pub async fn return_page(
    State(s): State<AppState>,
    Path(app_raw): Path<String>,
    Query(q): Query<ReturnQuery>,
) -> Response {
    let session = q.session_id.clone().unwrap_or_default();
    let found = match parse_app(&app_raw) {
        Ok(id) => apps::get(&s.cx.db, &id).await.map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let now = match found {
        Ok(app) => checkout::status(
            &s.cx,
            &app,
            &session,
            std::time::Duration::ZERO,
            s.clock.as_ref(),
        )
        .await
        .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let (code, body) = match now {
        Ok(st) => (StatusCode::OK, page(&app_raw, &session, &st)),
        Err(e) => (
            e.status,
            shell(
                "We could not find this payment",
                &format!(
                    "<p>{}</p><p>If you paid, your access will appear in the app shortly.</p>",
                    escape(&e.message)
                ),
                "",
            ),
        ),
    };
    let mut res = (code, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The page for a checkout's status.
fn page(app: &str, session: &str, st: &checkout::CheckoutStatus) -> String {
    let status_url = format!(
        "/pay/{}/status?session_id={}",
        percent(app),
        percent(session)
    );
    match st.status {
        "granted" => {
            let (go, head) = match &st.redirect_url {
                Some(url) => (
                    format!(
                        "<p>Taking you there now… <a id=\"go\" href=\"{0}\">Continue</a></p>",
                        escape(url)
                    ),
                    format!(
                        "<meta http-equiv=\"refresh\" content=\"1;url={}\">",
                        escape(url)
                    ),
                ),
                None => (
                    "<p>You can go back to the app: your purchase is there.</p>".to_owned(),
                    String::new(),
                ),
            };
            shell(
                "Payment received",
                &format!("<p id=\"state\" data-status=\"granted\">Your purchase is ready.</p>{go}"),
                &head,
            )
        }
        "pending" => shell(
            "Payment processing",
            "<p id=\"state\" data-status=\"pending\">Your payment is still being processed (bank \
             payments can take a few days). You will get access as soon as it clears; there is \
             nothing more to do.</p>",
            &poller(&status_url, "pending"),
        ),
        "failed" => shell(
            "Payment failed",
            "<p id=\"state\" data-status=\"failed\">Your payment did not go through, so nothing was \
             charged. You can try again from the course page.</p>",
            "",
        ),
        "expired" => shell(
            "Checkout expired",
            "<p id=\"state\" data-status=\"expired\">This checkout expired before it was paid. \
             Start again from the course page.</p>",
            "",
        ),
        _ => shell(
            "Processing…",
            "<p id=\"state\" data-status=\"processing\">Processing… We are confirming your payment \
             with Stripe; this page moves on by itself.</p>",
            &poller(&status_url, "processing"),
        ),
    }
}

/// Inline script that long-polls the status and reloads the page when it changes; a reload every
/// few seconds without script.
fn poller(status_url: &str, first: &str) -> String {
    format!(
        r#"<noscript><meta http-equiv="refresh" content="3"></noscript>
<script>
(function () {{
  var url = "{url}&wait=20";
  var first = "{first}";
  function look() {{
    fetch(url, {{cache: "no-store"}}).then(function (r) {{ return r.json(); }}).then(function (s) {{
      if (s.status && s.status !== first) {{ location.reload(); }} else {{ setTimeout(look, 500); }}
    }}, function () {{ setTimeout(look, 2000); }});
  }}
  look();
}})();
</script>"#,
        url = status_url.replace('"', "%22"),
        first = first,
    )
}

/// A whole page around `body`.
fn shell(title: &str, body: &str, head: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>{head}
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}}h1{{font-size:1.4rem}}</style>
</head><body><h1>{title}</h1>{body}</body></html>"#
    )
}

/// `text` safe in HTML text and attributes.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `text` safe in a URL's path or query.
fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_urls_are_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(percent("cs_test_a1"), "cs_test_a1");
        assert_eq!(percent("a b&c\"<"), "a%20b%26c%22%3C");
    }
}
