//! Branches: a new database whose first image is another's at a point of its history; and a
//! new database's first image, from the platform's template of an empty cluster.
//!
//! The control plane decides names, records and roles; a [`Brancher`] makes the image (the
//! platform's implements it over the image store and the parent's WAL quorum). Nothing of the
//! parent is woken, fenced or changed.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use spg_core::{DatabaseName, Generation, ImageInfo, Lsn};

use crate::LifecycleError;

/// Where in its parent's history a branch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchPoint {
    /// Everything the parent's WAL quorum holds when the branch is made.
    Newest,
    /// Everything written before this LSN (what `pg_current_wal_lsn()` returned at the moment
    /// wanted): records that start at or after it are left out.
    Lsn(Lsn),
    /// Every transaction that committed at or before this moment (milliseconds since the Unix
    /// epoch), and none after.
    Time(u64),
}

impl BranchPoint {
    /// A moment as PostgreSQL's `recovery_target_time` takes it (RFC 3339, UTC).
    pub fn rfc3339(ms: u64) -> String {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    }
}

impl fmt::Display for BranchPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BranchPoint::Newest => f.write_str("now"),
            BranchPoint::Lsn(l) => write!(f, "{l}"),
            BranchPoint::Time(ms) => f.write_str(&Self::rfc3339(*ms)),
        }
    }
}

impl FromStr for BranchPoint {
    type Err = LifecycleError;

    /// `now`, an LSN (`0/16B3748`), or a moment in RFC 3339 in UTC (`2026-12-06T15:00:00Z`,
    /// fractions of seconds allowed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("now") {
            return Ok(BranchPoint::Newest);
        }
        if s.contains('/') {
            return s
                .parse::<Lsn>()
                .map(BranchPoint::Lsn)
                .map_err(|_| LifecycleError::Invalid {
                    what: "branch point",
                    reason: format!("{s:?} is not an LSN (like 0/16B3748)"),
                });
        }
        let at = humantime::parse_rfc3339_weak(s).map_err(|e| LifecycleError::Invalid {
            what: "branch point",
            reason: format!(
                "{s:?} is neither an LSN (like 0/16B3748) nor a UTC moment (like \
                 2026-12-06T15:00:00Z): {e}"
            ),
        })?;
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map_err(|_| LifecycleError::Invalid {
                what: "branch point",
                reason: format!("{s:?} is before 1970"),
            })?
            .as_millis() as u64;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if ms > now {
            return Err(LifecycleError::Invalid {
                what: "branch point",
                reason: format!("{s} is in the future"),
            });
        }
        Ok(BranchPoint::Time(ms))
    }
}

/// What making a branch's image did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchMade {
    /// The generation that wrote the branch's first image: its first compute is the next one
    /// (so its timelines continue past the parent's).
    pub generation: Generation,
    /// Where the parent's history was cut: the end of the last record replayed (the image's
    /// LSN when nothing was replayed).
    pub lsn: Lsn,
    /// The branch's first image (`None`: the parent had none, the branch starts empty).
    pub image: Option<ImageInfo>,
    /// How long it took.
    pub took: Duration,
}

/// How far back a database's history reaches: a branch (or a restore) can start at any point
/// from the oldest to the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reachable {
    /// The oldest image's LSN: the first point a branch can start at.
    pub oldest_lsn: Lsn,
    /// When that image was written (milliseconds since the Unix epoch): the first moment.
    pub oldest_at_ms: u64,
    /// The end of its log (or of its newest image, without one).
    pub newest_lsn: Lsn,
    /// Images kept on its current timeline path.
    pub images: u64,
}

/// Makes branches' first images.
///
/// Contract: `branch(parent, child, at)` leaves `child` (a name no database has) with one
/// image: `parent` as of `at`, sharing the parent's chunks (a branch costs the chunks its
/// replay changed, not a copy), or with none if the parent has no image. The parent is only
/// read: its compute, generations and WAL are untouched. A point the parent's history no
/// longer reaches (before its oldest image, past the end of its log) is
/// [`LifecycleError::Invalid`]. On failure nothing of `child` is left behind.
#[async_trait]
pub trait Brancher: Send + Sync + 'static {
    /// Make `child`'s first image from `parent` at `at`.
    async fn branch(
        &self,
        parent: &DatabaseName,
        child: &DatabaseName,
        at: BranchPoint,
    ) -> Result<BranchMade, LifecycleError>;

    /// As [`Brancher::branch`], for a read-only branch: its tenant roles keep their logins but
    /// own nothing (a role that cannot log in owns what they owned) and may read every table,
    /// and transactions are read-only by default.
    async fn branch_read_only(
        &self,
        parent: &DatabaseName,
        child: &DatabaseName,
        at: BranchPoint,
    ) -> Result<BranchMade, LifecycleError> {
        let _ = (parent, child, at);
        Err(LifecycleError::invalid(
            "request",
            "this control plane cannot make read-only branches",
        ))
    }

    /// Move `db` itself back to `at`, as generation `generation` (newer than every one `db`
    /// ran, and not running): its image at or before `at`, rolled forward through its own log
    /// to `at`, promoted onto `generation`'s timeline and written back as `db`'s newest image;
    /// then its WAL log starts over there (the WAL past `at` is abandoned). Keeping the state
    /// before (as a branch) is the caller's part, done first.
    async fn restore(
        &self,
        db: &DatabaseName,
        generation: Generation,
        at: BranchPoint,
    ) -> Result<BranchMade, LifecycleError> {
        let _ = (db, generation, at);
        Err(LifecycleError::invalid(
            "request",
            "this control plane cannot restore databases",
        ))
    }

    /// `db`'s own history window (`None`: the platform's default, 7 days unless configured).
    async fn retention(&self, db: &DatabaseName) -> Result<Option<Duration>, LifecycleError> {
        let _ = db;
        Ok(None)
    }

    /// Give `db` its own history window (`None`: back to the default): garbage collection
    /// keeps every moment within it reachable for branches and restores, and no more.
    async fn set_retention(
        &self,
        db: &DatabaseName,
        retention: Option<Duration>,
    ) -> Result<(), LifecycleError> {
        let _ = (db, retention);
        Err(LifecycleError::invalid(
            "request",
            "this control plane keeps no history windows",
        ))
    }

    /// Release what storage keeps for `db`, a deleted database whose compute is stopped: its
    /// images and archived WAL, its WAL log on the safekeepers. Chunks its branches still
    /// share stay until garbage collection finds no image naming them.
    async fn forget(&self, db: &DatabaseName) -> Result<(), LifecycleError> {
        let _ = db;
        Ok(())
    }

    /// Give `db`, a new database (no images), its first image: the platform's template of an
    /// empty cluster (made once per PostgreSQL major version), so that its first start is a
    /// wake like any other, without `initdb`. `None` where there is no template (the first
    /// start then runs `initdb`).
    async fn fresh(&self, db: &DatabaseName) -> Result<Option<ImageInfo>, LifecycleError> {
        let _ = db;
        Ok(None)
    }

    /// How far back `db`'s history reaches (`None`: it has no image).
    async fn reachable(&self, db: &DatabaseName) -> Result<Option<Reachable>, LifecycleError> {
        let _ = db;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_points_parse() {
        assert_eq!("now".parse::<BranchPoint>().unwrap(), BranchPoint::Newest);
        assert_eq!("".parse::<BranchPoint>().unwrap(), BranchPoint::Newest);
        assert_eq!(
            "0/16B3748".parse::<BranchPoint>().unwrap(),
            BranchPoint::Lsn(Lsn(0x16B3748))
        );
        let t = "2026-12-06T15:00:00.250Z".parse::<BranchPoint>().unwrap();
        assert_eq!(t, BranchPoint::Time(1_796_569_200_250));
        assert_eq!(t.to_string(), "2026-12-06T15:00:00.250Z");
        assert!("0/xyz".parse::<BranchPoint>().is_err());
        assert!("yesterday".parse::<BranchPoint>().is_err());
        assert!("2999-01-01T00:00:00Z".parse::<BranchPoint>().is_err());
    }
}
