//! Which files of the watched folder are ready to be read: file-system events (the
//! `notify` crate) wake the watcher at once, and a directory scan every `poll`
//! interval finds what events missed (network shares send none).
//!
//! A file is offered as soon as it is seen. If it does not decode as a whole image
//! (still being written, or corrupt), it is offered again once its size and
//! modification time have been unchanged for `settle`; only then is a failure final.
//! A writer that renames a finished file into place is read at once.
use crate::error::{Error, Result};
use crate::progress::CancelToken;
use crossbeam_channel::{Receiver, bounded};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// A file to read now.
#[derive(Debug, Clone)]
pub struct Ready {
    pub path: PathBuf,
    /// When the watcher first saw the file (Unix milliseconds).
    pub arrived_unix_ms: i64,
    /// Size and time unchanged for the settle time: a decode failure is final.
    pub settled: bool,
}

/// A file that disappeared after it was first offered and before it was read whole.
#[derive(Debug, Clone)]
pub struct Vanished {
    pub path: PathBuf,
    pub arrived_unix_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Stamp {
    size: u64,
    modified: Option<SystemTime>,
}

struct Pending {
    arrived_unix_ms: i64,
    stamp: Stamp,
    stable_since: Instant,
    tried: bool,
}

pub struct Arrivals {
    dir: PathBuf,
    settle: Duration,
    poll: Duration,
    pending: HashMap<PathBuf, Pending>,
    done: HashMap<PathBuf, Stamp>,
    exclude: Vec<OsString>,
    events: Option<(notify::RecommendedWatcher, Receiver<()>)>,
}

pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn now_unix_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// Names a watcher never reads: hidden files, the usual temporary names of writers
/// that rename into place, and the names in `exclude` (the log database and its
/// journal files).
pub fn ignored_name(name: &std::ffi::OsStr, exclude: &[OsString]) -> bool {
    let s = name.to_string_lossy();
    let lower = s.to_ascii_lowercase();
    s.starts_with('.')
        || s.ends_with('~')
        || [".tmp", ".part", ".partial", ".crdownload", ".download", ".swp"].iter().any(|e| lower.ends_with(e))
        || exclude.iter().any(|x| x == name)
}

impl Arrivals {
    /// Watches `dir` (not its sub-folders). `events: false` polls only.
    pub fn new(dir: &Path, settle: Duration, poll: Duration, events: bool, exclude: Vec<OsString>) -> Result<(Self, Option<String>)> {
        if !dir.is_dir() {
            return Err(Error::bad_file(dir, "not a folder"));
        }
        let mut note = None;
        let events = if events {
            use notify::Watcher;
            let (tx, rx) = bounded::<()>(1);
            let made = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
                let _ = tx.try_send(());
            })
            .and_then(|mut w| w.watch(dir, notify::RecursiveMode::NonRecursive).map(|_| w));
            match made {
                Ok(w) => Some((w, rx)),
                Err(e) => {
                    note = Some(format!("no file-system events for {} ({e}); polling every {} ms", dir.display(), poll.as_millis()));
                    None
                }
            }
        } else {
            None
        };
        Ok((
            Self {
                dir: dir.into(),
                settle,
                poll,
                pending: HashMap::new(),
                done: HashMap::new(),
                exclude,
                events,
            },
            note,
        ))
    }

    pub fn uses_events(&self) -> bool {
        self.events.is_some()
    }

    /// Files to read now, oldest arrival first, and files that vanished half-written.
    pub fn scan(&mut self) -> Result<(Vec<Ready>, Vec<Vanished>)> {
        let now = Instant::now();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut present: Vec<PathBuf> = Vec::new();
        let mut ready = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if ignored_name(&name, &self.exclude) {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if !meta.is_file() {
                continue;
            }
            let stamp = Stamp { size: meta.len(), modified: meta.modified().ok() };
            present.push(path.clone());
            match self.done.get(&path) {
                Some(s) if *s == stamp => continue,
                Some(_) => {
                    self.done.remove(&path);
                }
                None => {}
            }
            let p = self.pending.entry(path.clone()).or_insert_with(|| Pending {
                arrived_unix_ms: now_unix_ms(),
                stamp,
                stable_since: now,
                tried: false,
            });
            if p.stamp != stamp {
                p.stamp = stamp;
                p.stable_since = now;
            }
            let settled = now.duration_since(p.stable_since) >= self.settle;
            if !p.tried || settled {
                ready.push(Ready { path, arrived_unix_ms: p.arrived_unix_ms, settled });
            }
        }
        present.sort();
        let is_present = |p: &PathBuf| present.binary_search(p).is_ok();
        let mut vanished = Vec::new();
        self.pending.retain(|path, p| {
            let keep = is_present(path);
            if !keep && p.tried {
                vanished.push(Vanished { path: path.clone(), arrived_unix_ms: p.arrived_unix_ms });
            }
            keep
        });
        self.done.retain(|path, _| is_present(path));
        ready.sort_by(|a, b| a.arrived_unix_ms.cmp(&b.arrived_unix_ms).then(a.path.cmp(&b.path)));
        Ok((ready, vanished))
    }

    /// Files seen and not yet done with (still settling).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The file was read but is not whole yet: offer it again once it has settled.
    pub fn defer(&mut self, path: &Path) {
        if let Some(p) = self.pending.get_mut(path) {
            p.tried = true;
        }
    }

    /// The file is in the log (or moved away): offer it again only if it changes.
    pub fn finish(&mut self, path: &Path) {
        if let Some(p) = self.pending.remove(path) {
            self.done.insert(path.into(), p.stamp);
        }
    }

    /// Forgets a file (it vanished, or was logged as an error for good).
    pub fn forget(&mut self, path: &Path) {
        self.pending.remove(path);
    }

    /// Sleeps until an event arrives, a deferred file may have settled, the poll
    /// interval has passed or `stop` is set.
    pub fn wait(&self, stop: &CancelToken) {
        let now = Instant::now();
        let settle_at = self
            .pending
            .values()
            .filter(|p| p.tried)
            .map(|p| (p.stable_since + self.settle).saturating_duration_since(now))
            .min();
        let timeout = settle_at.map_or(self.poll, |s| s.min(self.poll)).max(Duration::from_millis(5));
        let deadline = now + timeout;
        // Short slices so that a stop request is seen quickly.
        while Instant::now() < deadline && !stop.is_cancelled() {
            let slice = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(50));
            match &self.events {
                Some((_, rx)) => {
                    if rx.recv_timeout(slice).is_ok() {
                        // Let a burst of events for the same write arrive, then scan once.
                        std::thread::sleep(Duration::from_millis(10));
                        while rx.try_recv().is_ok() {}
                        return;
                    }
                }
                None => std::thread::sleep(slice),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_offered_at_once_then_again_when_settled() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, _) = Arrivals::new(dir.path(), Duration::from_millis(150), Duration::from_millis(20), false, vec!["log.sqlite".into()]).unwrap();
        std::fs::write(dir.path().join("a.png"), b"half").unwrap();
        std::fs::write(dir.path().join(".hidden.png"), b"x").unwrap();
        std::fs::write(dir.path().join("b.png.part"), b"x").unwrap();
        std::fs::write(dir.path().join("log.sqlite"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("accept")).unwrap();
        let (r, _) = a.scan().unwrap();
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(!r[0].settled);
        a.defer(&r[0].path);
        // Not offered again while it may still be written.
        assert!(a.scan().unwrap().0.is_empty());
        std::thread::sleep(Duration::from_millis(200));
        let (r, _) = a.scan().unwrap();
        assert_eq!(r.len(), 1);
        assert!(r[0].settled);
        a.finish(&r[0].path);
        assert!(a.scan().unwrap().0.is_empty());
        // New content under the same name is a new arrival.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(dir.path().join("a.png"), b"whole now").unwrap();
        assert_eq!(a.scan().unwrap().0.len(), 1);
    }

    #[test]
    fn a_half_written_file_that_disappears_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, _) = Arrivals::new(dir.path(), Duration::from_secs(5), Duration::from_millis(20), true, vec![]).unwrap();
        let p = dir.path().join("x.jpg");
        std::fs::write(&p, b"abc").unwrap();
        let (r, _) = a.scan().unwrap();
        a.defer(&r[0].path);
        std::fs::remove_file(&p).unwrap();
        let (r, v) = a.scan().unwrap();
        assert!(r.is_empty());
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].path, p);
    }
}
