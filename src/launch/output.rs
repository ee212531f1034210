//! Where ranks' stdout and stderr go: inherited, tagged line by line, or into files.
//!
//! Tagged output reads each rank's pipes in their own threads and writes whole lines,
//! each prefixed `[rank N] `, under the lock of ringrun's stdout or stderr, so lines of
//! different ranks never mix mid-line. A line longer than [`LINE_BYTES_MAX`] is cut into
//! pieces of that size, each written as its own tagged line.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout, Stdio};
use std::thread::JoinHandle;

/// Longest piece of a rank's output written as one tagged line, in bytes: bounds the
/// memory a rank that never prints a newline can make ringrun hold.
pub(crate) const LINE_BYTES_MAX: usize = 64 << 10;

/// Stack size of a pipe-reading thread, in bytes: it holds only a buffered reader.
const PUMP_STACK_BYTES: usize = 128 << 10;

/// How ranks' output is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OutputMode {
    /// Ranks write straight to ringrun's stdout and stderr.
    Inherit,
    /// Every line goes through ringrun, prefixed `[rank N] `.
    Tagged,
    /// Rank N writes `DIR/rank.N.out` and `DIR/rank.N.err` (created or truncated).
    Files(PathBuf),
}

impl OutputMode {
    /// Prepares the mode before any rank starts (creates the output directory).
    ///
    /// # Errors
    /// A message if the directory cannot be created.
    pub(crate) fn prepare(&self) -> Result<(), String> {
        if let OutputMode::Files(dir) = self {
            std::fs::create_dir_all(dir).map_err(|e| format!("--output-filename {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// stdout and stderr for `rank`.
    ///
    /// # Errors
    /// The error opening a rank's output file.
    pub(crate) fn stdio(&self, rank: usize) -> io::Result<(Stdio, Stdio)> {
        Ok(match self {
            OutputMode::Inherit => (Stdio::inherit(), Stdio::inherit()),
            OutputMode::Tagged => (Stdio::piped(), Stdio::piped()),
            OutputMode::Files(dir) => {
                let open = |ext: &str| File::create(file_name(dir, rank, ext));
                (open("out")?.into(), open("err")?.into())
            }
        })
    }
}

/// `DIR/rank.N.EXT`.
pub(crate) fn file_name(dir: &Path, rank: usize, ext: &str) -> PathBuf {
    dir.join(format!("rank.{rank}.{ext}"))
}

/// Starts threads copying a rank's piped stdout and stderr, tagged, to ringrun's own.
/// Returns the threads; each ends when its pipe closes (every process holding it ended).
///
/// # Errors
/// The error starting a thread.
pub(crate) fn start_tagged_pumps(
    rank: usize,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::with_capacity(2);
    if let Some(pipe) = stdout {
        threads.push(spawn_pump(rank, pipe, || Box::new(io::stdout().lock()))?);
    }
    if let Some(pipe) = stderr {
        threads.push(spawn_pump(rank, pipe, || Box::new(io::stderr().lock()))?);
    }
    Ok(threads)
}

fn spawn_pump<R, F>(rank: usize, pipe: R, lock: F) -> io::Result<JoinHandle<()>>
where
    R: Read + Send + 'static,
    F: Fn() -> Box<dyn Write> + Send + 'static,
{
    std::thread::Builder::new()
        .name(format!("ringrun-out-{rank}"))
        .stack_size(PUMP_STACK_BYTES)
        .spawn(move || copy_tagged(rank, pipe, lock))
}

/// Copies `pipe` line by line, each line prefixed and written whole while holding the
/// sink's lock. After a write error (e.g. ringrun's stdout closed) it keeps draining the
/// pipe so the rank never blocks on a full pipe.
fn copy_tagged<R: Read>(rank: usize, pipe: R, lock: impl Fn() -> Box<dyn Write>) {
    let prefix = format!("[rank {rank}] ");
    let mut reader = BufReader::with_capacity(LINE_BYTES_MAX, pipe);
    let mut line = Vec::with_capacity(256);
    let mut sink_ok = true;
    loop {
        line.clear();
        line.extend_from_slice(prefix.as_bytes());
        match (&mut reader).take(LINE_BYTES_MAX as u64).read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        if sink_ok {
            let mut sink = lock();
            sink_ok = sink.write_all(&line).and_then(|()| sink.flush()).is_ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_prefixed_and_a_last_partial_line_is_completed() {
        let sink = Shared::default();
        let s = sink.clone();
        copy_tagged(3, &b"a\n\nb c\nlast"[..], move || Box::new(s.clone()));
        let out = sink.0.lock().expect("lock").clone();
        assert_eq!(out, b"[rank 3] a\n[rank 3] \n[rank 3] b c\n[rank 3] last\n".to_vec());
    }

    #[test]
    fn overlong_lines_are_cut_into_bounded_tagged_pieces() {
        let sink = Shared::default();
        let s = sink.clone();
        let input = vec![b'x'; LINE_BYTES_MAX * 2 + 5];
        copy_tagged(0, &input[..], move || Box::new(s.clone()));
        let out = sink.0.lock().expect("lock").clone();
        let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.starts_with(b"[rank 0] ") && l.len() <= LINE_BYTES_MAX + 9));
    }

    #[test]
    fn output_files_are_named_per_rank() {
        assert_eq!(file_name(Path::new("/o"), 2, "err"), Path::new("/o/rank.2.err"));
    }
}
