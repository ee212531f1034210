//! A two-layer perceptron (inputs -> hidden ReLU -> softmax) in plain Rust, with a
//! backward pass that hands over each layer's gradients as soon as they are computed.

use crate::data::{stream, Dataset, Rng, CLASSES, FEATURES};

/// Where each tensor lives in the flat parameter (and gradient) buffer, in forward order:
/// `w1` (hidden x 64, row-major), `b1` (hidden), `w2` (10 x hidden), `b2` (10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Hidden units.
    pub hidden: usize,
}

impl Layout {
    /// Elements of `w1`.
    fn w1_elems(self) -> usize {
        self.hidden * FEATURES
    }
    /// Elements of `w2`.
    fn w2_elems(self) -> usize {
        CLASSES * self.hidden
    }
    /// Total parameters.
    pub fn len(self) -> usize {
        self.w1_elems() + self.hidden + self.w2_elems() + CLASSES
    }

    /// The four tensors of `flat` as `(w1, b1, w2, b2)`.
    fn split(self, flat: &[f32]) -> (&[f32], &[f32], &[f32], &[f32]) {
        let (w1, rest) = flat.split_at(self.w1_elems());
        let (b1, rest) = rest.split_at(self.hidden);
        let (w2, b2) = rest.split_at(self.w2_elems());
        (w1, b1, w2, b2)
    }

    /// The four tensors of `flat` as disjoint mutable slices `(w1, b1, w2, b2)`.
    #[allow(clippy::type_complexity)]
    fn split_mut(self, flat: &mut [f32]) -> (&mut [f32], &mut [f32], &mut [f32], &mut [f32]) {
        let (w1, rest) = flat.split_at_mut(self.w1_elems());
        let (b1, rest) = rest.split_at_mut(self.hidden);
        let (w2, b2) = rest.split_at_mut(self.w2_elems());
        (w1, b1, w2, b2)
    }
}

/// Parameters, and momentum buffers of the same layout.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// Shape of the buffers.
    pub layout: Layout,
    /// Flat parameters (see [`Layout`]).
    pub params: Vec<f32>,
    /// SGD momentum, same layout.
    velocity: Vec<f32>,
}

/// Activations of one minibatch kept from the forward pass for the backward pass.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Hidden activations after ReLU, `batch x hidden`.
    hidden: Vec<f32>,
    /// Gradient of the mean loss with respect to the logits, `batch x 10`.
    dlogits: Vec<f32>,
    /// Gradient with respect to the hidden activations, `batch x hidden`.
    dhidden: Vec<f32>,
}

impl Mlp {
    /// Weights uniform in +-sqrt(6 / fan_in) (He et al. 2015, for ReLU), biases zero;
    /// the same bits for the same `seed` on every rank and platform.
    pub fn new(hidden: usize, seed: u64) -> Mlp {
        let layout = Layout { hidden };
        let mut params = vec![0.0; layout.len()];
        let mut rng = Rng::new(seed, stream::INIT);
        let (w1, _, w2, _) = layout.split_mut(&mut params);
        let a1 = (6.0 / FEATURES as f32).sqrt();
        w1.iter_mut().for_each(|w| *w = a1 * rng.symmetric_f32());
        let a2 = (6.0 / hidden as f32).sqrt();
        w2.iter_mut().for_each(|w| *w = a2 * rng.symmetric_f32());
        Mlp { layout, velocity: vec![0.0; params.len()], params }
    }

    /// Hidden activations and logits of one input.
    fn forward_one(&self, x: &[f32], hidden: &mut [f32], logits: &mut [f32; CLASSES]) {
        let (w1, b1, w2, b2) = self.layout.split(&self.params);
        for (j, h) in hidden.iter_mut().enumerate() {
            let row = &w1[j * FEATURES..(j + 1) * FEATURES];
            let z: f32 = b1[j] + row.iter().zip(x).map(|(w, x)| w * x).sum::<f32>();
            *h = z.max(0.0);
        }
        for (k, l) in logits.iter_mut().enumerate() {
            let row = &w2[k * self.layout.hidden..(k + 1) * self.layout.hidden];
            *l = b2[k] + row.iter().zip(hidden.iter()).map(|(w, h)| w * h).sum::<f32>();
        }
    }

    /// Forward pass over `indices` of `data`: returns the summed cross-entropy loss and
    /// keeps in `scratch` what the backward pass needs (gradients of the *mean* loss).
    pub fn forward(&self, data: &Dataset, indices: &[usize], scratch: &mut Scratch) -> f64 {
        let hidden = self.layout.hidden;
        scratch.hidden.resize(indices.len() * hidden, 0.0);
        scratch.dlogits.resize(indices.len() * CLASSES, 0.0);
        let scale = 1.0 / indices.len() as f32;
        let mut loss_sum = 0.0f64;
        let mut logits = [0.0f32; CLASSES];
        for (b, &i) in indices.iter().enumerate() {
            let h = &mut scratch.hidden[b * hidden..(b + 1) * hidden];
            self.forward_one(data.row(i), h, &mut logits);
            let probs = softmax(&logits);
            let label = usize::from(data.labels[i]);
            loss_sum -= f64::from(probs[label].max(f32::MIN_POSITIVE).ln());
            let d = &mut scratch.dlogits[b * CLASSES..(b + 1) * CLASSES];
            for (k, (d, p)) in d.iter_mut().zip(probs).enumerate() {
                *d = (p - if k == label { 1.0 } else { 0.0 }) * scale;
            }
        }
        loss_sum
    }

    /// Backward pass for the batch of the last [`Mlp::forward`]: writes the gradients into
    /// `grads` (same layout as the parameters) layer by layer, last layer first, and passes
    /// each tensor's gradient slice to `ready` the moment it is final (`b2`, `w2`, then
    /// `b1`, `w1`), so the caller can start reducing it while the next layer is computed.
    pub fn backward<'g>(
        &self,
        data: &Dataset,
        indices: &[usize],
        scratch: &mut Scratch,
        grads: &'g mut [f32],
        mut ready: impl FnMut(&'g mut [f32]),
    ) {
        let hidden = self.layout.hidden;
        let (_, _, w2, _) = self.layout.split(&self.params);
        let (gw1, gb1, gw2, gb2) = self.layout.split_mut(grads);
        // Layer 2: dW2 = dlogits^T h, db2 = sum of dlogits.
        gw2.fill(0.0);
        gb2.fill(0.0);
        for b in 0..indices.len() {
            let h = &scratch.hidden[b * hidden..(b + 1) * hidden];
            for (k, &d) in scratch.dlogits[b * CLASSES..(b + 1) * CLASSES].iter().enumerate() {
                gb2[k] += d;
                gw2[k * hidden..(k + 1) * hidden].iter_mut().zip(h).for_each(|(g, h)| *g += d * h);
            }
        }
        ready(gb2);
        ready(gw2);
        // Back through W2 and the ReLU: dh = (W2^T dlogits) * [h > 0].
        scratch.dhidden.resize(indices.len() * hidden, 0.0);
        for b in 0..indices.len() {
            let dh = &mut scratch.dhidden[b * hidden..(b + 1) * hidden];
            dh.fill(0.0);
            for (k, &d) in scratch.dlogits[b * CLASSES..(b + 1) * CLASSES].iter().enumerate() {
                dh.iter_mut().zip(&w2[k * hidden..(k + 1) * hidden]).for_each(|(g, w)| *g += d * w);
            }
            let h = &scratch.hidden[b * hidden..(b + 1) * hidden];
            dh.iter_mut().zip(h).filter(|(_, &h)| h <= 0.0).for_each(|(g, _)| *g = 0.0);
        }
        // Layer 1: dW1 = dh^T x, db1 = sum of dh.
        gw1.fill(0.0);
        gb1.fill(0.0);
        for (b, &i) in indices.iter().enumerate() {
            let x = data.row(i);
            for (j, &d) in scratch.dhidden[b * hidden..(b + 1) * hidden].iter().enumerate() {
                gb1[j] += d;
                if d != 0.0 {
                    gw1[j * FEATURES..(j + 1) * FEATURES].iter_mut().zip(x).for_each(|(g, x)| *g += d * x);
                }
            }
        }
        ready(gb1);
        ready(gw1);
    }

    /// The whole training state, to hand to a rank that joins: parameters and momentum.
    pub fn state_mut(&mut self) -> [&mut [f32]; 2] {
        [&mut self.params, &mut self.velocity]
    }

    /// One SGD step with momentum: `v = momentum * v + g; p -= lr * v`.
    pub fn step(&mut self, grads: &[f32], lr: f32, momentum: f32) {
        for ((p, v), g) in self.params.iter_mut().zip(&mut self.velocity).zip(grads) {
            *v = momentum * *v + g;
            *p -= lr * *v;
        }
    }

    /// Correctly classified samples of `data`.
    pub fn correct(&self, data: &Dataset) -> usize {
        let mut hidden = vec![0.0; self.layout.hidden];
        let mut logits = [0.0f32; CLASSES];
        (0..data.len())
            .filter(|&i| {
                self.forward_one(data.row(i), &mut hidden, &mut logits);
                argmax(&logits) == usize::from(data.labels[i])
            })
            .count()
    }

    /// FNV-1a over the little-endian bytes of the parameters: equal on two ranks exactly
    /// when (barring a 2^-64 collision) their weights are bit-identical.
    pub fn weights_hash(&self) -> u64 {
        self.params
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    }
}

/// Softmax of `logits`, shifted by the maximum so `exp` cannot overflow.
fn softmax(logits: &[f32; CLASSES]) -> [f32; CLASSES] {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut out = logits.map(|l| (l - max).exp());
    let sum: f32 = out.iter().sum();
    out.iter_mut().for_each(|p| *p /= sum);
    out
}

/// Index of the largest logit (the first on a tie).
fn argmax(logits: &[f32; CLASSES]) -> usize {
    (0..CLASSES).fold(0, |best, k| if logits[k] > logits[best] { k } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backward pass against central differences of the forward pass, per tensor.
    #[test]
    fn gradients_match_finite_differences() {
        let all = Dataset::parse_csv(crate::data::DIGITS_CSV).unwrap();
        let mut mlp = Mlp::new(8, 3);
        let indices = [0, 5, 17, 42];
        let mut scratch = Scratch::default();
        mlp.forward(&all, &indices, &mut scratch);
        let mut grads = vec![0.0; mlp.layout.len()];
        let mut order = Vec::new();
        mlp.backward(&all, &indices, &mut scratch, &mut grads, |g| order.push(g.len()));
        assert_eq!(order, [CLASSES, CLASSES * 8, 8, 8 * FEATURES], "b2, w2, b1, w1");
        let n = indices.len() as f64;
        for p in (0..mlp.layout.len()).step_by(7) {
            let keep = mlp.params[p];
            // Small enough that no hidden unit of these samples crosses its ReLU kink (1e-2
            // does), large enough that f32 rounding of the loss stays far below the tolerance.
            let eps = 1e-3;
            mlp.params[p] = keep + eps;
            let up = mlp.forward(&all, &indices, &mut scratch) / n;
            mlp.params[p] = keep - eps;
            let down = mlp.forward(&all, &indices, &mut scratch) / n;
            mlp.params[p] = keep;
            let numeric = (up - down) / (2.0 * f64::from(eps));
            let analytic = f64::from(grads[p]);
            assert!((numeric - analytic).abs() < 5e-4 + 0.02 * analytic.abs(), "param {p}: {numeric} vs {analytic}");
        }
    }
}
