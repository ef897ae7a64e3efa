//! The Threshold tab: ROC and precision-recall curves with the operating point(s),
//! the score histogram of good and defect images, one or two thresholds (accept below
//! the lower, reject from the upper, review between), and the live confusion matrix.
use super::app::App;
use super::data_panel::verdict_color;
use super::state::{counts, scored_labels};
use egui_plot::{Bar, BarChart, Legend, Line, Plot, Points, VLine};
use flowspect::inspection::{Thresholds, VerdictCounts};
use flowspect::metrics::{self, RocPoint};

const BINS: usize = 40;

/// Score range of the scored images (with a margin so both ends can be reached).
fn score_range(scores: &[f32]) -> (f32, f32) {
    let lo = scores.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.02).max(1e-3);
    (lo - pad, hi + pad)
}

/// (fpr, tpr) of a set at thresholds `t` (review counts as flagged).
fn operating_point(c: &VerdictCounts) -> [f64; 2] {
    let n = (c.fp + c.tn).max(1) as f64;
    let p = (c.tp + c.fn_).max(1) as f64;
    [c.fp as f64 / n, c.tp as f64 / p]
}

/// The threshold of the ROC point nearest to `(fpr, tpr)`.
pub fn nearest_threshold(roc: &[RocPoint], fpr: f64, tpr: f64, max_score: f32) -> Option<f32> {
    roc.iter()
        .min_by(|a, b| {
            let da = (a.fpr - fpr).powi(2) + (a.tpr - tpr).powi(2);
            let db = (b.fpr - fpr).powi(2) + (b.tpr - tpr).powi(2);
            da.total_cmp(&db)
        })
        .map(|p| if p.threshold.is_finite() { p.threshold } else { max_score + 1e-3 })
}

pub fn threshold_ui(ui: &mut egui::Ui, app: &mut App) {
    let (scores, labels) = scored_labels(&app.entries);
    if scores.is_empty() {
        ui.heading("Threshold");
        ui.label("Score a test folder first (Data tab), with a trained or opened model.");
        return;
    }
    let (lo, hi) = score_range(&scores);
    controls(ui, app, &scores, &labels, lo, hi);
    ui.separator();
    let t = app.settings.active_thresholds();
    let c = counts(&app.entries, &t);
    let labelled: Vec<(f32, bool)> = scores
        .iter()
        .zip(&labels)
        .filter_map(|(&s, l)| l.map(|l| (s, l)))
        .collect();
    let has_both = labelled.iter().any(|x| x.1) && labelled.iter().any(|x| !x.1);
    let marked = app.entries.iter().filter(|e| e.result.is_some() && e.person.is_some()).count();
    ui.label(format!(
        "{} of {} scored images labeled ({marked} by a person); the curves and counts use the labeled ones",
        labelled.len(),
        scores.len()
    ));
    let h = ((ui.available_height() - 80.0) / 2.0).max(160.0);
    ui.columns(2, |cols| {
        confusion_ui(&mut cols[0], &c, has_both);
        histogram_ui(&mut cols[1], &scores, &labels, &t, lo, hi, h - 20.0);
    });
    if has_both {
        let (s, l): (Vec<f32>, Vec<bool>) = labelled.into_iter().unzip();
        let roc = metrics::roc_curve(&s, &l);
        let max_score = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        ui.columns(2, |cols| {
            roc_ui(&mut cols[0], app, &roc, &s, &l, max_score, h);
            pr_ui(&mut cols[1], &roc, &s, &l, &t, h);
        });
    } else {
        ui.label("No ROC curve until at least one good and one defect image are labeled (G and D on the Review or Data tab); every image still gets a verdict.");
    }
}

fn controls(ui: &mut egui::Ui, app: &mut App, scores: &[f32], labels: &[Option<bool>], lo: f32, hi: f32) {
    let st = &mut app.settings;
    ui.spacing_mut().slider_width = (ui.available_width() * 0.45).max(200.0);
    ui.horizontal(|ui| {
        ui.label("Accept below");
        ui.add(
            egui::Slider::new(&mut st.thresholds.accept_below, lo..=hi)
                .clamping(egui::SliderClamping::Never)
                .max_decimals(4)
                .text("score threshold"),
        );
        if ui.button("Best F1").on_hover_text("the threshold with the highest F1 on this test set").clicked() {
            let (s, l): (Vec<f32>, Vec<bool>) = scores
                .iter()
                .zip(labels)
                .filter_map(|(&s, l)| l.map(|l| (s, l)))
                .unzip();
            if let Some((_, thr)) = metrics::f1_max(&s, &l) {
                st.thresholds.accept_below = thr;
            }
        }
        let rule = app.model.as_ref().and_then(|m| m.meta.threshold_rule).map(|r| r.describe());
        if let Some(m) = &app.model
            && ui
                .button("Model default")
                .on_hover_text(rule.clone().unwrap_or_else(|| "the threshold saved in the model file".into()))
                .clicked()
        {
            st.thresholds.accept_below = m.meta.threshold;
        }
    });
    ui.horizontal(|ui| {
        ui.checkbox(&mut st.two_thresholds, "Review band (two thresholds)");
        if st.two_thresholds {
            let mut u = st.thresholds.reject_from.unwrap_or(st.thresholds.accept_below + (hi - lo) * 0.1);
            ui.label("Reject from");
            ui.add(
                egui::Slider::new(&mut u, lo..=hi)
                    .clamping(egui::SliderClamping::Never)
                    .max_decimals(4)
                    .text("upper threshold"),
            );
            st.thresholds.reject_from = Some(u.max(st.thresholds.accept_below));
        } else {
            ui.weak("images at or above the threshold are rejected");
        }
    });
}

fn confusion_ui(ui: &mut egui::Ui, c: &VerdictCounts, labelled: bool) {
    ui.style_mut().text_styles.insert(egui::TextStyle::Body, egui::FontId::proportional(16.0));
    ui.strong("At these thresholds");
    ui.horizontal(|ui| {
        for (name, n, v) in [
            ("Accept", c.accept, flowspect::inspection::Verdict::Accept),
            ("Review", c.review, flowspect::inspection::Verdict::Review),
            ("Reject", c.reject, flowspect::inspection::Verdict::Reject),
        ] {
            ui.colored_label(verdict_color(v), format!("{name}: {n}"));
        }
    });
    if !labelled {
        return;
    }
    egui::Grid::new("confusion").striped(true).num_columns(3).show(ui, |ui| {
        ui.label("");
        ui.strong("flagged (reject/review)");
        ui.strong("accepted");
        ui.end_row();
        ui.strong("defect");
        ui.label(format!("TP {}", c.tp));
        ui.label(format!("FN {}", c.fn_));
        ui.end_row();
        ui.strong("good");
        ui.label(format!("FP {}", c.fp));
        ui.label(format!("TN {}", c.tn));
        ui.end_row();
    });
    ui.label(format!("Precision {:.3}   Recall {:.3}   F1 {:.3}", c.precision(), c.recall(), c.f1()));
    ui.label(format!("False alarms: {}   Escapes: {}", c.fp, c.fn_));
    if c.review > 0 {
        ui.label(format!("In review: {} good, {} defect", c.review_good, c.review_defect));
    }
    if c.unlabeled > 0 {
        ui.weak(format!("{} unlabeled images get verdicts but are not counted here", c.unlabeled));
    }
}

fn histogram_ui(ui: &mut egui::Ui, scores: &[f32], labels: &[Option<bool>], t: &Thresholds, lo: f32, hi: f32, height: f32) {
    ui.strong("Scores of good and defect images");
    let w = ((hi - lo) / BINS as f32).max(1e-6);
    let mut good = vec![0usize; BINS];
    let mut bad = vec![0usize; BINS];
    let mut unl = vec![0usize; BINS];
    for (&s, l) in scores.iter().zip(labels) {
        let b = (((s - lo) / w) as usize).min(BINS - 1);
        match l {
            Some(false) => good[b] += 1,
            Some(true) => bad[b] += 1,
            None => unl[b] += 1,
        }
    }
    let bars = |v: &[usize]| -> Vec<Bar> {
        v.iter()
            .enumerate()
            .map(|(i, &n)| Bar::new((lo + (i as f32 + 0.5) * w) as f64, n as f64).width(w as f64 * 0.95))
            .collect()
    };
    Plot::new("histogram")
        .height(height)
        .legend(Legend::default())
        .x_axis_label("image score")
        .allow_scroll(false)
        .show(ui, |p| {
            p.bar_chart(BarChart::new("good", bars(&good)).color(egui::Color32::from_rgba_unmultiplied(60, 170, 80, 150)));
            p.bar_chart(BarChart::new("defect", bars(&bad)).color(egui::Color32::from_rgba_unmultiplied(220, 50, 50, 150)));
            if unl.iter().any(|&n| n > 0) {
                p.bar_chart(BarChart::new("unlabeled", bars(&unl)).color(egui::Color32::GRAY));
            }
            p.vline(VLine::new("threshold", t.accept_below as f64).color(egui::Color32::from_rgb(40, 120, 240)).width(2.0));
            if let Some(u) = t.reject_from {
                p.vline(VLine::new("reject from", u as f64).color(egui::Color32::from_rgb(230, 160, 30)).width(2.0));
            }
        });
}

fn roc_ui(ui: &mut egui::Ui, app: &mut App, roc: &[RocPoint], s: &[f32], l: &[bool], max_score: f32, height: f32) {
    let auc = metrics::auroc(s, l).unwrap_or(f64::NAN);
    ui.strong(format!("ROC (AUROC {auc:.3}): drag the point to move the threshold"));
    let t = app.settings.active_thresholds();
    let lower = operating_point(&VerdictCounts::count(s, &l.iter().map(|&b| Some(b)).collect::<Vec<_>>(), &Thresholds::single(t.accept_below)));
    let upper = t.reject_from.map(|u| {
        operating_point(&VerdictCounts::count(s, &l.iter().map(|&b| Some(b)).collect::<Vec<_>>(), &Thresholds::single(u)))
    });
    let pts: Vec<[f64; 2]> = roc.iter().map(|p| [p.fpr, p.tpr]).collect();
    let resp = Plot::new("roc")
        .height(height)
        .default_x_bounds(-0.02, 1.02)
        .default_y_bounds(-0.02, 1.02)
        .x_axis_label("false positive rate")
        .y_axis_label("true positive rate")
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .allow_boxed_zoom(false)
        .allow_double_click_reset(false)
        .show(ui, |p| {
            p.line(Line::new("ROC", pts));
            p.line(Line::new("chance", vec![[0.0, 0.0], [1.0, 1.0]]).color(egui::Color32::GRAY));
            p.points(Points::new("threshold", vec![lower]).radius(7.0).color(egui::Color32::from_rgb(40, 120, 240)));
            if let Some(u) = upper {
                p.points(Points::new("reject from", vec![u]).radius(7.0).color(egui::Color32::from_rgb(230, 160, 30)));
            }
            p.pointer_coordinate()
        });
    let r = &resp.response;
    if let Some(c) = resp.inner {
        if r.drag_started() || r.clicked() {
            // Move whichever point is nearer to where the drag began.
            let d = |q: [f64; 2]| (q[0] - c.x).powi(2) + (q[1] - c.y).powi(2);
            app.roc_drag = Some(upper.is_some_and(|u| d(u) < d(lower)));
        }
        if (r.dragged() || r.clicked())
            && let Some(upper_point) = app.roc_drag
            && let Some(thr) = nearest_threshold(roc, c.x, c.y, max_score)
        {
            if upper_point {
                app.settings.thresholds.reject_from = Some(thr.max(app.settings.thresholds.accept_below));
            } else {
                app.settings.thresholds.accept_below = thr;
                if let Some(u) = &mut app.settings.thresholds.reject_from {
                    *u = u.max(thr);
                }
            }
        }
    }
    if r.drag_stopped() {
        app.roc_drag = None;
    }
}

fn pr_ui(ui: &mut egui::Ui, roc: &[RocPoint], s: &[f32], l: &[bool], t: &Thresholds, height: f32) {
    let p = l.iter().filter(|&&b| b).count() as f64;
    let n = l.len() as f64 - p;
    let pts: Vec<[f64; 2]> = roc
        .iter()
        .filter(|q| q.tpr > 0.0)
        .map(|q| {
            let tp = q.tpr * p;
            let fp = q.fpr * n;
            [q.tpr, tp / (tp + fp)]
        })
        .collect();
    let c = VerdictCounts::count(s, &l.iter().map(|&b| Some(b)).collect::<Vec<_>>(), &Thresholds::single(t.accept_below));
    ui.strong("Precision-recall");
    Plot::new("pr")
        .height(height)
        .default_x_bounds(-0.02, 1.02)
        .default_y_bounds(-0.02, 1.02)
        .x_axis_label("recall")
        .y_axis_label("precision")
        .allow_scroll(false)
        .show(ui, |pl| {
            pl.line(Line::new("PR", pts));
            pl.points(Points::new("threshold", vec![[c.recall(), c.precision()]]).radius(7.0).color(egui::Color32::from_rgb(40, 120, 240)));
        });
}
