//! The simulator's clock.

use std::sync::Arc;

use store_sim::SimClock;

#[test]
fn clones_share_one_time() {
    let clock = SimClock::fixed(1_000);
    let other = clock.clone();
    clock.advance(500);
    assert_eq!(other.now_ms(), 1_500);
    other.set(42);
    assert_eq!(clock.now_ms(), 42);
    let followed = Arc::new(std::sync::atomic::AtomicI64::new(7));
    let source = followed.clone();
    let linked = SimClock::from_fn(move || source.load(std::sync::atomic::Ordering::SeqCst));
    followed.store(9, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(linked.now_ms(), 9);
    assert!(SimClock::system().now_ms() > 1_700_000_000_000);
}
