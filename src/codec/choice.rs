//! What a communicator is configured to send: one fixed codec, or `auto`.

use super::Codec;
use crate::core::DataType;
use crate::wire::CollKind;

/// The codec setting of a communicator (`Config::codec`, `RINGCC_CODEC`, `ringbench --codec`).
///
/// Every rank of a job has the same setting (it is part of the config fingerprint), but
/// the codec of each frame is chosen by its sender alone and named in its header: a
/// receiver decodes whatever id a frame carries, provided the setting allows it
/// ([`CodecChoice::accepts`]). So `auto`'s per-rank, per-segment decisions need no
/// agreement between ranks.
///
/// Lossy codecs round only what is reduced: `all_gather` and `broadcast` (which move
/// parameters, not gradients) and every element type but f32 are sent exactly (see
/// [`CodecChoice::for_call`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecChoice {
    /// Every data frame is encoded with this codec (or its [`Codec::fallback`] for a
    /// segment that does not compress).
    Fixed(Codec),
    /// Per segment, `raw` or `shuffle+zstd`, whichever the measured link and codec speeds
    /// say gives more goodput; with `lossy`, also `bf16` and `bf16+zstd` for f32 reductions.
    Auto {
        /// Whether auto may round f32 values to bfloat16 on the wire.
        lossy: bool,
    },
}

impl Default for CodecChoice {
    /// `raw`.
    fn default() -> CodecChoice {
        CodecChoice::Fixed(Codec::Raw)
    }
}

impl CodecChoice {
    /// Every setting, in the order `--help` lists them.
    pub const ALL: [CodecChoice; 8] = [
        CodecChoice::Fixed(Codec::Raw),
        CodecChoice::Fixed(Codec::Zstd),
        CodecChoice::Fixed(Codec::ShuffleZstd),
        CodecChoice::Fixed(Codec::Bf16),
        CodecChoice::Fixed(Codec::F16),
        CodecChoice::Fixed(Codec::Bf16Zstd),
        CodecChoice::Auto { lossy: false },
        CodecChoice::Auto { lossy: true },
    ];

    /// The name `parse` accepts: a codec's name, `auto` or `auto+bf16`.
    pub fn name(self) -> &'static str {
        match self {
            CodecChoice::Fixed(c) => c.name(),
            CodecChoice::Auto { lossy: false } => "auto",
            CodecChoice::Auto { lossy: true } => "auto+bf16",
        }
    }

    /// Parses a setting by name, ignoring ASCII case.
    ///
    /// # Errors
    /// A message listing the accepted names.
    pub fn parse(text: &str) -> Result<CodecChoice, String> {
        let t = text.trim();
        CodecChoice::ALL.into_iter().find(|c| t.eq_ignore_ascii_case(c.name())).ok_or_else(|| {
            let names: Vec<&str> = CodecChoice::ALL.iter().map(|c| c.name()).collect();
            format!("{text:?} is not a codec (accepted: {})", names.join(", "))
        })
    }

    /// True if the setting may round values (a lossy codec, or `auto+bf16`).
    pub fn is_lossy(self) -> bool {
        match self {
            CodecChoice::Fixed(c) => c.is_lossy(),
            CodecChoice::Auto { lossy } => lossy,
        }
    }

    /// The rounding a lossy setting applies to the values it sends (`bf16` for `auto+bf16`),
    /// `None` for exact settings.
    pub fn rounding(self) -> Option<Codec> {
        match self {
            CodecChoice::Fixed(c) if c.is_lossy() => Some(c),
            CodecChoice::Auto { lossy: true } => Some(Codec::Bf16),
            _ => None,
        }
    }

    /// The setting one collective runs with: a lossy setting becomes exact for the calls
    /// that must not round (`all_gather`, `broadcast`, and element types other than f32):
    /// a fixed lossy codec becomes `raw`, `auto+bf16` becomes `auto`. Barriers carry no
    /// data and always run `raw`.
    pub fn for_call(self, coll: CollKind, dtype: DataType) -> CodecChoice {
        let reduces = matches!(coll, CollKind::AllReduce | CollKind::ReduceScatter);
        let may_round = reduces && dtype == DataType::F32;
        match self {
            _ if coll == CollKind::Barrier => CodecChoice::Fixed(Codec::Raw),
            CodecChoice::Fixed(c) if c.is_lossy() && !may_round => CodecChoice::Fixed(Codec::Raw),
            CodecChoice::Auto { lossy: true } if !may_round => CodecChoice::Auto { lossy: false },
            other => other,
        }
    }

    /// Whether a frame encoded with `codec` is acceptable under this setting (as
    /// [`CodecChoice::for_call`] returned it for the call): `raw` always; a fixed codec and
    /// its fallback; for `auto`, the lossless codecs, plus `bf16` and `bf16+zstd` when lossy.
    pub fn accepts(self, codec: Codec) -> bool {
        match self {
            _ if codec == Codec::Raw => true,
            CodecChoice::Fixed(c) => codec == c || codec == c.fallback(),
            CodecChoice::Auto { lossy } => {
                matches!(codec, Codec::Zstd | Codec::ShuffleZstd)
                    || (lossy && matches!(codec, Codec::Bf16 | Codec::Bf16Zstd))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_accepted_ones() {
        for c in CodecChoice::ALL {
            assert_eq!(CodecChoice::parse(c.name()), Ok(c));
            assert_eq!(CodecChoice::parse(&c.name().to_uppercase()), Ok(c));
        }
        let e = CodecChoice::parse("lz4").unwrap_err();
        assert!(e.contains("auto+bf16") && e.contains("shuffle+zstd"), "{e}");
    }

    #[test]
    fn lossy_settings_are_exact_where_nothing_is_reduced() {
        let bf16 = CodecChoice::Fixed(Codec::Bf16);
        assert_eq!(bf16.for_call(CollKind::AllReduce, DataType::F32), bf16);
        assert_eq!(bf16.for_call(CollKind::ReduceScatter, DataType::F32), bf16);
        assert_eq!(bf16.for_call(CollKind::AllGather, DataType::F32), CodecChoice::Fixed(Codec::Raw));
        assert_eq!(bf16.for_call(CollKind::Broadcast, DataType::F32), CodecChoice::Fixed(Codec::Raw));
        assert_eq!(bf16.for_call(CollKind::AllReduce, DataType::F64), CodecChoice::Fixed(Codec::Raw));
        let auto = CodecChoice::Auto { lossy: true };
        assert_eq!(auto.for_call(CollKind::AllGather, DataType::F32), CodecChoice::Auto { lossy: false });
        let zstd = CodecChoice::Fixed(Codec::Zstd);
        assert_eq!(zstd.for_call(CollKind::Broadcast, DataType::U8), zstd);
        assert_eq!(zstd.for_call(CollKind::Barrier, DataType::U8), CodecChoice::Fixed(Codec::Raw));
    }

    #[test]
    fn receivers_accept_only_what_the_setting_can_send() {
        let fixed = CodecChoice::Fixed(Codec::Bf16Zstd);
        let accepted: Vec<Codec> = super::super::ALL_CODECS.into_iter().filter(|c| fixed.accepts(*c)).collect();
        assert_eq!(accepted, vec![Codec::Raw, Codec::Bf16, Codec::Bf16Zstd]);
        let auto = CodecChoice::Auto { lossy: false };
        assert!(auto.accepts(Codec::ShuffleZstd) && !auto.accepts(Codec::Bf16) && !auto.accepts(Codec::F16));
        assert!(CodecChoice::Auto { lossy: true }.accepts(Codec::Bf16Zstd));
        assert!(!CodecChoice::default().accepts(Codec::Zstd));
    }
}
