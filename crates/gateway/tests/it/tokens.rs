//! Entitlement tokens, verified as a downstream would: with `jose` (npm), an implementation of its
//! own, against the gateway's `/.well-known/jwks.json`, through a key rotation.

use std::path::PathBuf;

use gateway_core::Clock;
use serde_json::{Value, json};

use crate::{both, helpers::*};

const COURSE: &str = "course-v1:Acme+CS101+2026";

fn jose() -> PathBuf {
    node_package("jose", "5.9.6")
}

/// Verifies `token` with jose against the gateway's JWKS, for audience `aud`, as of `at_secs`;
/// `Ok(payload)` or `Err(jose's error code)`.
fn verify(app: &TestApp, token: &str, aud: &str, at_secs: i64) -> Result<Value, String> {
    let script = r#"
const path = require('path');
const { createRemoteJWKSet, jwtVerify } = require(path.join(process.env.JOSE_DIR, 'node_modules', 'jose'));
const keys = createRemoteJWKSet(new URL(process.env.JWKS_URL));
jwtVerify(process.env.TOKEN, keys, {
  issuer: 'purchase-gateway', audience: process.env.AUD, algorithms: ['ES256'],
  currentDate: new Date(Number(process.env.AT) * 1000),
}).then(
  (r) => console.log(JSON.stringify({ ok: true, payload: r.payload, kid: r.protectedHeader.kid })),
  (e) => console.log(JSON.stringify({ ok: false, error: e.code || e.message })),
);
"#;
    let out = std::process::Command::new("node")
        .args(["-e", script])
        .env("JOSE_DIR", jose())
        .env("JWKS_URL", format!("{}/.well-known/jwks.json", app.addr))
        .env("TOKEN", token)
        .env("AUD", aud)
        .env("AT", at_secs.to_string())
        .output()
        .expect("node runs");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "node said {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    if answer["ok"] == true {
        let mut payload = answer["payload"].clone();
        payload["kid"] = answer["kid"].clone();
        Ok(payload)
    } else {
        Err(answer["error"].as_str().unwrap_or_default().to_owned())
    }
}

async fn token_of(app: &TestApp, customer: &str) -> (String, Value) {
    let snap = app
        .get(&format!("/v1/apps/acme/customers/{customer}"))
        .await
        .expect(200);
    (snap["entitlement_token"].as_str().unwrap().to_owned(), snap)
}

both!(
    entitlement_tokens_verify_with_an_independent_jose_library_through_a_rotation,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        app.post(
            "/v1/apps/acme/customers/u1/grants",
            json!({"product_id": "cs101", "reason": "scholarship"}),
        )
        .await
        .expect(201);
        let now = || app.clock.now().millis() / 1000;
        let (first, snap) = token_of(&app, "u1").await;
        let claims = verify(&app, &first, "acme", now()).expect("a fresh token verifies");
        assert_eq!(claims["sub"], "u1");
        assert_eq!(claims["aud"], "acme");
        assert_eq!(claims["version"], snap["version"]);
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            300
        );
        let ents = claims["entitlements"].as_array().unwrap();
        assert_eq!(ents.len(), 1);
        assert_eq!(ents[0]["id"], COURSE);
        assert_eq!(ents[0]["status"], "active");
        assert_eq!(ents[0]["attributes"]["course_id"], COURSE);
        let old_kid = claims["kid"].as_str().unwrap().to_owned();

        // What a verifier must refuse.
        let parts: Vec<&str> = first.split('.').collect();
        let (_, other_snap) = token_of(&app, "u2").await;
        let other = other_snap["entitlement_token"].as_str().unwrap();
        let spliced = format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert!(
            verify(&app, &spliced, "acme", now()).is_err(),
            "another token's claims"
        );
        assert!(
            verify(&app, &first, "globex", now()).is_err(),
            "another audience"
        );
        assert_eq!(
            verify(&app, &first, "acme", now() + 301),
            Err("ERR_JWT_EXPIRED".into())
        );

        // A rotation: the new key signs; the old one stays published for the overlap.
        app.post("/v1/signing_keys/rotate", json!({"overlap_seconds": 10}))
            .await
            .error(400, "invalid_overlap");
        let rotated = app
            .post("/v1/signing_keys/rotate", json!({"overlap_seconds": 600}))
            .await
            .expect(200);
        let new_kid = rotated["kid"].as_str().unwrap().to_owned();
        assert_ne!(new_kid, old_kid);
        let (second, _) = token_of(&app, "u1").await;
        assert_eq!(
            verify(&app, &second, "acme", now()).unwrap()["kid"],
            new_kid.as_str()
        );
        assert!(
            verify(&app, &first, "acme", now()).is_ok(),
            "during the overlap"
        );
        let set = app.get("/.well-known/jwks.json").await.expect(200);
        let kids: Vec<&str> = set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids.len(), 2);
        assert!(kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()));
        assert!(!set.to_string().contains("\"d\""), "no private part: {set}");

        app.clock.advance_millis(601_000);
        let set = app.get("/.well-known/jwks.json").await.expect(200);
        assert_eq!(set["keys"].as_array().unwrap().len(), 1);
        assert_eq!(
            verify(&app, &first, "acme", now() - 601),
            Err("ERR_JWKS_NO_MATCHING_KEY".into()),
            "the old key is retired"
        );
    }
);

both!(
    only_an_admin_key_rotates_the_signing_key,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let key = app.key("acme", "secret", &["catalog", "read"]).await;
        let res = app
            .client
            .post(format!("{}/v1/signing_keys/rotate", app.addr))
            .bearer_auth(key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403);
    }
);
