//! The audit log's hash chain. Each customer has one chain: a row's hash covers the previous row's hash
//! and the row's own canonical content, so changing or removing any row breaks every hash after it. One
//! chain per customer, not one for the whole gateway, so that writers for different customers never wait
//! on each other.

use sha2::{Digest, Sha256};

/// The hash of the first row's "previous row".
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The fields of an audit row that the chain covers.
#[derive(Debug, Clone, Copy)]
pub struct AuditContent<'a> {
    pub seq: i64,
    pub at_millis: i64,
    pub kind: &'a str,
    pub cause: &'a str,
    pub detail_json: &'a str,
}

/// `sha256(prev_hash || 0x00 || seq || 0x00 || at || 0x00 || kind || 0x00 || cause || 0x00 || detail)`,
/// hex. The separators keep field boundaries unambiguous.
pub fn chain_hash(prev_hash: &str, row: AuditContent<'_>) -> String {
    let mut h = Sha256::new();
    for part in [
        prev_hash.as_bytes(),
        row.seq.to_string().as_bytes(),
        row.at_millis.to_string().as_bytes(),
        row.kind.as_bytes(),
        row.cause.as_bytes(),
        row.detail_json.as_bytes(),
    ] {
        h.update(part);
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// Checks a chain in sequence order; returns the index of the first row that does not match.
pub fn verify_chain<'a>(
    rows: impl IntoIterator<Item = (AuditContent<'a>, &'a str)>,
) -> Result<(), usize> {
    let mut prev = GENESIS.to_owned();
    for (i, (content, hash)) in rows.into_iter().enumerate() {
        let expected = chain_hash(&prev, content);
        if expected != hash {
            return Err(i);
        }
        prev = expected;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampering_breaks_the_chain() {
        let rows = [
            AuditContent {
                seq: 1,
                at_millis: 10,
                kind: "a",
                cause: "c",
                detail_json: "{}",
            },
            AuditContent {
                seq: 2,
                at_millis: 20,
                kind: "b",
                cause: "c",
                detail_json: "{\"x\":1}",
            },
        ];
        let h1 = chain_hash(GENESIS, rows[0]);
        let h2 = chain_hash(&h1, rows[1]);
        assert!(verify_chain([(rows[0], h1.as_str()), (rows[1], h2.as_str())]).is_ok());
        let forged = AuditContent {
            detail_json: "{\"x\":2}",
            ..rows[1]
        };
        assert_eq!(
            verify_chain([(rows[0], h1.as_str()), (forged, h2.as_str())]),
            Err(1)
        );
    }
}
