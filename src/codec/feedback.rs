//! Error feedback for the lossy codecs: what rounding took from one call is added to the next.

use super::{lossy, Codec};

/// Keeps, per buffer, the part of each value that rounding to bf16/f16 dropped, and adds
/// it back on the next call, so rounding errors do not accumulate over training steps.
///
/// Use one `ErrorFeedback` per gradient buffer (per bucket), created with the codec the
/// collective sends with. Before each `all_reduce` of that buffer call
/// [`ErrorFeedback::apply`]: it adds the stored residual to every value, then stores the new
/// residual `value - round(value)` for the next call. Over any run of calls the sum of
/// what rounding lets through differs from the sum of the true inputs by the last residual
/// only (at most half a bf16/f16 unit in the last place of the last value), instead of by
/// the sum of every call's rounding error.
///
/// The residual models the rounding of this rank's own contribution; partial sums in the
/// ring are rounded again on the way, which this does not undo. With a lossless codec
/// `apply` does nothing. A residual that is not finite (the value overflowed f16, or was
/// infinite or NaN) is stored as zero, so one bad step cannot poison every later one.
///
/// # Examples
/// ```
/// use ringcc::codec::{Codec, ErrorFeedback};
/// let mut ef = ErrorFeedback::new(Codec::Bf16);
/// let mut grads = vec![1.0f32 + 1.0 / 512.0; 4]; // not representable in bf16
/// ef.apply(&mut grads);                           // first call: nothing stored yet
/// assert_eq!(ef.residual()[0], 1.0 / 512.0);       // bf16 keeps 1.0, drops 2^-9
/// // comm.all_reduce(&mut grads, ReduceOp::Avg)?;  // sends bf16, reduces in f32
/// ```
#[derive(Debug, Clone)]
pub struct ErrorFeedback {
    format: Option<lossy::Format>,
    residual: Vec<f32>,
}

impl ErrorFeedback {
    /// Error feedback for buffers sent with `codec`; no residual yet.
    pub fn new(codec: Codec) -> ErrorFeedback {
        ErrorFeedback { format: lossy::Format::of(codec), residual: Vec::new() }
    }

    /// Adds the stored residual to `values`, then stores `values[i] - round(values[i])` as
    /// the next residual. `values` keep full f32 precision (the collective rounds them).
    ///
    /// A call with another length than the previous one is a different buffer: the
    /// stored residual is dropped and a zero residual of the new length is used (that
    /// allocates once; calls with the same length never allocate).
    pub fn apply(&mut self, values: &mut [f32]) {
        let Some(format) = self.format else { return };
        if self.residual.len() != values.len() {
            self.residual.clear();
            self.residual.resize(values.len(), 0.0);
        }
        for (v, r) in values.iter_mut().zip(self.residual.iter_mut()) {
            *v += *r;
            *r = *v;
        }
        // residual currently holds the compensated values: round them, then subtract.
        lossy::round_f32(format, &mut self.residual);
        for (r, v) in self.residual.iter_mut().zip(values.iter()) {
            let e = *v - *r;
            *r = if e.is_finite() { e } else { 0.0 };
        }
    }

    /// The residual the next [`ErrorFeedback::apply`] adds (empty before the first call and
    /// for lossless codecs).
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// Forgets the residual (after a failed step, or when the buffer's meaning changes).
    pub fn reset(&mut self) {
        self.residual.iter_mut().for_each(|r| *r = 0.0);
    }
}
