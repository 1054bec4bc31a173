//! The simulated App Store's public types, tested from outside (its actions are tested in
//! `src/apple/store/tests.rs`, which looks into the store's books).

use store_sim::apple::store::{Period, ProductKind};

const DAY: i64 = 86_400_000;

#[test]
fn periods_read_iso_8601_and_add_calendar_months() {
    assert_eq!("P1M".parse::<Period>().unwrap(), Period::ONE_MONTH);
    for p in ["P1W", "P3M", "P1Y", "P3D", "PT5M", "PT1H", "PT30S"] {
        assert_eq!(p.parse::<Period>().unwrap().to_string(), p);
    }
    for bad in ["", "P", "1M", "P0M", "PM", "P1X", "PT1D", "P1.5M"] {
        assert!(bad.parse::<Period>().is_err(), "{bad:?}");
    }
    // 2027-01-31T00:00:00Z plus a month is the last day of February.
    let jan31 = 1_801_353_600_000;
    assert_eq!(Period::ONE_MONTH.after(jan31), jan31 + 28 * DAY);
    assert_eq!(
        "P1Y".parse::<Period>().unwrap().after(jan31),
        jan31 + 365 * DAY
    );
    assert_eq!("PT5M".parse::<Period>().unwrap().after(0), 300_000);
    assert!(ProductKind::parse("consumable", Some("P1M")).is_err());
    assert_eq!(
        ProductKind::parse("auto-renewable", None).unwrap(),
        ProductKind::AutoRenewable(Period::ONE_MONTH)
    );
}
