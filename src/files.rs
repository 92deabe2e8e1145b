//! Writing files and directories so that a crash never leaves a half-written one under its real
//! name, and cleaning up what interrupted writes left behind.
//!
//! Every temporary name carries the writer's process id (`.NAME.tmpPID`, `.tmp-NAME-PID`,
//! `.trash-NAME-PID`), so a later process can tell the leftovers of a dead writer from the files
//! of a live one and remove only the former. Every error names the file and the operation.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The most bytes a text file this project reads may hold (configurations, `state.json`, β
/// files, diffusers configs): far above any real one, far below what would strain memory.
pub const TEXT_MAX: u64 = 16 << 20;

/// The most bytes of a training log (`log.jsonl`) read for plotting.
pub const LOG_MAX: u64 = 4 << 30;

/// The most bytes of a weights or statistics file read whole: above any real model's.
pub const BINARY_MAX: u64 = 64 << 30;

/// The contents of `path`, which must be a regular file (a link to one is followed) of at most
/// `max` bytes: a device (`/dev/zero`), pipe or directory, or a larger file, is an error instead
/// of a read without end. The caller names the file in its error.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    // Checked before opening: opening a pipe would wait for a writer.
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a directory, device or pipe)",
        ));
    }
    let too_big = |len: u64| {
        Error::new(
            ErrorKind::InvalidData,
            format!("{len} bytes or more, above the {max} such a file may hold"),
        )
    };
    if meta.len() > max {
        return Err(too_big(meta.len()));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(too_big(buf.len() as u64));
    }
    Ok(buf)
}

/// [`read_capped`] of a UTF-8 text file.
pub fn read_text_capped(path: &Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read_capped(path, max)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Bytes free to an unprivileged writer on the file system holding `path` (or, when `path` does
/// not exist yet, its nearest existing ancestor); `None` where it cannot be told.
pub fn free_space(path: &Path) -> Option<u64> {
    let mut p = path;
    while !p.exists() {
        p = match p.parent() {
            Some(q) if q.as_os_str().is_empty() => Path::new("."),
            q => q?,
        };
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
        // SAFETY: an all-zero statvfs is valid; statvfs writes into memory this function owns
        // and reads a NUL-terminated path.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)] // u64 on some targets, u32 on others
        Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = p;
        None
    }
}

/// Removes a file or directory tree, ignoring one that is already gone.
fn remove_any(path: &Path) -> std::io::Result<()> {
    let r = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, flushed, then
/// renamed over `path`. On failure the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut w = AtomicWriter::create(path)?;
    w.write(bytes)?;
    w.finish()
}

/// A file written piece by piece and put in place atomically by [`AtomicWriter::finish`]: until
/// then the pieces go to a temporary `.NAME.tmpPID` beside it, which is removed when the writer
/// is dropped unfinished (an error, a panic); a killed writer's leftover is what
/// [`remove_stale`] deletes. For outputs too large to hold in memory (samples streamed to disk).
pub struct AtomicWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl AtomicWriter {
    /// Starts writing `path` (its directory is created).
    pub fn create(path: &Path) -> Result<Self> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the directory {}", dir.display()))?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let f = self.file.as_mut().expect("an unfinished writer");
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", self.tmp.display()))
    }

    /// Flushes everything to disk and renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        let f = self.file.take().expect("an unfinished writer");
        let synced = f
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot write {}", self.tmp.display()));
        let done = synced.and_then(|()| {
            std::fs::rename(&self.tmp, &self.path).with_context(|| {
                format!(
                    "cannot rename {} to {}",
                    self.tmp.display(),
                    self.path.display()
                )
            })
        });
        if done.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        done
    }
}

impl Drop for AtomicWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Writes the directory `dir` atomically: `files` (name → bytes) go into a temporary sibling
/// directory that is then renamed to `dir` (an existing `dir` is first moved aside and removed).
/// On failure the temporary directory is removed and `dir` is untouched.
pub fn write_dir_atomic<N: AsRef<str>, B: AsRef<[u8]>>(dir: &Path, files: &[(N, B)]) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create the directory {}", parent.display()))?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("dir");
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    let result = (|| {
        remove_any(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
        std::fs::create_dir(&tmp)
            .with_context(|| format!("cannot create the directory {}", tmp.display()))?;
        for (file, bytes) in files {
            let p = tmp.join(file.as_ref());
            write_synced(&p, bytes.as_ref())
                .with_context(|| format!("cannot write {}", p.display()))?;
        }
        if dir.exists() {
            remove_dir_aside(dir)?;
        }
        std::fs::rename(&tmp, dir)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))
    })();
    if result.is_err() {
        let _ = remove_any(&tmp);
    }
    result
}

/// Removes the directory `dir` so that no reader ever sees part of it: it is first renamed to a
/// hidden `.trash-NAME-PID` sibling, then deleted. A crash in between leaves only the hidden
/// directory, which [`remove_stale`] deletes later.
pub fn remove_dir_aside(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("dir");
    let trash = parent.join(format!(".trash-{name}-{}", std::process::id()));
    remove_any(&trash).with_context(|| format!("cannot remove {}", trash.display()))?;
    std::fs::rename(dir, &trash)
        .with_context(|| format!("cannot move {} aside to {}", dir.display(), trash.display()))?;
    remove_any(&trash).with_context(|| format!("cannot remove {}", trash.display()))
}

/// The process id a temporary name of this module carries, if `name` is one.
fn temporary_owner(name: &str) -> Option<u32> {
    if let Some(rest) = name
        .strip_prefix(".tmp-")
        .or_else(|| name.strip_prefix(".trash-"))
    {
        let (_, pid) = rest.rsplit_once('-')?;
        return pid.parse().ok();
    }
    if name.starts_with('.') {
        let (_, tail) = name.rsplit_once(".tmp")?;
        if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) {
            return tail.parse().ok();
        }
    }
    None
}

/// Whether process `pid` is running (this process counts as running; where processes cannot be
/// listed, every process does, so nothing is removed).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(target_os = "linux")]
    {
        Path::new("/proc").join(pid.to_string()).exists()
    }
    #[cfg(not(target_os = "linux"))]
    {
        true
    }
}

/// Deletes, in `dir`, the temporary files and directories of interrupted writes of `targets`
/// (the names they were writing: `config.toml`, `step-` for every `step-*` directory) made by
/// processes that are no longer running; returns what it removed. Nothing else is touched, so a
/// directory shared with other tools keeps their files. A missing `dir` is no error.
pub fn remove_stale(dir: &Path, targets: &[&str]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for e in entries {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().to_string();
        let ours = targets.iter().any(|t| {
            [".tmp-", ".trash-", "."]
                .iter()
                .any(|prefix| name.starts_with(&format!("{prefix}{t}")))
        });
        if ours
            && let Some(pid) = temporary_owner(&name)
            && !process_alive(pid)
        {
            let p = e.path();
            remove_any(&p)
                .with_context(|| format!("cannot remove the leftover {}", p.display()))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// An exclusive lock on a directory (a `.lock` file in it, locked with `flock`), held until the
/// returned file is dropped; an error naming the directory when another process holds it. Where
/// `flock` is not available, no lock is taken.
pub fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor this function owns; no memory is shared.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            anyhow::bail!(
                "{}: another ddpm process is using it (its lock {} is held); wait for it \
                 or stop it first",
                dir.display(),
                path.display()
            );
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_locked_by_one_holder_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let held = lock_dir(d.path()).unwrap();
        if cfg!(target_os = "linux") {
            let e = lock_dir(d.path()).unwrap_err().to_string();
            assert!(e.contains("another ddpm process"), "{e}");
        }
        drop(held);
        lock_dir(d.path()).unwrap();
    }

    #[test]
    fn a_streamed_file_appears_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("out.csv");
        let mut w = AtomicWriter::create(&path).unwrap();
        w.write(b"1,2\n").unwrap();
        w.write(b"3,4\n").unwrap();
        assert!(!path.exists(), "visible before finish");
        w.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"1,2\n3,4\n");
        // Dropped unfinished: the old file stays, no temporary is left.
        let mut w = AtomicWriter::create(&path).unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        assert_eq!(std::fs::read(&path).unwrap(), b"1,2\n3,4\n");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.csv")]);
    }

    #[test]
    fn capped_reads_refuse_devices_directories_and_large_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.toml");
        std::fs::write(&f, b"a = 1\n").unwrap();
        assert_eq!(read_text_capped(&f, 6).unwrap(), "a = 1\n");
        let e = read_capped(&f, 5).unwrap_err().to_string();
        assert!(e.contains("6 bytes") && e.contains("above the 5"), "{e}");
        let e = read_capped(d.path(), TEXT_MAX).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        #[cfg(unix)]
        {
            let link = d.path().join("zero");
            std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
            let e = read_capped(&link, TEXT_MAX).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert!(read_text_capped(&f, TEXT_MAX).is_err());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn free_space_is_read_for_paths_yet_to_be_made() {
        let d = tempfile::tempdir().unwrap();
        let here = free_space(d.path()).unwrap();
        assert!(here > 0);
        assert!(free_space(&d.path().join("a/b/c")).is_some());
        assert!(
            free_space(Path::new("not-yet-made/out")).is_some(),
            "relative"
        );
    }

    #[test]
    fn temporary_names_and_their_owners() {
        assert_eq!(temporary_owner(".latest.tmp123"), Some(123));
        assert_eq!(temporary_owner(".config.toml.tmp77"), Some(77));
        assert_eq!(temporary_owner(".tmp-step-00000004-991"), Some(991));
        assert_eq!(temporary_owner(".trash-step-00000004-5"), Some(5));
        assert_eq!(temporary_owner("step-00000004"), None);
        assert_eq!(temporary_owner("latest"), None);
        assert_eq!(temporary_owner(".tmp"), None);
        assert_eq!(temporary_owner(".x.tmp"), None);
        assert_eq!(temporary_owner("a.tmp12"), None);
    }

    #[test]
    fn atomic_writes_and_stale_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.txt");
        write_atomic(&f, b"one").unwrap();
        write_atomic(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        let sub = d.path().join("step-1");
        write_dir_atomic(&sub, &[("x", b"1".to_vec()), ("y", b"2".to_vec())]).unwrap();
        write_dir_atomic(&sub, &[("x", b"3".to_vec())]).unwrap();
        assert_eq!(std::fs::read(sub.join("x")).unwrap(), b"3");
        assert!(!sub.join("y").exists());
        // A dead writer's leftovers (pid far above any pid_max) go; a live one's stay.
        let dead = 999_999_999u32;
        let mine = std::process::id();
        for n in [
            format!(".tmp-step-2-{dead}"),
            format!(".trash-step-0-{dead}"),
            format!(".tmp-step-3-{mine}"),
        ] {
            std::fs::create_dir(d.path().join(n)).unwrap();
        }
        std::fs::write(d.path().join(format!(".latest.tmp{dead}")), b"x").unwrap();
        // Another tool's temporary of the same pattern, not one of ours: kept.
        std::fs::write(d.path().join(format!(".notes.txt.tmp{dead}")), b"x").unwrap();
        let mut gone = remove_stale(d.path(), &["step-", "latest"]).unwrap();
        gone.sort();
        assert_eq!(gone.len(), 3, "{gone:?}");
        assert!(d.path().join(format!(".notes.txt.tmp{dead}")).exists());
        assert!(d.path().join(format!(".tmp-step-3-{mine}")).exists());
        assert!(sub.exists() && f.exists());
        remove_dir_aside(&sub).unwrap();
        assert!(!sub.exists());
        // A write into a path whose parent is a file fails naming the path, leaving nothing.
        let e = write_atomic(&f.join("inner"), b"x").unwrap_err();
        assert!(format!("{e:#}").contains("a.txt"), "{e:#}");
        let e = write_dir_atomic::<&str, Vec<u8>>(&f.join("dir"), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("a.txt"), "{e:#}");
    }
}
