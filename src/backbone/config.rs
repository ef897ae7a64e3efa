//! EfficientNet architecture descriptions (B-series and Lite), following the
//! reference TensorFlow implementation's scaling rules.
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How convolutions are padded. TensorFlow "SAME" pads asymmetrically on stride 2
/// (the extra pixel goes bottom/right); torchvision pads `k/2` on every side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    Same,
    Symmetric,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// EfficientNet-Lite: no squeeze-excitation, ReLU6, stem/head not scaled.
    Lite,
    /// EfficientNet-B: squeeze-excitation, SiLU.
    B,
}

/// Input normalisation the weights were trained with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// TensorFlow-converted Lite weights: (x*255 - 127) / 128.
    pub const TF_LITE: Normalization = Normalization {
        mean: [127.0 / 255.0; 3],
        std: [128.0 / 255.0; 3],
    };
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EfficientNetConfig {
    /// `lite0`..`lite4` or `b0`..`b7`.
    pub variant: String,
    pub family: Family,
    pub width: f64,
    pub depth: f64,
    pub padding: Padding,
    pub bn_eps: f64,
    pub normalization: Normalization,
}

/// One MBConv block after scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    /// Stage number, 1..=7.
    pub stage: usize,
    pub expand: usize,
    pub kernel: usize,
    pub stride: usize,
    pub cin: usize,
    pub cout: usize,
    /// Squeeze-excitation reduced width, if any.
    pub se: Option<usize>,
}

/// (expand, kernel, stride, in, out, repeats) of EfficientNet-B0's seven stages.
const BASE: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];

/// Stride of each stage's output relative to the input.
pub const STAGE_STRIDE: [usize; 7] = [2, 4, 8, 16, 16, 32, 32];

impl EfficientNetConfig {
    pub fn from_variant(variant: &str) -> Result<Self> {
        let v = variant.trim().to_ascii_lowercase();
        let v = v
            .trim_start_matches("efficientnet")
            .trim_start_matches(['-', '_']);
        let (family, width, depth) = match v {
            "lite0" => (Family::Lite, 1.0, 1.0),
            "lite1" => (Family::Lite, 1.0, 1.1),
            "lite2" => (Family::Lite, 1.1, 1.2),
            "lite3" => (Family::Lite, 1.2, 1.4),
            "lite4" => (Family::Lite, 1.4, 1.8),
            "b0" => (Family::B, 1.0, 1.0),
            "b1" => (Family::B, 1.0, 1.1),
            "b2" => (Family::B, 1.1, 1.2),
            "b3" => (Family::B, 1.2, 1.4),
            "b4" => (Family::B, 1.4, 1.8),
            "b5" => (Family::B, 1.6, 2.2),
            "b6" => (Family::B, 1.8, 2.6),
            "b7" => (Family::B, 2.0, 3.1),
            _ => {
                return Err(Error::Config(format!(
                    "unknown EfficientNet variant '{variant}' (lite0..lite4, b0..b7)"
                )));
            }
        };
        Ok(Self {
            variant: v.to_string(),
            family,
            width,
            depth,
            padding: Padding::Same,
            bn_eps: 1e-3,
            normalization: match family {
                Family::Lite => Normalization::TF_LITE,
                Family::B => Normalization::IMAGENET,
            },
        })
    }

    pub fn round_filters(&self, f: usize) -> usize {
        let scaled = f as f64 * self.width;
        let mut r = ((scaled + 4.0) as usize / 8 * 8).max(8);
        if (r as f64) < 0.9 * scaled {
            r += 8;
        }
        r
    }

    pub fn stem_channels(&self) -> usize {
        match self.family {
            Family::Lite => 32,
            Family::B => self.round_filters(32),
        }
    }

    pub fn head_channels(&self) -> usize {
        match self.family {
            Family::Lite => 1280,
            Family::B => self.round_filters(1280),
        }
    }

    pub fn blocks(&self) -> Vec<BlockSpec> {
        let mut out = Vec::new();
        for (si, &(e, k, s, cin, cout, r)) in BASE.iter().enumerate() {
            let fixed = self.family == Family::Lite && (si == 0 || si == BASE.len() - 1);
            let repeats = if fixed {
                r
            } else {
                (self.depth * r as f64).ceil() as usize
            };
            let cin = if si == 0 {
                self.stem_channels()
            } else {
                self.round_filters(cin)
            };
            let cout = self.round_filters(cout);
            for i in 0..repeats {
                let bin = if i == 0 { cin } else { cout };
                out.push(BlockSpec {
                    stage: si + 1,
                    expand: e,
                    kernel: k,
                    stride: if i == 0 { s } else { 1 },
                    cin: bin,
                    cout,
                    se: match self.family {
                        Family::Lite => None,
                        Family::B => Some(((bin as f64) * 0.25).max(1.0) as usize),
                    },
                });
            }
        }
        out
    }

    /// Output channels of a stage (1..=7).
    pub fn stage_channels(&self, stage: usize) -> Result<usize> {
        check_stage(stage)?;
        Ok(self.round_filters(BASE[stage - 1].4))
    }
}

pub fn check_stage(stage: usize) -> Result<()> {
    if (1..=7).contains(&stage) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "feature stage {stage} does not exist (EfficientNet has stages 1..7)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn channel_counts_match_published_models() {
        let l0 = EfficientNetConfig::from_variant("lite0").unwrap();
        assert_eq!(l0.stage_channels(6).unwrap(), 192);
        assert_eq!(l0.stage_channels(5).unwrap(), 112);
        assert_eq!(l0.blocks().len(), 16);
        let l2 = EfficientNetConfig::from_variant("lite2").unwrap();
        assert_eq!(l2.stage_channels(6).unwrap(), 208);
        assert_eq!(l2.stage_channels(5).unwrap(), 120);
        let b5 = EfficientNetConfig::from_variant("efficientnet-b5").unwrap();
        assert_eq!(b5.stage_channels(6).unwrap(), 304);
        assert_eq!(b5.blocks().len(), 39);
        assert!(EfficientNetConfig::from_variant("b9").is_err());
    }
}
