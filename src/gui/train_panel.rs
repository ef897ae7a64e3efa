//! The Train tab: method, backbone, input size, epochs and device; Train / Cancel with
//! the loss curve of each stage; open and save models.
use super::app::App;
use super::dialogs::DialogTarget;
use flowspect::detector::{DetectorConfig, Method};
use flowspect::device::DeviceChoice;
use std::path::PathBuf;

fn device_choices() -> Vec<(DeviceChoice, &'static str)> {
    let mut v = vec![(DeviceChoice::Auto, "Auto"), (DeviceChoice::Cpu, "CPU")];
    if cfg!(feature = "cuda") {
        v.push((DeviceChoice::Cuda(0), "CUDA (GPU 0)"));
    }
    v
}

pub fn train_ui(ui: &mut egui::Ui, app: &mut App) {
    ui.heading("Train a detector on good images");
    let busy = app.busy();
    ui.add_enabled_ui(!busy, |ui| {
        egui::Grid::new("train-settings").num_columns(2).spacing([12.0, 6.0]).show(ui, |ui| {
            let s = &mut app.settings.train;
            let l = ui.label("Method");
            let before = s.method;
            egui::ComboBox::from_id_salt("method")
                .selected_text(s.method.to_string())
                .show_ui(ui, |ui| {
                    for &m in Method::ALL {
                        ui.selectable_value(&mut s.method, m, m.summary());
                    }
                })
                .response
                .labelled_by(l.id);
            if s.method != before {
                // Each method has its own input size, epochs and widths.
                s.use_method_defaults();
            }
            ui.end_row();
            let l = ui.label("Backbone weights");
            ui.horizontal(|ui| {
                let mut text = s.backbone.display().to_string();
                if ui.add(egui::TextEdit::singleline(&mut text).desired_width(360.0)).labelled_by(l.id).changed() {
                    s.backbone = PathBuf::from(text);
                }
                if ui.button("Browse...").clicked() {
                    app.dialogs.open(DialogTarget::Backbone, Some(s.backbone.clone()));
                }
                if ui.button("Default").clicked() {
                    s.backbone = flowspect::backbone::default_backbone_path();
                }
            });
            ui.end_row();
            let l = ui.label("Input size (px)");
            ui.add(egui::DragValue::new(&mut s.image_size).range(64..=1024).speed(16)).labelled_by(l.id);
            ui.end_row();
            // A method that trains no network (patchcore) has no epochs to set.
            if DetectorConfig::default_for(s.method).trains_network() {
                let l = ui.label("Epochs per stage");
                ui.add(egui::DragValue::new(&mut s.epochs).range(1..=200)).labelled_by(l.id);
                ui.end_row();
            }
            let l = ui.label("Device");
            egui::ComboBox::from_id_salt("device")
                .selected_text(s.device.to_string())
                .show_ui(ui, |ui| {
                    for (d, name) in device_choices() {
                        ui.selectable_value(&mut s.device, d, name);
                    }
                })
                .response
                .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Use at most (images, 0 = all)");
            ui.add(egui::DragValue::new(&mut s.max_images).range(0..=1_000_000)).labelled_by(l.id);
            ui.end_row();
        });
        egui::CollapsingHeader::new("Advanced").id_salt("advanced").show(ui, |ui| {
            let s = &mut app.settings.train;
            // Only the widths the method has (patchcore trains no network).
            let own = DetectorConfig::default_for(s.method).options();
            ui.horizontal(|ui| {
                if own.flow_hidden.is_some() {
                    let l = ui.label("Flow hidden width");
                    ui.add(egui::DragValue::new(&mut s.flow_hidden).range(8..=4096)).labelled_by(l.id);
                }
                if own.hidden.is_some() {
                    let l = ui.label("BMR hidden width");
                    ui.add(egui::DragValue::new(&mut s.bmr_hidden).range(8..=4096)).labelled_by(l.id);
                }
                if own.flow_hidden.is_none() && own.hidden.is_none() {
                    ui.label(format!("{} has no network widths to set", s.method));
                }
            });
        });
    });
    ui.add_space(6.0);
    ui.horizontal(|ui| {
        let n = app.train_files.len();
        let can = !busy && n > 0;
        if ui
            .add_enabled(can, egui::Button::new("Start training"))
            .on_disabled_hover_text("choose a training folder with good images on the Data tab")
            .clicked()
        {
            app.start_training();
        }
        if busy && ui.button("Cancel training").clicked() {
            app.cancel_job();
        }
        ui.label(format!("{n} good images in the training folder"));
    });
    ui.horizontal(|ui| {
        if ui.add_enabled(!busy, egui::Button::new("Open model...")).clicked() {
            app.dialogs.open(DialogTarget::OpenModel, Some(PathBuf::from(&app.settings.model_path)));
        }
        let mut path = app.settings.model_path.clone();
        let l = ui.label("Model file");
        ui.add(egui::TextEdit::singleline(&mut path).desired_width(360.0).hint_text("model file (.fsm)")).labelled_by(l.id);
        app.settings.model_path = path;
        if ui.add_enabled(!busy && !app.settings.model_path.trim().is_empty(), egui::Button::new("Open")).clicked() {
            app.open_model(PathBuf::from(app.settings.model_path.trim()), false);
        }
        let can_save = !busy && app.model.is_some();
        if ui.add_enabled(can_save, egui::Button::new("Save model as...")).clicked() {
            app.dialogs.open(DialogTarget::SaveModel, Some(PathBuf::from(&app.settings.model_path)));
        }
        if ui.add_enabled(can_save && !app.settings.model_path.trim().is_empty(), egui::Button::new("Save")).clicked() {
            app.save_model(PathBuf::from(app.settings.model_path.trim()));
        }
    });
    if let Some(m) = &app.model {
        let t = &m.meta.training;
        ui.label(format!(
            "Model: {} on {} {} stage {:?}, {} px, device {}; trained on {} images in {:.0} s; threshold {:.4}",
            m.meta.method,
            m.meta.backbone.config.variant,
            m.meta.backbone.fingerprint,
            m.meta.config.tap().stages,
            m.meta.config.tap().image_size,
            m.device,
            t.n_train,
            t.total_seconds,
            m.meta.threshold
        ));
        if let Some(r) = &m.meta.threshold_rule {
            ui.label(format!("Default threshold: {}", r.describe()));
        }
    }
    ui.separator();
    loss_plot(ui, app);
}

fn loss_plot(ui: &mut egui::Ui, app: &App) {
    ui.label("Training loss per epoch (each stage on its own scale: mean loss / first epoch's)");
    egui_plot::Plot::new("loss")
        .height(ui.available_height().max(160.0))
        .x_axis_label("epoch")
        .legend(egui_plot::Legend::default())
        .allow_scroll(false)
        .show(ui, |p| {
            for (stage, pts) in &app.losses {
                let first = pts.first().map(|p| p[1]).filter(|v| v.abs() > 1e-12).unwrap_or(1.0);
                let scaled: Vec<[f64; 2]> = pts.iter().map(|p| [p[0], p[1] / first.abs()]).collect();
                p.line(egui_plot::Line::new(stage.clone(), scaled.clone()));
                p.points(egui_plot::Points::new(stage.clone(), scaled).radius(3.0));
            }
        });
}
