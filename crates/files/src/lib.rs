//! Every output of the project — a model folder, a checkpoint, metrics, a data file, a cached answer —
//! is written under a temporary name beside its destination and renamed into place, so a crash or a
//! kill leaves either the old output or the new one, never half of one. A rename within one folder is
//! atomic on POSIX file systems; the file is synced first so that the rename never exposes data that
//! is not yet on disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A file or folder that could not be written, with the path at fault.
#[derive(Debug)]
pub struct FileError {
    pub path: PathBuf,
    pub cause: std::io::Error,
}

impl FileError {
    pub fn new(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Self { path: path.into(), cause }
    }
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.cause)
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

/// `out` with a suffix on its last component (`final` → `final.tmp`).
pub fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{suffix}"));
    out.with_file_name(name)
}

/// A temporary name beside `path`, unique to this call: two threads may write the same path at once
/// (e.g. two identical requests in flight), and each must rename a complete file of its own.
fn unique_temp(path: &Path) -> PathBuf {
    static WRITES: AtomicUsize = AtomicUsize::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    sibling(path, &format!("tmp{}-{n}", std::process::id()))
}

/// Writes the file at `path` through `write`, which fills the temporary path it is given; then the
/// temporary file is renamed to `path`. On failure the temporary file is removed and `path` is left as
/// it was. The parent folder is created when missing.
pub fn write_file_with<E: From<FileError>>(path: &Path, write: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), E> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| FileError::new(dir, e))?;
    }
    let tmp = unique_temp(path);
    let result = write(&tmp).and_then(|()| {
        let file = std::fs::File::open(&tmp).map_err(|e| FileError::new(&tmp, e))?;
        file.sync_all().map_err(|e| FileError::new(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| E::from(FileError::new(path, e)))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically (see [`write_file_with`]).
pub fn write_atomic(path: &Path, bytes: impl AsRef<[u8]>) -> Result<(), FileError> {
    write_file_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp).map_err(|e| FileError::new(tmp, e))?;
        f.write_all(bytes.as_ref()).map_err(|e| FileError::new(tmp, e))
    })
}

/// Writes the folder `out` through `fill`, which writes every file into the fresh temporary folder it
/// is given (`OUT.tmp`); then the folder replaces `out`. On failure the temporary folder is removed and
/// `out` is left as it was.
pub fn write_dir_with<E: From<FileError>>(out: &Path, fill: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), E> {
    let tmp = sibling(out, "tmp");
    if tmp.exists() {
        // Left by a run that was killed while writing.
        std::fs::remove_dir_all(&tmp).map_err(|e| FileError::new(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| FileError::new(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    replace_dir(&tmp, out).map_err(E::from)
}

/// Moves a finished folder `tmp` to `out`, replacing any previous `out`: the old one is first moved
/// aside (`OUT.old`) and removed only once the new one is in place.
pub fn replace_dir(tmp: &Path, out: &Path) -> Result<(), FileError> {
    if !out.exists() {
        return std::fs::rename(tmp, out).map_err(|e| FileError::new(out, e));
    }
    let old = sibling(out, "old");
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| FileError::new(&old, e))?;
    }
    std::fs::rename(out, &old).map_err(|e| FileError::new(out, e))?;
    std::fs::rename(tmp, out).map_err(|e| FileError::new(out, e))?;
    std::fs::remove_dir_all(&old).map_err(|e| FileError::new(&old, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_file_replaces_the_old_one_and_leaves_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub").join("a.json");
        write_atomic(&path, "one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(names(&tmp.path().join("sub")), ["a.json"]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_its_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.txt");
        write_atomic(&path, "old").unwrap();
        let e = write_file_with(&path, |t: &Path| {
            std::fs::write(t, "half").map_err(|e| FileError::new(t, e))?;
            Err(FileError::new(t, std::io::Error::other("disk full")))
        })
        .unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(names(tmp.path()), ["a.txt"]);
    }

    #[test]
    fn a_folder_is_replaced_whole_or_not_at_all() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("final");
        write_dir_with(&out, |d: &Path| write_atomic(&d.join("x"), "1")).unwrap();
        // A stale temporary folder from a killed run is cleared first.
        std::fs::create_dir_all(sibling(&out, "tmp")).unwrap();
        std::fs::write(sibling(&out, "tmp").join("junk"), "").unwrap();
        write_dir_with(&out, |d: &Path| write_atomic(&d.join("y"), "2")).unwrap();
        assert_eq!(names(&out), ["y"]);
        let e = write_dir_with(&out, |d: &Path| {
            write_atomic(&d.join("z"), "3")?;
            Err(FileError::new(d, std::io::Error::other("refused")))
        });
        assert!(e.is_err());
        assert_eq!(names(&out), ["y"]);
        assert_eq!(names(tmp.path()), ["final"]);
    }

    #[test]
    fn sibling_suffixes_the_last_component() {
        assert_eq!(sibling(Path::new("runs/x/final"), "tmp"), PathBuf::from("runs/x/final.tmp"));
    }
}
