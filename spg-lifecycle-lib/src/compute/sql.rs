//! SQL the agent runs as the admin role. Names are validated identifiers, and are still quoted.

use spg_core::DatabaseName;

use spg_core::scram::ScramVerifier;

use super::config::TENANT_GROUP;
use super::wal::REPLICATOR_ROLE;
use super::RoleSpec;

/// Quote an identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quote a string literal (standard_conforming_strings is on).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Create the tenant group and every role if missing, and (re)set each role's attributes and
/// verifier. Tenant roles are never superusers, cannot create roles or databases, cannot
/// replicate and cannot bypass row-level security.
pub(crate) fn role_sync_sql(roles: &[RoleSpec]) -> String {
    do_block(&[role_sync_body(roles)])
}

/// The PL/pgSQL statements of [`role_sync_sql`].
pub(crate) fn role_sync_body(roles: &[RoleSpec]) -> String {
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
    body
}

/// The PL/pgSQL statements that create the safekeepers' replication role if missing and give it
/// this generation's verifier (replication only, never superuser).
pub(crate) fn replicator_body(verifier: &ScramVerifier) -> String {
    let r = REPLICATOR_ROLE;
    format!(
        "IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {lit}) THEN \
         CREATE ROLE {id} REPLICATION LOGIN; END IF;\n\
         ALTER ROLE {id} WITH NOSUPERUSER REPLICATION LOGIN PASSWORD {pw};\n",
        lit = quote_literal(r),
        id = quote_ident(r),
        pw = quote_literal(&verifier.to_postgres_string()),
    )
}

/// One anonymous PL/pgSQL block running `bodies` in order (one transaction).
pub(crate) fn do_block(bodies: &[String]) -> String {
    format!("DO $spg$\nBEGIN\n{}END\n$spg$;", bodies.concat())
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

/// The database a template cluster holds for the tenant, renamed at its first start
/// (`rename_fresh_database_sql`).
pub const FRESH_DATABASE: &str = "spg_fresh";

/// What a template cluster runs once (`postgres --single`, one command per line): the tenant
/// group and the tenant's database under its placeholder name; then a switch to a new WAL
/// segment, so that the shutdown checkpoint (where a new database's first compute branches off
/// its timeline) opens a segment: the safekeepers, which join at the start of that segment,
/// then have next to nothing to catch up on before the first commit.
pub fn template_setup_sql() -> String {
    let group = quote_ident(TENANT_GROUP);
    format!(
        "CREATE ROLE {group} NOLOGIN\nCREATE DATABASE {} OWNER {group}\nSELECT pg_switch_wal()\n",
        quote_ident(FRESH_DATABASE)
    )
}

/// The role that owns what a read-only branch's tenant roles owned (it cannot log in).
pub const READ_ONLY_OWNER: &str = "spg_read_only_owner";

/// Make the current database read-only for its tenant roles (run as the admin, in it): what
/// the tenant group and its members own passes to [`READ_ONLY_OWNER`] (the database too), the
/// group may use every schema and read every table and sequence, and transactions are
/// read-only by default (so a write fails with a clear `25006`; the ownership is what makes it
/// impossible).
pub fn read_only_sql() -> String {
    let owner = quote_ident(READ_ONLY_OWNER);
    let group = quote_ident(TENANT_GROUP);
    let owner_lit = quote_literal(READ_ONLY_OWNER);
    let group_lit = quote_literal(TENANT_GROUP);
    let body = [
        format!(
            "IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {owner_lit}) THEN \
             CREATE ROLE {owner} NOLOGIN; END IF;"
        ),
        format!(
            "FOR r IN SELECT rolname FROM pg_roles WHERE NOT rolsuper \
             AND rolname <> {owner_lit} \
             AND (rolname = {group_lit} OR pg_has_role(oid, {group_lit}, 'MEMBER')) LOOP \
             EXECUTE format('REASSIGN OWNED BY %I TO {owner}', r.rolname); END LOOP;"
        ),
        format!(
            "FOR r IN SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' \
             AND nspname <> 'information_schema' LOOP \
             EXECUTE format('GRANT USAGE ON SCHEMA %I TO {group}', r.nspname); \
             EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {group}', r.nspname); \
             EXECUTE format('GRANT SELECT ON ALL SEQUENCES IN SCHEMA %I TO {group}', \
             r.nspname); END LOOP;"
        ),
        "EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = on', \
         current_database());"
            .to_owned(),
    ];
    format!(
        "DO $spg$\nDECLARE r record;\nBEGIN\n{}\nEND\n$spg$;",
        body.join("\n")
    )
}

/// The PL/pgSQL statement giving the template's placeholder database the tenant database's
/// name, if the tenant database is not there yet and the placeholder is (a new database's
/// first start): run with the first start's other catalog changes, in one commit.
pub(crate) fn rename_fresh_body(db: &DatabaseName) -> String {
    format!(
        "IF NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = {lit}) \
         AND EXISTS (SELECT 1 FROM pg_database WHERE datname = {fresh_lit}) THEN \
         ALTER DATABASE {fresh} RENAME TO {id}; END IF;\n",
        lit = quote_literal(db.as_str()),
        id = quote_ident(db.as_str()),
        fresh_lit = quote_literal(FRESH_DATABASE),
        fresh = quote_ident(FRESH_DATABASE),
    )
}

/// Give the template's placeholder database the tenant database's name.
pub(crate) fn rename_fresh_database_sql(db: &DatabaseName) -> String {
    format!(
        "ALTER DATABASE {} RENAME TO {}",
        quote_ident(FRESH_DATABASE),
        quote_ident(db.as_str())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let both = do_block(&[
            replicator_body(&ScramVerifier::from_password("x")),
            role_sync_body(&[]),
        ]);
        assert_eq!(both.matches("DO $spg$").count(), 1, "one transaction");
        assert!(both.contains("ALTER ROLE \"spg_replicator\" WITH NOSUPERUSER REPLICATION LOGIN"));
        assert!(both.contains("CREATE ROLE \"spg_tenant\" NOLOGIN"));
    }
}
