//! Native file dialogs (rfd) on their own threads, so the UI never waits on them.
//!
//! rfd is built with its xdg-desktop-portal backend: it needs no GTK development
//! packages to build, and talks to the desktop's portal service at run time. Where no
//! portal answers (a bare X server, some minimal desktops) the dialog returns nothing;
//! every path can also be typed into the field next to its "Browse..." button.
use crossbeam_channel::{Receiver, Sender, unbounded};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogTarget {
    TrainDir,
    TestDir,
    Backbone,
    OpenModel,
    SaveModel,
    ReportDir,
    InspectModel,
    InspectDir,
    InspectSortDir,
    OpenProject,
    SaveProject,
}

pub struct Dialogs {
    tx: Sender<(DialogTarget, PathBuf)>,
    rx: Receiver<(DialogTarget, PathBuf)>,
    ctx: egui::Context,
}

impl Dialogs {
    pub fn new(ctx: egui::Context) -> Self {
        let (tx, rx) = unbounded();
        Self { tx, rx, ctx }
    }

    pub fn poll(&self) -> Option<(DialogTarget, PathBuf)> {
        self.rx.try_recv().ok()
    }

    /// Opens the dialog for `target`; the choice arrives through [`Dialogs::poll`].
    pub fn open(&self, target: DialogTarget, start: Option<PathBuf>) {
        let (tx, ctx) = (self.tx.clone(), self.ctx.clone());
        let spawned = std::thread::Builder::new().name("flowspect-dialog".into()).spawn(move || {
            let mut d = rfd::FileDialog::new();
            if let Some(s) = start.filter(|s| s.exists()) {
                d = d.set_directory(if s.is_dir() { s.clone() } else { s.parent().map(|p| p.to_path_buf()).unwrap_or(s) });
            }
            let picked = match target {
                DialogTarget::TrainDir
                | DialogTarget::TestDir
                | DialogTarget::ReportDir
                | DialogTarget::InspectDir
                | DialogTarget::InspectSortDir => d.pick_folder(),
                DialogTarget::Backbone => d.add_filter("weights", &["safetensors", "pth", "pt"]).pick_file(),
                DialogTarget::OpenModel | DialogTarget::InspectModel => d.add_filter("flowspect model", &["fsm", "safetensors"]).pick_file(),
                DialogTarget::OpenProject => d.add_filter("flowspect project", &["fsproj"]).pick_file(),
                DialogTarget::SaveProject => d.add_filter("flowspect project", &["fsproj"]).set_file_name("inspection.fsproj").save_file(),
                DialogTarget::SaveModel => d
                    .add_filter("flowspect model", &["fsm"])
                    .set_file_name("model.fsm")
                    .save_file(),
            };
            if let Some(p) = picked {
                let _ = tx.send((target, p));
                ctx.request_repaint();
            }
        });
        if spawned.is_err() {
            // No thread, no dialog: the path fields still work.
        }
    }
}
