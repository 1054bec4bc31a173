//! Unit tests of private helpers.

use serde_json::json;

use super::{api::parse_form, books::advance, signature, signature_header};
use crate::stripe::Interval;

#[test]
fn signs_the_reference_vectors() {
    // store-formats S1: the compact body, and the 125-byte pretty body.
    assert_eq!(
        signature(
            "whsec_test_secret",
            1_700_000_000,
            br#"{"id":"evt_1","object":"event"}"#
        ),
        "0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd"
    );
    let pretty = "{\n  \"id\": \"evt_test_webhook\",\n  \"object\": \"event\",\n  \"data\": { \"object\": { \"id\": \"rdr_123\", \"object\": \"terminal.reader\" } }\n}";
    assert_eq!(pretty.len(), 125);
    assert_eq!(
        signature("whsec_test_secret", 1_700_000_000, pretty.as_bytes()),
        "3bfab77baf5f7b6991a46c9b53b6547d7afc56148b10468fcad9f35c1992ffbd"
    );
}

#[test]
fn a_header_has_one_v1_per_secret() {
    let secrets = ["whsec_test_secret".to_owned(), "whsec_other".to_owned()];
    let header = signature_header(
        &secrets,
        1_700_000_000,
        br#"{"id":"evt_1","object":"event"}"#,
    );
    assert_eq!(
        header,
        format!(
            "t=1700000000,v1=0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd,v1={}",
            signature(
                "whsec_other",
                1_700_000_000,
                br#"{"id":"evt_1","object":"event"}"#
            )
        )
    );
}

#[test]
fn reads_bracket_notation() {
    let form = parse_form(
        b"mode=payment&line_items[0][price]=price_1&line_items[0][quantity]=2&metadata[user]=u%201&expand[]=a&expand[]=b",
    )
    .unwrap();
    assert_eq!(
        form,
        json!({"mode": "payment", "line_items": {"0": {"price": "price_1", "quantity": "2"}},
            "metadata": {"user": "u 1"}, "expand": {"0": "a", "1": "b"}})
    );
    assert!(parse_form(b"a[b=1").is_err());
    assert!(parse_form(b"a=1&a[b]=2").is_err());
    assert!(parse_form(b"[b]=2").is_err());
}

#[test]
fn periods_follow_the_calendar() {
    // 2027-01-31T10:00:00Z + 1 month = 2027-02-28T10:00:00Z.
    let jan31 = 1_801_389_600;
    assert_eq!(advance(jan31, Interval::Month, 1), 1_803_808_800);
    assert_eq!(advance(jan31, Interval::Week, 2), jan31 + 14 * 86_400);
    assert_eq!(advance(jan31, Interval::Day, 1), jan31 + 86_400);
    // A year: 2028-01-31T10:00:00Z.
    assert_eq!(advance(jan31, Interval::Year, 1), jan31 + 365 * 86_400);
}
