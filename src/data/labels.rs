//! Labels a person gave in the review, kept beside the images in a sidecar
//! `flowspect-labels.csv` (path relative to the folder, `good` or `defect`, Unix time),
//! rewritten atomically on every change and read back when the folder is opened.
use crate::error::{Error, Result};
use crate::fsutil::atomic_write;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const SIDECAR: &str = "flowspect-labels.csv";

/// One folder's labels, by path relative to it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Labels {
    pub dir: PathBuf,
    /// `true` = defect; with the Unix time it was set.
    pub by_path: BTreeMap<String, (bool, u64)>,
}

impl Labels {
    pub fn sidecar_path(dir: &Path) -> PathBuf {
        dir.join(SIDECAR)
    }

    /// The labels of `dir` (none when it has no sidecar); a malformed row is an error
    /// naming the file and line.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = Self::sidecar_path(dir);
        let mut out = Self { dir: dir.to_path_buf(), by_path: BTreeMap::new() };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let mut r = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
        for (i, row) in r.records().enumerate() {
            let row = row.map_err(|e| Error::bad_file(&path, format!("line {}: {e}", i + 2)))?;
            let (Some(p), Some(l)) = (row.get(0), row.get(1)) else {
                return Err(Error::bad_file(&path, format!("line {}: expected path,label,time", i + 2)));
            };
            let defect = match l {
                "defect" => true,
                "good" => false,
                other => return Err(Error::bad_file(&path, format!("line {}: label '{other}' is neither good nor defect", i + 2))),
            };
            let t = row.get(2).and_then(|t| t.parse().ok()).unwrap_or(0);
            out.by_path.insert(p.to_string(), (defect, t));
        }
        Ok(out)
    }

    fn key(&self, image: &Path) -> String {
        image.strip_prefix(&self.dir).unwrap_or(image).to_string_lossy().replace('\\', "/")
    }

    /// The person's label of `image`, if any.
    pub fn get(&self, image: &Path) -> Option<bool> {
        self.by_path.get(&self.key(image)).map(|v| v.0)
    }

    /// Sets (`Some`) or clears (`None`) the label of each image and rewrites the sidecar.
    pub fn set(&mut self, images: &[&Path], label: Option<bool>) -> Result<()> {
        let now = crate::fsutil::unix_now();
        for p in images {
            let k = self.key(p);
            match label {
                Some(d) => {
                    self.by_path.insert(k, (d, now));
                }
                None => {
                    self.by_path.remove(&k);
                }
            }
        }
        self.save()
    }

    /// Writes the sidecar atomically (removes it when no label is left).
    pub fn save(&self) -> Result<()> {
        let path = Self::sidecar_path(&self.dir);
        if self.by_path.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
                _ => Ok(()),
            };
        }
        let mut w = csv::Writer::from_writer(Vec::new());
        let bad = |e: csv::Error| Error::bad_file(&path, e.to_string());
        w.write_record(["path", "label", "time"]).map_err(bad)?;
        for (p, (d, t)) in &self.by_path {
            w.write_record([p.as_str(), if *d { "defect" } else { "good" }, &t.to_string()]).map_err(bad)?;
        }
        let bytes = w.into_inner().map_err(|e| Error::bad_file(&path, e.to_string()))?;
        atomic_write(&path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_through_the_sidecar_and_clear() {
        let d = tempfile::tempdir().unwrap();
        let mut l = Labels::open(d.path()).unwrap();
        assert!(l.by_path.is_empty());
        let a = d.path().join("a.png");
        let b = d.path().join("sub/b.png");
        l.set(&[&a, &b], Some(true)).unwrap();
        l.set(&[&a], Some(false)).unwrap();
        let back = Labels::open(d.path()).unwrap();
        assert_eq!(back.get(&a), Some(false));
        assert_eq!(back.get(&b), Some(true));
        assert_eq!(back.by_path.keys().collect::<Vec<_>>(), vec!["a.png", "sub/b.png"]);
        l.set(&[&a, &b], None).unwrap();
        assert!(!Labels::sidecar_path(d.path()).exists());
        std::fs::write(Labels::sidecar_path(d.path()), "path,label,time\nx.png,maybe,1\n").unwrap();
        let e = Labels::open(d.path()).unwrap_err().to_string();
        assert!(e.contains(SIDECAR) && e.contains("line 2"), "{e}");
    }
}
