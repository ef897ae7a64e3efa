//! Reading EfficientNet weights from PyTorch `.pth` (legacy pre-zip pickle format and
//! the zip format) and safetensors files, recognising the three common key namings
//! (lukemelas `_blocks.N...`, torchvision `features.S.R...`, timm `blocks.S.R...`),
//! and writing one canonical safetensors file with the architecture in its metadata.
//!
//! Canonical names: `stem.{conv,bn}`, `blocks.{i}.{expand,dw,project}.{conv,bn}`,
//! `blocks.{i}.se.{reduce,expand}`, `head.{conv,bn}`, `classifier`; `bn` holds
//! `weight`, `bias`, `running_mean`, `running_var`.
use super::config::{EfficientNetConfig, Family, Padding};
use crate::error::{Error, Result};
use crate::fsutil::atomic_write;
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};
use std::path::Path;

/// Metadata key holding the JSON [`EfficientNetConfig`] in a canonical file.
pub const META_CONFIG: &str = "flowspect.backbone";
pub const META_FORMAT: &str = "flowspect.backbone_format";
pub const FORMAT_VERSION: &str = "1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    Lukemelas,
    Torchvision,
    Timm,
    Canonical,
}

/// Magic number at the start of a legacy (pre-1.6) torch.save file.
const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

struct RawTensor {
    storage_key: String,
    dtype: DType,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::bad_file(path, msg)
}

fn to_usizes(o: Object, path: &Path) -> Result<Vec<usize>> {
    match o {
        Object::Tuple(v) | Object::List(v) => v
            .into_iter()
            .map(|x| match x {
                Object::Int(i) if i >= 0 => Ok(i as usize),
                Object::Long(i) if i >= 0 => Ok(i as usize),
                other => Err(bad(path, format!("unexpected size entry {other:?}"))),
            })
            .collect(),
        other => Err(bad(path, format!("unexpected size {other:?}"))),
    }
}

/// Interprets one `_rebuild_tensor_v2(...)` pickle object.
fn raw_tensor(obj: Object, path: &Path) -> Result<Option<RawTensor>> {
    let (callable, args) = match obj {
        Object::Reduce { callable, args } => (*callable, *args),
        _ => return Ok(None),
    };
    let (callable, args) = match callable {
        Object::Class { module_name, class_name }
            if module_name == "torch._utils" && class_name == "_rebuild_parameter" =>
        {
            let mut a = args.tuple().map_err(|o| bad(path, format!("bad parameter {o:?}")))?;
            if a.is_empty() {
                return Ok(None);
            }
            match a.remove(0) {
                Object::Reduce { callable, args } => (*callable, *args),
                _ => return Ok(None),
            }
        }
        c => (c, args),
    };
    match &callable {
        Object::Class { module_name, class_name }
            if module_name == "torch._utils" && class_name == "_rebuild_tensor_v2" => {}
        _ => return Ok(None),
    }
    let mut a = args.tuple().map_err(|o| bad(path, format!("bad tensor args {o:?}")))?;
    if a.len() < 4 {
        return Err(bad(path, "tensor record too short"));
    }
    let stride = to_usizes(a.remove(3), path)?;
    let shape = to_usizes(a.remove(2), path)?;
    let offset = match a.remove(1) {
        Object::Int(i) if i >= 0 => i as usize,
        Object::Long(i) if i >= 0 => i as usize,
        o => return Err(bad(path, format!("bad storage offset {o:?}"))),
    };
    let pid = a
        .remove(0)
        .persistent_load()
        .map_err(|o| bad(path, format!("expected a storage reference, got {o:?}")))?;
    let mut st = pid.tuple().map_err(|o| bad(path, format!("bad storage {o:?}")))?;
    if st.len() < 3 {
        return Err(bad(path, "storage record too short"));
    }
    let key = match st.remove(2) {
        Object::Unicode(s) => s,
        o => return Err(bad(path, format!("bad storage key {o:?}"))),
    };
    let class = match st.remove(1) {
        Object::Class { class_name, .. } => class_name,
        o => return Err(bad(path, format!("bad storage type {o:?}"))),
    };
    let dtype = match class.as_str() {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "ByteStorage" => DType::U8,
        // Integer storages other than these only hold counters (num_batches_tracked).
        "IntStorage" | "ShortStorage" | "CharStorage" | "BoolStorage" => return Ok(None),
        other => return Err(bad(path, format!("unsupported storage type {other}"))),
    };
    Ok(Some(RawTensor {
        storage_key: key,
        dtype,
        offset,
        shape,
        stride,
    }))
}

/// Finds the state dict in a pickled object (the dict itself, or under
/// `state_dict` / `model` / `model_state_dict`).
fn state_dict(obj: Object, path: &Path) -> Result<Vec<(String, Object)>> {
    let entries = match obj {
        Object::Dict(d) => d,
        Object::Build { args, .. } => match *args {
            Object::Dict(d) => d,
            _ => return Err(bad(path, "no state dict found in the file")),
        },
        _ => return Err(bad(path, "no state dict found in the file")),
    };
    let mut out = Vec::new();
    let mut nested = None;
    for (k, v) in entries {
        let Object::Unicode(k) = k else { continue };
        if matches!(k.as_str(), "state_dict" | "model" | "model_state_dict")
            && matches!(v, Object::Dict(_))
        {
            nested = Some(v);
        } else {
            out.push((k, v));
        }
    }
    if let Some(n) = nested {
        return state_dict(n, path);
    }
    Ok(out)
}

/// Gathers a strided view of a storage into a contiguous f32 tensor.
fn materialise(raw: &RawTensor, storage: &[u8], path: &Path, name: &str) -> Result<Tensor> {
    let esize = raw.dtype.size_in_bytes();
    let n_storage = storage.len() / esize;
    let all = Tensor::from_raw_buffer(storage, raw.dtype, &[n_storage], &Device::Cpu)?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    let numel: usize = raw.shape.iter().product();
    let mut out = Vec::with_capacity(numel);
    let rank = raw.shape.len();
    let mut idx = vec![0usize; rank];
    for _ in 0..numel {
        let mut pos = raw.offset;
        for d in 0..rank {
            pos += idx[d] * raw.stride[d];
        }
        let v = *all.get(pos).ok_or_else(|| {
            bad(path, format!("tensor '{name}' reads past its storage"))
        })?;
        out.push(v);
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < raw.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(Tensor::from_vec(out, raw.shape.as_slice(), &Device::Cpu)?)
}

fn read_legacy(path: &Path, bytes: &[u8]) -> Result<HashMap<String, Tensor>> {
    let mut r = BufReader::new(&bytes[LEGACY_MAGIC.len()..]);
    let mut next = |what: &str| -> Result<Object> {
        let mut s = Stack::empty();
        s.read_loop(&mut r)
            .map_err(|e| bad(path, format!("corrupt legacy .pth ({what}): {e}")))?;
        s.finalize().map_err(|e| bad(path, format!("corrupt legacy .pth ({what}): {e}")))
    };
    let _protocol = next("protocol")?;
    let _sys = next("system info")?;
    let main = next("state dict")?;
    let keys = match next("storage keys")? {
        Object::List(k) => k,
        o => return Err(bad(path, format!("expected storage key list, got {o:?}"))),
    };
    let sd = state_dict(main, path)?;
    let mut raws = Vec::new();
    let mut key_dtype: HashMap<String, DType> = HashMap::new();
    for (name, v) in sd {
        if let Some(raw) = raw_tensor(v, path)? {
            key_dtype.insert(raw.storage_key.clone(), raw.dtype);
            raws.push((name, raw));
        }
    }
    // Storages follow in the order of `keys`: u64 element count, then the data.
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for k in keys {
        let Object::Unicode(k) = k else {
            return Err(bad(path, "storage key is not a string"));
        };
        let mut n = [0u8; 8];
        r.read_exact(&mut n)
            .map_err(|_| bad(path, "truncated legacy .pth (storage header)"))?;
        let n = u64::from_le_bytes(n) as usize;
        // Counters (num_batches_tracked) are int64 storages that we skip; size known anyway.
        let esize = key_dtype.get(&k).map(|d| d.size_in_bytes()).unwrap_or(8);
        let mut data = vec![0u8; n * esize];
        r.read_exact(&mut data)
            .map_err(|_| bad(path, format!("truncated legacy .pth (storage {k})")))?;
        storages.insert(k, data);
    }
    let mut out = HashMap::new();
    for (name, raw) in raws {
        if raw.dtype == DType::I64 || raw.dtype == DType::U8 {
            continue;
        }
        let st = storages
            .get(&raw.storage_key)
            .ok_or_else(|| bad(path, format!("storage of '{name}' missing")))?;
        out.insert(name.clone(), materialise(&raw, st, path, &name)?);
    }
    Ok(out)
}

fn read_zip(path: &Path, bytes: &[u8]) -> Result<HashMap<String, Tensor>> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad(path, format!("not a readable zip .pth: {e}")))?;
    let names: Vec<String> = zip.file_names().map(|s| s.to_string()).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| bad(path, "zip .pth without data.pkl"))?
        .clone();
    let dir = pkl.trim_end_matches("data.pkl").to_string();
    let obj = {
        let f = zip
            .by_name(&pkl)
            .map_err(|e| bad(path, format!("cannot read {pkl}: {e}")))?;
        let mut r = BufReader::new(f);
        let mut s = Stack::empty();
        s.read_loop(&mut r)
            .map_err(|e| bad(path, format!("corrupt data.pkl: {e}")))?;
        s.finalize().map_err(|e| bad(path, format!("corrupt data.pkl: {e}")))?
    };
    let mut out = HashMap::new();
    for (name, v) in state_dict(obj, path)? {
        let Some(raw) = raw_tensor(v, path)? else { continue };
        if raw.dtype == DType::I64 || raw.dtype == DType::U8 {
            continue;
        }
        let entry = format!("{dir}data/{}", raw.storage_key);
        let mut f = zip
            .by_name(&entry)
            .map_err(|e| bad(path, format!("storage {entry} missing: {e}")))?;
        let mut data = Vec::new();
        f.read_to_end(&mut data).map_err(|e| Error::io(path, e))?;
        out.insert(name.clone(), materialise(&raw, &data, path, &name)?);
    }
    Ok(out)
}

/// Reads every floating-point tensor of a `.pth` (legacy or zip) or safetensors file.
pub fn read_any(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.starts_with(&LEGACY_MAGIC) {
        read_legacy(path, &bytes)
    } else if bytes.starts_with(b"PK") {
        read_zip(path, &bytes)
    } else if bytes.len() > 8 && safetensors::SafeTensors::deserialize(&bytes).is_ok() {
        let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        Ok(t.into_iter()
            .filter(|(_, v)| v.dtype().is_float())
            .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
            .collect::<Result<_>>()?)
    } else {
        Err(bad(
            path,
            "not a PyTorch .pth (legacy or zip) or safetensors weight file",
        ))
    }
}

pub fn detect_naming(keys: &[&String]) -> Option<Naming> {
    if keys.iter().any(|k| k.starts_with("_blocks.")) {
        Some(Naming::Lukemelas)
    } else if keys.iter().any(|k| k.starts_with("features.")) {
        Some(Naming::Torchvision)
    } else if keys.iter().any(|k| k.starts_with("conv_stem")) {
        Some(Naming::Timm)
    } else if keys.iter().any(|k| k.starts_with("stem.conv")) {
        Some(Naming::Canonical)
    } else {
        None
    }
}

fn bn_suffix(rest: &str) -> Option<&str> {
    match rest {
        "weight" | "bias" | "running_mean" | "running_var" => Some(rest),
        _ => None,
    }
}

/// Splits "a.b.c" at the first `n` dots.
fn parts(k: &str) -> Vec<&str> {
    k.split('.').collect()
}

fn map_lukemelas(k: &str) -> Option<String> {
    let p = parts(k);
    match p.as_slice() {
        ["_conv_stem", "weight"] => Some("stem.conv.weight".into()),
        ["_bn0", s] => bn_suffix(s).map(|s| format!("stem.bn.{s}")),
        ["_conv_head", "weight"] => Some("head.conv.weight".into()),
        ["_bn1", s] => bn_suffix(s).map(|s| format!("head.bn.{s}")),
        ["_fc", s] => Some(format!("classifier.{s}")),
        ["_blocks", i, layer, s] => {
            let i: usize = i.parse().ok()?;
            let m = match *layer {
                "_expand_conv" => "expand.conv",
                "_bn0" => "expand.bn",
                "_depthwise_conv" => "dw.conv",
                "_bn1" => "dw.bn",
                "_se_reduce" => "se.reduce",
                "_se_expand" => "se.expand",
                "_project_conv" => "project.conv",
                "_bn2" => "project.bn",
                _ => return None,
            };
            Some(format!("blocks.{i}.{m}.{s}"))
        }
        _ => None,
    }
}

/// Flat block index from (stage, repeat), counting repeats per stage in the keys.
fn flat_index(keys: &[&String], prefix: &str, stage_base: usize) -> BTreeMap<(usize, usize), usize> {
    let mut seen = std::collections::BTreeSet::new();
    for k in keys {
        let Some(rest) = k.strip_prefix(prefix) else { continue };
        let p = parts(rest);
        if p.len() < 3 {
            continue;
        }
        if let (Ok(s), Ok(r)) = (p[0].parse::<usize>(), p[1].parse::<usize>()) {
            if s >= stage_base && (prefix != "features." || (1..=7).contains(&s)) {
                seen.insert((s, r));
            }
        }
    }
    seen.into_iter().enumerate().map(|(i, sr)| (sr, i)).collect()
}

fn map_torchvision(k: &str, idx: &BTreeMap<(usize, usize), usize>, has_expand: &dyn Fn(usize) -> bool) -> Option<String> {
    let p = parts(k);
    match p.as_slice() {
        ["features", "0", "0", "weight"] => Some("stem.conv.weight".into()),
        ["features", "0", "1", s] => bn_suffix(s).map(|s| format!("stem.bn.{s}")),
        ["features", "8", "0", "weight"] => Some("head.conv.weight".into()),
        ["features", "8", "1", s] => bn_suffix(s).map(|s| format!("head.bn.{s}")),
        ["classifier", "1", s] => Some(format!("classifier.{s}")),
        ["features", st, r, "block", j, rest @ ..] => {
            let b = *idx.get(&(st.parse().ok()?, r.parse().ok()?))?;
            let j: usize = j.parse().ok()?;
            let j = if has_expand(b) { j } else { j + 1 };
            let layer = match j {
                0 => "expand",
                1 => "dw",
                2 => "se",
                3 => "project",
                _ => return None,
            };
            match (layer, rest) {
                ("se", ["fc1", s]) => Some(format!("blocks.{b}.se.reduce.{s}")),
                ("se", ["fc2", s]) => Some(format!("blocks.{b}.se.expand.{s}")),
                (l, ["0", "weight"]) => Some(format!("blocks.{b}.{l}.conv.weight")),
                (l, ["1", s]) => bn_suffix(s).map(|s| format!("blocks.{b}.{l}.bn.{s}")),
                _ => None,
            }
        }
        _ => None,
    }
}

fn map_timm(k: &str, idx: &BTreeMap<(usize, usize), usize>, has_expand: &dyn Fn(usize) -> bool) -> Option<String> {
    let p = parts(k);
    match p.as_slice() {
        ["conv_stem", "weight"] => Some("stem.conv.weight".into()),
        ["bn1", s] => bn_suffix(s).map(|s| format!("stem.bn.{s}")),
        ["conv_head", "weight"] => Some("head.conv.weight".into()),
        ["bn2", s] => bn_suffix(s).map(|s| format!("head.bn.{s}")),
        ["classifier", s] => Some(format!("classifier.{s}")),
        ["blocks", st, r, rest @ ..] => {
            let b = *idx.get(&(st.parse().ok()?, r.parse().ok()?))?;
            let e = has_expand(b);
            let m = match (e, rest) {
                (_, ["se", "conv_reduce", s]) => return Some(format!("blocks.{b}.se.reduce.{s}")),
                (_, ["se", "conv_expand", s]) => return Some(format!("blocks.{b}.se.expand.{s}")),
                (_, ["conv_dw", "weight"]) => "dw.conv.weight".to_string(),
                (true, ["conv_pw", "weight"]) => "expand.conv.weight".into(),
                (true, ["bn1", s]) => format!("expand.bn.{}", bn_suffix(s)?),
                (true, ["bn2", s]) => format!("dw.bn.{}", bn_suffix(s)?),
                (true, ["conv_pwl", "weight"]) => "project.conv.weight".into(),
                (true, ["bn3", s]) => format!("project.bn.{}", bn_suffix(s)?),
                (false, ["bn1", s]) => format!("dw.bn.{}", bn_suffix(s)?),
                (false, ["conv_pw", "weight"]) => "project.conv.weight".into(),
                (false, ["bn2", s]) => format!("project.bn.{}", bn_suffix(s)?),
                _ => return None,
            };
            Some(format!("blocks.{b}.{m}"))
        }
        _ => None,
    }
}

/// Renames a state dict to the canonical names. Keys that do not belong to the
/// network (counters, auxiliary heads) are dropped.
pub fn canonicalize(path: &Path, t: HashMap<String, Tensor>) -> Result<(Naming, HashMap<String, Tensor>)> {
    let keys: Vec<&String> = t.keys().collect();
    let naming = detect_naming(&keys).ok_or_else(|| {
        bad(
            path,
            "unrecognised weight names: expected an EfficientNet in lukemelas (_blocks.N), torchvision (features.S.R) or timm (blocks.S.R) naming",
        )
    })?;
    let mapped: HashMap<String, Tensor> = match naming {
        Naming::Canonical => t,
        Naming::Lukemelas => t
            .into_iter()
            .filter_map(|(k, v)| map_lukemelas(&k).map(|k| (k, v)))
            .collect(),
        Naming::Torchvision | Naming::Timm => {
            let (prefix, base) = if naming == Naming::Torchvision {
                ("features.", 1)
            } else {
                ("blocks.", 0)
            };
            let idx = flat_index(&keys, prefix, base);
            // A block has an expansion conv when it holds a 1x1 conv before the depthwise one.
            let expand_of: HashMap<usize, bool> = idx
                .iter()
                .map(|(&(s, r), &b)| {
                    let has = if naming == Naming::Torchvision {
                        t.get(&format!("features.{s}.{r}.block.0.0.weight"))
                            .map(|w| w.dims().get(1).copied() != Some(1))
                            .unwrap_or(false)
                    } else {
                        t.contains_key(&format!("blocks.{s}.{r}.conv_pwl.weight"))
                    };
                    (b, has)
                })
                .collect();
            let has_expand = |b: usize| expand_of.get(&b).copied().unwrap_or(false);
            t.iter()
                .filter_map(|(k, v)| {
                    let m = if naming == Naming::Torchvision {
                        map_torchvision(k, &idx, &has_expand)
                    } else {
                        map_timm(k, &idx, &has_expand)
                    };
                    m.map(|m| (m, v.clone()))
                })
                .collect()
        }
    };
    Ok((naming, mapped))
}

/// Finds the variant whose block layout fits the tensors.
pub fn detect_config(path: &Path, t: &HashMap<String, Tensor>, naming: Naming) -> Result<EfficientNetConfig> {
    let family = if t.contains_key("blocks.0.se.reduce.weight") {
        Family::B
    } else {
        Family::Lite
    };
    let n_blocks = (0..)
        .take_while(|i| t.contains_key(&format!("blocks.{i}.project.conv.weight")))
        .count();
    let names: &[&str] = match family {
        Family::Lite => &["lite0", "lite1", "lite2", "lite3", "lite4"],
        Family::B => &["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"],
    };
    for n in names {
        let mut cfg = EfficientNetConfig::from_variant(n)?;
        let blocks = cfg.blocks();
        if blocks.len() != n_blocks {
            continue;
        }
        let fits = blocks.iter().enumerate().all(|(i, b)| {
            t.get(&format!("blocks.{i}.project.conv.weight"))
                .and_then(|w| w.dims().first().copied())
                == Some(b.cout)
                && t.get(&format!("blocks.{i}.dw.conv.weight"))
                    .and_then(|w| w.dims().get(2).copied())
                    == Some(b.kernel)
        });
        if fits {
            if naming == Naming::Torchvision {
                cfg.padding = Padding::Symmetric;
                cfg.bn_eps = 1e-3;
            }
            return Ok(cfg);
        }
    }
    Err(bad(
        path,
        format!("{n_blocks} blocks of a {family:?} EfficientNet: no known variant has this layout"),
    ))
}

/// Imported weights, ready to be written or used.
pub struct Imported {
    pub naming: Naming,
    pub config: EfficientNetConfig,
    pub tensors: HashMap<String, Tensor>,
}

pub fn import(path: &Path, padding: Option<Padding>) -> Result<Imported> {
    let raw = read_any(path)?;
    let (naming, tensors) = canonicalize(path, raw)?;
    let mut config = detect_config(path, &tensors, naming)?;
    if let Some(p) = padding {
        config.padding = p;
    }
    Ok(Imported {
        naming,
        config,
        tensors,
    })
}

/// Writes a canonical safetensors file atomically.
pub fn write_canonical(out: &Path, imp: &Imported) -> Result<()> {
    let cfg = serde_json::to_string(&imp.config).map_err(|e| Error::Data(e.to_string()))?;
    let meta: HashMap<String, String> = [
        (META_CONFIG.to_string(), cfg),
        (META_FORMAT.to_string(), FORMAT_VERSION.to_string()),
    ]
    .into_iter()
    .collect();
    let mut sorted: Vec<(&String, &Tensor)> = imp.tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let bytes = safetensors::serialize(sorted, Some(meta))
        .map_err(|e| Error::Data(format!("cannot serialise weights: {e}")))?;
    atomic_write(out, &bytes)
}

/// Reads a canonical backbone file: config from its metadata and the tensors.
pub fn load_canonical(path: &Path) -> Result<(EfficientNetConfig, HashMap<String, Tensor>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
    let config = match meta.get(META_CONFIG) {
        Some(c) => {
            if meta.get(META_FORMAT).map(String::as_str) != Some(FORMAT_VERSION) {
                return Err(bad(
                    path,
                    format!(
                        "backbone file format {:?} is not supported (expects {FORMAT_VERSION}); re-import it with `flowspect import-weights`",
                        meta.get(META_FORMAT)
                    ),
                ));
            }
            serde_json::from_str(c).map_err(|e| bad(path, format!("bad backbone config: {e}")))?
        }
        None => {
            // A safetensors file not written by us: import it on the fly.
            return import(path, None).map(|i| (i.config, i.tensors));
        }
    };
    Ok((config, tensors))
}
