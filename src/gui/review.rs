//! The Review tab: the selected image, large, with its anomaly map overlaid (opacity,
//! colormap, on/off), the regions above the pixel threshold outlined, the ground-truth
//! outline when known; zoom with the wheel, pan by dragging, arrows for next/previous.
use super::app::App;
use super::data_panel::verdict_color;
use super::state::{Colormap, view_order};
use egui::{Color32, ColorImage, TextureHandle, TextureOptions};
use flowspect::inspection::{outline, regions};
use flowspect::postprocess::resize_bilinear;

/// Textures of the image under review.
pub struct ReviewView {
    pub index: usize,
    pub image: TextureHandle,
    pub size: [usize; 2],
    /// Ground-truth mask at the view size.
    pub mask: Option<Vec<bool>>,
    pub mask_tex: Option<TextureHandle>,
    heat: Option<(TextureHandle, Colormap, u64)>,
    regions_tex: Option<(TextureHandle, f32, u64)>,
    /// Regions above the pixel threshold: count and largest area in % of the image.
    pub regions: Option<(usize, f32)>,
    pub zoom: f32,
    pub pan: egui::Vec2,
}

impl ReviewView {
    pub fn new(ctx: &egui::Context, index: usize, image: ColorImage, mask: Option<Vec<bool>>) -> Self {
        let size = image.size;
        let tex = ctx.load_texture(format!("review-{index}"), image, TextureOptions::LINEAR);
        let mask_tex = mask
            .as_ref()
            .map(|m| ctx.load_texture("review-mask", outline_image(m, size[0], size[1], Color32::from_rgb(40, 230, 60)), TextureOptions::NEAREST));
        Self {
            index,
            image: tex,
            size,
            mask,
            mask_tex,
            heat: None,
            regions_tex: None,
            regions: None,
            zoom: 1.0,
            pan: egui::Vec2::ZERO,
        }
    }
}

pub fn colormap(c: Colormap, t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0);
    match c {
        Colormap::Jet => flowspect::render::colormap(t),
        Colormap::Gray => {
            let v = (t * 255.0) as u8;
            [v, v, v]
        }
        Colormap::Inferno => {
            // A few control points of matplotlib's inferno, linearly interpolated.
            const P: [[f32; 3]; 6] = [
                [0.0, 0.0, 4.0],
                [66.0, 10.0, 104.0],
                [147.0, 38.0, 103.0],
                [221.0, 81.0, 58.0],
                [252.0, 165.0, 10.0],
                [252.0, 255.0, 164.0],
            ];
            let x = t * 5.0;
            let i = (x.floor() as usize).min(4);
            let f = x - i as f32;
            let mut o = [0u8; 3];
            for k in 0..3 {
                o[k] = (P[i][k] * (1.0 - f) + P[i + 1][k] * f) as u8;
            }
            o
        }
    }
}

/// A transparent image with `mask`'s outline (thickened to 2 px) in `color`.
fn outline_image(mask: &[bool], w: usize, h: usize, color: Color32) -> ColorImage {
    let o = outline(mask, w, h);
    let mut img = ColorImage::filled([w, h], Color32::TRANSPARENT);
    for y in 0..h {
        for x in 0..w {
            if o[y * w + x] {
                img.pixels[y * w + x] = color;
                if x + 1 < w {
                    img.pixels[y * w + x + 1] = color;
                }
            }
        }
    }
    img
}

pub fn review_ui(ui: &mut egui::Ui, app: &mut App) {
    let order = view_order(&app.entries, &app.settings);
    if app.selected.is_none()
        && let Some(&first) = order.first()
    {
        app.select(first);
    }
    let Some(sel) = app.selected else {
        ui.label("Open a test folder on the Data tab and pick an image.");
        return;
    };
    // Keyboard: next / previous in the grid's order.
    let (next, prev) = ui.input(|i| {
        (
            i.key_pressed(egui::Key::ArrowRight) || i.key_pressed(egui::Key::N),
            i.key_pressed(egui::Key::ArrowLeft) || i.key_pressed(egui::Key::P),
        )
    });
    let pos = order.iter().position(|&i| i == sel);
    let mut go = None;
    ui.horizontal(|ui| {
        if ui.button("< Previous").clicked() || prev {
            go = Some(false);
        }
        if ui.button("Next >").clicked() || next {
            go = Some(true);
        }
        ui.label(format!("{} of {}", pos.map(|p| p + 1).unwrap_or(0), order.len()));
        ui.separator();
        let st = &mut app.settings;
        ui.checkbox(&mut st.overlay, "Heatmap");
        ui.add(egui::Slider::new(&mut st.opacity, 0.0..=1.0).text("opacity"));
        egui::ComboBox::from_label("colormap")
            .selected_text(format!("{:?}", st.colormap))
            .show_ui(ui, |ui| {
                for c in [Colormap::Jet, Colormap::Inferno, Colormap::Gray] {
                    ui.selectable_value(&mut st.colormap, c, format!("{c:?}"));
                }
            });
        ui.checkbox(&mut st.show_regions, "Defect outlines");
        ui.checkbox(&mut st.show_mask, "Ground truth");
        if ui.button("Fit").clicked()
            && let Some(v) = &mut app.view
        {
            v.zoom = 1.0;
            v.pan = egui::Vec2::ZERO;
        }
    });
    if let Some(fwd) = go {
        let target = match pos {
            Some(p) if fwd => order.get(p + 1).copied(),
            Some(p) => p.checked_sub(1).and_then(|q| order.get(q).copied()),
            None => order.first().copied(),
        };
        if let Some(t) = target {
            app.select(t);
        }
    }
    label_bar(ui, app);
    let Some(sel) = app.selected else { return };
    let Some(e) = app.entries.get(sel) else { return };
    let t = app.settings.active_thresholds();
    ui.horizontal(|ui| {
        ui.strong(e.name());
        if let Some(r) = &e.result {
            ui.label(format!("{}x{} px", r.width, r.height));
        }
        ui.label(format!("label: {}", e.label_text()));
        if !e.sample.kind.is_empty() {
            ui.label(format!("({})", e.sample.kind));
        }
        match (&e.result, &e.error) {
            (_, Some(err)) => {
                ui.colored_label(ui.visuals().error_fg_color, err);
            }
            (Some(r), _) => {
                let v = t.verdict(r.score);
                ui.colored_label(verdict_color(v), format!("{} (score {:.4})", v.to_string().to_uppercase(), r.score));
            }
            (None, _) => {
                ui.weak("not scored");
            }
        }
        ui.add(
            egui::Slider::new(&mut app.settings.pixel_threshold, 0.0..=app.model.as_ref().map(|m| m.meta.pixel_threshold * 4.0).unwrap_or(10.0).max(1e-3))
                .text("pixel threshold"),
        );
        if let Some(v) = &app.view
            && let Some((n, pct)) = v.regions
        {
            ui.label(format!("{n} regions, largest {pct:.2}% of the image"));
        }
    });
    update_textures(ui.ctx(), app);
    image_view(ui, app);
}

/// Label and teach: keys G (good), D (defect), U (clear) and buttons, acting on the
/// grid's marked images or else the one under review; "Add to good samples" teaches
/// them to the model, Undo takes the last teach back. Shared by the Review and Data tabs.
pub fn label_bar(ui: &mut egui::Ui, app: &mut App) {
    let targets = app.targets();
    // Not while a text field has the keyboard (a folder path being typed).
    let typing = ui.ctx().egui_wants_keyboard_input();
    let (g, d, u) = ui.input(|i| (i.key_pressed(egui::Key::G), i.key_pressed(egui::Key::D), i.key_pressed(egui::Key::U)));
    let (g, d, u) = (g && !typing, d && !typing, u && !typing);
    let mut set = None;
    ui.horizontal(|ui| {
        let n = targets.len();
        ui.label(if n == 1 { "1 image:".to_string() } else { format!("{n} images:") });
        let on = n > 0;
        if ui.add_enabled(on, egui::Button::new("Good (G)")).clicked() || (on && g) {
            set = Some(Some(false));
        }
        if ui.add_enabled(on, egui::Button::new("Defect (D)")).clicked() || (on && d) {
            set = Some(Some(true));
        }
        if ui.add_enabled(on, egui::Button::new("Clear label (U)")).clicked() || (on && u) {
            set = Some(None);
        }
        ui.separator();
        let can_teach = on && app.model.is_some() && !app.busy();
        if ui
            .add_enabled(can_teach, egui::Button::new("Add to good samples"))
            .on_hover_text("the model absorbs these images as good without retraining, then the test folder is scored again")
            .clicked()
        {
            app.teach_targets();
        }
        let can_undo = app.undo_depth > 0 && !app.busy();
        if ui.add_enabled(can_undo, egui::Button::new(format!("Undo teach ({})", app.undo_depth))).clicked() {
            app.undo_teach();
        }
        if let Some(t) = &app.last_teach {
            ui.label(format!("last teach: {t}"));
        }
    });
    if let Some(l) = set {
        app.set_label(&targets, l);
    }
}

/// (Re)builds the heatmap and region textures when the image, scores, colormap or
/// pixel threshold changed.
fn update_textures(ctx: &egui::Context, app: &mut App) {
    let generation = app.scores_generation;
    let (cm, pthr) = (app.settings.colormap, app.settings.pixel_threshold);
    let Some(v) = &mut app.view else { return };
    let Some(r) = app.entries.get(v.index).and_then(|e| e.result.as_ref()) else {
        v.heat = None;
        v.regions_tex = None;
        v.regions = None;
        return;
    };
    if v.heat.as_ref().is_none_or(|h| h.1 != cm || h.2 != generation) {
        // Colours span 0 .. twice the pixel threshold of the model (the map is normalised
        // per position on good images, so the threshold is the natural unit).
        let hi = (2.0 * pthr).max(1e-6);
        let s = r.map_side;
        let mut img = ColorImage::filled([s, s], Color32::TRANSPARENT);
        for (p, &m) in img.pixels.iter_mut().zip(r.map.iter()) {
            let c = colormap(cm, m / hi);
            *p = Color32::from_rgb(c[0], c[1], c[2]);
        }
        v.heat = Some((ctx.load_texture("review-heat", img, TextureOptions::LINEAR), cm, generation));
    }
    if v.regions_tex.as_ref().is_none_or(|x| x.1 != pthr || x.2 != generation) {
        let [w, h] = v.size;
        let up = resize_bilinear(&r.map, r.map_side, r.map_side, w, h);
        let mask: Vec<bool> = up.iter().map(|&x| x >= pthr).collect();
        let regs = regions(&up, w, h, pthr);
        v.regions = Some((regs.len(), regs.first().map(|g| 100.0 * g.area as f32 / (w * h) as f32).unwrap_or(0.0)));
        let img = outline_image(&mask, w, h, Color32::from_rgb(255, 40, 200));
        v.regions_tex = Some((ctx.load_texture("review-regions", img, TextureOptions::NEAREST), pthr, generation));
    }
}

fn image_view(ui: &mut egui::Ui, app: &mut App) {
    let st = &app.settings;
    let Some(v) = &mut app.view else {
        ui.spinner();
        return;
    };
    let avail = ui.available_rect_before_wrap();
    let resp = ui.allocate_rect(avail, egui::Sense::click_and_drag());
    // Zoom about the pointer with the wheel (or pinch); drag to pan.
    if resp.hovered() {
        let (scroll, zoom_delta, pointer) = ui.input(|i| (i.smooth_scroll_delta.y, i.zoom_delta(), i.pointer.hover_pos()));
        let factor = zoom_delta * (scroll / 400.0).exp();
        if (factor - 1.0).abs() > 1e-4 {
            let old = v.zoom;
            v.zoom = (v.zoom * factor).clamp(0.2, 40.0);
            if let Some(p) = pointer {
                let c = avail.center() + v.pan;
                v.pan += (p - c) * (1.0 - v.zoom / old);
            }
        }
    }
    if resp.dragged() {
        v.pan += resp.drag_delta();
    }
    if resp.double_clicked() {
        v.zoom = 1.0;
        v.pan = egui::Vec2::ZERO;
    }
    let [w, h] = v.size;
    let fit = (avail.width() / w as f32).min(avail.height() / h as f32);
    let size = egui::vec2(w as f32, h as f32) * fit * v.zoom;
    let rect = egui::Rect::from_center_size(avail.center() + v.pan, size);
    let uv = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
    let p = ui.painter_at(avail);
    p.image(v.image.id(), rect, uv, Color32::WHITE);
    if st.overlay
        && let Some((h, _, _)) = &v.heat
    {
        p.image(h.id(), rect, uv, Color32::from_white_alpha((st.opacity * 255.0) as u8));
    }
    if st.show_regions
        && let Some((t, _, _)) = &v.regions_tex
    {
        p.image(t.id(), rect, uv, Color32::WHITE);
    }
    if st.show_mask
        && let Some(t) = &v.mask_tex
    {
        p.image(t.id(), rect, uv, Color32::WHITE);
    }
    let legend = match (v.mask.is_some(), st.show_mask) {
        (true, true) => "magenta: regions above the pixel threshold; green: ground truth. Wheel zooms, drag pans, double-click fits, arrows step.",
        _ => "magenta: regions above the pixel threshold. Wheel zooms, drag pans, double-click fits, arrows step.",
    };
    p.text(avail.left_bottom() + egui::vec2(4.0, -4.0), egui::Align2::LEFT_BOTTOM, legend, egui::FontId::proportional(12.0), ui.visuals().weak_text_color());
}
