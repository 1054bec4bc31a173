//! Change signals: after a commit changes a customer's snapshot, the writer publishes it here, and
//! long polls waiting on that customer wake at once. This is the in-process half; waiters also re-read
//! the database at an interval, which is how a change committed by another instance reaches them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use gateway_core::{AppId, AppUserId};
use tokio::sync::Notify;

/// Waiters by (app, customer), and the delivery worker's wake-up.
#[derive(Debug, Default)]
pub struct Changes {
    waiters: Mutex<HashMap<(String, String), Weak<Notify>>>,
    outbox: Arc<Notify>,
}

impl Changes {
    /// The signal for one customer; keep it while waiting.
    pub fn subscribe(&self, app: &AppId, customer: &AppUserId) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        // Forget the signals nobody holds any more, so the map stays as small as the waiting set.
        waiters.retain(|_, w| w.strong_count() > 0);
        let key = (app.to_string(), customer.to_string());
        if let Some(n) = waiters.get(&key).and_then(Weak::upgrade) {
            return n;
        }
        let n = Arc::new(Notify::new());
        waiters.insert(key, Arc::downgrade(&n));
        n
    }

    /// The signal given after every commit that changed a customer, and so may have written outbox
    /// events: the delivery worker waits on it between its ticks.
    pub fn outbox_signal(&self) -> Arc<Notify> {
        self.outbox.clone()
    }

    /// Wakes every waiter on a customer, and the delivery worker.
    pub fn publish(&self, app: &AppId, customer: &AppUserId) {
        self.outbox.notify_one();
        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = waiters
            .get(&(app.to_string(), customer.to_string()))
            .and_then(Weak::upgrade)
        {
            n.notify_waiters();
        }
    }
}
