//! Double-entry rules for consumable balances. Every movement is a pair of legs that sum to zero: the
//! customer's account against the currency's issuance account (credits and clawbacks) or its spend
//! account (spends). A customer's balance is the sum of their account's legs, so it is never stored
//! apart from the entries that explain it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{AppUserId, Currency};

/// What caused a ledger movement. Purchases and grants are derived from facts (their net is a function
/// of state); spends are the customer's own acts, recorded once under their idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum LedgerSource {
    Purchase(String),
    Grant(String),
    Spend(String),
}

impl LedgerSource {
    pub fn kind(&self) -> &'static str {
        match self {
            LedgerSource::Purchase(_) => "purchase",
            LedgerSource::Grant(_) => "grant",
            LedgerSource::Spend(_) => "spend",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            LedgerSource::Purchase(id) | LedgerSource::Grant(id) | LedgerSource::Spend(id) => id,
        }
    }

    pub fn from_parts(kind: &str, id: String) -> Option<Self> {
        Some(match kind {
            "purchase" => LedgerSource::Purchase(id),
            "grant" => LedgerSource::Grant(id),
            "spend" => LedgerSource::Spend(id),
            _ => return None,
        })
    }
}

impl fmt::Display for LedgerSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.id())
    }
}

/// One leg of a ledger transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leg {
    pub account: String,
    pub amount: i64,
}

/// The customer's account for a currency.
pub fn customer_account(customer: &AppUserId, currency: &Currency) -> String {
    format!("customer:{customer}:{currency}")
}

/// The two legs of a movement of `amount` (positive: to the customer) for `source`.
pub fn legs(
    customer: &AppUserId,
    currency: &Currency,
    source: &LedgerSource,
    amount: i64,
) -> [Leg; 2] {
    let counter = match source {
        LedgerSource::Spend(_) => format!("spent:{currency}"),
        LedgerSource::Purchase(_) | LedgerSource::Grant(_) => format!("issued:{currency}"),
    };
    [
        Leg {
            account: customer_account(customer, currency),
            amount,
        },
        Leg {
            account: counter,
            amount: -amount,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legs_balance() {
        let c = AppUserId::parse("u1").unwrap();
        let cur = Currency::parse("COINS").unwrap();
        for source in [
            LedgerSource::Purchase("p".into()),
            LedgerSource::Spend("s".into()),
        ] {
            let l = legs(&c, &cur, &source, -70);
            assert_eq!(l[0].amount + l[1].amount, 0);
            assert_eq!(l[0].account, "customer:u1:COINS");
        }
    }
}
