//! The report as a table: CSV, one row per image.
use super::ImageRow;
use crate::error::{Error, Result};
use std::path::Path;

pub const CSV_HEADER: [&str; 14] = [
    "path",
    "kind",
    "label",
    "score",
    "verdict",
    "regions",
    "largest_region_px",
    "largest_region_pct",
    "boxes",
    "width",
    "height",
    "heatmap",
    "mask",
    "error",
];

/// Bounding boxes as `x0 y0 x1 y1` groups separated by `;`.
pub fn boxes_text(b: &[[u32; 4]]) -> String {
    b.iter()
        .map(|b| format!("{} {} {} {}", b[0], b[1], b[2], b[3]))
        .collect::<Vec<_>>()
        .join(";")
}

pub fn write_csv(path: &Path, rows: &[ImageRow]) -> Result<()> {
    let err = |e: csv::Error| Error::bad_file(path, format!("cannot write CSV: {e}"));
    let mut w = csv::Writer::from_path(path).map_err(err)?;
    w.write_record(CSV_HEADER).map_err(err)?;
    for r in rows {
        w.write_record([
            r.path.display().to_string(),
            r.kind.clone(),
            match r.defect {
                Some(true) => "defect".into(),
                Some(false) => "good".into(),
                None => String::new(),
            },
            r.score.map(|s| format!("{s:.6}")).unwrap_or_default(),
            r.verdict.map(|v| v.to_string()).unwrap_or_else(|| "error".into()),
            r.regions.to_string(),
            r.largest_region_px.to_string(),
            format!("{:.4}", r.largest_region_pct),
            boxes_text(&r.boxes),
            r.width.to_string(),
            r.height.to_string(),
            r.heatmap.clone().unwrap_or_default(),
            r.mask.clone().unwrap_or_default(),
            r.error.clone().unwrap_or_default(),
        ])
        .map_err(err)?;
    }
    w.flush().map_err(|e| Error::io(path, e))
}
