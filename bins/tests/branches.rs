//! Branches, end to end on `spg up`'s composition with compute processes: a branch holds its
//! parent exactly as of an LSN, a moment or now, while the parent keeps running and writing;
//! writes to each stay apart; both pass `pg_amcheck`; the parent's compute is never restarted.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use spg_core::{DatabaseName, Lsn};
use spg_lifecycle_lib::branching::BranchPoint;
use spg_lifecycle_lib::controlplane::BranchPasswords;
use spg_lifecycle_lib::events::EventKind;
use spg_storage_lib::image::ImageRepo;

/// Rows of `items` and a checksum over their contents.
async fn items(c: &tokio_postgres::Client) -> (i64, i64) {
    let row = c
        .query_one(
            "SELECT count(*), coalesce(sum(hashtext(id::text || ':' || v)), 0)::bigint FROM items",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn current_lsn(c: &tokio_postgres::Client) -> Lsn {
    let row = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap();
    row.get::<_, String>(0).parse().unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The directory of the Unix socket a compute of `db` listens on at `port` (under the test's
/// directory, or the shorter one in the temporary directory a long path gets).
fn socket_dir(root: &Path, db: &str, port: u16) -> PathBuf {
    let name = format!(".s.PGSQL.{port}");
    let mut todo = vec![root.to_path_buf()];
    todo.extend(
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("spg-{db}-")))
            }),
    );
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy() == name {
                return dir;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) && !p.ends_with("pgdata") {
                todo.push(p);
            }
        }
    }
    panic!("no socket {name} of {db}");
}

/// `pg_amcheck` over every table and index of `db` (heap, B-tree, every heap tuple indexed),
/// as the admin role over its compute's private socket.
fn amcheck(t: &TestPlatform, db: &str, port: u16) {
    let dir = socket_dir(t.dir.path(), db, port);
    let bins = spg_lifecycle_lib::pg_bin::PgBinaries::locate(None).unwrap();
    let out = std::process::Command::new(bins.exe("pg_amcheck"))
        .arg("-h")
        .arg(&dir)
        .args(["-p", &port.to_string(), "-U", "spg_admin"])
        .args(["--install-missing", "--heapallindexed", db])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_amcheck on {db} found corruption:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_hold_the_parent_at_the_point_and_stay_apart() {
    let mb: i64 = std::env::var("SPG_BRANCH_TEST_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let t = TestPlatform::start(Duration::from_secs(600)).await;
    let cp = t.p().control_plane.clone();
    let appdb = DatabaseName::new(DB).unwrap();
    let mut events = cp.events();

    // The parent: `mb` MB of rows, kept in an image by a stop; woken again, a first batch, a
    // moment, a second batch.
    let loader = tokio_pg(&t, &t.dsn).await.unwrap();
    loader
        .batch_execute(&format!(
            "CREATE TABLE bulk AS SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, {}) g",
            mb * 1000
        ))
        .await
        .unwrap();
    drop(loader);
    cp.stop_database(&appdb).await.unwrap();
    let parent = tokio_pg(&t, &t.dsn).await.unwrap();
    parent
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 5000) g;",
        )
        .await
        .unwrap();
    let first = items(&parent).await;
    let at_first = current_lsn(&parent).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let moment = now_ms();
    tokio::time::sleep(Duration::from_millis(300)).await;
    parent
        .batch_execute(
            "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(5001, 8000) g;
             UPDATE items SET v = 'changed' WHERE id <= 100;",
        )
        .await
        .unwrap();
    let second = items(&parent).await;
    assert_ne!(first, second);
    let before = t.status().await;

    // Writes go on on the parent while the branches are made.
    let writer = {
        let c = tokio_pg(&t, &t.dsn).await.unwrap();
        tokio::spawn(async move {
            c.batch_execute("CREATE TABLE side (n int)").await.unwrap();
            let mut n = 0;
            loop {
                n += 1;
                if c.execute("INSERT INTO side VALUES ($1)", &[&n])
                    .await
                    .is_err()
                {
                    return n;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let branch = |name: &str, at: BranchPoint, pw: BranchPasswords| {
        let (cp, appdb, name) = (cp.clone(), appdb.clone(), DatabaseName::new(name).unwrap());
        async move { cp.branch_database(name, &appdb, at, pw).await.unwrap() }
    };
    let by_lsn = branch("by_lsn", BranchPoint::Lsn(at_first), BranchPasswords::Keep).await;
    let by_time = branch("by_time", BranchPoint::Time(moment), BranchPasswords::Keep).await;
    let newest = branch("newest", BranchPoint::Newest, BranchPasswords::Regenerate).await;
    writer.abort();
    for b in [&by_lsn, &by_time, &newest] {
        eprintln!(
            "branch {}: {} ms, {} bytes written, at {}",
            b.status.record.name,
            b.took.as_millis(),
            b.bytes_written,
            b.lsn
        );
        // Generations continue past the parent's.
        assert!(b.status.record.generation > before.record.generation);
    }
    assert!(by_lsn.lsn <= at_first, "{} > {at_first}", by_lsn.lsn);
    // The history window reaches back past the points branched to; before it, nothing.
    let (reach, stored) = cp.history_window(&appdb).await.unwrap();
    let reach = reach.expect("a history");
    assert!(reach.oldest_lsn <= at_first && reach.oldest_at_ms <= moment);
    assert!(reach.newest_lsn >= newest.lsn);
    assert!(stored.unwrap().image_bytes > 0);
    let too_early = cp
        .branch_database(
            DatabaseName::new("too_early").unwrap(),
            &appdb,
            BranchPoint::Time(reach.oldest_at_ms - 60_000),
            BranchPasswords::Keep,
        )
        .await;
    assert!(
        matches!(
            too_early,
            Err(spg_lifecycle_lib::LifecycleError::Invalid { .. })
        ),
        "{:?}",
        too_early.err()
    );
    assert_eq!(newest.passwords.len(), 1);

    // Each branch is its parent at its point.
    let dsn = |db: &str, pw: &str| t.dsn_with(ROLE, pw, db, "sslmode=require");
    let lsn_c = tokio_pg(&t, &dsn("by_lsn", PASSWORD)).await.unwrap();
    assert_eq!(items(&lsn_c).await, first);
    let time_c = tokio_pg(&t, &dsn("by_time", PASSWORD)).await.unwrap();
    assert_eq!(items(&time_c).await, first);
    assert!(
        tokio_pg(&t, &dsn("newest", PASSWORD)).await.is_err(),
        "the regenerated password replaced the parent's"
    );
    let new_pw = newest.passwords[0].1.to_string();
    let newest_c = tokio_pg(&t, &dsn("newest", &new_pw)).await.unwrap();
    assert_eq!(items(&newest_c).await, second);
    for c in [&lsn_c, &newest_c] {
        let n: i64 = c
            .query_one("SELECT count(*) FROM bulk", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, mb * 1000);
    }

    // Writes stay apart.
    lsn_c
        .batch_execute(
            "INSERT INTO items VALUES (-1, 'branch only'); DELETE FROM items WHERE id = 1",
        )
        .await
        .unwrap();
    parent
        .batch_execute("INSERT INTO items VALUES (-2, 'parent only')")
        .await
        .unwrap();
    for (c, minus1, minus2, one) in [
        (&parent, 0, 1, 1),
        (&lsn_c, 1, 0, 0),
        (&time_c, 0, 0, 1),
        (&newest_c, 0, 0, 1),
    ] {
        let row = c
            .query_one(
                "SELECT count(*) FILTER (WHERE id = -1), count(*) FILTER (WHERE id = -2), \
                 count(*) FILTER (WHERE id = 1) FROM items",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            (
                row.get::<_, i64>(0),
                row.get::<_, i64>(1),
                row.get::<_, i64>(2)
            ),
            (minus1, minus2, one)
        );
    }

    // The parent ran on throughout: same compute, same session.
    let after = t.status().await;
    assert_eq!(after.record.generation, before.record.generation);
    assert_eq!(after.record.wake_count, before.record.wake_count);
    let side: i64 = parent
        .query_one("SELECT count(*) FROM side", &[])
        .await
        .unwrap()
        .get(0);
    assert!(side > 0);

    // Both sides are sound.
    let port_of = |db: &str| {
        let cp = cp.clone();
        let db = DatabaseName::new(db).unwrap();
        async move {
            cp.database(&db)
                .await
                .unwrap()
                .endpoint
                .unwrap()
                .addr
                .port()
        }
    };
    let (p_parent, p_branch) = (port_of(DB).await, port_of("by_lsn").await);
    amcheck(&t, DB, p_parent);
    amcheck(&t, "by_lsn", p_branch);

    // Each branch was announced.
    let mut announced = Vec::new();
    while let Ok(e) = events.try_recv() {
        if e.kind == EventKind::BranchCreated {
            assert!(e.detail.contains("branched from appdb"), "{}", e.detail);
            announced.push(e.database.to_string());
        }
    }
    announced.sort();
    assert_eq!(announced, ["by_lsn", "by_time", "newest"]);
    drop((parent, lsn_c, time_c, newest_c));
    t.shutdown().await;
}

/// A new database's first image is the platform's template (made once): its first start is a
/// wake like any other, with no `initdb` step, and its database is its own (the template's
/// placeholder renamed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_databases_start_from_the_template_without_initdb() {
    let t = TestPlatform::start(Duration::from_secs(600)).await;
    let cp = t.p().control_plane.clone();
    let second = DatabaseName::new("second").unwrap();
    cp.create_database(second.clone()).await.unwrap();
    cp.create_role(
        &second,
        spg_core::RoleName::new(ROLE).unwrap(),
        spg_lifecycle_lib::RoleSecret::Password(PASSWORD.into()),
    )
    .await
    .unwrap();
    for db in [DB, "second"] {
        let c = tokio_pg(&t, &t.dsn_with(ROLE, PASSWORD, db, "sslmode=require"))
            .await
            .unwrap();
        let row = c
            .query_one(
                "SELECT current_database()::text, \
                 (SELECT count(*) FROM pg_database WHERE datname = 'spg_fresh')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), db);
        assert_eq!(row.get::<_, i64>(1), 0, "the placeholder was renamed");
        c.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        let st = cp.database(&DatabaseName::new(db).unwrap()).await.unwrap();
        let boot = st.record.last_boot.expect("booted");
        let steps: Vec<&str> = boot.steps.iter().map(|s| s.step.as_str()).collect();
        assert!(!steps.contains(&"initdb"), "{db} ran initdb: {steps:?}");
        assert!(steps.contains(&"checkout"), "{steps:?}");
    }
    // A branch of a database that never started: its first start makes the database.
    let third = DatabaseName::new("third").unwrap();
    cp.create_database(third.clone()).await.unwrap();
    cp.create_role(
        &third,
        spg_core::RoleName::new(ROLE).unwrap(),
        spg_lifecycle_lib::RoleSecret::Password(PASSWORD.into()),
    )
    .await
    .unwrap();
    cp.branch_database(
        DatabaseName::new("third_b").unwrap(),
        &third,
        BranchPoint::Newest,
        BranchPasswords::Keep,
    )
    .await
    .unwrap();
    let c = tokio_pg(
        &t,
        &t.dsn_with(ROLE, PASSWORD, "third_b", "sslmode=require"),
    )
    .await
    .unwrap();
    let row = c
        .query_one("SELECT current_database()::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "third_b");
    drop(c);
    // Both images are the template's, in its family; the template was made once.
    let objects = t.dir.path().join("data/objects/images");
    let major = spg_lifecycle_lib::pg_bin::PgBinaries::locate(None)
        .unwrap()
        .major();
    let name = DatabaseName::template(major);
    let template = objects.join(name.as_str());
    assert!(template.join("images").is_dir(), "no template image");
    assert_eq!(
        std::fs::read_dir(template.join("images")).unwrap().count(),
        1
    );
    for db in [DB, "second"] {
        let family = std::fs::read_to_string(objects.join(db).join("family")).unwrap();
        assert_eq!(family, name.as_str());
    }
    // Nobody may take a template's name.
    assert!(cp
        .create_database(DatabaseName::template(major))
        .await
        .is_err());
    t.shutdown().await;
}

/// The ids in `items`, in order.
async fn ids(c: &tokio_postgres::Client) -> Vec<i32> {
    c.query("SELECT id FROM items ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Point-in-time restore: the database goes back to a moment between two commits (it has the
/// first, not the second), the state before is kept as a branch, and a restore of the restored
/// database works the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_moves_a_database_back_and_keeps_the_state_before() {
    let t = TestPlatform::start(Duration::from_secs(600)).await;
    let cp = t.p().control_plane.clone();
    let appdb = DatabaseName::new(DB).unwrap();
    let mut events = cp.events();
    let dsn = |db: &str| t.dsn_with(ROLE, PASSWORD, db, "sslmode=require");

    // Commit 1, kept in an image by a stop; woken, commit 2 after a known moment.
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    c.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'one')",
    )
    .await
    .unwrap();
    drop(c);
    cp.stop_database(&appdb).await.unwrap();
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    c.batch_execute("INSERT INTO items VALUES (10, 'ten')")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let between = now_ms();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.batch_execute("INSERT INTO items VALUES (2, 'two')")
        .await
        .unwrap();
    let before = cp.database(&appdb).await.unwrap().record.generation;

    // Restored while a session is open: the compute stops under it; the gateway's pool
    // carries the session over, and its next transaction sees the restored database.
    let restored = cp
        .restore_database(&appdb, BranchPoint::Time(between), None)
        .await
        .unwrap();
    assert_eq!(ids(&c).await, vec![1, 10]);
    drop(c);
    assert!(restored.status.record.generation > before);
    let kept = restored.kept.record.name.clone();
    assert!(
        kept.as_str().starts_with(&format!("{DB}_pre_restore_")),
        "{kept}"
    );
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    assert_eq!(
        ids(&c).await,
        vec![1, 10],
        "the first commit, not the second"
    );
    let k = tokio_pg(&t, &dsn(kept.as_str())).await.unwrap();
    assert_eq!(ids(&k).await, vec![1, 2, 10], "the state before is kept");
    // They are apart.
    k.batch_execute("INSERT INTO items VALUES (100, 'kept')")
        .await
        .unwrap();
    assert_eq!(ids(&c).await, vec![1, 10]);
    drop(k);
    let mut saw = false;
    while let Ok(e) = events.try_recv() {
        if e.kind == EventKind::Restored && e.database == appdb {
            assert!(e.detail.contains(kept.as_str()), "{}", e.detail);
            saw = true;
        }
    }
    assert!(saw, "a restored event");

    // A restore of the restored database: commit 3, a moment, commit 4, back to the moment.
    c.batch_execute("INSERT INTO items VALUES (3, 'three')")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = now_ms();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.batch_execute("INSERT INTO items VALUES (4, 'four')")
        .await
        .unwrap();
    drop(c);
    let keep2 = DatabaseName::new("appdb_before_second").unwrap();
    let again = cp
        .restore_database(&appdb, BranchPoint::Time(second), Some(keep2.clone()))
        .await
        .unwrap();
    assert_eq!(again.kept.record.name, keep2);
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    assert_eq!(ids(&c).await, vec![1, 3, 10]);
    c.batch_execute("INSERT INTO items VALUES (5, 'five')")
        .await
        .unwrap();
    assert_eq!(ids(&c).await, vec![1, 3, 5, 10]);
    drop(c);
    let k2 = tokio_pg(&t, &dsn(keep2.as_str())).await.unwrap();
    assert_eq!(ids(&k2).await, vec![1, 3, 4, 10]);
    drop(k2);
    // The first kept branch still has its own write; a stop and wake keep the restored state.
    let k = tokio_pg(&t, &dsn(kept.as_str())).await.unwrap();
    assert_eq!(ids(&k).await, vec![1, 2, 10, 100]);
    drop(k);
    cp.stop_database(&appdb).await.unwrap();
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    assert_eq!(ids(&c).await, vec![1, 3, 5, 10]);
    drop(c);

    // A moment in the future, or a kept name that is taken, is refused.
    assert!(cp
        .restore_database(&appdb, BranchPoint::Time(now_ms() + 60_000), None)
        .await
        .is_err());
    assert!(cp
        .restore_database(&appdb, BranchPoint::Time(second), Some(keep2))
        .await
        .is_err());
    t.shutdown().await;
}

/// Every chunk and list file stored under the family `root` (paths relative to the image
/// store).
fn family_objects(t: &TestPlatform, root: &str) -> std::collections::BTreeSet<PathBuf> {
    let base = t.dir.path().join("data/objects/images").join(root);
    let mut out = std::collections::BTreeSet::new();
    let mut todo = vec![base.join("chunks"), base.join("lists")];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.insert(e.path().strip_prefix(&base).unwrap().to_path_buf());
            }
        }
    }
    out
}

/// Many branches of one parent: each is made, woken in turn, written and stopped; the parent
/// never changes; garbage collection keeps every chunk a branch names; then every branch is
/// deleted (record, roles, images, WAL log), its chunks go with the next collection, and a
/// deleted name can be used afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_branches_are_made_woken_written_and_deleted() {
    let n: usize = std::env::var("SPG_BRANCH_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let t = TestPlatform::start(Duration::from_secs(600)).await;
    let cp = t.p().control_plane.clone();
    let ps = t.p().pageserver.clone().expect("an in-process pageserver");
    let appdb = DatabaseName::new(DB).unwrap();
    let dsn = |db: &str| t.dsn_with(ROLE, PASSWORD, db, "sslmode=require");
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    c.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let parent = items(&c).await;
    drop(c);
    cp.stop_database(&appdb).await.unwrap();
    let major = spg_lifecycle_lib::pg_bin::PgBinaries::locate(None)
        .unwrap()
        .major();
    let root = DatabaseName::template(major);
    let before = family_objects(&t, root.as_str());

    let names: Vec<DatabaseName> = (0..n)
        .map(|i| DatabaseName::new(format!("b{i:02}")).unwrap())
        .collect();
    let started = std::time::Instant::now();
    for name in &names {
        cp.branch_database(
            name.clone(),
            &appdb,
            BranchPoint::Newest,
            BranchPasswords::Keep,
        )
        .await
        .unwrap();
    }
    let made = started.elapsed();
    for (i, name) in names.iter().enumerate() {
        let c = tokio_pg(&t, &dsn(name.as_str())).await.unwrap();
        assert_eq!(items(&c).await, parent, "{name} starts as its parent");
        c.execute(
            "INSERT INTO items VALUES ($1, repeat(md5($2), 2000))",
            &[&(1000 + i as i32), &name.to_string()],
        )
        .await
        .unwrap();
        assert_eq!(items(&c).await.0, 101);
        drop(c);
        cp.stop_database(name).await.unwrap();
    }
    eprintln!(
        "{n} branches made in {made:?}, woken and written in {:?}",
        started.elapsed()
    );
    // What the branches wrote lives in the family; collection keeps it while they live.
    let written = family_objects(&t, root.as_str());
    let theirs: Vec<_> = written.difference(&before).cloned().collect();
    assert!(!theirs.is_empty(), "the branches' writes made new chunks");
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    assert_eq!(
        items(&c).await,
        parent,
        "the parent never sees a branch's write"
    );
    drop(c);
    cp.stop_database(&appdb).await.unwrap();
    let sweep = spg_storage_lib::pageserver::gc::GcPolicy {
        retention: Duration::ZERO,
        keep_images: 1,
        grace: Duration::ZERO,
    };
    ps.gc(&root, &sweep, None, None).await.unwrap();
    let kept = family_objects(&t, root.as_str());
    for o in &theirs {
        assert!(
            kept.contains(o),
            "{} was swept while a branch names it",
            o.display()
        );
    }

    for name in &names {
        cp.delete_database(name).await.unwrap();
        assert!(matches!(
            cp.database(name).await,
            Err(spg_lifecycle_lib::LifecycleError::DatabaseNotFound(_))
        ));
        assert!(ps.images(name).await.unwrap().is_empty(), "{name}'s images");
        for sk in &t.p().safekeepers {
            assert!(
                !sk.config().dir.join(name.as_str()).exists(),
                "{name}'s WAL log on {}",
                sk.name()
            );
        }
    }
    assert!(
        cp.delete_database(&names[0]).await.is_err(),
        "deleted twice"
    );
    // The next collection takes what only the deleted branches named, and nothing else.
    let stats = ps.gc(&root, &sweep, None, None).await.unwrap();
    let after = family_objects(&t, root.as_str());
    // (A branch may have written a chunk the parent's later image holds too: the same bytes.)
    let mut named = std::collections::HashSet::new();
    for db in [&appdb, &root] {
        for (_, h) in ps.named_objects(db).await.unwrap() {
            named.insert(h.to_string());
        }
    }
    let mut gone = 0;
    for o in &theirs {
        let hash = o.file_name().unwrap().to_string_lossy().to_string();
        if named.contains(&hash) {
            assert!(after.contains(o), "{} is named but was swept", o.display());
        } else {
            assert!(!after.contains(o), "{} outlived its branch", o.display());
            gone += 1;
        }
    }
    assert!(gone >= n, "each branch's own write went ({gone} objects)");
    assert!(stats.objects_deleted >= gone as u64);
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    assert_eq!(items(&c).await, parent, "the parent lost nothing");
    drop(c);

    // A deleted name is free: a new database of that name starts empty.
    cp.create_database(names[0].clone()).await.unwrap();
    cp.create_role(
        &names[0],
        spg_core::RoleName::new(ROLE).unwrap(),
        spg_lifecycle_lib::RoleSecret::Password(PASSWORD.into()),
    )
    .await
    .unwrap();
    let c = tokio_pg(&t, &dsn(names[0].as_str())).await.unwrap();
    let exists = c
        .query_one("SELECT to_regclass('items') IS NOT NULL", &[])
        .await
        .unwrap();
    assert!(!exists.get::<_, bool>(0), "a reused name starts empty");
    drop(c);
    t.shutdown().await;
}

/// An ephemeral branch for time-travel reads: it reads the parent as of a moment, no tenant
/// role can write to it (not even after turning `default_transaction_read_only` off), and it
/// deletes itself after its idle stop, storage and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_branches_read_the_past_and_go_after_their_idle_stop() {
    let t = TestPlatform::start(Duration::from_secs(2)).await;
    let cp = t.p().control_plane.clone();
    let ps = t.p().pageserver.clone().expect("an in-process pageserver");
    let appdb = DatabaseName::new(DB).unwrap();
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    c.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         CREATE SEQUENCE s;
         INSERT INTO items VALUES (1, 'yesterday');",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let moment = now_ms();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.batch_execute("UPDATE items SET v = 'today'")
        .await
        .unwrap();

    let past = DatabaseName::new("items_then").unwrap();
    let made = cp
        .branch_database_as(
            past.clone(),
            &appdb,
            BranchPoint::Time(moment),
            BranchPasswords::Keep,
            true,
        )
        .await
        .unwrap();
    assert!(made.status.record.ephemeral);
    let r = tokio_pg(
        &t,
        &t.dsn_with(ROLE, PASSWORD, "items_then", "sslmode=require"),
    )
    .await
    .unwrap();
    let row = r
        .query_one("SELECT v FROM items WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "yesterday");
    let code = |e: tokio_postgres::Error| e.code().map(|c| c.code().to_owned());
    let e = r
        .batch_execute("INSERT INTO items VALUES (2, 'x')")
        .await
        .unwrap_err();
    assert_eq!(code(e).as_deref(), Some("25006"), "read-only by default");
    for write in [
        "UPDATE items SET v = 'x'",
        "CREATE TABLE t (v int)",
        "SELECT nextval('s')",
        "ALTER TABLE items ADD COLUMN w int",
    ] {
        let e = r
            .batch_execute(&format!("BEGIN READ WRITE; {write}; COMMIT"))
            .await
            .unwrap_err();
        assert_eq!(code(e).as_deref(), Some("42501"), "{write} is refused");
        r.batch_execute("ROLLBACK").await.unwrap();
    }
    drop(r);
    // The parent kept its own state and its writes.
    assert_eq!(
        c.query_one("SELECT v FROM items WHERE id = 1", &[])
            .await
            .unwrap()
            .get::<_, String>(0),
        "today"
    );
    drop(c);

    // The parent's own history window is kept with its storage.
    cp.set_retention(&appdb, Some(Duration::from_secs(3 * 86_400)))
        .await
        .unwrap();
    assert_eq!(
        cp.retention(&appdb).await.unwrap(),
        Some(Duration::from_secs(3 * 86_400))
    );
    let stored = t
        .dir
        .path()
        .join("data/objects/images")
        .join(DB)
        .join("retention");
    assert_eq!(std::fs::read_to_string(&stored).unwrap(), "259200");

    // Idle, it stops and deletes itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        match cp.database(&past).await {
            Err(spg_lifecycle_lib::LifecycleError::DatabaseNotFound(_)) => break,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!(
                "the ephemeral branch is still there: {:?}",
                other.map(|s| s.record.state)
            ),
        }
    }
    // (Its storage is released right after its record goes.)
    loop {
        let images = ps.images(&past).await.unwrap();
        let logs = t
            .p()
            .safekeepers
            .iter()
            .filter(|sk| sk.config().dir.join(past.as_str()).exists())
            .count();
        if images.is_empty() && logs == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "storage kept: {} images, {logs} WAL logs",
            images.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The parent is unaffected.
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    assert_eq!(
        c.query_one("SELECT v FROM items WHERE id = 1", &[])
            .await
            .unwrap()
            .get::<_, String>(0),
        "today"
    );
    drop(c);
    t.shutdown().await;
}
