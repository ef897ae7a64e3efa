//! The Inspect tab (line mode): a model and a folder, Start / Stop; the latest part
//! large with its heatmap under an ACCEPT / REVIEW / REJECT banner, a strip of the
//! last parts, counts and yield since start and for the last hour, throughput and
//! latency, and the inspection log table. The engine runs in `inspect_worker`.
use super::app::App;
use super::data_panel::verdict_color;
use super::dialogs::DialogTarget;
use super::inspect_worker::{LineEvent, LineRequest, LineRun, TABLE_ROWS};
use super::state::LogFilter;
use flowspect::inspection::{Thresholds, Verdict};
use flowspect::line::log::{LogRow, Query};
use flowspect::line::stats::{LineStats, Tally};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Parts kept in the strip.
const STRIP: usize = 12;
const ERROR_COLOR: egui::Color32 = egui::Color32::from_rgb(130, 130, 140);

/// What the tab shows; the textures of the latest part and the strip live here.
#[derive(Default)]
pub struct InspectState {
    pub run: Option<LineRun>,
    /// What the running line said when it started.
    pub started: Option<Started>,
    pub latest: Option<(LogRow, Option<egui::TextureHandle>)>,
    pub strip: VecDeque<(LogRow, Option<egui::TextureHandle>)>,
    /// Rows since Start.
    pub stats: LineStats,
    /// Rows of the last hour, all runs and stations writing to this log.
    pub last_hour: LineStats,
    pub table: Vec<LogRow>,
    /// A reject arrived and the alarm is on: shown until acknowledged.
    pub alarm: bool,
    /// The file of the last reject, which the alarm names.
    pub alarm_part: String,
    /// Problems that did not stop the line (latest last).
    pub problems: Vec<String>,
}

pub struct Started {
    pub input: PathBuf,
    pub db: PathBuf,
    pub thresholds: Thresholds,
    pub model_fingerprint: String,
    pub at: Instant,
}

impl InspectState {
    pub fn running(&self) -> bool {
        self.run.is_some()
    }
}

fn query(filter: LogFilter) -> Query {
    Query { since_unix_ms: None, verdict: filter.verdict().map(String::from), limit: Some(TABLE_ROWS) }
}

impl App {
    /// The model the Inspect tab runs: its own field, else the app's model file.
    fn inspect_model_path(&self) -> Option<PathBuf> {
        let m = self.settings.inspect.model.trim();
        let m = if m.is_empty() { self.settings.model_path.trim() } else { m };
        (!m.is_empty()).then(|| PathBuf::from(m))
    }

    pub fn start_inspecting(&mut self) {
        if self.inspect.running() {
            return;
        }
        let Some(model) = self.inspect_model_path() else {
            self.report_error("inspect", "choose a model file first (train and save one, or open one)");
            return;
        };
        if !model.is_file() {
            self.report_error("inspect", format!("{}: no such model file", model.display()));
            return;
        }
        let input = PathBuf::from(self.settings.inspect.input.trim());
        if input.as_os_str().is_empty() || !input.is_dir() {
            self.report_error("inspect", format!("{}: not a folder; choose the folder the camera writes into", input.display()));
            return;
        }
        let sort = Some(self.settings.inspect.sort.trim()).filter(|s| !s.is_empty()).map(PathBuf::from);
        let req = LineRequest {
            model: model.clone(),
            input: input.clone(),
            db: None,
            sort,
            device: self.settings.train.device,
            settle: Duration::from_millis(500),
            poll: Duration::from_millis(500),
        };
        self.inspect = InspectState { run: Some(LineRun::start(self.ctx.clone(), req, query(self.settings.inspect.filter))), ..Default::default() };
        self.say(format!("inspecting {} with {}", input.display(), model.display()));
    }

    pub fn stop_inspecting(&mut self) {
        if let Some(r) = &self.inspect.run {
            r.stop();
            self.say("inspection stopping after the image in hand");
        }
    }

    pub(super) fn on_line_event(&mut self, ev: LineEvent) {
        match ev {
            LineEvent::Started { input, db, thresholds, model_fingerprint, note } => {
                if let Some(n) = note {
                    self.say(format!("note: {n}"));
                }
                self.say(format!("inspection log {}", db.display()));
                self.inspect.started = Some(Started { input, db, thresholds, model_fingerprint, at: Instant::now() });
            }
            LineEvent::Row { row, picture, thumb } => {
                let row = *row;
                self.inspect.stats.push(&row);
                if row.verdict == Some(Verdict::Reject) && self.settings.inspect.alarm {
                    self.inspect.alarm = true;
                    self.inspect.alarm_part = file_name(&row.path);
                }
                match &row.error {
                    Some(e) => self.say(format!("inspect: error {e}")),
                    None => self.say(format!("inspect: {} {:.5} {}", row.verdict_text(), row.score.unwrap_or(f32::NAN), row.path)),
                }
                let id = row.id;
                let tex = |img: Option<egui::ColorImage>, what: &str| {
                    img.map(|i| self.ctx.load_texture(format!("inspect-{what}-{id}"), i, egui::TextureOptions::LINEAR))
                };
                let (big, small) = (tex(picture, "big"), tex(thumb, "thumb"));
                self.inspect.strip.push_front((row.clone(), small));
                self.inspect.strip.truncate(STRIP);
                self.inspect.latest = Some((row, big));
            }
            LineEvent::Problem(p) => {
                self.say(format!("inspect: {p}"));
                self.inspect.problems.push(p);
            }
            LineEvent::Table { rows, last_hour } => {
                self.inspect.table = rows;
                self.inspect.last_hour = last_hour;
            }
            LineEvent::Stopped(err) => {
                let s = &self.inspect.stats;
                self.say(format!(
                    "inspection stopped: {} rows since start, {:.2} images/s",
                    s.tally.total(),
                    s.images_per_second()
                ));
                if let Some(e) = err {
                    self.report_error("inspect", e);
                }
                self.inspect.run = None;
            }
        }
    }
}

pub fn inspect_ui(ui: &mut egui::Ui, app: &mut App) {
    controls(ui, app);
    ui.separator();
    if app.inspect.alarm {
        alarm_bar(ui, app);
    }
    let table_h = (ui.available_height() * 0.3).max(140.0);
    let top_h = (ui.available_height() - table_h - 10.0).max(200.0);
    ui.allocate_ui(egui::vec2(ui.available_width(), top_h), |ui| {
        ui.horizontal_top(|ui| {
            let w = (ui.available_width() * 0.62).max(300.0);
            ui.allocate_ui(egui::vec2(w, top_h), |ui| {
                ui.vertical(|ui| latest_ui(ui, app, top_h));
            });
            ui.separator();
            ui.vertical(|ui| counts_ui(ui, app));
        });
    });
    ui.separator();
    log_table(ui, app);
}

fn path_field(ui: &mut egui::Ui, app: &mut App, label: &str, target: DialogTarget, enabled: bool) {
    ui.horizontal(|ui| {
        let l = ui.label(label);
        let (text, hint) = match target {
            DialogTarget::InspectModel => (&mut app.settings.inspect.model, "the app's model file"),
            DialogTarget::InspectDir => (&mut app.settings.inspect.input, "the folder the camera writes into"),
            _ => (&mut app.settings.inspect.sort, "leave the images where they are"),
        };
        ui.add_enabled(enabled, egui::TextEdit::singleline(text).desired_width(380.0).hint_text(hint)).labelled_by(l.id);
        let start = Some(PathBuf::from(text.trim()));
        if ui.add_enabled(enabled, egui::Button::new("Browse...")).clicked() {
            app.dialogs.open(target, start);
        }
    });
}

fn controls(ui: &mut egui::Ui, app: &mut App) {
    let running = app.inspect.running();
    ui.heading("Inspect parts as they arrive");
    path_field(ui, app, "Model:", DialogTarget::InspectModel, !running);
    path_field(ui, app, "Folder:", DialogTarget::InspectDir, !running);
    path_field(ui, app, "Sort into:", DialogTarget::InspectSortDir, !running);
    ui.horizontal(|ui| {
        if running {
            let stopping = app.inspect.run.as_ref().is_some_and(|r| r.stopping());
            if stopping {
                ui.spinner();
                ui.label("stopping after the image in hand...");
            } else if ui.button("Stop").clicked() {
                app.stop_inspecting();
            }
        } else if ui.button("Start").clicked() {
            app.start_inspecting();
        }
        ui.checkbox(&mut app.settings.inspect.alarm, "Alarm on reject");
        match &app.inspect.started {
            Some(s) if running => {
                ui.label(format!(
                    "Watching {} for {}: log {}, accept below {:.5}{}, model {}",
                    s.input.display(),
                    super::app::fmt_secs(s.at.elapsed().as_secs_f64()),
                    s.db.display(),
                    s.thresholds.accept_below,
                    s.thresholds.reject_from.map(|u| format!(", reject from {u:.5}")).unwrap_or_default(),
                    s.model_fingerprint
                ));
            }
            _ if running => {
                ui.spinner();
                ui.label("opening the model and the log...");
            }
            _ => {
                ui.weak("Thresholds: the model file's (save the model after tuning them). Log: inspections.sqlite in the folder.");
            }
        }
    });
}

fn alarm_bar(ui: &mut egui::Ui, app: &mut App) {
    let t = ui.input(|i| i.time);
    let on = (t * 2.0).fract() < 0.5;
    let red = verdict_color(Verdict::Reject);
    let mut ack = false;
    egui::Frame::new().fill(if on { red } else { red.gamma_multiply(0.5) }).inner_margin(8.0).show(ui, |ui| {
        ui.horizontal(|ui| {
            ui.label(egui::RichText::new("REJECT ALARM").size(22.0).strong().color(egui::Color32::WHITE));
            ui.label(egui::RichText::new(&app.inspect.alarm_part).color(egui::Color32::WHITE));
            ack = ui.button("Acknowledge").clicked();
        });
    });
    if ack {
        app.inspect.alarm = false;
    }
    ui.ctx().request_repaint_after(Duration::from_millis(250));
}

fn file_name(p: &str) -> String {
    Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.to_string())
}

fn row_color(r: &LogRow) -> egui::Color32 {
    r.verdict.map(verdict_color).unwrap_or(ERROR_COLOR)
}

fn banner_text(r: &LogRow) -> String {
    r.verdict_text().to_uppercase()
}

fn latest_ui(ui: &mut egui::Ui, app: &App, height: f32) {
    let Some((row, tex)) = &app.inspect.latest else {
        ui.label(if app.inspect.running() { "Waiting for the first part..." } else { "Press Start to inspect a folder." });
        return;
    };
    egui::Frame::new().fill(row_color(row)).inner_margin(10.0).show(ui, |ui| {
        ui.set_width(ui.available_width());
        ui.horizontal(|ui| {
            ui.label(egui::RichText::new(banner_text(row)).size(40.0).strong().color(egui::Color32::WHITE));
            ui.vertical(|ui| {
                ui.label(egui::RichText::new(file_name(&row.path)).size(16.0).color(egui::Color32::WHITE));
                let detail = match (&row.error, row.score) {
                    (Some(e), _) => e.clone(),
                    (None, Some(s)) => format!(
                        "score {s:.5}, {} regions, {} ms from arrival",
                        row.regions.unwrap_or(0),
                        row.latency_ms()
                    ),
                    _ => String::new(),
                };
                ui.label(egui::RichText::new(detail).color(egui::Color32::WHITE));
            });
        });
    });
    let strip_h = 110.0;
    if let Some(t) = tex {
        let avail = egui::vec2(ui.available_width(), (height - 90.0 - strip_h).max(80.0));
        let size = t.size_vec2();
        let s = (avail.x / size.x).min(avail.y / size.y).min(2.0);
        let (rect, _) = ui.allocate_exact_size(size * s, egui::Sense::hover());
        ui.painter().image(t.id(), rect, egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)), egui::Color32::WHITE);
    }
    ui.horizontal(|ui| {
        for (r, t) in app.inspect.strip.iter() {
            let (rect, resp) = ui.allocate_exact_size(egui::vec2(88.0, 100.0), egui::Sense::hover());
            let p = ui.painter();
            let img = egui::Rect::from_min_size(rect.min + egui::vec2(4.0, 4.0), egui::vec2(80.0, 80.0));
            if let Some(t) = t {
                let sz = t.size_vec2();
                let s = (80.0 / sz.x).min(80.0 / sz.y);
                let r2 = egui::Rect::from_center_size(img.center(), sz * s);
                p.image(t.id(), r2, egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)), egui::Color32::WHITE);
            }
            p.rect_stroke(img.expand(2.0), 2.0, egui::Stroke::new(3.0, row_color(r)), egui::StrokeKind::Outside);
            p.text(
                egui::pos2(rect.center().x, rect.max.y - 6.0),
                egui::Align2::CENTER_BOTTOM,
                r.verdict_text(),
                egui::FontId::proportional(12.0),
                row_color(r),
            );
            resp.on_hover_text(format!("{}\n{}", file_name(&r.path), r.error.clone().unwrap_or_else(|| format!("score {:.5}", r.score.unwrap_or(f32::NAN)))));
        }
    });
}

fn tally_text(t: &Tally) -> String {
    format!("{} accept, {} review, {} reject, {} errors", t.accept, t.review, t.reject, t.error)
}

fn yield_text(t: &Tally) -> String {
    t.yield_fraction().map(|y| format!("{:.1} %", 100.0 * y)).unwrap_or_else(|| "–".into())
}

fn counts_ui(ui: &mut egui::Ui, app: &App) {
    let s = &app.inspect.stats;
    let h = &app.inspect.last_hour;
    ui.heading("Since start");
    ui.label(format!("Parts: {}", s.tally.total()));
    ui.label(format!("Counts: {}", tally_text(&s.tally)));
    ui.label(format!("Yield: {}", yield_text(&s.tally)));
    ui.add_space(8.0);
    ui.heading("Last hour (whole log)");
    ui.label(format!("Last hour: {}", tally_text(&h.tally)));
    ui.label(format!("Yield last hour: {}", yield_text(&h.tally)));
    ui.add_space(8.0);
    ui.heading("Speed since start");
    ui.label(format!("Throughput: {:.2} images/s", s.images_per_second()));
    let ms = |q| s.latency_ms(q).map(|v| format!("{v} ms")).unwrap_or_else(|| "–".into());
    ui.label(format!("Latency (arrival to log row): median {}, 99th percentile {}", ms(0.5), ms(0.99)));
    if let Some(p) = app.inspect.problems.last() {
        ui.add_space(8.0);
        ui.colored_label(ui.visuals().warn_fg_color, p);
    }
}

fn log_table(ui: &mut egui::Ui, app: &mut App) {
    ui.horizontal(|ui| {
        ui.strong("Inspection log");
        let before = app.settings.inspect.filter;
        egui::ComboBox::from_id_salt("inspect-filter")
            .selected_text(format!("{:?}", app.settings.inspect.filter))
            .show_ui(ui, |ui| {
                for f in LogFilter::ALL {
                    ui.selectable_value(&mut app.settings.inspect.filter, f, format!("{f:?}"));
                }
            });
        if before != app.settings.inspect.filter
            && let Some(r) = &app.inspect.run
        {
            r.set_filter(query(app.settings.inspect.filter));
        }
        ui.weak(format!("newest {} rows; `flowspect log --db FILE` queries all of it", app.inspect.table.len()));
    });
    egui::ScrollArea::vertical().id_salt("inspect-log").auto_shrink([false, false]).show(ui, |ui| {
        egui::Grid::new("inspect-log-grid").striped(true).num_columns(6).show(ui, |ui| {
            for h in ["#", "file", "verdict", "score", "regions", "latency"] {
                ui.strong(h);
            }
            ui.end_row();
            for r in app.inspect.table.iter().rev() {
                ui.label(r.id.to_string());
                ui.label(file_name(&r.path));
                ui.colored_label(row_color(r), r.verdict_text());
                ui.label(r.score.map(|s| format!("{s:.5}")).unwrap_or_else(|| r.error.clone().unwrap_or_default()));
                ui.label(r.regions.map(|n| n.to_string()).unwrap_or_default());
                ui.label(format!("{} ms", r.latency_ms()));
                ui.end_row();
            }
        });
    });
}
