//! Line mode end to end: `flowspect watch` as a child process, images arriving in
//! every way a camera or a copy tool writes them, a SIGKILL in the middle, a restart.
mod common;
use common::*;
use flowspect::line::log::{InspectionLog, Query};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn flowspect() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowspect"))
}

/// A small PatchCore model (no network to train: seconds) on real tiles.
fn train_model(dir: &Path) -> PathBuf {
    let model = dir.join("m.fsm");
    let out = flowspect()
        .args(["train", "--method", "patchcore", "--data"])
        .arg(magnetic_tile())
        .args(["--limit", "8", "--image-size", "64", "--device", "cpu", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    model
}

fn start_watch(model: &Path, input: &Path, db: &Path, extra: &[&str]) -> Child {
    flowspect()
        .args(["watch", "--model"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--db")
        .arg(db)
        .args(["--settle-ms", "400", "--poll-ms", "200", "--device", "cpu"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn rows_in(db: &Path) -> usize {
    if !db.exists() {
        return 0;
    }
    InspectionLog::open(db).map(|l| l.query(&Query::default()).map(|r| r.len()).unwrap_or(0)).unwrap_or(0)
}

fn wait_for_rows(db: &Path, n: usize, limit: Duration) -> usize {
    let t = Instant::now();
    loop {
        let have = rows_in(db);
        if have >= n || t.elapsed() > limit {
            return have;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How one file is put into the watched folder.
#[derive(Clone, Copy, Debug)]
enum Arrival {
    /// Written under a temporary name, then renamed into place.
    Rename,
    /// Written in small pieces with pauses, as a slow network copy does.
    Slowly,
    /// Written in one call.
    Direct,
}

fn deliver(dir: &Path, name: &str, bytes: &[u8], how: Arrival) {
    let dest = dir.join(name);
    match how {
        Arrival::Rename => {
            let tmp = dir.join(format!("{name}.part"));
            std::fs::write(&tmp, bytes).unwrap();
            std::fs::rename(&tmp, &dest).unwrap();
        }
        Arrival::Slowly => {
            let mut f = std::fs::File::create(&dest).unwrap();
            for piece in bytes.chunks(bytes.len().div_ceil(12).max(1)) {
                f.write_all(piece).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(15));
            }
        }
        Arrival::Direct => std::fs::write(&dest, bytes).unwrap(),
    }
}

/// `predict`'s verdict and score per file name, on the same model and threshold.
fn predict(model: &Path, dir: &Path, out: &Path) -> HashMap<String, (String, f32)> {
    let o = flowspect().args(["predict", "--device", "cpu", "--model"]).arg(model).arg("--input").arg(dir).arg("--out").arg(out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut r = csv::Reader::from_path(out.join("scores.csv")).unwrap();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            let name = Path::new(&rec[0]).file_name().unwrap().to_string_lossy().into_owned();
            (name, (rec[2].to_string(), rec[1].parse().unwrap_or(f32::NAN)))
        })
        .collect()
}

#[test]
fn watch_survives_sigkill_and_logs_every_image_once() {
    let tmp = tempdir("watch");
    let model = train_model(tmp.path());
    let input = tmp.path().join("line");
    let sorted = tmp.path().join("sorted");
    let reference = tmp.path().join("reference");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::create_dir_all(&reference).unwrap();
    let db = tmp.path().join("log.sqlite");

    // 92 real test tiles of every kind, 5 corrupt or truncated images, 3 non-images.
    let mt = magnetic_tile().join("test");
    let mut sources: Vec<PathBuf> = Vec::new();
    for kind in ["good", "blowhole", "break", "crack", "fray", "uneven"] {
        sources.extend(first_images(&mt.join(kind), if kind == "good" { 32 } else { 12 }));
    }
    assert_eq!(sources.len(), 92);
    let mut files: Vec<(String, Vec<u8>, bool)> = Vec::new(); // name, bytes, is a real image
    for (i, s) in sources.iter().enumerate() {
        let name = format!("part_{i:03}.jpg");
        let bytes = std::fs::read(s).unwrap();
        std::fs::write(reference.join(&name), &bytes).unwrap();
        files.push((name, bytes, true));
    }
    let whole = std::fs::read(&sources[0]).unwrap();
    files.push(("cut_third.jpg".into(), whole[..whole.len() / 3].to_vec(), false));
    files.push(("cut_end.jpg".into(), whole[..whole.len() - 200].to_vec(), false));
    files.push(("garbage.png".into(), vec![0x5a; 5000], false));
    files.push(("empty.bmp".into(), Vec::new(), false));
    files.push(("header_only.png".into(), b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec(), false));
    files.push(("notes.txt".into(), b"operator notes, not an image".to_vec(), false));
    files.push(("settings.csv".into(), b"a,b\n1,2\n".to_vec(), false));
    files.push(("readme".into(), b"no extension".to_vec(), false));
    assert_eq!(files.len(), 100);
    // Spread the odd files through the stream.
    let mut order: Vec<usize> = (0..100).collect();
    order.sort_by_key(|&i| (i * 37) % 100);

    let sort_arg = sorted.display().to_string();
    let mut child = start_watch(&model, &input, &db, &["--sort", &sort_arg]);
    let ways = [Arrival::Rename, Arrival::Direct, Arrival::Slowly, Arrival::Rename, Arrival::Direct];
    for (k, &i) in order.iter().enumerate().take(55) {
        let (name, bytes, _) = &files[i];
        deliver(&input, name, bytes, ways[k % ways.len()]);
    }
    // Kill it in the middle of the stream, while images are still waiting.
    let seen = wait_for_rows(&db, 25, Duration::from_secs(120));
    assert!(seen >= 25, "the watcher logged only {seen} rows in 2 minutes");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = rows_in(&db);
    for (k, &i) in order.iter().enumerate().skip(55) {
        let (name, bytes, _) = &files[i];
        deliver(&input, name, bytes, ways[k % ways.len()]);
    }
    let child = start_watch(&model, &input, &db, &["--sort", &sort_arg]);
    let total = wait_for_rows(&db, 100, Duration::from_secs(240));
    // Ctrl-C: stops after the image in hand, exits cleanly.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "watch after SIGINT: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(total, 100, "rows after the restart (had {at_kill} at the kill)");

    let log = InspectionLog::open(&db).unwrap();
    assert_eq!(log.integrity_check().unwrap(), "ok");
    let rows = log.query(&Query::default()).unwrap();
    assert_eq!(rows.len(), 100);
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        *by_name.entry(Path::new(&r.path).file_name().unwrap().to_string_lossy().into_owned()).or_default() += 1;
    }
    for (name, _, _) in &files {
        assert_eq!(by_name.get(name), Some(&1), "{name}: rows {:?}", by_name.get(name));
    }
    let expected = predict(&model, &reference, &tmp.path().join("predict"));
    assert_eq!(expected.len(), 92);
    let mut rejects = 0;
    for r in &rows {
        let name = Path::new(&r.path).file_name().unwrap().to_string_lossy().into_owned();
        let real = files.iter().find(|f| f.0 == name).unwrap().2;
        if real {
            assert!(r.error.is_none(), "{name}: {:?}", r.error);
            let (verdict, score) = &expected[&name];
            assert_eq!(r.verdict_text(), verdict, "{name}");
            let s = r.score.unwrap();
            assert!((s - score).abs() <= 1e-4 * score.abs().max(1.0), "{name}: watch {s}, predict {score}");
            rejects += (verdict == "reject") as usize;
            // Sorted after its row was written.
            let dest = PathBuf::from(r.sorted_to.as_ref().unwrap());
            assert!(dest.starts_with(sorted.join(verdict)), "{name} -> {}", dest.display());
            assert!(dest.is_file(), "{name} not at {}", dest.display());
            assert!(!input.join(&name).exists(), "{name} still in the input folder");
            assert_eq!(r.sha256.as_deref().unwrap().len(), 64);
            assert!(r.latency_ms() >= 0);
        } else {
            assert_eq!(r.verdict_text(), "error", "{name}");
            assert!(r.score.is_none());
            let e = r.error.as_deref().unwrap();
            assert!(e.contains(&name), "{name}: {e}");
            if name.starts_with("cut_") {
                assert!(e.contains("truncated"), "{name}: {e}");
            }
        }
    }
    assert!(rejects > 0 && rejects < 92, "rejects {rejects}");
}

/// Two watchers (two lines) write to one database at the same time.
#[test]
fn two_watchers_share_one_log() {
    let tmp = tempdir("watch2");
    let model = train_model(tmp.path());
    let db = tmp.path().join("shared.sqlite");
    let mt = magnetic_tile().join("test");
    let mut children = Vec::new();
    for (line, kind) in ["good", "crack"].iter().enumerate() {
        let dir = tmp.path().join(format!("line{line}"));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in first_images(&mt.join(kind), 15).iter().enumerate() {
            std::fs::copy(s, dir.join(format!("l{line}_{i:02}.jpg"))).unwrap();
        }
        children.push(start_watch(&model, &dir, &db, &["--once"]));
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let log = InspectionLog::open(&db).unwrap();
    assert_eq!(log.integrity_check().unwrap(), "ok");
    let rows = log.query(&Query::default()).unwrap();
    assert_eq!(rows.len(), 30);
    let stations: std::collections::HashSet<&str> = rows.iter().map(|r| r.station.as_str()).collect();
    assert_eq!(stations.len(), 2);
    assert!(rows.iter().all(|r| r.error.is_none() && r.score.is_some()));
    // `flowspect log` reads it: filter and CSV.
    let csv_path = tmp.path().join("rows.csv");
    let o = flowspect().args(["log", "--check", "--db"]).arg(&db).arg("--csv").arg(&csv_path).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("integrity_check: ok"));
    assert_eq!(csv::Reader::from_path(&csv_path).unwrap().records().count(), 30);
    let o = flowspect().args(["log", "--verdict", "error", "--db"]).arg(&db).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 rows"), "{}", String::from_utf8_lossy(&o.stdout));
    // `report --log`: the logged images re-scored by the same model get the logged verdicts.
    let rep = tmp.path().join("report");
    let o = flowspect().args(["report", "--device", "cpu", "--model"]).arg(&model).arg("--log").arg(&db).arg("--out").arg(&rep).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs: Vec<csv::StringRecord> = csv::Reader::from_path(rep.join("report.csv")).unwrap().records().map(|r| r.unwrap()).collect();
    assert_eq!(recs.len(), 30);
    for r in &recs {
        assert_eq!(&r[1], &r[4], "logged verdict (kind column) against the report's: {r:?}");
    }
}

/// Every command refuses a truncated image with its name, instead of scoring it.
#[test]
fn predict_refuses_a_truncated_jpeg() {
    let tmp = tempdir("trunc");
    let model = train_model(tmp.path());
    let dir = tmp.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let src = first_images(&magnetic_tile().join("test/good"), 2);
    std::fs::copy(&src[0], dir.join("whole.jpg")).unwrap();
    let b = std::fs::read(&src[1]).unwrap();
    std::fs::write(dir.join("third.jpg"), &b[..b.len() / 3]).unwrap();
    let out = tmp.path().join("out");
    let o = flowspect().args(["predict", "--device", "cpu", "--model"]).arg(&model).arg("--input").arg(&dir).arg("--out").arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("third.jpg") && stdout.contains("truncated JPEG"), "{stdout}");
    assert!(stdout.contains("1 images scored"), "{stdout}");
}
