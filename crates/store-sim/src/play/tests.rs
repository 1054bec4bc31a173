//! Unit tests of the simulator's private helpers: Google's datetime and money formats, order ids,
//! purchase tokens, the DeveloperNotification members. The HTTP surfaces are tested from
//! `crates/store-sim/tests/play.rs`.

use serde_json::json;

use super::{
    books::{Books, money, new_purchase_token},
    push::Rtdn,
    rfc3339,
};

#[test]
fn datetimes_are_rfc3339_utc_with_milliseconds() {
    assert_eq!(rfc3339(1_412_262_083_045), "2014-10-02T15:01:23.045Z");
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
}

#[test]
fn money_has_int64_units_as_a_string_and_nanos() {
    assert_eq!(
        money(4_990_000),
        json!({"currencyCode": "USD", "units": "4", "nanos": 990_000_000})
    );
    assert_eq!(
        money(990_000),
        json!({"currencyCode": "USD", "units": "0", "nanos": 990_000_000})
    );
}

#[test]
fn order_ids_are_shaped_like_googles_and_distinct() {
    let mut books = Books::new();
    let a = books.new_order_id();
    let b = books.new_order_id();
    assert_ne!(a, b);
    let rest = a.strip_prefix("GPA.").unwrap();
    let groups: Vec<usize> = rest.split('-').map(str::len).collect();
    assert_eq!(groups, vec![4, 4, 4, 5], "{a}");
    assert!(rest.chars().all(|c| c.is_ascii_digit() || c == '-'), "{a}");
}

#[test]
fn purchase_tokens_have_no_colon_or_slash() {
    let token = new_purchase_token();
    assert!(token.contains(".AO-J1O"), "{token}");
    assert!(token.len() > 100, "{token}");
    assert!(!token.contains(':') && !token.contains('/'), "{token}");
}

#[test]
fn each_notification_has_exactly_one_member() {
    let members = [
        "subscriptionNotification",
        "oneTimeProductNotification",
        "voidedPurchaseNotification",
        "pendingRefundReviewNotification",
        "testNotification",
    ];
    let rtdns = [
        Rtdn::Subscription {
            notification_type: 4,
            token: "t".into(),
        },
        Rtdn::OneTime {
            notification_type: 1,
            token: "t".into(),
            sku: "coins".into(),
        },
        Rtdn::Voided {
            token: "t".into(),
            order_id: "GPA.1".into(),
            product_type: 2,
            refund_type: 1,
        },
        Rtdn::RefundReview {
            pending_refund_token: "p".into(),
            order_id: "GPA.1".into(),
            account_id: Some("user-1".into()),
            profile_id: None,
        },
        Rtdn::Test,
    ];
    for (rtdn, member) in rtdns.iter().zip(members) {
        let n = rtdn.notification("com.acme", 1_700_000_000_123);
        assert_eq!(n["version"], "1.0");
        assert_eq!(n["packageName"], "com.acme");
        assert_eq!(n["eventTimeMillis"], "1700000000123");
        let present: Vec<&str> = members
            .iter()
            .copied()
            .filter(|m| n.get(*m).is_some())
            .collect();
        assert_eq!(present, vec![member]);
    }
    let sub = Rtdn::Subscription {
        notification_type: 4,
        token: "t".into(),
    }
    .notification("com.acme", 0);
    assert!(
        sub["subscriptionNotification"]
            .get("subscriptionId")
            .is_none()
    );
    let review = rtdns[3].notification("com.acme", 0);
    assert_eq!(
        review["pendingRefundReviewNotification"],
        json!({"version": "1.0", "pendingRefundToken": "p", "orderId": "GPA.1",
            "refundReason": 2, "obfuscatedAccountId": "user-1"})
    );
}
