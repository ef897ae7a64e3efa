//! The report as a PDF (pdf-writer): a summary page with the ROC curve and the metrics,
//! then the rejected and review images, six to a page, highest score first. Text uses
//! the standard Helvetica fonts (nothing embedded); figures are the report's JPEGs.
use super::{Figure, Report};
use pdf_writer::{Content, Filter, Finish, Name, Pdf, Rect, Ref, Str};

const W: f32 = 595.0;
const H: f32 = 842.0;
const MARGIN: f32 = 40.0;
const PER_PAGE: usize = 6;

/// Text the standard fonts can show: printable ASCII, anything else as '?'.
fn ascii(s: &str) -> Vec<u8> {
    s.chars().map(|c| if (' '..='~').contains(&c) { c as u8 } else { b'?' }).collect()
}

/// Shortens `s` to `n` characters, keeping the end (file names matter most).
fn tail(s: &str, n: usize) -> String {
    let c: Vec<char> = s.chars().collect();
    if c.len() <= n { s.to_string() } else { format!("...{}", c[c.len() - (n - 3)..].iter().collect::<String>()) }
}

fn text(c: &mut Content, bold: bool, size: f32, x: f32, y: f32, s: &str) {
    let b = ascii(s);
    c.begin_text();
    c.set_font(Name(if bold { b"F2" } else { b"F1" }), size);
    c.next_line(x, y);
    c.show(Str(&b));
    c.end_text();
}

fn verdict_rgb(v: &str) -> (f32, f32, f32) {
    match v {
        "accept" => (0.24, 0.67, 0.31),
        "review" => (0.90, 0.63, 0.12),
        "reject" => (0.86, 0.20, 0.20),
        _ => (0.47, 0.47, 0.47),
    }
}

fn summary_page(r: &Report, flagged: usize) -> Content {
    let mut c = Content::new();
    let mut y = H - MARGIN - 10.0;
    text(&mut c, true, 20.0, MARGIN, y, "flowspect inspection report");
    y -= 28.0;
    let t = &r.thresholds;
    let thr = match t.reject_from {
        Some(u) => format!("accept below {:.4}, review {:.4} to {u:.4}, reject from {u:.4}", t.accept_below, t.accept_below),
        None => format!("accept below {:.4}, reject from {:.4}", t.accept_below, t.accept_below),
    };
    let d = &r.dataset;
    for (k, v) in [
        ("Created", r.created_utc.clone()),
        ("Inspected", tail(&d.input, 80)),
        ("Model", tail(&r.model.path, 80)),
        ("Method", format!("{} on {}, {} px", r.model.method, r.model.backbone, r.model.image_size)),
        ("Thresholds", format!("{thr}; pixel threshold {:.4}", r.pixel_threshold)),
        (
            "Images",
            format!(
                "{} ({} scored, {} unreadable; {} good, {} defect, {} unlabeled)",
                d.images, d.scored, d.unreadable, d.good, d.defect, d.unlabeled
            ),
        ),
    ] {
        text(&mut c, true, 10.0, MARGIN, y, k);
        text(&mut c, false, 10.0, MARGIN + 70.0, y, &v);
        y -= 15.0;
    }
    y -= 10.0;
    // Counts by verdict as coloured boxes.
    let mut x = MARGIN;
    for (name, n) in [
        ("accept", r.counts.accept),
        ("review", r.counts.review),
        ("reject", r.counts.reject),
        ("unreadable", d.unreadable),
    ] {
        let (cr, cg, cb) = verdict_rgb(name);
        c.set_fill_rgb(cr, cg, cb);
        c.rect(x, y - 6.0, 110.0, 22.0);
        c.fill_nonzero();
        c.set_fill_rgb(1.0, 1.0, 1.0);
        text(&mut c, true, 11.0, x + 8.0, y, &format!("{name} {n}"));
        x += 120.0;
    }
    c.set_fill_rgb(0.0, 0.0, 0.0);
    y -= 40.0;
    if let Some(m) = &r.metrics {
        text(&mut c, true, 14.0, MARGIN, y, "Against the labels");
        y -= 16.0;
        // ROC curve.
        let (side, x0) = (230.0, MARGIN + 30.0);
        let y0 = y - side - 10.0;
        c.set_stroke_rgb(0.5, 0.5, 0.5);
        c.set_line_width(0.8);
        c.rect(x0, y0, side, side);
        c.stroke();
        c.set_stroke_rgb(0.75, 0.75, 0.75);
        c.move_to(x0, y0);
        c.line_to(x0 + side, y0 + side);
        c.stroke();
        c.set_stroke_rgb(0.75, 0.22, 0.17);
        c.set_line_width(1.6);
        for (i, p) in m.roc.iter().enumerate() {
            let (px, py) = (x0 + p.fpr as f32 * side, y0 + p.tpr as f32 * side);
            if i == 0 {
                c.move_to(px, py);
            } else {
                c.line_to(px, py);
            }
        }
        c.stroke();
        let cn = &r.counts;
        let fpr = cn.fp as f32 / (cn.fp + cn.tn).max(1) as f32;
        let tpr = cn.tp as f32 / (cn.tp + cn.fn_).max(1) as f32;
        c.set_fill_rgb(0.16, 0.48, 0.89);
        c.rect(x0 + fpr * side - 4.0, y0 + tpr * side - 4.0, 8.0, 8.0);
        c.fill_nonzero();
        c.set_fill_rgb(0.0, 0.0, 0.0);
        text(&mut c, false, 9.0, x0 + side / 2.0 - 40.0, y0 - 14.0, "false positive rate");
        text(&mut c, false, 9.0, x0 - 4.0, y0 - 12.0, "0");
        text(&mut c, false, 9.0, x0 + side - 3.0, y0 - 12.0, "1");
        text(&mut c, false, 9.0, x0 - 12.0, y0 + side - 6.0, "1");
        c.save_state();
        c.transform([0.0, 1.0, -1.0, 0.0, x0 - 8.0, y0 + side / 2.0 - 40.0]);
        text(&mut c, false, 9.0, 0.0, 0.0, "true positive rate");
        c.restore_state();
        let mut ty = y - 10.0;
        let tx = x0 + side + 30.0;
        for line in [
            format!("Image AUROC {:.4}", m.image_auroc),
            format!("Best F1 {:.4} at threshold {:.4}", m.f1_max, m.f1_max_threshold),
            "At these thresholds:".to_string(),
            format!("  precision {:.4}, recall {:.4}, F1 {:.4}", m.precision, m.recall, m.f1),
            format!("  flagged defects (TP) {}", cn.tp),
            format!("  false alarms (FP) {}", cn.fp),
            format!("  escapes (FN) {}", cn.fn_),
            format!("  good accepted (TN) {}", cn.tn),
            format!("  in review: {} good, {} defect", cn.review_good, cn.review_defect),
            String::new(),
            "Blue square: the lower threshold's".to_string(),
            "operating point; review counts as flagged.".to_string(),
        ] {
            text(&mut c, false, 10.0, tx, ty, &line);
            ty -= 15.0;
        }
        y = y0 - 40.0;
    }
    text(
        &mut c,
        true,
        12.0,
        MARGIN,
        y,
        &if flagged > 0 {
            format!("{flagged} rejected and review images follow, highest score first.")
        } else {
            "No rejected or review images.".to_string()
        },
    );
    y -= 18.0;
    let unreadable: Vec<_> = r.images.iter().filter_map(|i| i.error.as_deref()).collect();
    if !unreadable.is_empty() {
        text(&mut c, true, 11.0, MARGIN, y, "Unreadable images");
        y -= 14.0;
        for u in unreadable.iter().take(12) {
            text(&mut c, false, 8.0, MARGIN, y, &tail(u, 120));
            y -= 11.0;
        }
        if unreadable.len() > 12 {
            text(&mut c, false, 8.0, MARGIN, y, &format!("and {} more (see report.csv)", unreadable.len() - 12));
        }
    }
    c
}

pub fn render(r: &Report, figures: &[Figure], order: &[usize]) -> Vec<u8> {
    let mut pdf = Pdf::new();
    let mut next = 0;
    let mut alloc = || {
        next += 1;
        Ref::new(next)
    };
    let (catalog, tree, font, bold) = (alloc(), alloc(), alloc(), alloc());
    let pages = 1 + order.len().div_ceil(PER_PAGE);
    let page_ids: Vec<(Ref, Ref)> = (0..pages).map(|_| (alloc(), alloc())).collect();
    let image_ids: Vec<Ref> = figures.iter().map(|_| alloc()).collect();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree).kids(page_ids.iter().map(|p| p.0)).count(pages as i32);
    pdf.type1_font(font).base_font(Name(b"Helvetica")).encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(bold).base_font(Name(b"Helvetica-Bold")).encoding_predefined(Name(b"WinAnsiEncoding"));
    for (k, &(page_id, content_id)) in page_ids.iter().enumerate() {
        let on_page: &[usize] = if k == 0 { &[] } else { &order[((k - 1) * PER_PAGE).min(order.len())..(k * PER_PAGE).min(order.len())] };
        let names: Vec<String> = on_page.iter().map(|i| format!("Im{i}")).collect();
        let content = if k == 0 { summary_page(r, order.len()) } else { images_page(r, figures, on_page, &names, k, pages) };
        let mut page = pdf.page(page_id);
        page.media_box(Rect::new(0.0, 0.0, W, H));
        page.parent(tree);
        page.contents(content_id);
        let mut res = page.resources();
        res.fonts().pair(Name(b"F1"), font).pair(Name(b"F2"), bold);
        {
            let mut xo = res.x_objects();
            for (n, &i) in names.iter().zip(on_page) {
                xo.pair(Name(n.as_bytes()), image_ids[i]);
            }
        }
        res.finish();
        page.finish();
        pdf.stream(content_id, &content.finish());
    }
    for (f, &id) in figures.iter().zip(&image_ids) {
        let mut img = pdf.image_xobject(id, &f.jpeg);
        img.filter(Filter::DctDecode);
        img.width(f.width as i32);
        img.height(f.height as i32);
        img.color_space().device_rgb();
        img.bits_per_component(8);
        img.finish();
    }
    pdf.finish()
}

fn images_page(r: &Report, figures: &[Figure], on_page: &[usize], names: &[String], k: usize, pages: usize) -> Content {
    let mut c = Content::new();
    text(&mut c, true, 12.0, MARGIN, H - MARGIN, "Rejected and review images");
    text(&mut c, false, 9.0, W - MARGIN - 60.0, H - MARGIN, &format!("page {} of {pages}", k + 1));
    let (cell_w, cell_h) = ((W - 2.0 * MARGIN) / 2.0, (H - 2.0 * MARGIN - 20.0) / 3.0);
    let (img_w, img_h) = (cell_w - 16.0, cell_h - 52.0);
    for (slot, (&i, name)) in on_page.iter().zip(names).enumerate() {
        let f = &figures[i];
        let row = &r.images[f.row];
        let (col, line) = (slot % 2, slot / 2);
        let x = MARGIN + col as f32 * cell_w;
        let top = H - MARGIN - 20.0 - line as f32 * cell_h;
        let s = (img_w / f.width as f32).min(img_h / f.height as f32);
        let (w, h) = (f.width as f32 * s, f.height as f32 * s);
        c.save_state();
        c.transform([w, 0.0, 0.0, h, x, top - h]);
        c.x_object(Name(name.as_bytes()));
        c.restore_state();
        let verdict = row.verdict.map(|v| v.to_string()).unwrap_or_default();
        let (cr, cg, cb) = verdict_rgb(&verdict);
        let file = row.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut ty = top - h - 13.0;
        c.set_fill_rgb(cr, cg, cb);
        text(&mut c, true, 9.0, x, ty, &format!("{} {:.4}", verdict.to_uppercase(), row.score.unwrap_or(f32::NAN)));
        c.set_fill_rgb(0.0, 0.0, 0.0);
        text(&mut c, true, 9.0, x + 95.0, ty, &tail(&file, 40));
        ty -= 12.0;
        let label = match row.defect {
            Some(true) => format!("defect ({})", row.kind),
            Some(false) => "good".into(),
            None => "unlabeled".into(),
        };
        text(
            &mut c,
            false,
            8.0,
            x,
            ty,
            &format!("{} regions, largest {:.2}% ({} px); label {label}", row.regions, row.largest_region_pct, row.largest_region_px),
        );
        ty -= 11.0;
        text(&mut c, false, 7.0, x, ty, &tail(&row.path.display().to_string(), 70));
    }
    c
}
