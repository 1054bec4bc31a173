//! Unit tests of the fake App Store Server API's private helpers: paging, query and body checks,
//! subscription status.

use super::{
    http::{HistoryQuery, check_consumption_v1, check_consumption_v2},
    *,
};

#[test]
fn pages_follow_their_tokens_and_refuse_others() {
    let items: Vec<u32> = (0..5).collect();
    let (first, more, next) = page(&items, None, 2, false).unwrap();
    assert_eq!((first, more, next.as_str()), (vec![0, 1], true, "sim-2"));
    let (last, more, next) = page(&items, Some("sim-4"), 2, false).unwrap();
    assert_eq!((last, more, next.as_str()), (vec![4], false, "sim-5"));
    let (empty, more, _) = page(&items, Some("sim-9"), 2, false).unwrap();
    assert!(empty.is_empty() && !more);
    assert!(page(&items, Some("garbage"), 2, false).is_none());
    let (_, more, next) = page(&items, Some("sim-6"), 2, true).unwrap();
    assert!(more && next == "sim-8", "a broken server never ends");
}

#[test]
fn history_filters_read_apples_query() {
    let pairs = |q: &[(&str, &str)]| -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let q = HistoryQuery::parse(&pairs(&[
        ("productType", "CONSUMABLE"),
        ("revoked", "False"),
        ("startDate", "10"),
    ]))
    .unwrap();
    let coin = json!({"type": "Consumable", "purchaseDate": 20});
    assert!(q.matches(&coin));
    assert!(!q.matches(&json!({"type": "Consumable", "purchaseDate": 5})));
    assert!(!q.matches(&json!({"type": "Consumable", "purchaseDate": 20, "revocationDate": 30})));
    assert!(!q.matches(&json!({"type": "Non-Consumable", "purchaseDate": 20})));
    for bad in [
        ("sort", "UP"),
        ("productType", "GAME"),
        ("revoked", "maybe"),
        ("startDate", "x"),
    ] {
        assert!(HistoryQuery::parse(&pairs(&[bad])).is_err(), "{bad:?}");
    }
    assert!(HistoryQuery::parse(&pairs(&[("startDate", "5"), ("endDate", "4")])).is_err());
}

#[test]
fn consumption_bodies_are_checked_as_apple_checks_them() {
    let v2 = json!({"customerConsented": true, "sampleContentProvided": false, "deliveryStatus": "DELIVERED", "consumptionPercentage": 50000, "refundPreference": "GRANT_FULL"});
    let coins = "Consumable";
    assert!(check_consumption_v2(&v2, coins).is_ok());
    let mut no_consent = v2.clone();
    no_consent["customerConsented"] = false.into();
    assert!(check_consumption_v2(&no_consent, coins).is_err());
    let mut too_much = v2.clone();
    too_much["consumptionPercentage"] = 100_001.into();
    assert!(check_consumption_v2(&too_much, coins).is_err());
    let mut no_delivery = v2.clone();
    no_delivery
        .as_object_mut()
        .unwrap()
        .remove("deliveryStatus");
    assert!(check_consumption_v2(&no_delivery, coins).is_err());
    // An auto-renewable subscription takes no share: Apple works it out.
    let sub = "Auto-Renewable Subscription";
    assert!(check_consumption_v2(&v2, sub).is_err());
    let mut no_share = v2.clone();
    no_share
        .as_object_mut()
        .unwrap()
        .remove("consumptionPercentage");
    assert!(check_consumption_v2(&no_share, sub).is_ok());
    // A prorated refund preference needs a share above nothing.
    let mut prorated = v2.clone();
    prorated["refundPreference"] = "GRANT_PRORATED".into();
    assert!(check_consumption_v2(&prorated, coins).is_ok());
    prorated["consumptionPercentage"] = 0.into();
    assert!(check_consumption_v2(&prorated, coins).is_err());
    prorated
        .as_object_mut()
        .unwrap()
        .remove("consumptionPercentage");
    assert!(check_consumption_v2(&prorated, "Non-Consumable").is_err());
    let v1 = json!({"customerConsented": true, "consumptionStatus": 1, "platform": 2, "sampleContentProvided": false, "deliveryStatus": 3,
        "appAccountToken": "7389a31a-fb6d-4569-a2a6-db7d85d84813", "accountTenure": 4, "playTime": 5, "lifetimeDollarsRefunded": 6,
        "lifetimeDollarsPurchased": 7, "userStatus": 4, "refundPreference": 3});
    assert!(check_consumption_v1(&v1).is_ok());
    let mut bad_token = v1.clone();
    bad_token["appAccountToken"] = "not-a-uuid".into();
    assert!(check_consumption_v1(&bad_token).is_err());
    let mut bad_time = v1;
    bad_time["playTime"] = 8.into();
    assert!(check_consumption_v1(&bad_time).is_err());
}

#[test]
fn subscription_status_follows_the_transaction_and_renewal() {
    let now = 1_000;
    let active = json!({"expiresDate": 2_000});
    assert_eq!(AppStoreServer::subscription_status(&active, None, now), 1);
    let expired = json!({"expiresDate": 500});
    assert_eq!(AppStoreServer::subscription_status(&expired, None, now), 2);
    let retry = json!({"isInBillingRetryPeriod": true});
    assert_eq!(
        AppStoreServer::subscription_status(&expired, Some(&retry), now),
        3
    );
    let grace = json!({"isInBillingRetryPeriod": true, "gracePeriodExpiresDate": 1_500});
    assert_eq!(
        AppStoreServer::subscription_status(&expired, Some(&grace), now),
        4
    );
    let refunded = json!({"expiresDate": 2_000, "revocationDate": 900});
    assert_eq!(AppStoreServer::subscription_status(&refunded, None, now), 5);
}
