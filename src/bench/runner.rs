//! Runs the benchmark loop on a connected communicator.
//!
//! Buffers are allocated once, at the largest size, and every page is written before the
//! first measurement, so no size measures allocation or first-touch page faults (except
//! reduce_scatter's own working copy, which `Communicator::reduce_scatter` makes per call:
//! that is part of what users pay and is measured). Every rank runs the same sequence of
//! collectives, so all ranks must be given the same settings.

use std::sync::Arc;
use std::time::Instant;

use super::data::{hash_bytes, DataFile, FileSource};
use super::pattern::{Pattern, PatternElement};
use super::{bandwidth_gbs, bus_factor, summarize, BenchColl, Layout, Row, Summary};
use crate::codec::Codec;
use crate::core::schedule::chunk_range;
use crate::{bf16, f16, Communicator, DataType, Error, Rank, ReduceOp, Report};

/// What to run; every rank must pass equal settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The collective.
    pub coll: BenchColl,
    /// Element type.
    pub dtype: DataType,
    /// Reduction (ignored by all_gather and broadcast).
    pub op: ReduceOp,
    /// Sizes in bytes, in the order to visit them.
    pub sizes: Vec<u64>,
    /// Timed iterations per size (at least 1).
    pub iters: usize,
    /// Untimed iterations per size before the timed ones.
    pub warmup_iters: usize,
    /// Whether to run a checked iteration per size.
    pub check: bool,
    /// Values to fill the buffers with instead of the check pattern (`--data`); must be of
    /// `dtype`.
    pub data: Option<Arc<DataFile>>,
    /// With a lossy codec setting, the rounding an all_reduce result may have had (the
    /// owner of each chunk may round it before sending it): the check then also accepts
    /// the exact result so rounded. `None` for exact settings.
    pub rounding: Option<Codec>,
}

/// A collective failed during the benchmark.
#[derive(Debug, thiserror::Error)]
#[error("{stage} {coll} of {size_bytes} B failed: {source}")]
pub struct RunError {
    /// Which part of the loop (`warm-up`, `timed`, `check`, `gathering times of`, ...).
    pub stage: &'static str,
    /// The collective.
    pub coll: &'static str,
    /// The size being measured.
    pub size_bytes: u64,
    /// The library's error (boxed: it is large and errors are rare).
    #[source]
    pub source: Box<Error>,
}

/// Runs every size of `settings` and returns the rows; `on_row` sees each row as soon as
/// it is measured (every rank gets the same rows).
///
/// # Errors
/// The first failing collective, as a [`RunError`].
pub fn run(comm: &Communicator, settings: &Settings, on_row: &mut dyn FnMut(&Row)) -> Result<Vec<Row>, RunError> {
    match settings.dtype {
        DataType::F32 => run_typed::<f32>(comm, settings, on_row),
        DataType::F64 => run_typed::<f64>(comm, settings, on_row),
        DataType::F16 => run_typed::<f16>(comm, settings, on_row),
        DataType::Bf16 => run_typed::<bf16>(comm, settings, on_row),
        DataType::I32 => run_typed::<i32>(comm, settings, on_row),
        DataType::I64 => run_typed::<i64>(comm, settings, on_row),
        DataType::U8 => run_typed::<u8>(comm, settings, on_row),
    }
}

/// The buffers of one run, sized for the largest layout: `a` is the in-place buffer
/// (all_reduce, broadcast) or the input (reduce_scatter, all_gather); `b` is the output of
/// reduce_scatter and all_gather.
struct Buffers<T> {
    a: Vec<T>,
    b: Vec<T>,
}

impl<T: PatternElement> Buffers<T> {
    fn new(coll: BenchColl, max: Layout) -> Buffers<T> {
        let (a, b) = match coll {
            BenchColl::AllReduce | BenchColl::Broadcast => (max.count_elems, 0),
            BenchColl::ReduceScatter => (max.count_elems, max.per_rank_elems),
            BenchColl::AllGather => (max.per_rank_elems, max.count_elems),
        };
        Buffers { a: vec![T::zeroed(); a], b: vec![T::zeroed(); b] }
    }
}

/// One benchmark: the communicator, what to run, and the data: the pattern, or the file's
/// values when there is one.
struct Bench<'a, T> {
    comm: &'a Communicator,
    s: &'a Settings,
    pattern: Pattern,
    file: Option<FileSource<'a, T>>,
    bufs: Buffers<T>,
    world: usize,
}

fn run_typed<T: PatternElement>(
    comm: &Communicator,
    s: &Settings,
    on_row: &mut dyn FnMut(&Row),
) -> Result<Vec<Row>, RunError> {
    let world = comm.world_size();
    let esize = s.dtype.size();
    let max_bytes = s.sizes.iter().copied().max().unwrap_or(0);
    let max = Layout::new(s.coll, max_bytes, esize, world);
    let op = s.coll.reduces().then_some(s.op);
    let file = s.data.as_deref().map(|d| FileSource::new(d, world));
    let mut bench =
        Bench { comm, s, pattern: Pattern::new(op, world), file, bufs: Buffers::<T>::new(s.coll, max), world };
    // Touch every page now so that no measurement pays for first-touch faults.
    bench.fill(max);
    let mut rows = Vec::with_capacity(s.sizes.len());
    for &size in &s.sizes {
        let row = bench.measure(size)?;
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

impl<T: PatternElement> Bench<'_, T> {
    /// Writes this rank's elements `first..` (of the pattern or the file) into `buf`.
    fn fill_from(&self, first: usize, buf: &mut [T]) {
        match &self.file {
            Some(f) => f.fill(self.comm.rank(), first, buf),
            None => self.pattern.fill(self.comm.rank(), first, buf),
        }
    }

    /// Writes this rank's inputs of `l`.
    fn fill(&mut self, l: Layout) {
        let rank = self.comm.rank();
        let (per, n) = (l.per_rank_elems, l.count_elems);
        let mut a = std::mem::take(&mut self.bufs.a);
        match self.s.coll {
            BenchColl::AllReduce | BenchColl::Broadcast | BenchColl::ReduceScatter => self.fill_from(0, &mut a[..n]),
            BenchColl::AllGather => {
                // Block r of the output is rank r's while every rank is a member.
                let first = chunk_range(n, self.world, rank).start;
                self.fill_from(first, &mut a[..per]);
                // The output is overwritten by the call; zero it so stale results of an
                // earlier size can never pass the check.
                self.bufs.b[..n].fill(T::zeroed());
            }
        }
        self.bufs.a = a;
    }

    /// With file data, restores an all_reduce's input (which the previous call replaced
    /// by its result) so every iteration reduces, and compresses, the file's values.
    fn refill(&mut self, l: Layout) {
        if self.file.is_some() && self.s.coll == BenchColl::AllReduce {
            self.fill(l);
        }
    }

    /// Runs the collective once over layout `l`.
    fn call(&mut self, l: Layout) -> Result<Report, Error> {
        let (per, n) = (l.per_rank_elems, l.count_elems);
        let (a, b) = (&mut self.bufs.a, &mut self.bufs.b);
        match self.s.coll {
            BenchColl::AllReduce => self.comm.all_reduce(&mut a[..n], self.s.op),
            BenchColl::ReduceScatter => self.comm.reduce_scatter(&a[..n], &mut b[..per], self.s.op),
            BenchColl::AllGather => self.comm.all_gather(&a[..per], &mut b[..n]),
            BenchColl::Broadcast => self.comm.broadcast(&mut a[..n], 0),
        }
    }

    fn fail(&self, stage: &'static str, size_bytes: u64) -> impl FnOnce(Error) -> RunError {
        let coll = self.s.coll.name();
        move |source| RunError { stage, coll, size_bytes, source: Box::new(source) }
    }

    /// Warm-up, timed loop, and (with `check`) one verified iteration for one size.
    fn measure(&mut self, size: u64) -> Result<Row, RunError> {
        let l = Layout::new(self.s.coll, size, self.s.dtype.size(), self.world);
        let size_bytes = (l.count_elems * self.s.dtype.size()) as u64;
        self.fill(l);
        for _ in 0..self.s.warmup_iters {
            self.refill(l);
            self.call(l).map_err(self.fail("warm-up", size_bytes))?;
        }
        self.comm.barrier().map_err(self.fail("barrier before", size_bytes))?;
        let mut times_us = Vec::with_capacity(self.s.iters);
        let (mut sent, mut sent_raw) = (0u64, 0u64);
        for _ in 0..self.s.iters {
            self.refill(l);
            let start = Instant::now();
            let report = self.call(l).map_err(self.fail("timed", size_bytes))?;
            times_us.push(start.elapsed().as_secs_f64() * 1e6);
            sent += report.bytes_sent;
            sent_raw += report.bytes_sent_raw;
        }
        // An iteration takes as long as its slowest rank (p50, p99); the mean is the slowest
        // rank's total over the calls divided by their number, as nccl-tests times a loop:
        // a rank that returns first and waits in the next call is not counted twice.
        let own_total_us: f64 = times_us.iter().sum();
        times_us.push(own_total_us);
        self.comm.all_reduce(&mut times_us, ReduceOp::Max).map_err(self.fail("gathering times of", size_bytes))?;
        let slowest_total_us = times_us.pop().unwrap_or(0.0);
        let wrong = if self.s.check { Some(self.check(l, size_bytes)?) } else { None };
        let t = Summary { mean_us: slowest_total_us / self.s.iters.max(1) as f64, ..summarize(&times_us) };
        let algbw_gbs = bandwidth_gbs(size_bytes, t.mean_us);
        Ok(Row {
            size_bytes,
            count_elems: l.count_elems as u64,
            type_name: self.s.dtype.name(),
            redop: if self.s.coll.reduces() { self.s.op.name() } else { "none" },
            root: self.s.coll.root(),
            time_us: t.mean_us,
            algbw_gbs,
            busbw_gbs: algbw_gbs * bus_factor(self.s.coll, self.world),
            wrong,
            p50_us: t.p50_us,
            p99_us: t.p99_us,
            ratio: if sent == 0 { 1.0 } else { sent_raw as f64 / sent as f64 },
        })
    }

    /// Runs one iteration on fresh patterned data and returns the number of wrong
    /// elements summed over ranks.
    fn check(&mut self, l: Layout, size_bytes: u64) -> Result<u64, RunError> {
        self.fill(l);
        let report = self.call(l).map_err(self.fail("check", size_bytes))?;
        let mut wrong = self.count_wrong(l, &report.members);
        if self.file.is_some() {
            wrong += self.count_unequal(l, size_bytes)?;
        }
        let mut total = [i64::try_from(wrong).unwrap_or(i64::MAX)];
        self.comm.all_reduce(&mut total, ReduceOp::Sum).map_err(self.fail("summing wrong elements of", size_bytes))?;
        Ok(u64::try_from(total[0]).unwrap_or(u64::MAX))
    }

    /// With file data the check allows rounding, so it must also see that every rank
    /// holds the same bits: the ranks compare a hash of their result. A mismatch counts
    /// every element once (on rank 0). Not for reduce_scatter, whose ranks hold different
    /// blocks.
    fn count_unequal(&self, l: Layout, size_bytes: u64) -> Result<u64, RunError> {
        let n = l.count_elems;
        let result: &[T] = match self.s.coll {
            BenchColl::AllReduce | BenchColl::Broadcast => &self.bufs.a[..n],
            BenchColl::AllGather => &self.bufs.b[..n],
            BenchColl::ReduceScatter => return Ok(0),
        };
        let h = hash_bytes(bytemuck::cast_slice(result));
        // The hash travels as i64 bits; the max of h and of !h give the max and min of h.
        let mut extremes = [h as i64, !h as i64];
        self.comm.all_reduce(&mut extremes, ReduceOp::Max).map_err(self.fail("comparing results of", size_bytes))?;
        let same = extremes[0] == !extremes[1];
        Ok(if same || self.comm.rank() != 0 { 0 } else { n as u64 })
    }

    /// Wrong elements on this rank after a checked call whose report named `members`.
    fn count_wrong(&self, l: Layout, members: &[Rank]) -> u64 {
        let (per, n) = (l.per_rank_elems, l.count_elems);
        if let Some(f) = &self.file {
            return self.count_wrong_file(f, l, members);
        }
        let p = &self.pattern;
        match self.s.coll {
            BenchColl::AllReduce => {
                let exact = p.reduced_table::<T>(self.s.op, members);
                let mut rounded = exact.clone();
                let lossy = self.s.rounding.is_some_and(|codec| {
                    crate::codec::round_in_place(codec, T::DTYPE, bytemuck::cast_slice_mut(&mut rounded)).is_ok()
                });
                let tables: &[&[T]] = if lossy { &[&exact, &rounded] } else { &[&exact] };
                p.count_wrong_reduced_any(tables, 0, &self.bufs.a[..n])
            }
            BenchColl::ReduceScatter => match members.binary_search(&self.comm.rank()) {
                Ok(block) => {
                    let first = chunk_range(n, members.len(), block).start;
                    p.count_wrong_reduced(&p.reduced_table::<T>(self.s.op, members), first, &self.bufs.b[..per])
                }
                Err(_) => per as u64,
            },
            BenchColl::AllGather => p.count_wrong_gathered(members, &self.bufs.b[..n]),
            BenchColl::Broadcast => p.count_wrong_from(0, 0, &self.bufs.a[..n]),
        }
    }

    /// [`Bench::count_wrong`] for file data.
    fn count_wrong_file(&self, f: &FileSource<'_, T>, l: Layout, members: &[Rank]) -> u64 {
        let (per, n) = (l.per_rank_elems, l.count_elems);
        let op = self.s.op;
        match self.s.coll {
            BenchColl::AllReduce => f.count_wrong_reduced(op, members, 0, &self.bufs.a[..n]),
            BenchColl::ReduceScatter => match members.binary_search(&self.comm.rank()) {
                Ok(block) => {
                    let first = chunk_range(n, members.len(), block).start;
                    f.count_wrong_reduced(op, members, first, &self.bufs.b[..per])
                }
                Err(_) => per as u64,
            },
            BenchColl::AllGather => f.count_wrong_gathered(members, &self.bufs.b[..n]),
            BenchColl::Broadcast => f.count_wrong_from(0, 0, &self.bufs.a[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::time::Duration;

    use super::*;
    use crate::coord::{Server, ServerOptions};
    use crate::Config;

    /// Runs `settings` on `world` ranks, each a thread of this process over loopback TCP.
    fn run_ring(world: usize, settings: Settings) -> Vec<Vec<Row>> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let options = ServerOptions::new(world, 7, Duration::from_secs(20));
        let server = Server::start(listener, options).unwrap();
        let addr = server.local_addr().to_string();
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let (addr, settings) = (addr.clone(), settings.clone());
                std::thread::spawn(move || {
                    let mut config = Config::new(rank, world);
                    config.coordinator = addr;
                    config.host_coordinator = false;
                    config.job_id = 7;
                    config.segment_bytes = 1024;
                    config.progress_timeout = Duration::from_secs(10);
                    let comm = Communicator::connect(config).unwrap();
                    let mut seen = 0;
                    let rows = run(&comm, &settings, &mut |_| seen += 1).unwrap();
                    assert_eq!(seen, rows.len());
                    rows
                })
            })
            .collect();
        let out = handles.into_iter().map(|h| h.join().unwrap()).collect();
        drop(server);
        out
    }

    fn settings(coll: BenchColl, dtype: DataType, op: ReduceOp) -> Settings {
        Settings {
            coll,
            dtype,
            op,
            sizes: vec![0, 4, 1000, 40_000],
            iters: 2,
            warmup_iters: 1,
            check: true,
            data: None,
            rounding: None,
        }
    }

    #[test]
    fn every_collective_checks_clean_on_a_real_ring() {
        for coll in [BenchColl::AllReduce, BenchColl::ReduceScatter, BenchColl::AllGather, BenchColl::Broadcast] {
            let per_rank = run_ring(3, settings(coll, DataType::Bf16, ReduceOp::Sum));
            for rows in &per_rank {
                let sizes: Vec<u64> = rows.iter().map(|r| r.size_bytes).collect();
                let want: Vec<u64> = match coll {
                    BenchColl::AllReduce | BenchColl::Broadcast => vec![0, 4, 1000, 40_000],
                    _ => vec![0, 0, 996, 39_996],
                };
                assert_eq!(sizes, want, "{coll:?}");
                for r in rows {
                    assert_eq!(r.wrong, Some(0), "{coll:?} {r:?}");
                    assert!(r.time_us > 0.0 && r.p50_us <= r.p99_us, "{coll:?} {r:?}");
                    assert_eq!(r.root, coll.root());
                }
            }
            // Times were gathered with a max over ranks: every rank reports the same ones.
            let times: Vec<Vec<f64>> = per_rank.iter().map(|rows| rows.iter().map(|r| r.time_us).collect()).collect();
            assert!(times.windows(2).all(|w| w[0] == w[1]), "{coll:?} {times:?}");
        }
    }

    #[test]
    fn reductions_check_clean_for_each_op() {
        for (dtype, op) in
            [(DataType::U8, ReduceOp::Avg), (DataType::F16, ReduceOp::Prod), (DataType::I64, ReduceOp::Min)]
        {
            for rows in run_ring(4, settings(BenchColl::AllReduce, dtype, op)) {
                assert!(rows.iter().all(|r| r.wrong == Some(0) && r.redop == op.name()), "{dtype:?} {op:?} {rows:?}");
            }
        }
    }

    /// A file of gradient-like f32 values (of every sign and several magnitudes, with
    /// zeros), as `dtype`, shorter than the largest buffer so ranks wrap round it.
    fn data_file(dtype: DataType) -> Arc<DataFile> {
        let values = (0..7001u64).map(|i| {
            let x = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as f32 / (1u32 << 24) as f32 - 0.5;
            if i % 9 == 0 {
                0.0
            } else {
                x * 10f32.powi(-((i % 4) as i32))
            }
        });
        let bytes: Vec<u8> = match dtype {
            DataType::F16 => values.flat_map(|x| f16::from_f32(x).to_le_bytes()).collect(),
            DataType::Bf16 => values.flat_map(|x| bf16::from_f32(x).to_le_bytes()).collect(),
            _ => values.flat_map(f32::to_le_bytes).collect(),
        };
        Arc::new(DataFile::from_bytes("test data".into(), dtype, crate::codec::Codec::Raw, bytes).unwrap())
    }

    #[test]
    fn file_data_checks_clean_for_every_collective() {
        for (coll, dtype, op) in [
            (BenchColl::AllReduce, DataType::F32, ReduceOp::Sum),
            (BenchColl::AllReduce, DataType::Bf16, ReduceOp::Avg),
            (BenchColl::AllReduce, DataType::F16, ReduceOp::Max),
            (BenchColl::ReduceScatter, DataType::F32, ReduceOp::Sum),
            (BenchColl::AllGather, DataType::F16, ReduceOp::Sum),
            (BenchColl::Broadcast, DataType::F32, ReduceOp::Sum),
        ] {
            let s = Settings { data: Some(data_file(dtype)), ..settings(coll, dtype, op) };
            for rows in run_ring(4, s) {
                assert!(rows.iter().all(|r| r.wrong == Some(0)), "{coll:?} {dtype:?} {op:?} {rows:?}");
            }
        }
    }

    #[test]
    fn a_single_rank_runs_without_peers() {
        let s = Settings { check: false, ..settings(BenchColl::AllReduce, DataType::F32, ReduceOp::Max) };
        let rows = run_ring(1, s).remove(0);
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|r| r.wrong.is_none() && r.busbw_gbs == 0.0));
    }
}
