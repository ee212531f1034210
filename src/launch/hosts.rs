//! Hosts and placement: parsing `-H host:slots,...` and hostfiles, filling hosts with
//! ranks in order, telling local hosts from remote ones, and choosing the address the
//! coordinator advertises.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

use crate::limits::WORLD_MAX;

/// A host and the number of ranks it takes before it is oversubscribed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostSlots {
    /// Name as the user wrote it; passed to `--rsh` and to ranks as `RINGCC_HOST`.
    pub(crate) name: String,
    /// Slots (at least 1).
    pub(crate) slots: usize,
}

/// Parses `-H` items (`host`, `host:slots`, `[v6addr]:slots`); the same host given twice
/// gets the sum of its slots at its first position.
///
/// # Errors
/// A message naming the malformed item: empty name, bad characters, slots that are not a
/// number in `1..=WORLD_MAX`.
pub(crate) fn parse_host_list(items: &[String]) -> Result<Vec<HostSlots>, String> {
    let mut hosts = Vec::new();
    for item in items {
        let (name, slots) = split_host_slots(item).map_err(|e| format!("-H {item:?}: {e}"))?;
        add_host(&mut hosts, name, slots);
    }
    Ok(hosts)
}

/// Parses a hostfile: one host per line as `host [slots=N]`, `#` starts a comment, blank
/// lines are ignored.
///
/// # Errors
/// A message naming the line number and what is wrong with it.
pub(crate) fn parse_hostfile(text: &str) -> Result<Vec<HostSlots>, String> {
    let mut hosts = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or("");
        let at = |e: String| format!("line {}: {e}", index + 1);
        check_name(name).map_err(at)?;
        let mut slots = 1;
        for word in words {
            let value = word.strip_prefix("slots=").ok_or_else(|| at(format!("unknown field {word:?}")))?;
            slots = parse_slots(value).map_err(at)?;
        }
        add_host(&mut hosts, name.to_string(), slots);
    }
    if hosts.is_empty() {
        return Err("no hosts in it".into());
    }
    Ok(hosts)
}

fn add_host(hosts: &mut Vec<HostSlots>, name: String, slots: usize) {
    match hosts.iter_mut().find(|h| h.name == name) {
        Some(h) => h.slots = h.slots.saturating_add(slots).min(WORLD_MAX),
        None => hosts.push(HostSlots { name, slots }),
    }
}

fn split_host_slots(item: &str) -> Result<(String, usize), String> {
    let (name, slots) = if let Some(rest) = item.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']').ok_or("missing ']'")?;
        match tail {
            "" => (addr, None),
            _ => (addr, Some(tail.strip_prefix(':').ok_or("expected ':' after ']'")?)),
        }
    } else {
        match item.split_once(':') {
            Some((name, slots)) => (name, Some(slots)),
            None => (item, None),
        }
    };
    check_name(name)?;
    let slots = match slots {
        Some(s) => parse_slots(s)?,
        None => 1,
    };
    Ok((name.to_string(), slots))
}

fn parse_slots(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=WORLD_MAX).contains(&n) => Ok(n),
        _ => Err(format!("slots {s:?} is not a number in 1..={WORLD_MAX}")),
    }
}

/// Host names go to `--rsh` as an argument: a leading '-' would read as an option, and
/// anything beyond name characters is refused rather than interpreted.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty host name".into());
    }
    if name.starts_with('-') {
        return Err(format!("host name {name:?} starts with '-'"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '@');
    if let Some(bad) = name.chars().find(|&c| !ok(c)) {
        return Err(format!("host name {name:?} contains {bad:?}"));
    }
    Ok(())
}

/// Ranks per host: hosts are filled in order up to their slots; ranks beyond the total
/// slots are an error, or with `oversubscribe` are spread round-robin over all hosts.
/// Returns `placement[rank] = (host index, local rank)`: ranks of one host are contiguous.
///
/// # Errors
/// A message when `world` exceeds the slots and `oversubscribe` is off.
pub(crate) fn place(hosts: &[HostSlots], world: usize, oversubscribe: bool) -> Result<Vec<(usize, usize)>, String> {
    let total: usize = hosts.iter().map(|h| h.slots).sum();
    let mut counts: Vec<usize> = Vec::with_capacity(hosts.len());
    let mut left = world;
    for h in hosts {
        let take = h.slots.min(left);
        counts.push(take);
        left -= take;
    }
    if left > 0 {
        if !oversubscribe {
            return Err(format!(
                "{world} ranks but only {total} slots on {} host(s); add slots or pass --oversubscribe",
                hosts.len()
            ));
        }
        let each = left / counts.len();
        let extra = left % counts.len();
        for (i, c) in counts.iter_mut().enumerate() {
            *c += each + usize::from(i < extra);
        }
    }
    let mut placement = Vec::with_capacity(world);
    for (host, &count) in counts.iter().enumerate() {
        placement.extend((0..count).map(|local| (host, local)));
    }
    Ok(placement)
}

/// Names that mean this machine: ranks on them are spawned directly, not through `--rsh`.
/// `hostname` is this machine's name (full; its first label also counts).
pub(crate) fn is_local(name: &str, hostname: &str) -> bool {
    let short = hostname.split('.').next().unwrap_or(hostname);
    matches!(name, "localhost" | "127.0.0.1" | "::1") || (!hostname.is_empty() && (name == hostname || name == short))
}

/// This machine's host name (empty if the kernel does not say).
pub(crate) fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The IP the coordinator listens on and advertises to ranks.
///
/// - `bind` if given: it must be a specific address, and not loopback when any rank is
///   remote (a remote rank cannot reach this machine's loopback).
/// - otherwise 127.0.0.1 when every rank is local;
/// - otherwise the source address of the route to `first_remote`, found by connecting an
///   unbound UDP socket (which sends nothing) after resolving the name. Hosts whose names
///   are not resolvable addresses (network namespaces, ssh aliases) need `--bind`.
///
/// # Errors
/// A one-line message naming the problem and suggesting `--bind`.
pub(crate) fn coordinator_ip(bind: Option<IpAddr>, first_remote: Option<&str>) -> Result<IpAddr, String> {
    let ip = match (bind, first_remote) {
        (Some(ip), _) if ip.is_unspecified() => {
            return Err(format!("--bind {ip}: give the specific address ranks should connect to"))
        }
        (Some(ip), _) => ip,
        (None, None) => return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        (None, Some(host)) => route_source(host)
            .map_err(|e| format!("cannot find this machine's address toward host {host:?} ({e}); pass --bind ADDR"))?,
    };
    match first_remote {
        Some(host) if ip.is_loopback() => Err(format!(
            "the coordinator address {ip} is loopback, which remote host {host:?} cannot reach; pass --bind ADDR"
        )),
        _ => Ok(ip),
    }
}

fn route_source(host: &str) -> std::io::Result<IpAddr> {
    let name = host.rsplit('@').next().unwrap_or(host);
    let target = (name, 9)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "name resolves to no address"))?;
    let any = match target {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = UdpSocket::bind((any, 0))?;
    // connect() on UDP only picks a route and a source address; no packet is sent.
    socket.connect(target)?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(name: &str, slots: usize) -> HostSlots {
        HostSlots { name: name.into(), slots }
    }

    #[test]
    fn host_lists_parse_slots_defaults_brackets_and_merge_duplicates() {
        let items: Vec<String> = ["a:2", "b", "[::1]:3", "a:1"].iter().map(|s| s.to_string()).collect();
        assert_eq!(parse_host_list(&items), Ok(vec![hs("a", 3), hs("b", 1), hs("::1", 3)]));
    }

    #[test]
    fn malformed_host_items_are_refused() {
        for bad in ["a:0", "a:x", "", ":2", "-oProxy=x:1", "a b:1", "a;b", "[::1", "[::1]2", "a:99999"] {
            assert!(parse_host_list(&[bad.to_string()]).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn hostfiles_take_comments_defaults_and_slots() {
        let text = "# cluster\nn1 slots=2\n\n  n2   # one slot\nn3 slots=4 # big\n";
        assert_eq!(parse_hostfile(text), Ok(vec![hs("n1", 2), hs("n2", 1), hs("n3", 4)]));
        assert!(parse_hostfile("n1 slots=0\n").unwrap_err().starts_with("line 1"));
        assert!(parse_hostfile("n1\nn2 cpus=2\n").unwrap_err().starts_with("line 2"));
        assert!(parse_hostfile("# nothing\n").is_err());
    }

    #[test]
    fn placement_fills_hosts_in_order_and_refuses_or_spreads_the_excess() {
        let hosts = [hs("a", 2), hs("b", 2)];
        assert_eq!(place(&hosts, 3, false), Ok(vec![(0, 0), (0, 1), (1, 0)]));
        assert!(place(&hosts, 5, false).unwrap_err().contains("--oversubscribe"));
        let over = place(&hosts, 7, true).expect("oversubscribed");
        assert_eq!(over, vec![(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]);
    }

    #[test]
    fn local_names_are_loopback_and_this_machine() {
        assert!(is_local("localhost", "vm.example"));
        assert!(is_local("vm", "vm.example"));
        assert!(is_local("vm.example", "vm.example"));
        assert!(!is_local("ns1", "vm.example"));
        assert!(!is_local("", ""));
    }

    #[test]
    fn coordinator_address_never_advertises_loopback_to_remote_hosts() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let priv_ip: IpAddr = "10.9.8.7".parse().expect("ip");
        assert_eq!(coordinator_ip(None, None), Ok(lo));
        assert_eq!(coordinator_ip(Some(priv_ip), Some("ns1")), Ok(priv_ip));
        assert!(coordinator_ip(Some(lo), Some("ns1")).is_err());
        assert!(coordinator_ip(Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), None).is_err());
        // The route to another loopback address starts at loopback: refused, nothing sent.
        assert!(coordinator_ip(None, Some("127.0.0.2")).unwrap_err().contains("loopback"));
    }
}
