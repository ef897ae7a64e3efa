//! Data: image decoding, masks and dataset layouts.
pub mod dataset;
pub mod image_io;
pub mod labels;

pub use dataset::{Sample, list_images, spread, test_samples, training_images};
pub use labels::Labels;
pub use image_io::{load_image, load_mask, to_input};
