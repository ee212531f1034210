//! Shared by the integration tests: a ring whose ranks are threads of the test process,
//! over real loopback TCP, with the coordinator hosted by the test (as ringrun would).

use std::net::TcpListener;
use std::time::Duration;

use ringcc::coord::{Server, ServerOptions};
use ringcc::{Communicator, Config};

/// Runs `f` on every rank of a `world`-rank ring (one thread per rank) and returns the
/// results in rank order. `tune` adjusts each rank's config before it connects.
pub fn thread_ring<R: Send + 'static>(
    world: usize,
    tune: impl Fn(&mut Config) + Send + Sync + Clone + 'static,
    f: impl Fn(Communicator) -> R + Send + Clone + 'static,
) -> Vec<R> {
    ringcc::init_logging();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let server = Server::start(listener, ServerOptions::new(world, 42, Duration::from_secs(20))).expect("coordinator");
    let addr = server.local_addr().to_string();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let (addr, f, tune) = (addr.clone(), f.clone(), tune.clone());
            std::thread::spawn(move || {
                let mut config = Config::new(rank, world);
                config.coordinator = addr;
                config.host_coordinator = false;
                config.job_id = 42;
                config.progress_timeout = Duration::from_secs(10);
                tune(&mut config);
                f(Communicator::connect(config).expect("connect"))
            })
        })
        .collect();
    let out = handles.into_iter().map(|h| h.join().expect("rank thread")).collect();
    drop(server);
    out
}
