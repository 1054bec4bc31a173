//! Text the gateway keeps. Every identifier and free-text field that is not an id newtype of [`ids`]
//! follows a [`TextRule`]: a length in characters and a regular expression, written once here and
//! used both by the server's check and by the OpenAPI document (`minLength`, `maxLength`, `pattern`),
//! so the two cannot drift apart. No rule admits NUL, which PostgreSQL cannot store; only PEM and JSON
//! text admits the line breaks and tabs such files hold, and no rule admits another control character.
//!
//! The patterns use only what ECMA-262 (the OpenAPI document's dialect), Python's `re` (clients'
//! generators) and the `regex` crate read alike: anchors, classes of `\xHH` and `\uHHHH` escapes,
//! groups and repetition; no lookaround and no `\s` (whose meaning differs between them).
//!
//! [`ids`]: crate::ids

use std::{fmt, sync::OnceLock};

use regex::Regex;

/// A rule for one kind of text.
#[derive(Debug)]
pub struct TextRule {
    /// What the text must be, for messages and the document: "1 to 1000 characters, not blank".
    pub what: &'static str,
    pub min: usize,
    pub max: usize,
    /// Anchored; see the module's note on the dialect.
    pub pattern: &'static str,
    compiled: OnceLock<Regex>,
}

/// Why text was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextError {
    TooShort {
        min: usize,
    },
    TooLong {
        max: usize,
    },
    /// A control character (NUL included) where the rule takes none.
    Control(char),
    /// Against the rule's pattern.
    Shape(&'static str),
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::TooShort { min: 1 } => f.write_str("must not be empty"),
            TextError::TooShort { min } => write!(f, "must be at least {min} characters"),
            TextError::TooLong { max } => write!(f, "is longer than {max} characters"),
            TextError::Control(c) => write!(
                f,
                "may not contain the control character U+{:04X}",
                u32::from(*c)
            ),
            TextError::Shape(what) => write!(f, "must be {what}"),
        }
    }
}

impl TextRule {
    pub const fn new(what: &'static str, min: usize, max: usize, pattern: &'static str) -> Self {
        Self {
            what,
            min,
            max,
            pattern,
            compiled: OnceLock::new(),
        }
    }

    fn regex(&self) -> &Regex {
        self.compiled
            .get_or_init(|| Regex::new(self.pattern).expect("text rules hold valid patterns"))
    }

    /// Checks `value`.
    pub fn check(&self, value: &str) -> Result<(), TextError> {
        let len = value.chars().count();
        if len < self.min {
            return Err(TextError::TooShort { min: self.min });
        }
        if len > self.max {
            return Err(TextError::TooLong { max: self.max });
        }
        // A finer message than the pattern's for the commonest refusal; the pattern decides.
        if let Some(c) = value
            .chars()
            .find(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(TextError::Control(c));
        }
        if !self.regex().is_match(value) {
            return Err(TextError::Shape(self.what));
        }
        Ok(())
    }

    /// The rule as an OpenAPI string schema.
    #[cfg(feature = "openapi")]
    pub fn schema(&self) -> utoipa::openapi::schema::ObjectBuilder {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length((self.min > 0).then_some(self.min))
            .max_length(Some(self.max))
            .pattern(Some(self.pattern))
    }
}

macro_rules! rules {
    ($($(#[$doc:meta])* $name:ident = ($what:expr, $min:expr, $max:expr, $pattern:expr);)*) => {
        $($(#[$doc])* pub static $name: TextRule = TextRule::new($what, $min, $max, $pattern);)*

        /// Every rule, for tests.
        pub fn all() -> Vec<(&'static str, &'static TextRule)> {
            vec![$((stringify!($name), &$name)),*]
        }
    };
}

/// A line with a visible character. Patterns are literals, so the shared classes are spelled out; a
/// test checks them against `CONTROLS` and `SPACES`.
const VISIBLE_LINE: &str = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$";

/// What PEM and JSON files hold: any text but NUL and the controls other than tab and line breaks.
const FILE_TEXT: &str = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$";

/// Any line, blank included.
const ANY_LINE: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

/// Printable ASCII without spaces.
const TOKEN: &str = r"^[!-~]+$";

/// An http or https URL with a host name (its last label starting with a letter, since one of digits
/// reads as an IPv4 address) or a dotted IPv4 address, an optional port, and no fragment.
const URL: &str = concat!(
    r"^https?://",
    r"(([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z]([A-Za-z0-9-]*[A-Za-z0-9])?",
    r"|((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]))",
    r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?",
    r#"([/?][!"$-~]*)?$"#
);

rules! {
    /// A name a person reads: an app's.
    NAME = ("1 to 200 characters with a visible one, and no control characters", 1, 200, VISIBLE_LINE);
    /// Why an operator acted: kept in the audit log.
    REASON = ("1 to 1000 characters with a visible one, and no control characters", 1, 1000, VISIBLE_LINE);
    /// A note such as an endpoint's description; may be empty.
    DESCRIPTION = ("at most 1000 characters, and no control characters", 0, 1000, ANY_LINE);
    /// An id a store or a provider made (SKUs, bundle ids, transaction ids, key ids, issuers): kept
    /// as a database key, so short enough for any index.
    STORE_ID = ("1 to 255 printable ASCII characters without spaces", 1, 255, TOKEN);
    /// An App Store transaction id, which goes into the App Store Server API's URL paths.
    TRANSACTION_ID = ("1 to 64 ASCII letters and digits", 1, 64, r"^[A-Za-z0-9]+$");
    /// A Google Play purchase token (and Play product ids, which go into the same URL paths).
    PURCHASE_TOKEN = ("1 to 1024 ASCII letters, digits, '.', '-' and '_'", 1, 1024, r"^[A-Za-z0-9._-]+$");
    /// A Google Play purchase token or a Stripe Checkout Session id: longer than other store ids.
    STORE_TOKEN = ("1 to 4096 printable ASCII characters without spaces", 1, 4096, TOKEN);
    /// A URL the gateway calls.
    URL_TEXT = ("an http:// or https:// URL with a host name or IPv4 address and no fragment, at most 2048 characters", 1, 2048, URL);
    /// A credential given as text (shared secrets, tokens, authorization header values).
    SECRET_TEXT = ("1 to 4096 characters with a visible one, and no control characters", 1, 4096, VISIBLE_LINE);
    /// A PKCS#8 private key in PEM (Apple's .p8 file).
    PRIVATE_KEY_PEM = ("a PEM private key (`-----BEGIN PRIVATE KEY-----`), at most 16384 characters", 1, 16384,
        r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*-----BEGIN PRIVATE KEY-----[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$");
    /// A certificate in PEM.
    CERTIFICATE_PEM = ("a PEM certificate (`-----BEGIN CERTIFICATE-----`), at most 16384 characters", 1, 16384,
        r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*-----BEGIN CERTIFICATE-----[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$");
    /// A JSON file given as text (a Google service account key).
    JSON_TEXT = ("JSON text of at most 16384 characters", 1, 16384, FILE_TEXT);
    /// Signed data from a store: a compact JWS (StoreKit's `jwsRepresentation`, a notification's
    /// `signedPayload`), or a customer's JWT.
    SIGNED_DATA = ("a compact JWS of at most 65536 characters", 1, 65_536, r"^[A-Za-z0-9_=-]*\.[A-Za-z0-9_=-]*\.[A-Za-z0-9_=-]*$");
    /// A legacy App Store receipt, base64.
    RECEIPT = ("base64 of at most 1000000 characters", 1, 1_000_000, r"^[A-Za-z0-9+/=\r\n]+$");
    /// An ISO 3166 alpha-2 country code, upper case: `CU`.
    COUNTRY = ("an ISO 3166 alpha-2 code in upper case, such as \"CU\"", 2, 2, r"^[A-Z]{2}$");
    /// A buyer's country in either case: `us` or `US`.
    ANY_CASE_COUNTRY = ("an ISO 3166 alpha-2 code such as \"US\"", 2, 2, r"^[A-Za-z]{2}$");
    /// A Standard Webhooks signing secret: `whsec_` and the canonical base64 of 16 to 64 bytes (five
    /// to twenty-one whole groups of four, then the one or two bytes a padded group holds).
    WEBHOOK_SECRET = ("`whsec_` followed by the base64 of 16 to 64 bytes", 30, 94, concat!(
        r"^whsec_(([A-Za-z0-9+/]{4}){5}([A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)",
        r"|([A-Za-z0-9+/]{4}){6,20}([A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?",
        r"|([A-Za-z0-9+/]{4}){21}([A-Za-z0-9+/][AQgw]==)?)$"
    ));
    /// An `Idempotency-Key` header.
    IDEMPOTENCY_KEY = ("1 to 255 printable ASCII characters without spaces", 1, 255, TOKEN);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// C0 controls, DEL and C1 controls: what no single-line rule admits.
    const CONTROLS: &str = r"\x00-\x1f\x7f-\x9f";

    /// Whitespace by Unicode's White_Space property, less the controls (which lines refuse anyway):
    /// the set Rust's `char::is_whitespace` and a "not blank" pattern must agree on.
    const SPACES: &str = r"\x20\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

    #[test]
    fn the_shared_classes_are_the_ones_spelled_out() {
        let line = VISIBLE_LINE;
        assert!(line.contains(&format!("[^{CONTROLS}]")));
        let spaces_less_controls = SPACES.replace(r"\x20\xa0", "");
        assert!(line.contains(&format!(r"[^\x00-\x20\x7f-\xa0{spaces_less_controls}]")));
        // Every whitespace character but the controls is in SPACES, and nothing else is.
        let re = Regex::new(&format!("^[{SPACES}]$")).unwrap();
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let space = c.is_whitespace() && !c.is_control();
            assert_eq!(re.is_match(&c.to_string()), space, "U+{:04X}", u32::from(c));
        }
    }

    #[test]
    fn rules_refuse_nul_and_take_their_examples() {
        for (name, rule) in all() {
            let nul = format!("{}\0", "a".repeat(rule.min.max(2) - 1));
            assert_eq!(
                rule.check(&nul),
                Err(TextError::Control('\0')),
                "{name} takes NUL"
            );
        }
        assert!(REASON.check("refund approved by support").is_ok());
        assert_eq!(REASON.check("   "), Err(TextError::Shape(REASON.what)));
        assert!(REASON.check(&"x".repeat(1001)).is_err());
        assert!(DESCRIPTION.check("").is_ok());
        assert!(
            URL_TEXT
                .check("https://lms.example.edu:8443/hooks?x=1")
                .is_ok()
        );
        assert!(URL_TEXT.check("http://127.0.0.1:20000").is_ok());
        for bad in [
            "ftp://x.org",
            "https://",
            "https://1.2.3.999",
            "https://a.b#frag",
            "https://a b",
            "https://x:70000",
        ] {
            assert!(URL_TEXT.check(bad).is_err(), "{bad}");
        }
        assert!(
            PRIVATE_KEY_PEM
                .check("-----BEGIN PRIVATE KEY-----\nMIGT\n-----END PRIVATE KEY-----\n")
                .is_ok()
        );
        assert_eq!(
            STORE_ID.check(&"s".repeat(5000)),
            Err(TextError::TooLong { max: 255 })
        );
    }

    proptest! {
        /// The check admits exactly what the pattern and the lengths admit: what the document states.
        #[test]
        fn the_check_is_the_pattern(s in "\\PC{0,12}|[\\x00-\\x7f]{0,12}|[ \\t\\n\\u{a0}\\u{2028}a-]{0,6}") {
            for (name, rule) in all() {
                let len = s.chars().count();
                let stated = (rule.min..=rule.max).contains(&len) && rule.regex().is_match(&s);
                prop_assert_eq!(rule.check(&s).is_ok(), stated, "{} on {:?}", name, s);
            }
        }
    }
}
