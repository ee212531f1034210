//! The printed table, in nccl-tests' layout with p50/p99 columns added.
//!
//! Other tools (the peer comparison of `scripts/bench-peers`) parse this output: keep the
//! column order and the `#` comment lines stable.

/// One measured size.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Bytes the collective covers (see [`super::Layout`]).
    pub size_bytes: u64,
    /// Elements in `size_bytes`.
    pub count_elems: u64,
    /// Element type, nccl name (`float`, `bfloat16`, ...).
    pub type_name: &'static str,
    /// Reduction name, or `none` for collectives without one.
    pub redop: &'static str,
    /// Root rank, or -1.
    pub root: i64,
    /// Mean time of an iteration in microseconds (each iteration's time is the max over ranks).
    pub time_us: f64,
    /// `size / time` in GB/s (1e9 bytes per second).
    pub algbw_gbs: f64,
    /// `algbw` times the collective's bus factor, in GB/s.
    pub busbw_gbs: f64,
    /// Elements that differed from the exact result, summed over ranks; `None` without `-c 1`.
    pub wrong: Option<u64>,
    /// Median iteration time in microseconds.
    pub p50_us: f64,
    /// 99th-percentile iteration time in microseconds.
    pub p99_us: f64,
    /// Compression ratio of the timed iterations on this rank: bytes it would have sent raw
    /// over bytes it sent, headers included (1.00 without compression). `busbw` counts raw
    /// bytes, so with a codec it is the goodput.
    pub ratio: f64,
}

/// The two column-header lines.
pub const HEADER: &str = "\
#       size         count      type   redop    root     time   algbw   busbw  #wrong      p50      p99  ratio
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)              (us)     (us)";

/// The first line: what was run and how.
pub fn title(
    coll: &str,
    ranks: usize,
    type_name: &str,
    redop: &str,
    codec: &str,
    algo: &str,
    segment_bytes: usize,
) -> String {
    format!(
        "# ringcc ringbench: {coll}, {ranks} ranks, dtype {type_name}, op {redop}, codec {codec}, algo {algo}, segment {segment_bytes} B"
    )
}

/// A time in microseconds in 7 columns, with fewer decimals as it grows (as nccl-tests).
fn time_str(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{us:7.0}")
    } else if us >= 100.0 {
        format!("{us:7.1}")
    } else {
        format!("{us:7.2}")
    }
}

/// One table line.
pub fn format_row(r: &Row) -> String {
    let wrong = r.wrong.map_or_else(|| "N/A".to_string(), |w| w.to_string());
    format!(
        "{:>12}  {:>12}  {:>8}  {:>6}  {:>6}  {}  {:>6.2}  {:>6.2}  {:>6}  {}  {}  {:>5.2}",
        r.size_bytes,
        r.count_elems,
        r.type_name,
        r.redop,
        r.root,
        time_str(r.time_us),
        r.algbw_gbs,
        r.busbw_gbs,
        wrong,
        time_str(r.p50_us),
        time_str(r.p99_us),
        r.ratio,
    )
}

/// The closing lines: the total of wrong elements (`OK` or `FAILED`) and the mean busbw.
pub fn footer(wrong_total: u64, avg_busbw_gbs: f64) -> String {
    let verdict = if wrong_total == 0 { "OK" } else { "FAILED" };
    format!("# Out of bounds values : {wrong_total} {verdict}\n# Avg bus bandwidth    : {avg_busbw_gbs:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "\
# ringcc ringbench: all_reduce, 4 ranks, dtype float, op sum, codec raw, algo auto, segment 524288 B
#       size         count      type   redop    root     time   algbw   busbw  #wrong      p50      p99  ratio
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)              (us)     (us)
        4096          1024     float     sum      -1    70.12    0.06    0.09       0    69.80    75.10   1.00
# Out of bounds values : 0 OK
# Avg bus bandwidth    : 1.234";

    fn row() -> Row {
        Row {
            size_bytes: 4096,
            count_elems: 1024,
            type_name: "float",
            redop: "sum",
            root: -1,
            time_us: 70.12,
            algbw_gbs: 0.0584,
            busbw_gbs: 0.0876,
            wrong: Some(0),
            p50_us: 69.8,
            p99_us: 75.1,
            ratio: 1.0,
        }
    }

    #[test]
    fn output_matches_the_documented_format_byte_for_byte() {
        let out = [
            title("all_reduce", 4, "float", "sum", "raw", "auto", 524_288),
            HEADER.to_string(),
            format_row(&row()),
            footer(0, 1.234),
        ]
        .join("\n");
        assert_eq!(out, EXAMPLE);
    }

    #[test]
    fn columns_stay_aligned_with_the_header() {
        // The header's leading `#` is a field of its own; the rest line up with the row.
        let header_ends: Vec<usize> = ends_of_fields(HEADER.lines().next().unwrap()).into_iter().skip(1).collect();
        let long =
            Row { size_bytes: 268_435_456, count_elems: 67_108_864, time_us: 123_456.7, p99_us: 2345.6, ..row() };
        for r in [row(), long, Row { wrong: None, ..row() }] {
            assert_eq!(ends_of_fields(&format_row(&r)), header_ends, "{}", format_row(&r));
        }
    }

    fn ends_of_fields(line: &str) -> Vec<usize> {
        let b = line.as_bytes();
        (0..b.len()).filter(|&i| b[i] != b' ' && (i + 1 == b.len() || b[i + 1] == b' ')).collect()
    }

    #[test]
    fn failures_are_flagged() {
        assert_eq!(footer(7, 0.5).lines().next(), Some("# Out of bounds values : 7 FAILED"));
        assert!(format_row(&Row { wrong: None, ..row() }).contains("  N/A  "));
    }
}
