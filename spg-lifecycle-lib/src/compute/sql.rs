//! SQL the agent runs as the admin role. Names are validated identifiers, and are still quoted.

use spg_core::DatabaseName;

use super::config::TENANT_GROUP;
use super::RoleSpec;

/// Quote an identifier.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quote a string literal (standard_conforming_strings is on).
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Create the tenant group and every role if missing, and (re)set each role's attributes and
/// verifier. Tenant roles are never superusers, cannot create roles or databases, cannot
/// replicate and cannot bypass row-level security.
pub(crate) fn role_sync_sql(roles: &[RoleSpec]) -> String {
    let mut body = format!(
        "IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {g}) THEN \
         CREATE ROLE {gi} NOLOGIN; END IF;\n",
        g = quote_literal(TENANT_GROUP),
        gi = quote_ident(TENANT_GROUP)
    );
    for r in roles {
        let name = r.name.as_str();
        body.push_str(&format!(
            "IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {lit}) THEN \
             CREATE ROLE {id} LOGIN IN ROLE {g}; END IF;\n\
             ALTER ROLE {id} WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE \
             NOREPLICATION NOBYPASSRLS PASSWORD {pw};\n",
            lit = quote_literal(name),
            id = quote_ident(name),
            g = quote_ident(TENANT_GROUP),
            pw = quote_literal(&r.verifier.to_postgres_string()),
        ));
    }
    format!("DO $spg$\nBEGIN\n{body}END\n$spg$;")
}

/// Create the tenant database, owned by the tenant group (so every tenant role may use its
/// `public` schema).
pub(crate) fn create_database_sql(db: &DatabaseName) -> String {
    format!(
        "CREATE DATABASE {} OWNER {}",
        quote_ident(db.as_str()),
        quote_ident(TENANT_GROUP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use spg_core::scram::ScramVerifier;
    use spg_core::RoleName;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn roles_are_never_superusers() {
        let sql = role_sync_sql(&[RoleSpec {
            name: RoleName::new("app").unwrap(),
            verifier: ScramVerifier::from_password("pw"),
        }]);
        assert!(sql.contains("NOSUPERUSER"));
        assert!(sql.contains("CREATE ROLE \"app\" LOGIN IN ROLE \"spg_tenant\""));
        assert!(sql.contains("PASSWORD 'SCRAM-SHA-256$4096:"));
        assert!(!sql.contains("$spg$;\n$spg$"));
    }
}
