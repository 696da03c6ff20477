//! Validated names of databases and roles.
//!
//! Names double as PostgreSQL identifiers inside the compute, so they are restricted to a safe,
//! unquoted-identifier alphabet: a lowercase ASCII letter followed by up to 62 lowercase letters,
//! digits or underscores. Names the platform uses for itself are reserved.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// Empty name.
    #[error("name is empty")]
    Empty,
    /// Longer than PostgreSQL's 63-byte identifier limit.
    #[error("name is longer than 63 bytes")]
    TooLong,
    /// Contains a character outside `[a-z0-9_]` or does not start with a letter.
    #[error("name must start with a lowercase letter and contain only a-z, 0-9 and _")]
    BadCharacter,
    /// The name belongs to the platform or to PostgreSQL.
    #[error("name {0:?} is reserved")]
    Reserved(String),
}

/// The prefix of the platform's template databases ([`DatabaseName::template`]).
const TEMPLATE_PREFIX: &str = "spg_template_pg";

fn is_template(s: &str) -> bool {
    s.strip_prefix(TEMPLATE_PREFIX)
        .is_some_and(|v| !v.is_empty() && v.len() <= 4 && v.bytes().all(|b| b.is_ascii_digit()))
}

fn validate(s: &str, reserved: &[&str], templates: bool) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > 63 {
        return Err(NameError::TooLong);
    }
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if !first_ok || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(NameError::BadCharacter);
    }
    if templates && is_template(s) {
        return Ok(());
    }
    if s.starts_with("pg_") || s.starts_with("spg_") || reserved.contains(&s) {
        return Err(NameError::Reserved(s.to_string()));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $reserved:expr, $templates:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validate and wrap a name.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                validate(&s, $reserved, $templates)?;
                Ok(Self(s))
            }

            /// The name as a string slice.
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
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .min_length(Some(1))
                    .max_length(Some(63))
                    .pattern(Some("^[a-z][a-z0-9_]*$"))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

name_type!(
    /// Name of a database: the unit the platform starts, stops and routes to. It is also the name
    /// of the PostgreSQL database inside that database's compute. `postgres`, `template0`,
    /// `template1` and names starting with `pg_` or `spg_` are reserved.
    DatabaseName,
    &["postgres", "template0", "template1"],
    true
);

impl DatabaseName {
    /// The platform's template database of PostgreSQL major version `major`
    /// (`spg_template_pg15`): the image a new database starts from. A valid name for storage,
    /// never one a user can create ([`DatabaseName::is_template`]).
    pub fn template(major: u32) -> DatabaseName {
        DatabaseName(format!("{TEMPLATE_PREFIX}{major}"))
    }

    /// Whether this is a template database's name (the platform's, not a user's).
    pub fn is_template(&self) -> bool {
        is_template(&self.0)
    }
}

name_type!(
    /// Name of a tenant role (a PostgreSQL login role that is never a superuser). `postgres`,
    /// `public`, `none`, the SQL special role names and names starting with `pg_` or `spg_` are
    /// reserved.
    RoleName,
    &[
        "postgres",
        "public",
        "none",
        "current_user",
        "current_role",
        "session_user",
    ],
    false
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_plain_names() {
        assert_eq!(DatabaseName::new("appdb").unwrap().as_str(), "appdb");
        assert!(RoleName::new("app_user2").is_ok());
        assert!(DatabaseName::new("a".repeat(63)).is_ok());
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(DatabaseName::new(""), Err(NameError::Empty));
        assert_eq!(DatabaseName::new("a".repeat(64)), Err(NameError::TooLong));
        assert_eq!(DatabaseName::new("App"), Err(NameError::BadCharacter));
        assert_eq!(DatabaseName::new("1db"), Err(NameError::BadCharacter));
        assert_eq!(DatabaseName::new("a-b"), Err(NameError::BadCharacter));
        assert_eq!(DatabaseName::new("a\"b"), Err(NameError::BadCharacter));
        assert!(matches!(
            DatabaseName::new("postgres"),
            Err(NameError::Reserved(_))
        ));
        assert!(matches!(
            RoleName::new("spg_admin"),
            Err(NameError::Reserved(_))
        ));
        assert!(matches!(
            RoleName::new("pg_monitor"),
            Err(NameError::Reserved(_))
        ));
        assert!(matches!(
            RoleName::new("public"),
            Err(NameError::Reserved(_))
        ));
    }

    #[test]
    fn serde_validates() {
        let ok: DatabaseName = serde_json::from_str("\"shop\"").unwrap();
        assert_eq!(ok.as_str(), "shop");
        assert!(serde_json::from_str::<DatabaseName>("\"Shop\"").is_err());
    }

    proptest! {
        #[test]
        fn valid_names_are_safe_identifiers(s in "\\PC{0,80}") {
            if let Ok(n) = DatabaseName::new(s.clone()) {
                prop_assert!(n.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
                prop_assert!(n.as_str().len() <= 63);
            }
        }
    }
}
