//! The report as one self-contained HTML file: figures embedded as base64 JPEG, the ROC
//! curve as inline SVG.
use super::{Figure, Report};
use crate::inspection::Verdict;
use base64::Engine;
use std::fmt::Write;

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The ROC curve with the operating point, as an SVG of `size` pixels.
fn roc_svg(r: &Report, size: f64) -> Option<String> {
    let m = r.metrics.as_ref()?;
    let (pad, inner) = (36.0, size - 48.0);
    let x = |f: f64| pad + f * inner;
    let y = |t: f64| 12.0 + (1.0 - t) * inner;
    let pts: Vec<String> = m.roc.iter().map(|p| format!("{:.1},{:.1}", x(p.fpr), y(p.tpr))).collect();
    let c = &r.counts;
    let fpr = c.fp as f64 / (c.fp + c.tn).max(1) as f64;
    let tpr = c.tp as f64 / (c.tp + c.fn_).max(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 {size} {size}">
<rect x="{x0}" y="{y1}" width="{inner}" height="{inner}" fill="#fff" stroke="#888"/>
<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#bbb" stroke-dasharray="4 3"/>
<polyline fill="none" stroke="#c0392b" stroke-width="2" points="{pts}"/>
<circle cx="{ox:.1}" cy="{oy:.1}" r="6" fill="#2a7ae2"/>
<text x="{xm}" y="{size}" font-size="12" text-anchor="middle" dy="-4">false positive rate</text>
<text x="12" y="{ym}" font-size="12" text-anchor="middle" transform="rotate(-90 12 {ym})">true positive rate</text>
<text x="{x0}" y="{yl}" font-size="11" text-anchor="middle">0</text><text x="{x1}" y="{yl}" font-size="11" text-anchor="middle">1</text>
<text x="{xt}" y="{y0}" font-size="11" text-anchor="end">0</text><text x="{xt}" y="{y1t}" font-size="11" text-anchor="end">1</text>
</svg>"##,
        x0 = x(0.0),
        x1 = x(1.0),
        y0 = y(0.0),
        y1 = y(1.0),
        pts = pts.join(" "),
        ox = x(fpr),
        oy = y(tpr),
        xm = x(0.5),
        ym = y(0.5),
        yl = y(0.0) + 14.0,
        xt = x(0.0) - 4.0,
        y1t = y(1.0) + 10.0,
    );
    Some(s)
}

fn verdict_class(v: Option<Verdict>) -> &'static str {
    match v {
        Some(Verdict::Accept) => "accept",
        Some(Verdict::Review) => "review",
        Some(Verdict::Reject) => "reject",
        None => "error",
    }
}

pub fn render(r: &Report, figures: &[Figure], order: &[usize]) -> String {
    let mut h = String::new();
    let t = &r.thresholds;
    let thr = match t.reject_from {
        Some(u) => format!("accept below {:.4}, review from {:.4} to {u:.4}, reject from {u:.4}", t.accept_below, t.accept_below),
        None => format!("accept below {:.4}, reject from {:.4}", t.accept_below, t.accept_below),
    };
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>flowspect inspection report</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
table.meta td {{ padding: 2px 12px 2px 0; vertical-align: top; }}
.counts span {{ display: inline-block; padding: 4px 10px; margin-right: 8px; border-radius: 4px; color: #fff; font-weight: bold; }}
.accept {{ background: #3caa50; }} .review {{ background: #e6a01e; }} .reject {{ background: #dc3232; }} .error {{ background: #777; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 14px; }}
.card {{ border: 1px solid #ccc; border-radius: 6px; padding: 8px; width: 410px; }}
.card img {{ max-width: 400px; display: block; }}
.card .v {{ color: #fff; padding: 1px 6px; border-radius: 3px; }}
.legend {{ color: #555; font-size: 90%; }}
</style></head><body>
<h1>flowspect inspection report</h1>
<table class="meta">
<tr><td>Created</td><td>{date}</td></tr>
<tr><td>Inspected</td><td>{input}</td></tr>
<tr><td>Model</td><td>{model} ({method}, {backbone}, {size} px)</td></tr>
<tr><td>Thresholds</td><td>{thr}; pixel threshold {pix:.4}</td></tr>
<tr><td>Images</td><td>{n} ({scored} scored, {unread} unreadable; {good} good, {defect} defect, {unl} unlabeled)</td></tr>
</table>
<p class="counts"><span class="accept">accept {a}</span><span class="review">review {rv}</span><span class="reject">reject {rj}</span><span class="error">unreadable {unread}</span></p>
"#,
        date = esc(&r.created_utc),
        input = esc(&r.dataset.input),
        model = esc(&r.model.path),
        method = esc(&r.model.method),
        backbone = esc(&r.model.backbone),
        size = r.model.image_size,
        pix = r.pixel_threshold,
        n = r.dataset.images,
        scored = r.dataset.scored,
        unread = r.dataset.unreadable,
        good = r.dataset.good,
        defect = r.dataset.defect,
        unl = r.dataset.unlabeled,
        a = r.counts.accept,
        rv = r.counts.review,
        rj = r.counts.reject,
    );
    if let (Some(m), Some(svg)) = (&r.metrics, roc_svg(r, 320.0)) {
        let c = &r.counts;
        let _ = write!(
            h,
            r#"<h2>Against the labels</h2>
<div style="display:flex; gap:24px; align-items:flex-start">{svg}
<table class="meta">
<tr><td>Image AUROC</td><td>{auc:.4}</td></tr>
<tr><td>Best F1</td><td>{f1m:.4} at threshold {f1t:.4}</td></tr>
<tr><td>At these thresholds</td><td>precision {p:.4}, recall {rc:.4}, F1 {f1:.4}</td></tr>
<tr><td>Flagged defects (TP)</td><td>{tp}</td></tr><tr><td>False alarms (FP)</td><td>{fp}</td></tr>
<tr><td>Escapes (FN)</td><td>{fn_}</td></tr><tr><td>Good accepted (TN)</td><td>{tn}</td></tr>
<tr><td>In review</td><td>{rg} good, {rd} defect</td></tr>
</table></div>
<p class="legend">The blue point is the operating point of the lower threshold; review counts as flagged.</p>
"#,
            auc = m.image_auroc,
            f1m = m.f1_max,
            f1t = m.f1_max_threshold,
            p = m.precision,
            rc = m.recall,
            f1 = m.f1,
            tp = c.tp,
            fp = c.fp,
            fn_ = c.fn_,
            tn = c.tn,
            rg = c.review_good,
            rd = c.review_defect,
        );
    }
    let _ = write!(
        h,
        r#"<h2>Rejected and review images ({n}), highest score first</h2>
<p class="legend">Heatmap of the anomaly map; magenta: regions above the pixel threshold; green: ground truth where a mask exists.</p>
<div class="grid">
"#,
        n = figures.len()
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    for &i in order {
        let f = &figures[i];
        let row = &r.images[f.row];
        let name = row.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let label = match row.defect {
            Some(true) => format!("defect ({})", row.kind),
            Some(false) => "good".into(),
            None => "unlabeled".into(),
        };
        let _ = write!(
            h,
            r#"<div class="card"><img src="data:image/jpeg;base64,{img}" width="{w}" height="{hh}" alt="{name}">
<div><b>{name}</b> <span class="v {cls}">{verdict}</span> score {score:.4}</div>
<div>{regions} regions, largest {pct:.2}% of the image ({px} px); label: {label}</div>
<div class="legend">{path}</div></div>
"#,
            img = b64.encode(&f.jpeg),
            w = f.width,
            hh = f.height,
            name = esc(&name),
            cls = verdict_class(row.verdict),
            verdict = row.verdict.map(|v| v.to_string()).unwrap_or_default(),
            score = row.score.unwrap_or(f32::NAN),
            regions = row.regions,
            pct = row.largest_region_pct,
            px = row.largest_region_px,
            label = esc(&label),
            path = esc(&row.path.display().to_string()),
        );
    }
    h.push_str("</div>\n");
    let unreadable: Vec<_> = r.images.iter().filter(|i| i.error.is_some()).collect();
    if !unreadable.is_empty() {
        h.push_str("<h2>Unreadable images</h2><ul>\n");
        for u in unreadable {
            let _ = writeln!(h, "<li>{}</li>", esc(u.error.as_deref().unwrap_or("")));
        }
        h.push_str("</ul>\n");
    }
    let _ = write!(h, "<p class=\"legend\">flowspect {}</p></body></html>\n", esc(&r.flowspect_version));
    h
}
