//! Same-host lanes: payloads of a ring link whose two ends share a host, moved through
//! shared memory instead of the TCP socket.
//!
//! The sending end of a connection creates a lane file under `/dev/shm` (one control page
//! plus `slots` slots of `slot_bytes`, the agreed segment size) and offers it to the peer
//! in a [`crate::wire::FrameKind::LaneOffer`] frame. The peer checks it (name of this job
//! and link, regular file, its own user, mode 0600, exact size), maps it, unlinks it and
//! answers with a [`crate::wire::FrameKind::LaneReply`]. From the acceptance on, a raw
//! data frame of at least [`LANE_PAYLOAD_BYTES_ANY_CALL`] bytes (in large calls and in the
//! latency path's small ones, of at least [`LANE_PAYLOAD_BYTES_MIN`]) goes through lane slot
//! `k mod slots` (k counts lane frames on the connection) when that slot is free: the
//! payload is copied there once, and only the header, with [`FLAG_LANE`] set, goes over
//! TCP, in order with every other frame. The receiver hands the slot to the collective as
//! the payload (reduce-scatter reduces straight out of it; all-gather copies it into
//! place) and then publishes the slot as consumed. When no slot is free, the frame waits
//! in the link's queue as it would for a full socket (the event loop never blocks): the
//! sender raises the control page's `WAITING` word, and the receiver, once it has consumed
//! half the lane, answers with a [`crate::wire::FrameKind::LaneCredit`] over TCP.
//!
//! Control page (little-endian): magic `RGCCLANE` at 0, slots (u32) at 8, slot bytes (u32)
//! at 12; at [`WRITTEN`] the count of payloads the sender has written (it stores it with
//! release after the copy); at [`CONSUMED`] the count of slots the receiver is done with
//! (stored after the collective used the payload); at [`WAITING`] the sender's request for
//! a credit. Each side only reads the other's counter (acquire), so a slot has one owner
//! at a time. TCP stays the connection
//! for headers, control and failure detection: a lane dies with its connection.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::shm::Mapping;
use crate::limits::{LANE_BYTES_MAX, LANE_SLOTS};
use crate::Rank;

pub(crate) use crate::wire::header::FLAG_LANE;

/// Where lane files live (a tmpfs on Linux).
const LANE_DIR: &str = "/dev/shm";

/// Bytes of the control page before the first slot.
const CONTROL_BYTES: usize = 4096;

/// Magic at the start of the control page.
const MAGIC: [u8; 8] = *b"RGCCLANE";

/// Offset of the sender's counter of payloads written (own cache line).
const WRITTEN: usize = 64;

/// Offset of the receiver's counter of slots consumed (own cache line).
const CONSUMED: usize = 128;

/// Offset of the sender's "waiting for a slot" word (1 while it waits for a credit).
const WAITING: usize = 192;

/// Smallest payload in bytes sent through a lane: below it the payload is a small part of
/// the frame's cost (the header's syscalls dominate).
pub(crate) const LANE_PAYLOAD_BYTES_MIN: usize = 32 << 10;

/// Payloads from this size on go through a lane in a call of any size; smaller ones only in
/// calls of at least [`LANE_CALL_BYTES_MIN`]. A lane frame's header leaves only once its
/// whole payload is copied, where the socket lets the receiver start on the first 64 KiB
/// while the sender still copies the rest: with one or two frames per ring step that lost
/// latency is not hidden. Measured at N=4 (2 cores): all-reduces of 1 and 2 MiB (frames of
/// 128 and 256 KiB) ran 1.3x slower through lanes, 4 MiB (512 KiB frames) 1.25x faster.
const LANE_PAYLOAD_BYTES_ANY_CALL: usize = 512 << 10;

/// Calls (bytes of the caller's buffer) up to this size also send payloads from
/// [`LANE_PAYLOAD_BYTES_MIN`] on through lanes: the latency path's calls (recursive doubling
/// up to [`crate::core::doubling::DOUBLING_MAX_BYTES`]), whose rounds are one frame each,
/// which the receiver needs whole before it can reduce, so TCP gives it no early start.
/// Through the socket such a frame costs two kernel copies, and from 64 KiB on (frame header
/// included) two loopback segments and an immediate ACK. Measured at N=4 (2 cores, 4
/// alternating launches, `ringbench -c 0`, medians): 64 KiB 265 -> 173 us, 32 KiB 137 ->
/// 122 us; below 32 KiB no gain beyond the noise.
const LANE_CALL_BYTES_ONE_FRAME: usize = crate::core::doubling::DOUBLING_MAX_BYTES;

/// Calls (bytes of the caller's buffer) from which payloads of any size from
/// [`LANE_PAYLOAD_BYTES_MIN`] on go through lanes: their ring steps carry many segments, so
/// the pipeline hides the per-frame latency and only the bytes copied count.
const LANE_CALL_BYTES_MIN: usize = 16 << 20;

/// Longest lane file name an offer may carry, in bytes.
const NAME_BYTES_MAX: usize = 128;

/// Fixed part of every lane file name of job `job`; `ringrun` removes what is left of them.
fn job_prefix(job: u64) -> String {
    format!("ringcc-lane-{job:016x}-")
}

/// Name prefix of the lanes from rank `from` to rank `to` in job `job`.
fn link_prefix(job: u64, from: Rank, to: Rank) -> String {
    format!("{}{from}-{to}-", job_prefix(job))
}

/// Slots a lane of `slot_bytes` slots gets: [`LANE_SLOTS`], fewer if that would exceed
/// [`LANE_BYTES_MAX`], at least 2.
fn slots_for(slot_bytes: usize) -> usize {
    (LANE_BYTES_MAX / slot_bytes.max(1)).clamp(2, LANE_SLOTS)
}

/// Size in bytes of a lane file with `slots` slots of `slot_bytes`, if it is representable.
fn file_bytes(slots: usize, slot_bytes: usize) -> Option<usize> {
    slots.checked_mul(slot_bytes)?.checked_add(CONTROL_BYTES)
}

/// The sending end of a lane.
#[derive(Debug)]
pub(super) struct TxLane {
    map: Mapping,
    path: PathBuf,
    /// The file still has its name (the peer has not answered yet).
    linked: bool,
    slots: u64,
    slot_bytes: usize,
    /// Payloads written so far (the lane frame count k).
    sent: u64,
}

impl TxLane {
    /// Creates the lane file for the frames `from` sends `to` in job `job`.
    ///
    /// # Errors
    /// Whatever creating or mapping the file reports (no `/dev/shm`, out of memory).
    pub(super) fn create(job: u64, from: Rank, to: Rank, slot_bytes: usize) -> std::io::Result<TxLane> {
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
        let name = format!("{}{:016x}", link_prefix(job, from, to), u64::from_le_bytes(random));
        let path = Path::new(LANE_DIR).join(name);
        let slots = slots_for(slot_bytes);
        let len = file_bytes(slots, slot_bytes).ok_or_else(|| std::io::Error::other("lane size overflows"))?;
        let mut map = Mapping::create(&path, len)?;
        let head = map.bytes_mut(0, 16);
        head[..8].copy_from_slice(&MAGIC);
        head[8..12].copy_from_slice(&(slots as u32).to_le_bytes());
        head[12..16].copy_from_slice(&(slot_bytes as u32).to_le_bytes());
        Ok(TxLane { map, path, linked: true, slots: slots as u64, slot_bytes, sent: 0 })
    }

    /// The payload of the offer frame: slots (u32), slot bytes (u32), file name.
    pub(super) fn offer(&self) -> Vec<u8> {
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut p = Vec::with_capacity(8 + name.len());
        p.extend_from_slice(&(self.slots as u32).to_le_bytes());
        p.extend_from_slice(&(self.slot_bytes as u32).to_le_bytes());
        p.extend_from_slice(name.as_bytes());
        p
    }

    /// Removes the file's name (the peer answered, or the link is gone). The mapping stays.
    pub(super) fn unlink(&mut self) {
        if std::mem::take(&mut self.linked) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Whether the slot of the next payload is free, reading the receiver's counter with
    /// `order`. The peer's counter only decides which slots look free: a value ahead of
    /// `sent` (impossible from an honest peer) makes the lane look full.
    fn has_room(&self, order: Ordering) -> bool {
        self.sent.wrapping_sub(self.map.counter(CONSUMED).load(order)) < self.slots
    }

    /// Copies `payload` into the next slot if the receiver has consumed it. If the lane is
    /// full, asks the receiver for a credit (the `WAITING` word) and returns
    /// [`Put::Full`]: the caller holds the frame until the credit, or any other reason to
    /// flush, comes.
    pub(super) fn try_put(&mut self, payload: &[u8]) -> Put {
        if payload.len() > self.slot_bytes {
            return Put::Unfit;
        }
        if !self.has_room(Ordering::Acquire) {
            // Dekker with `RxLane::release`: the receiver stores CONSUMED then reads
            // WAITING, this side stores WAITING then reads CONSUMED, all SeqCst, so at
            // least one of them sees the other's store: no credit is ever missed.
            self.map.counter(WAITING).store(1, Ordering::SeqCst);
            if !self.has_room(Ordering::SeqCst) {
                return Put::Full;
            }
        }
        let at = CONTROL_BYTES + (self.sent % self.slots) as usize * self.slot_bytes;
        self.map.bytes_mut(at, payload.len()).copy_from_slice(payload);
        self.sent += 1;
        self.map.counter(WRITTEN).store(self.sent, Ordering::Release);
        Put::Copied
    }
}

impl Drop for TxLane {
    fn drop(&mut self) {
        self.unlink();
    }
}

/// The receiving end of a lane.
#[derive(Debug)]
pub(super) struct RxLane {
    map: Mapping,
    slots: u64,
    slot_bytes: usize,
    /// Lane frames consumed so far: the next payload is in slot `next % slots`.
    next: u64,
}

impl RxLane {
    /// Checks an offer from rank `from` to this rank `to` in job `job` and maps the lane
    /// it names, then removes its name. `slot_bytes` is the agreed segment size.
    ///
    /// # Errors
    /// Why the offer is refused (sent back to the peer, which then keeps to TCP).
    pub(super) fn accept(payload: &[u8], job: u64, from: Rank, to: Rank, slot_bytes: usize) -> Result<RxLane, String> {
        let (slots, offered_bytes, name) = match payload {
            [a, b, c, d, e, f, g, h, name @ ..] if name.len() <= NAME_BYTES_MAX => {
                (u32::from_le_bytes([*a, *b, *c, *d]), u32::from_le_bytes([*e, *f, *g, *h]), name)
            }
            _ => return Err(format!("offer of {} bytes", payload.len())),
        };
        let (slots, offered_bytes) = (slots as usize, offered_bytes as usize);
        if offered_bytes != slot_bytes || slots != slots_for(slot_bytes) {
            return Err(format!(
                "{slots} slots of {offered_bytes} bytes, expected {} of {slot_bytes}",
                slots_for(slot_bytes)
            ));
        }
        let name = std::str::from_utf8(name).map_err(|_| "name is not UTF-8".to_string())?;
        let prefix = link_prefix(job, from, to);
        let tail = name.strip_prefix(&prefix).ok_or_else(|| format!("name {name:?} does not start {prefix:?}"))?;
        if tail.len() != 16 || !tail.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(format!("name {name:?} does not end in 16 hex digits"));
        }
        let len = file_bytes(slots, slot_bytes).ok_or_else(|| "lane size overflows".to_string())?;
        let path = Path::new(LANE_DIR).join(name);
        let map = Mapping::open_checked(&path, len).map_err(|e| format!("{}: {e}", path.display()))?;
        // The file is mapped: its name is no longer needed by anyone.
        let _ = std::fs::remove_file(&path);
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&MAGIC);
        head[8..12].copy_from_slice(&(slots as u32).to_le_bytes());
        head[12..16].copy_from_slice(&(slot_bytes as u32).to_le_bytes());
        if map.bytes(0, 16) != head || map.len() != len {
            return Err("control page does not match the offer".into());
        }
        Ok(RxLane { map, slots: slots as u64, slot_bytes, next: 0 })
    }

    /// The payload of the next lane frame, `len` bytes.
    ///
    /// # Errors
    /// If `len` exceeds a slot or the sender has not published that payload: a protocol
    /// violation (the link is then failed).
    pub(super) fn payload(&self, len: usize) -> Result<&[u8], String> {
        if len > self.slot_bytes {
            return Err(format!("lane payload of {len} bytes exceeds the slot size {}", self.slot_bytes));
        }
        if self.map.counter(WRITTEN).load(Ordering::Acquire) <= self.next {
            return Err(format!("lane frame #{} before its payload was written", self.next));
        }
        let at = CONTROL_BYTES + (self.next % self.slots) as usize * self.slot_bytes;
        Ok(self.map.bytes(at, len))
    }

    /// The current lane frame is used up: its slot goes back to the sender. Returns true
    /// if the sender waits for a credit and now has half the lane free (send one then).
    pub(super) fn release(&mut self) -> bool {
        self.next += 1;
        self.map.counter(CONSUMED).store(self.next, Ordering::SeqCst);
        let in_flight = self.map.counter(WRITTEN).load(Ordering::Acquire).wrapping_sub(self.next);
        in_flight <= self.slots / 2
            && self.map.counter(WAITING).load(Ordering::SeqCst) != 0
            && self.map.counter(WAITING).swap(0, Ordering::SeqCst) != 0
    }
}

/// Removes the lane files job `job` left behind (a rank killed between creating a lane
/// and its peer mapping it). Returns how many it removed. `ringrun` calls it at exit.
pub(crate) fn remove_leftovers(job: u64) -> usize {
    let prefix = job_prefix(job);
    let Ok(dir) = std::fs::read_dir(LANE_DIR) else { return 0 };
    dir.flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// What [`TxLane::try_put`] did with a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Put {
    /// Copied into the next slot: send the header flagged.
    Copied,
    /// Every slot is in use: hold the frame until the receiver's credit.
    Full,
    /// The frame does not go through the lane (too small or too big): send it over TCP.
    Unfit,
}

/// The lane state of one ring connection, both directions.
#[derive(Debug, Default)]
pub(super) struct Lanes {
    /// Our frames to the peer.
    pub(super) tx: Tx,
    /// The peer's frames to us, once we accepted its offer.
    pub(super) rx: Option<RxLane>,
    /// The frame being received has its payload in the lane.
    pub(super) rx_frame: bool,
    /// Payload bytes sent through the lane.
    pub(super) bytes_sent: u64,
    /// Payload bytes received through the lane.
    pub(super) bytes_received: u64,
    /// The last flush stopped at a frame waiting for a free slot.
    pub(super) tx_blocked: bool,
}

/// The sending direction of a connection's lane.
#[derive(Debug, Default)]
pub(super) enum Tx {
    /// No lane: everything goes over TCP.
    #[default]
    None,
    /// Offered, no answer yet: everything goes over TCP meanwhile.
    Offered(TxLane),
    /// Accepted by the peer.
    Active(TxLane),
}

impl Lanes {
    /// Copies the payload of a raw data frame of a call on `call_bytes` bytes into the lane
    /// if it may go through it.
    pub(super) fn try_send(&mut self, payload: &[u8], call_bytes: usize) -> Put {
        let Tx::Active(lane) = &mut self.tx else { return Put::Unfit };
        let worth = payload.len() >= LANE_PAYLOAD_BYTES_ANY_CALL
            || (payload.len() >= LANE_PAYLOAD_BYTES_MIN
                && (call_bytes >= LANE_CALL_BYTES_MIN || call_bytes <= LANE_CALL_BYTES_ONE_FRAME));
        if !worth {
            return Put::Unfit;
        }
        let put = lane.try_put(payload);
        if put == Put::Copied {
            self.bytes_sent += payload.len() as u64;
        }
        put
    }

    /// The current lane frame (`len` bytes) is used up. Returns true if the peer waits
    /// for a credit.
    pub(super) fn release_frame(&mut self, len: usize) -> bool {
        if !std::mem::take(&mut self.rx_frame) {
            return false;
        }
        self.bytes_received += len as u64;
        self.rx.as_mut().is_some_and(RxLane::release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SLOT: usize = 64 << 10;

    fn offer_with(slots: usize, slot_bytes: usize, name: &str) -> Vec<u8> {
        let mut p = (slots as u32).to_le_bytes().to_vec();
        p.extend_from_slice(&(slot_bytes as u32).to_le_bytes());
        p.extend_from_slice(name.as_bytes());
        p
    }

    /// Payloads go round the slots in order and a full lane refuses more until the
    /// receiver releases one; bytes arrive unchanged.
    #[test]
    fn payloads_cycle_through_slots_and_a_full_lane_refuses() {
        let mut tx = TxLane::create(0x1abc, 1, 2, SLOT).unwrap();
        let mut rx = RxLane::accept(&tx.offer(), 0x1abc, 1, 2, SLOT).unwrap();
        assert!(!tx.path.exists(), "the receiver removed the name");
        let slots = slots_for(SLOT);
        assert!(rx.payload(10).is_err(), "nothing written yet");
        assert_eq!(slots, LANE_SLOTS);
        for k in 0..slots {
            assert_eq!(tx.try_put(&vec![k as u8; 1000 + k]), Put::Copied);
        }
        assert_eq!(tx.try_put(&[1; 10]), Put::Full);
        assert_eq!(tx.try_put(&vec![0; SLOT + 1]), Put::Unfit);
        // The sender waits: the receiver asks for a credit once half the lane is free, once.
        let credits: Vec<bool> = (0..slots).map(|_| rx.release()).collect();
        let first = credits.iter().position(|c| *c).unwrap();
        assert_eq!(first + 1, slots - slots / 2, "credit when half the lane is free");
        assert_eq!(credits.iter().filter(|c| **c).count(), 1);
        for k in 0..slots * 3 {
            assert_eq!(tx.try_put(&vec![k as u8; 1000 + k]), Put::Copied);
            assert_eq!(rx.payload(1000 + k).unwrap(), &vec![k as u8; 1000 + k][..]);
            assert!(!rx.release(), "nobody waits");
        }
        assert!(rx.payload(SLOT + 1).is_err());
    }

    /// Offers naming another job or link, a wrong size, a file that is not 0600 or a
    /// symlink are refused with a reason, never mapped.
    #[test]
    fn bad_offers_are_refused() {
        let tx = TxLane::create(0xabc, 1, 2, SLOT).unwrap();
        let good = tx.offer();
        let slots = slots_for(SLOT);
        let name = tx.path.file_name().unwrap().to_str().unwrap().to_string();
        let refused = |p: &[u8], job: u64, from: Rank, to: Rank| RxLane::accept(p, job, from, to, SLOT).unwrap_err();
        assert!(refused(&good, 0xabd, 1, 2).contains("does not start"));
        assert!(refused(&good, 0xabc, 2, 1).contains("does not start"));
        assert!(refused(&offer_with(slots, SLOT * 2, &name), 0xabc, 1, 2).contains("expected"));
        assert!(refused(&offer_with(slots + 1, SLOT, &name), 0xabc, 1, 2).contains("expected"));
        assert!(refused(&offer_with(slots, SLOT, "ringcc-lane-0000000000000abc-1-2-../../etc/x"), 0xabc, 1, 2)
            .contains("16 hex"));
        assert!(refused(&good[..5], 0xabc, 1, 2).contains("offer of 5"));
        assert!(refused(&offer_with(slots, SLOT, &"a".repeat(200)), 0xabc, 1, 2).contains("offer of"));
        // A file of the right name but the wrong size.
        let short = Path::new(LANE_DIR).join(format!("{}{:016x}", link_prefix(0xabc, 1, 2), 7u64));
        std::fs::write(&short, b"short").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let offer = offer_with(slots, SLOT, short.file_name().unwrap().to_str().unwrap());
        assert!(refused(&offer, 0xabc, 1, 2).contains("bytes, expected"));
        // The right size, mode 0644.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&short)
            .unwrap()
            .set_len(file_bytes(slots, SLOT).unwrap() as u64)
            .unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(refused(&offer, 0xabc, 1, 2).contains("mode 644"));
        // 0600, but no magic.
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(refused(&offer, 0xabc, 1, 2).contains("control page"));
        // A symlink to the real lane is not followed.
        let link = Path::new(LANE_DIR).join(format!("{}{:016x}", link_prefix(0xabc, 1, 2), 8u64));
        std::os::unix::fs::symlink(&tx.path, &link).unwrap();
        let offer = offer_with(slots, SLOT, link.file_name().unwrap().to_str().unwrap());
        assert!(refused(&offer, 0xabc, 1, 2).contains("open"));
        let _ = std::fs::remove_file(&link);
        assert_eq!(remove_leftovers(0xabc), 1, "the tx lane's file is still named; the others are gone");
        let _ = std::fs::remove_file(&short);
    }
}
