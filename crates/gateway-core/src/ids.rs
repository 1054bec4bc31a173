//! Identifiers parsed at the edge. Inside the gateway no id is a raw `String`: each is a newtype whose
//! constructor checked its shape, so a path segment, a CSV cell and a store payload are held to one rule.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} may contain only {allowed}; found {found:?}")]
    BadCharacter {
        kind: &'static str,
        allowed: &'static str,
        found: char,
    },
    #[error("{kind} may not be \".\" or \"..\", which a URL path reads as a step between folders")]
    DotSegment { kind: &'static str },
}

fn check(
    kind: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.chars().count() > max {
        return Err(IdError::TooLong { kind, max });
    }
    if let Some(found) = value.chars().find(|c| !ok(*c)) {
        return Err(IdError::BadCharacter {
            kind,
            allowed,
            found,
        });
    }
    // Ids travel in URL paths, where clients resolve these two away before sending.
    if value == "." || value == ".." {
        return Err(IdError::DotSegment { kind });
    }
    Ok(())
}

/// The OpenAPI schema of an id: the same length and characters as its check (a test compares them).
#[cfg(feature = "openapi")]
fn id_schema(
    description: &str,
    max: usize,
    pattern: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .description(Some(description))
        .into()
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $allowed:literal, $ok:expr, $pattern:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                id_schema(concat!("1 to ", stringify!($max), " characters: ", $allowed, "; not \".\" or \"..\""), $max, $pattern)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl $name {
            /// The longest value, in characters.
            pub const MAX_LEN: usize = $max;
            /// What the value may hold, as a pattern (for the OpenAPI document).
            pub const PATTERN: &str = $pattern;

            /// Checks `value` and wraps it.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check($kind, &value, $max, $allowed, $ok)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn slug_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Printable ASCII without spaces or `/`, so the value is safe in a URL path segment.
fn token_char(c: char) -> bool {
    c.is_ascii_graphic() && c != '/' && c != '?' && c != '#' && c != '%'
}

/// [`slug_char`]s, not `.` or `..`.
const SLUG: &str =
    r"^([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)$";

/// [`token_char`]s, not `.` or `..`.
const TOKEN: &str = r#"^([!"$&-,\-0-9:->@-~][!"$&-.0-9:->@-~]*|\.[!"$&-,\-0-9:->@-~][!"$&-.0-9:->@-~]*|\.\.[!"$&-.0-9:->@-~]+)$"#;

string_id!(
    /// An app (tenant) id chosen by the operator: `acme-courses`.
    AppId, "app id", 64, "letters, digits, '-', '_' and '.'", slug_char, SLUG
);
string_id!(
    /// A logical product id: `edu.acme.course.cs101`.
    ProductId, "product id", 128, "letters, digits, '-', '_' and '.'", slug_char, SLUG
);
string_id!(
    /// An entitlement id. Open edX course keys (`course-v1:Acme+CS101+2026`) must fit, so `:` and `+`
    /// are allowed too.
    EntitlementId, "entitlement id", 255, "printable ASCII without spaces, '/', '?', '#' or '%'", token_char, TOKEN
);
string_id!(
    /// The operator's own user id for a customer.
    AppUserId, "app_user_id", 255, "printable ASCII without spaces, '/', '?', '#' or '%'", token_char, TOKEN
);
string_id!(
    /// An id the gateway made and handed out: a key's, an order's, a webhook endpoint's, a delivery's
    /// (`dlv_0192...`). Checked before any lookup, so a NUL or a megabyte never reaches the database.
    ResourceId, "id", 128, "letters, digits, '-', '_' and '.'", slug_char, SLUG
);

/// An ISO 4217 currency code, or an operator's virtual currency code (`COINS`): 2 to 16 upper-case
/// letters, digits or `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Currency(String);

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Currency {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        id_schema(
            "An ISO 4217 code or a virtual currency: 2 to 16 upper-case letters, digits or '_'",
            16,
            Currency::PATTERN,
        )
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Currency {}

impl Currency {
    /// What a currency code may hold, as a pattern (for the OpenAPI document).
    pub const PATTERN: &str = "^[A-Z0-9_]{2,16}$";

    pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        check(
            "currency",
            &value,
            16,
            "upper-case letters, digits and '_'",
            |c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_',
        )?;
        if value.len() < 2 {
            return Err(IdError::TooLong {
                kind: "currency (at least 2 characters)",
                max: 16,
            });
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Currency {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Where a purchase came from. `Manual` marks an operator's grant, which has no store behind it.
/// `RevenueCat` names the provider that relays purchases of the other stores: a purchase it relays is
/// recorded as its store's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Store {
    AppStore,
    PlayStore,
    Stripe,
    #[serde(rename = "revenuecat")]
    RevenueCat,
    Manual,
}

impl Store {
    pub fn as_str(self) -> &'static str {
        match self {
            Store::AppStore => "app_store",
            Store::PlayStore => "play_store",
            Store::Stripe => "stripe",
            Store::RevenueCat => "revenuecat",
            Store::Manual => "manual",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "app_store" => Store::AppStore,
            "play_store" => Store::PlayStore,
            "stripe" => Store::Stripe,
            "revenuecat" => Store::RevenueCat,
            "manual" => Store::Manual,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_their_shapes_and_refuse_others() {
        assert!(ProductId::parse("edu.acme.course.cs101").is_ok());
        assert!(EntitlementId::parse("course-v1:Acme+CS101+2026").is_ok());
        assert_eq!(
            ProductId::parse(""),
            Err(IdError::Empty { kind: "product id" })
        );
        assert!(matches!(
            ProductId::parse("a b"),
            Err(IdError::BadCharacter { found: ' ', .. })
        ));
        assert!(AppUserId::parse("user/1").is_err());
        assert!(AppId::parse("x".repeat(65)).is_err());
        assert!(Currency::parse("USD").is_ok());
        assert!(Currency::parse("coins").is_err());
        assert!(Currency::parse("C").is_err());
    }

    #[test]
    fn dot_segments_are_refused() {
        for id in [".", ".."] {
            assert_eq!(
                AppUserId::parse(id),
                Err(IdError::DotSegment {
                    kind: "app_user_id"
                })
            );
            assert!(ProductId::parse(id).is_err());
        }
        assert!(AppUserId::parse("...").is_ok());
        assert!(ProductId::parse(".hidden").is_ok());
    }

    /// Whether `value` fits what the OpenAPI document states: the pattern and the length.
    fn stated(pattern: &str, max: usize, value: &str) -> bool {
        regex::Regex::new(pattern).unwrap().is_match(value) && value.chars().count() <= max
    }

    proptest::proptest! {
        /// Each id's check admits exactly what its pattern and length admit.
        #[test]
        fn the_checks_are_the_patterns(s in "[ -~]{0,5}|\\.{1,3}|[a-z.]{60,70}|\\PC{0,4}|[\\x00-\\x1f]") {
            proptest::prop_assert_eq!(AppId::parse(s.as_str()).is_ok(), stated(AppId::PATTERN, 64, &s));
            proptest::prop_assert_eq!(ProductId::parse(s.as_str()).is_ok(), stated(ProductId::PATTERN, 128, &s));
            proptest::prop_assert_eq!(ResourceId::parse(s.as_str()).is_ok(), stated(ResourceId::PATTERN, 128, &s));
            proptest::prop_assert_eq!(AppUserId::parse(s.as_str()).is_ok(), stated(AppUserId::PATTERN, 255, &s));
            proptest::prop_assert_eq!(EntitlementId::parse(s.as_str()).is_ok(), stated(EntitlementId::PATTERN, 255, &s));
            proptest::prop_assert_eq!(Currency::parse(s.as_str()).is_ok(), stated(Currency::PATTERN, 16, &s));
        }
    }

    #[test]
    fn ids_deserialize_through_parse() {
        let bad: Result<ProductId, _> = serde_json::from_str("\"a b\"");
        assert!(bad.is_err());
        let good: ProductId = serde_json::from_str("\"cs101\"").unwrap();
        assert_eq!(good.as_str(), "cs101");
    }
}
