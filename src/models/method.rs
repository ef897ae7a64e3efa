//! What every method's configuration provides, and the macro that turns the list of
//! methods (in `models/mod.rs`) into [`Method`](crate::models::Method) and
//! [`DetectorConfig`](crate::models::DetectorConfig).
//!
//! Adding a method: a file under `models/` with a config struct implementing
//! [`MethodInfo`] and [`MethodConfig`] and a model implementing
//! [`AnomalyModel`](crate::models::AnomalyModel), and one line in the `methods!` list.
//! Training, loading, `bench`, `benchmark`, the CLI's options and the GUI's method
//! list all go through these traits.
use crate::backbone::EfficientNet;
use crate::error::Result;
use crate::models::features::FeatureTap;
use crate::models::scoring::{Calibration, ScoreKind, TrainReport};
use crate::models::{AnomalyModel, StoredTensors};
use crate::progress::{CancelToken, ProgressSink};
use std::path::PathBuf;

/// The trained networks of one method.
pub type Model = Box<dyn AnomalyModel>;

/// A method's names and description (constants: known without a configuration).
pub trait MethodInfo {
    /// The name on the command line, in model files and in reports.
    const NAME: &'static str;
    /// Other spellings the command line accepts.
    const ALIASES: &'static [&'static str];
    /// One line for the app's method list.
    const SUMMARY: &'static str;
}

/// Options of `flowspect train` (and the app's training settings) that only some
/// methods have. A method takes the ones it has ([`MethodConfig::take_options`]); what
/// is left is refused by name ([`crate::models::DetectorConfig::apply_options`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainOptions {
    /// Maximum epochs of each training phase.
    pub epochs: Option<usize>,
    /// Backbone stages of the map (memflow: of the memory bank).
    pub stages: Option<Vec<usize>>,
    /// Hidden width of the BMR mapping networks.
    pub hidden: Option<usize>,
    /// Hidden width of the flow's couplings.
    pub flow_hidden: Option<usize>,
    pub flow_lr: Option<f64>,
    pub bmr_lr: Option<f64>,
    /// Stages pooled over the whole image for the global score (empty: none).
    pub global_stages: Option<Vec<usize>>,
    pub region_window: Option<usize>,
    pub region_stride: Option<usize>,
    pub region_weight: Option<f32>,
    /// Fraction of the training patches kept in a memory bank.
    pub coreset_ratio: Option<f64>,
}

impl TrainOptions {
    /// The command-line flags of the options that are set, in the order above.
    pub fn flags(&self) -> Vec<&'static str> {
        let set = [
            ("--epochs", self.epochs.is_some()),
            ("--stage", self.stages.is_some()),
            ("--hidden", self.hidden.is_some()),
            ("--flow-hidden", self.flow_hidden.is_some()),
            ("--flow-lr", self.flow_lr.is_some()),
            ("--bmr-lr", self.bmr_lr.is_some()),
            ("--global-stages", self.global_stages.is_some()),
            ("--region-window", self.region_window.is_some()),
            ("--region-stride", self.region_stride.is_some()),
            ("--region-weight", self.region_weight.is_some()),
            ("--coreset-ratio", self.coreset_ratio.is_some()),
        ];
        set.into_iter().filter(|(_, on)| *on).map(|(f, _)| f).collect()
    }
}

/// A method's configuration: what the detector, the CLI and the app ask of it.
pub trait MethodConfig: Send + Sync {
    fn tap(&self) -> &FeatureTap;
    fn tap_mut(&mut self) -> &mut FeatureTap;
    /// The image score.
    fn score(&self) -> ScoreKind;
    /// Sets the image score; refuses one the method has no parts for.
    fn set_score(&mut self, k: ScoreKind) -> Result<()>;
    fn set_seed(&mut self, s: u64);
    /// The method's own [`TrainOptions`], each set to its current value (`epochs` is
    /// `None` for a method that trains no network).
    fn options(&self) -> TrainOptions;
    /// Applies and clears (`Option::take`) the options the method has; leaves the others.
    fn take_options(&mut self, o: &mut TrainOptions);
    /// Trains the method on good images.
    fn train(&self, backbone: EfficientNet, files: &[PathBuf], progress: &dyn ProgressSink, cancel: &CancelToken) -> Result<(Model, TrainReport)>;
    /// Reads the method's tensors from a model file (the backbone already loaded).
    fn load(&self, backbone: EfficientNet, calibration: &Calibration, st: &StoredTensors) -> Result<Model>;
    /// A model with untrained parts (random or zero weights, a bank of `bank_rows` rows
    /// where the method has one) that costs the same arithmetic: `flowspect bench`.
    fn untrained(&self, backbone: EfficientNet, bank_rows: usize) -> Result<Model>;
}

/// Boxes a trained model with its report.
pub fn boxed<M: AnomalyModel + 'static>((m, r): (M, TrainReport)) -> (Model, TrainReport) {
    (Box::new(m), r)
}

/// Declares [`Method`](crate::models::Method) and
/// [`DetectorConfig`](crate::models::DetectorConfig) from `Variant: ConfigType` lines.
macro_rules! methods {
    ($($variant:ident: $cfg:ty),+ $(,)?) => {
        /// A detection method (listed in `models/mod.rs`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Method {
            $($variant),+
        }

        impl Method {
            /// Every method, in the order the app and `benchmark` list them.
            pub const ALL: &'static [Method] = &[$(Method::$variant),+];
            /// The name on the command line, in model files and in reports.
            pub fn name(self) -> &'static str {
                match self {
                    $(Method::$variant => <$cfg as $crate::models::method::MethodInfo>::NAME),+
                }
            }
            /// One line for the app's method list.
            pub fn summary(self) -> &'static str {
                match self {
                    $(Method::$variant => <$cfg as $crate::models::method::MethodInfo>::SUMMARY),+
                }
            }
            fn aliases(self) -> &'static [&'static str] {
                match self {
                    $(Method::$variant => <$cfg as $crate::models::method::MethodInfo>::ALIASES),+
                }
            }
        }

        /// A method's configuration (which also says which method it is). Untagged in
        /// model files: each config is told apart by its fields.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(untagged)]
        pub enum DetectorConfig {
            $($variant($cfg)),+
        }

        impl DetectorConfig {
            /// The default configuration of `method`.
            pub fn default_for(method: Method) -> Self {
                match method {
                    $(Method::$variant => Self::$variant(<$cfg>::default())),+
                }
            }
            pub fn method(&self) -> Method {
                match self {
                    $(Self::$variant(_) => Method::$variant),+
                }
            }
            /// The configuration as every method's config trait.
            pub fn get(&self) -> &dyn $crate::models::method::MethodConfig {
                match self {
                    $(Self::$variant(c) => c),+
                }
            }
            pub fn get_mut(&mut self) -> &mut dyn $crate::models::method::MethodConfig {
                match self {
                    $(Self::$variant(c) => c),+
                }
            }
        }

        $(
            impl From<$cfg> for DetectorConfig {
                fn from(c: $cfg) -> Self {
                    Self::$variant(c)
                }
            }
        )+
    };
}
pub(crate) use methods;

use crate::error::Error;
use crate::models::{DetectorConfig, Method};

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.to_ascii_lowercase();
        Method::ALL.iter().copied().find(|m| m.name() == s || m.aliases().contains(&s.as_str())).ok_or_else(|| {
            let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
            Error::Config(format!("unknown method '{s}' (available: {})", names.join(", ")))
        })
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl DetectorConfig {
    pub fn tap(&self) -> &FeatureTap {
        self.get().tap()
    }
    pub fn tap_mut(&mut self) -> &mut FeatureTap {
        self.get_mut().tap_mut()
    }
    pub fn score(&self) -> ScoreKind {
        self.get().score()
    }
    /// Sets the image score; refuses one the method has no parts for.
    pub fn set_score(&mut self, k: ScoreKind) -> Result<()> {
        self.get_mut().set_score(k)
    }
    pub fn set_seed(&mut self, s: u64) {
        self.get_mut().set_seed(s)
    }
    /// The method's own options at their current values ([`MethodConfig::options`]).
    pub fn options(&self) -> TrainOptions {
        self.get().options()
    }
    /// Whether the method trains a network (has epochs to set).
    pub fn trains_network(&self) -> bool {
        self.options().epochs.is_some()
    }
    /// Applies the options the method has and returns the others.
    pub fn take_options(&mut self, mut o: TrainOptions) -> TrainOptions {
        self.get_mut().take_options(&mut o);
        o
    }
    /// Applies `o`, refusing any option the method does not have, named with the
    /// methods that have it.
    pub fn apply_options(&mut self, o: TrainOptions) -> Result<()> {
        let left = self.take_options(o).flags();
        if left.is_empty() {
            return Ok(());
        }
        let owned: Vec<String> = left
            .iter()
            .map(|f| {
                let who: Vec<&str> =
                    Method::ALL.iter().filter(|m| DetectorConfig::default_for(**m).options().flags().contains(f)).map(|m| m.name()).collect();
                if who.is_empty() { f.to_string() } else { format!("{f} (an option of {})", who.join(", ")) }
            })
            .collect();
        Err(Error::Config(format!("not {} options: {}", self.method(), owned.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_parses_from_its_names_and_round_trips_in_json() {
        for &m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
            for a in m.aliases() {
                assert_eq!(a.to_uppercase().parse::<Method>().unwrap(), m);
            }
            let j = serde_json::to_string(&m).unwrap();
            assert_eq!(j, format!("\"{}\"", m.name()));
            assert_eq!(serde_json::from_str::<Method>(&j).unwrap(), m);
        }
        let e = "nope".parse::<Method>().unwrap_err().to_string();
        assert!(e.contains("nf-bmr, memflow, patchcore"), "{e}");
    }

    /// The configs are untagged in model files: each method's config must come back as
    /// that method, not as another whose fields it happens to fit.
    #[test]
    fn every_config_reads_back_as_its_own_method() {
        for &m in Method::ALL {
            let cfg = DetectorConfig::default_for(m);
            let back: DetectorConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
            assert_eq!(back.method(), m);
            assert_eq!(back, cfg);
        }
    }

    #[test]
    fn options_apply_to_the_methods_that_have_them_and_are_refused_by_name_elsewhere() {
        for &m in Method::ALL {
            // A method takes back its own options unchanged.
            let mut cfg = DetectorConfig::default_for(m);
            let own = cfg.options();
            assert!(cfg.take_options(own.clone()).flags().is_empty(), "{m}");
            assert_eq!(cfg, DetectorConfig::default_for(m));
            assert_eq!(cfg.trains_network(), m != Method::PatchCore);
        }
        let mut nf = DetectorConfig::default_for(Method::NfBmr);
        nf.apply_options(TrainOptions { hidden: Some(64), epochs: Some(3), global_stages: Some(vec![]), ..Default::default() }).unwrap();
        let o = nf.options();
        assert_eq!((o.hidden, o.epochs, o.global_stages), (Some(64), Some(3), Some(vec![])));
        // No pooled stages: the default score falls back to the map maximum.
        assert_eq!(nf.score(), ScoreKind::MapMax);
        let mut pc = DetectorConfig::default_for(Method::PatchCore);
        let e = pc.apply_options(TrainOptions { epochs: Some(2), coreset_ratio: Some(0.5), region_weight: Some(1.0), ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("not patchcore options: --epochs (an option of nf-bmr, memflow); --region-weight (an option of nf-bmr)"), "{e}");
        let mut mf = DetectorConfig::default_for(Method::MemFlow);
        mf.apply_options(TrainOptions { stages: Some(vec![3, 4]), ..Default::default() }).unwrap();
        assert_eq!(mf.tap().stages, vec![3, 4, 5, 6]);
    }
}
