//! The Data tab: the training and test folders, and the thumbnail grid of the test set
//! with each image's verdict and score, filtered and sorted.
use super::app::App;
use super::dialogs::DialogTarget;
use super::state::{LabelFilter, SortBy, Tab, VerdictFilter, view_order};
use flowspect::inspection::Verdict;
use std::path::PathBuf;

const CELL: f32 = 128.0;
const CELL_H: f32 = 160.0;

pub fn verdict_color(v: Verdict) -> egui::Color32 {
    match v {
        Verdict::Accept => egui::Color32::from_rgb(60, 170, 80),
        Verdict::Review => egui::Color32::from_rgb(230, 160, 30),
        Verdict::Reject => egui::Color32::from_rgb(220, 50, 50),
    }
}

/// A path field with a "Browse..." button; returns true when the user pressed Enter or
/// picked nothing yet but asked to use the typed path ("Open").
fn path_row(ui: &mut egui::Ui, app: &mut App, label: &str, target: DialogTarget) -> bool {
    let mut open = false;
    ui.horizontal(|ui| {
        let l = ui.label(label);
        let text = match target {
            DialogTarget::TrainDir => &mut app.settings.train_dir,
            _ => &mut app.settings.test_dir,
        };
        let r = ui.add(egui::TextEdit::singleline(text).desired_width(420.0).hint_text("type a folder or browse")).labelled_by(l.id);
        open |= r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        let start = Some(PathBuf::from(text.trim()));
        if ui.button("Browse...").clicked() {
            app.dialogs.open(target, start);
        }
        open |= ui.button(if target == DialogTarget::TrainDir { "Scan" } else { "Open" }).clicked();
    });
    open
}

pub fn data_ui(ui: &mut egui::Ui, app: &mut App) {
    ui.heading("Images");
    if path_row(ui, app, "Good samples (training):", DialogTarget::TrainDir) {
        app.scan_train_dir();
    }
    ui.weak(format!(
        "{} good images found. An MVTec category folder uses train/good; a folder with good/ uses that; else the folder itself.",
        app.train_files.len()
    ));
    if path_row(ui, app, "Test images:", DialogTarget::TestDir) {
        app.open_test_dir();
    }
    ui.weak("An MVTec category folder (test/ and ground_truth/), a folder with good/ and defect folders, or one unlabeled folder.");
    report_row(ui, app);
    ui.separator();
    grid_controls(ui, app);
    super::review::label_bar(ui, app);
    thumbnail_grid(ui, app);
}

/// The report folder and "Export report...": CSV, JSON, HTML, PDF and per-image PNGs of
/// the test folder at the thresholds in force.
fn report_row(ui: &mut egui::Ui, app: &mut App) {
    ui.horizontal(|ui| {
        let l = ui.label("Report folder:");
        ui.add(egui::TextEdit::singleline(&mut app.settings.report_dir).desired_width(420.0).hint_text("where the report goes"))
            .labelled_by(l.id);
        let ready = app.model.is_some() && !app.busy() && !app.entries.is_empty();
        if ui.add_enabled(!app.busy(), egui::Button::new("Browse...")).on_hover_text("choose the folder and export").clicked() {
            let start = Some(PathBuf::from(app.settings.report_dir.trim())).filter(|p| !p.as_os_str().is_empty());
            app.dialogs.open(DialogTarget::ReportDir, start);
        }
        let b = ui
            .add_enabled(ready && !app.settings.report_dir.trim().is_empty(), egui::Button::new("Export report..."))
            .on_hover_text("report.csv, report.json, report.html, report.pdf and heatmap/mask PNGs of every test image, at the current thresholds")
            .on_disabled_hover_text("needs a model, test images and a report folder");
        if b.clicked() {
            app.export_report();
        }
    });
}

fn grid_controls(ui: &mut egui::Ui, app: &mut App) {
    ui.horizontal(|ui| {
        let scored = app.entries.iter().filter(|e| e.result.is_some()).count();
        ui.label(format!("{} test images, {} scored", app.entries.len(), scored));
        let can_score = app.model.is_some() && !app.busy() && !app.entries.is_empty();
        if ui.add_enabled(can_score, egui::Button::new("Score test images")).clicked() {
            app.start_scoring();
        }
        ui.separator();
        let l = ui.label("Verdict");
        egui::ComboBox::from_id_salt("verdict")
            .selected_text(format!("{:?}", app.settings.verdict_filter))
            .show_ui(ui, |ui| {
                for f in [VerdictFilter::All, VerdictFilter::Accept, VerdictFilter::Review, VerdictFilter::Reject, VerdictFilter::Unscored] {
                    ui.selectable_value(&mut app.settings.verdict_filter, f, format!("{f:?}"));
                }
            })
            .response
            .labelled_by(l.id);
        let l = ui.label("Label");
        egui::ComboBox::from_id_salt("label")
            .selected_text(format!("{:?}", app.settings.label_filter))
            .show_ui(ui, |ui| {
                for f in [LabelFilter::All, LabelFilter::Good, LabelFilter::Defect, LabelFilter::Unlabeled] {
                    ui.selectable_value(&mut app.settings.label_filter, f, format!("{f:?}"));
                }
            })
            .response
            .labelled_by(l.id);
        let l = ui.label("Sort");
        egui::ComboBox::from_id_salt("sort")
            .selected_text(match app.settings.sort {
                SortBy::Name => "name",
                SortBy::ScoreHighFirst => "score, high first",
                SortBy::ScoreLowFirst => "score, low first",
            })
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut app.settings.sort, SortBy::Name, "name");
                ui.selectable_value(&mut app.settings.sort, SortBy::ScoreHighFirst, "score, high first");
                ui.selectable_value(&mut app.settings.sort, SortBy::ScoreLowFirst, "score, low first");
            })
            .response
            .labelled_by(l.id);
    });
}

fn thumbnail_grid(ui: &mut egui::Ui, app: &mut App) {
    let order = view_order(&app.entries, &app.settings);
    if order.is_empty() {
        ui.weak(if app.entries.is_empty() { "No test images loaded." } else { "No image matches the filters." });
        return;
    }
    let per_row = ((ui.available_width() / (CELL + 8.0)).floor() as usize).max(1);
    let rows = order.len().div_ceil(per_row);
    let t = app.settings.active_thresholds();
    let mut wanted: Vec<usize> = Vec::new();
    let mut clicked = None;
    egui::ScrollArea::vertical().auto_shrink(false).show_rows(ui, CELL_H, rows, |ui, range| {
        for row in range {
            ui.horizontal(|ui| {
                for &i in order.iter().skip(row * per_row).take(per_row) {
                    let e = &app.entries[i];
                    let (rect, resp) = ui.allocate_exact_size(egui::vec2(CELL, CELL_H), egui::Sense::click());
                    let p = ui.painter_at(rect);
                    let img_rect = egui::Rect::from_min_size(rect.min, egui::vec2(CELL, CELL));
                    match app.thumbs.get(&i) {
                        Some(tex) => {
                            let s = tex.size_vec2();
                            let k = (CELL - 8.0) / s.x.max(s.y);
                            let r = egui::Rect::from_center_size(img_rect.center(), s * k);
                            p.image(tex.id(), r, egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)), egui::Color32::WHITE);
                        }
                        None if e.error.is_none() => {
                            wanted.push(i);
                            p.rect_filled(img_rect.shrink(4.0), 4.0, ui.visuals().faint_bg_color);
                        }
                        None => {}
                    }
                    let verdict = e.result.as_ref().map(|r| t.verdict(r.score));
                    let stroke = match (verdict, e.error.is_some()) {
                        (_, true) => egui::Stroke::new(3.0, ui.visuals().error_fg_color),
                        (Some(v), _) => egui::Stroke::new(3.0, verdict_color(v)),
                        (None, _) => egui::Stroke::new(1.0, ui.visuals().weak_text_color()),
                    };
                    let sel = app.selected == Some(i) || app.marked.contains(&i);
                    // A badge for a label a person gave (G or D), top left.
                    if let Some(l) = e.person {
                        let (txt, col) = if l { ("D", egui::Color32::from_rgb(220, 50, 50)) } else { ("G", egui::Color32::from_rgb(40, 170, 70)) };
                        let b = egui::Rect::from_min_size(img_rect.min + egui::vec2(6.0, 6.0), egui::vec2(16.0, 16.0));
                        p.rect_filled(b, 3.0, col);
                        p.text(b.center(), egui::Align2::CENTER_CENTER, txt, egui::FontId::proportional(11.0), egui::Color32::WHITE);
                    }
                    p.rect_stroke(img_rect.shrink(2.0), 4.0, if sel { egui::Stroke::new(4.0, ui.visuals().selection.bg_fill) } else { stroke }, egui::StrokeKind::Inside);
                    let caption = match (&e.result, &e.error) {
                        (_, Some(_)) => "unreadable".to_string(),
                        (Some(r), _) => format!("{} {:.2}", t.verdict(r.score), r.score),
                        (None, _) => e.label_text().to_string(),
                    };
                    let font = egui::FontId::proportional(12.0);
                    p.text(egui::pos2(rect.min.x + 4.0, rect.min.y + CELL + 2.0), egui::Align2::LEFT_TOP, caption, font.clone(), ui.visuals().text_color());
                    let mut name = e.name();
                    if name.len() > 20 {
                        name = format!("...{}", &name[name.len() - 17..]);
                    }
                    p.text(egui::pos2(rect.min.x + 4.0, rect.min.y + CELL + 16.0), egui::Align2::LEFT_TOP, name, font, ui.visuals().weak_text_color());
                    let resp = match &e.error {
                        Some(err) => resp.on_hover_text(err),
                        None => resp.on_hover_text(format!("{} ({})", e.sample.path.display(), e.label_text())),
                    };
                    let mods = ui.input(|inp| inp.modifiers);
                    if resp.clicked() {
                        clicked = Some((i, false, mods));
                    }
                    if resp.double_clicked() {
                        clicked = Some((i, true, mods));
                    }
                }
            });
        }
    });
    // Newest wish last: the loader takes from the end, so the top of the screen comes first.
    wanted.reverse();
    let fresh: Vec<(usize, PathBuf)> = wanted
        .into_iter()
        .map(|i| (i, app.entries[i].sample.path.clone()))
        .collect();
    let key: Vec<usize> = fresh.iter().map(|(i, _)| *i).collect();
    if key.iter().any(|i| !app.thumbs_requested.contains(i)) || key.len() != app.thumbs_requested.len() {
        app.thumbs_requested = key.into_iter().collect();
        app.loader.want_thumbs(fresh);
    }
    if let Some((i, open, m)) = clicked {
        if m.command {
            if !app.marked.remove(&i) {
                app.marked.insert(i);
            }
        } else if m.shift {
            let from = app.selected.and_then(|s| order.iter().position(|&x| x == s)).unwrap_or(0);
            let to = order.iter().position(|&x| x == i).unwrap_or(from);
            let (a, b) = (from.min(to), from.max(to));
            app.marked.extend(order[a..=b].iter().copied());
        } else {
            app.marked.clear();
        }
        app.select(i);
        if open {
            app.settings.tab = Tab::Review;
        }
    }
}
