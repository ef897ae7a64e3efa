//! Finding the images of a training or test set on disk.
//!
//! Accepted layouts:
//! - an MVTec AD category folder: `train/good`, `test/<type>`, `ground_truth/<type>/<stem>_mask.png`;
//! - a folder with `good/` and one or more defect folders (labels, no masks);
//! - a plain folder of images (training set, or an unlabeled test set).
use super::image_io::is_image_path;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    /// `Some(true)` for a defect, `Some(false)` for good, `None` unlabeled.
    pub defect: Option<bool>,
    /// The sub-folder name (`good`, `crack`, ...) or empty.
    pub kind: String,
    /// Ground-truth mask, when the layout has one for this image.
    pub mask: Option<PathBuf>,
}

/// Image files directly inside `dir`, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_image_path(p))
        .collect();
    v.sort();
    Ok(v)
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    Ok(v)
}

/// The good images to train on: `DIR/train/good`, `DIR/good`, or `DIR` itself.
pub fn training_images(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::Data(format!("{}: not a folder", dir.display())));
    }
    let cands = [dir.join("train").join("good"), dir.join("good"), dir.to_path_buf()];
    let folder = cands.iter().find(|p| p.is_dir() && !list_images(p).unwrap_or_default().is_empty());
    let Some(folder) = folder else {
        return Err(Error::Data(format!(
            "{}: no training images found (looked in train/good, good and the folder itself for {} files)",
            dir.display(),
            super::image_io::IMAGE_EXTENSIONS.join("/")
        )));
    };
    list_images(folder)
}

/// The test images with labels and masks where the layout gives them.
pub fn test_samples(dir: &Path) -> Result<Vec<Sample>> {
    if dir.is_file() {
        return Ok(vec![Sample {
            path: dir.to_path_buf(),
            defect: None,
            kind: String::new(),
            mask: None,
        }]);
    }
    if !dir.is_dir() {
        return Err(Error::Data(format!("{}: no such folder or file", dir.display())));
    }
    let (root, gt) = if dir.join("test").is_dir() {
        (dir.join("test"), Some(dir.join("ground_truth")))
    } else {
        (dir.to_path_buf(), dir.parent().map(|p| p.join("ground_truth")).filter(|p| p.is_dir()))
    };
    let subs = subdirs(&root)?;
    let labelled = subs.iter().any(|s| s.file_name().is_some_and(|n| n == "good"));
    let mut out = Vec::new();
    if labelled {
        for s in subs {
            let kind = s.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let defect = kind != "good";
            for p in list_images(&s)? {
                let mask = if defect {
                    gt.as_ref().and_then(|g| {
                        let stem = p.file_stem()?.to_string_lossy().into_owned();
                        let m = g.join(&kind).join(format!("{stem}_mask.png"));
                        m.is_file().then_some(m)
                    })
                } else {
                    None
                };
                out.push(Sample {
                    path: p,
                    defect: Some(defect),
                    kind: kind.clone(),
                    mask,
                });
            }
        }
    } else {
        for p in list_images(&root)? {
            out.push(Sample {
                path: p,
                defect: None,
                kind: String::new(),
                mask: None,
            });
        }
    }
    if out.is_empty() {
        return Err(Error::Data(format!("{}: no test images found", dir.display())));
    }
    Ok(out)
}

/// Evenly spaced subset of at most `n` items (all of them when `n` is `None`).
pub fn spread<T: Clone>(v: &[T], n: Option<usize>) -> Vec<T> {
    match n {
        Some(n) if n < v.len() && n > 0 => (0..n).map(|i| v[i * v.len() / n].clone()).collect(),
        _ => v.to_vec(),
    }
}
