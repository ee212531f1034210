//! `ringrun`: mpirun-style launcher for ringcc jobs. See `ringrun --help` and
//! [`ringcc::launch`].

fn main() {
    ringcc::init_logging();
    let code = ringcc::launch::run(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}
