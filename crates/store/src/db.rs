//! redb databases that survive a crash or a full disk while being created.
//!
//! redb keeps a committed database consistent through crashes, but a file
//! whose creation was cut short (the disk filled while redb wrote its header
//! and first pages, or the process was killed) is not a database: every
//! later open fails with "invalid data" and the directory is stuck until a
//! person removes the file. [`open_or_create`] therefore creates a new
//! database beside its path, initialises it, makes it durable and only then
//! renames it into place: the path holds a complete database or nothing.

use redb::Database;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Errors of [`open_or_create`] and of its `init` step.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".creating");
    path.with_file_name(name)
}

/// Whether the database at `path` exists but is not a readable redb file
/// (damaged, or half-created by an older version). A missing, busy (open
/// elsewhere) or unreachable database gives `false`: it must be left alone.
pub fn is_unreadable(path: &Path) -> bool {
    use redb::{DatabaseError, StorageError};
    match Database::open(path) {
        Err(DatabaseError::Storage(StorageError::Corrupted(_))) => true,
        Err(DatabaseError::Storage(StorageError::Io(e))) => matches!(
            e.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// Opens the database at `path`, or creates it there; `init` (which must be
/// idempotent: create tables that are missing) runs on it either way, on a
/// new database before it appears at `path`. Errors name the file and what
/// failed; an existing file that does not open is an error and is never
/// deleted here (see [`is_unreadable`]).
///
/// `cache_bytes` bounds redb's page cache. Its default is 1 GiB per
/// database, a ceiling that a long-running node reaches as its database
/// grows (the resident set grew with the block store in a 30-minute soak);
/// callers choose what their access pattern needs.
pub fn open_or_create(
    path: &Path,
    cache_bytes: usize,
    init: impl Fn(&Database) -> Result<(), Error>,
) -> Result<Database, Error> {
    let mut builder = Database::builder();
    builder.set_cache_size(cache_bytes);
    if path.exists() {
        let db = builder
            .open(path)
            .map_err(|e| format!("open database {}: {e}", path.display()))?;
        init(&db).map_err(|e| format!("initialise database {}: {e}", path.display()))?;
        return Ok(db);
    }
    let tmp = tmp_path(path);
    // Left by a creation that did not finish: never a database anyone used.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("remove {}: {e}", tmp.display()).into()),
    }
    let created = (|| -> Result<Database, Error> {
        let db = builder.create(&tmp)?;
        init(&db)?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(db)
    })();
    created.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("create database {}: {e}", path.display()).into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableDefinition;

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    fn init(db: &Database) -> Result<(), Error> {
        let tx = db.begin_write()?;
        tx.open_table(T)?.insert(1, 7)?;
        tx.commit()?;
        Ok(())
    }

    #[test]
    fn creates_opens_and_ignores_an_unfinished_creation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.redb");
        // What a creation cut short leaves: garbage beside the path.
        std::fs::write(tmp_path(&p), b"half a header").unwrap();
        let db = open_or_create(&p, 1 << 20, init).unwrap();
        assert!(p.exists());
        assert!(!tmp_path(&p).exists());
        drop(db);
        // Reopened with its data; init runs again and is idempotent.
        let db = open_or_create(&p, 1 << 20, |db| {
            let tx = db.begin_write()?;
            tx.open_table(T)?;
            tx.commit()?;
            Ok(())
        })
        .unwrap();
        let r = db.begin_read().unwrap();
        assert_eq!(r.open_table(T).unwrap().get(1).unwrap().unwrap().value(), 7);
    }

    #[test]
    fn a_failed_init_leaves_nothing_at_the_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.redb");
        let e = open_or_create(&p, 1 << 20, |_| {
            Err(std::io::Error::other("No space left on device").into())
        })
        .unwrap_err();
        assert!(e.to_string().contains("x.redb"), "{e}");
        assert!(!p.exists());
        assert!(!tmp_path(&p).exists());
    }

    #[test]
    fn a_corrupt_database_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.redb");
        std::fs::write(&p, b"not a database").unwrap();
        let e = open_or_create(&p, 1 << 20, init).unwrap_err();
        assert!(e.to_string().contains("open database"), "{e}");
        assert!(p.exists(), "an existing file is never deleted");
        assert!(is_unreadable(&p));
        // A database in use elsewhere is not unreadable.
        let q = d.path().join("y.redb");
        let held = open_or_create(&q, 1 << 20, init).unwrap();
        assert!(!is_unreadable(&q));
        drop(held);
    }
}
