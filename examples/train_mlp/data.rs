//! The digits data set, its fixed train/test split, each rank's shard, and the seeded
//! random numbers that make all of it the same on every rank.

use std::error::Error;

/// Pixels per image (8 x 8).
pub const FEATURES: usize = 64;
/// Digit classes.
pub const CLASSES: usize = 10;
/// Largest pixel value in the data; inputs are scaled by it into 0..=1.
const PIXEL_MAX: f32 = 16.0;
/// Samples in the bundled file; more is a malformed file, not a bigger data set.
const SAMPLES_MAX: usize = 10_000;

/// The bundled CSV (see `examples/data/README.md`): a header, then 64 pixels and a label.
pub const DIGITS_CSV: &str = include_str!("../data/digits.csv");

/// Samples as rows of [`FEATURES`] inputs scaled into 0..=1, with their labels.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// `len() * FEATURES` inputs, row-major.
    pub inputs: Vec<f32>,
    /// One class per sample, `0..CLASSES`.
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Inputs of sample `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.inputs[i * FEATURES..(i + 1) * FEATURES]
    }

    /// The samples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut out = Dataset { inputs: Vec::with_capacity(indices.len() * FEATURES), labels: Vec::new() };
        for &i in indices {
            out.inputs.extend_from_slice(self.row(i));
            out.labels.push(self.labels[i]);
        }
        out
    }

    /// Parses the CSV: one header line, then rows of 64 integer pixels in 0..=16 and a
    /// label in 0..=9.
    ///
    /// # Errors
    /// A message naming the line of the first malformed row.
    pub fn parse_csv(text: &str) -> Result<Dataset, Box<dyn Error>> {
        let mut data = Dataset::default();
        for (number, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            if data.len() == SAMPLES_MAX {
                return Err(format!("more than {SAMPLES_MAX} samples").into());
            }
            let fields: Vec<&str> = line.split(',').collect();
            if fields.len() != FEATURES + 1 {
                return Err(format!("line {}: {} fields, expected {}", number + 1, fields.len(), FEATURES + 1).into());
            }
            for f in &fields[..FEATURES] {
                let v: u8 = f.trim().parse().map_err(|e| format!("line {}: pixel {f:?}: {e}", number + 1))?;
                if f32::from(v) > PIXEL_MAX {
                    return Err(format!("line {}: pixel {v} above {PIXEL_MAX}", number + 1).into());
                }
                data.inputs.push(f32::from(v) / PIXEL_MAX);
            }
            let label: u8 = fields[FEATURES].trim().parse().map_err(|e| format!("line {}: label: {e}", number + 1))?;
            if usize::from(label) >= CLASSES {
                return Err(format!("line {}: label {label} is not a digit", number + 1).into());
            }
            data.labels.push(label);
        }
        Ok(data)
    }
}

/// SplitMix64 (Steele, Lea and Flood 2014): tiny, fast, and the same sequence on every
/// platform, which is all a shuffle and an initialisation shared by all ranks need.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` mixed with a `stream` number, so that uses with one seed
    /// (split, initialisation, each epoch's order) do not share a sequence.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by Lemire's multiply-shift; its bias is below 2^-32 for
    /// the sizes used here.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `[-1, 1)`, from the top 24 bits (exact in f32).
    pub fn symmetric_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Fisher-Yates shuffle of `items`.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Stream numbers for [`Rng::new`].
pub mod stream {
    /// The train/test split.
    pub const SPLIT: u64 = 1;
    /// Initial weights.
    pub const INIT: u64 = 2;
    /// Order of samples within a shard; the epoch and rank are added to it.
    pub const EPOCH_ORDER: u64 = 1 << 32;
}

/// The fixed split, the same on every rank: shuffle all samples with `seed`, the first
/// fifth is the test set, the rest the training set.
pub fn split(all: &Dataset, seed: u64) -> (Dataset, Dataset) {
    let mut order: Vec<usize> = (0..all.len()).collect();
    Rng::new(seed, stream::SPLIT).shuffle(&mut order);
    let test_len = all.len() / 5;
    (all.select(&order[test_len..]), all.select(&order[..test_len]))
}

/// Rank `rank`'s shard of `train`: every `world`-th sample starting at `rank`. The
/// remainder of `train.len() / world` is dropped so that all shards have the same length
/// and every rank runs the same number of steps (each step is a collective).
pub fn shard(train: &Dataset, rank: usize, world: usize) -> Dataset {
    let used = train.len() - train.len() % world;
    let indices: Vec<usize> = (rank..used).step_by(world).collect();
    train.select(&indices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_csv_is_the_full_digits_set() {
        let d = Dataset::parse_csv(DIGITS_CSV).unwrap();
        assert_eq!(d.len(), 1797);
        assert_eq!(d.inputs.len(), 1797 * FEATURES);
        for c in 0..CLASSES as u8 {
            assert!(d.labels.iter().filter(|&&l| l == c).count() > 150, "class {c}");
        }
    }

    #[test]
    fn shards_are_disjoint_equal_and_cover_all_but_the_remainder() {
        let d = Dataset::parse_csv(DIGITS_CSV).unwrap();
        let (train, test) = split(&d, 7);
        assert_eq!(train.len() + test.len(), d.len());
        for world in 1..=5 {
            let shards: Vec<Dataset> = (0..world).map(|r| shard(&train, r, world)).collect();
            assert!(shards.iter().all(|s| s.len() == train.len() / world));
            let total: usize = shards.iter().map(Dataset::len).sum();
            assert_eq!(total, train.len() - train.len() % world);
        }
    }
}
