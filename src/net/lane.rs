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
//! Whole frames: a raw data frame of a call under 16 MiB ([`WHOLE_CALL_BYTES_MAX`]) goes
//! into the lane header and all when a slot is free and nothing waits on the stream before
//! it. Its header goes into the slot's record in the control page with a stamp, the frames
//! the sender has written to TCP so far, which places it among them: the receiver takes it
//! right after TCP frame `stamp - 1`, before frame `stamp` (`EventLoop::pump_whole`). A
//! receiver that may block in its poller says so in the `SLEEPING` word, and a sender that
//! puts a whole frame in meanwhile wakes it with a [`crate::wire::FrameKind::LaneBell`].
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
use crate::wire::HEADER_LEN;
use crate::Rank;

// Every slot's record fits the control page.
const _: () = assert!(FRAMES + LANE_SLOTS * FRAME_RECORD <= CONTROL_BYTES);

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

/// Offset of the receiver's "asleep" word: 1 while its event loop may block in the poller,
/// so a whole frame put into the lane needs a [`crate::wire::FrameKind::LaneBell`] over TCP.
const SLEEPING: usize = 256;

/// Offset of the per-slot records: for slot `s`, at `FRAMES + s * FRAME_RECORD`, a word
/// saying what the slot holds (0: a payload whose header goes over TCP; [`WHOLE`] plus a
/// stamp: a whole frame), then the frame's header.
const FRAMES: usize = 320;

/// Bytes of one slot record: the word and a frame header.
const FRAME_RECORD: usize = 8 + HEADER_LEN;

/// Bit of a slot record's word marking a whole frame (header in the record). The other
/// bits are the stamp: how many frames the sender had written to the TCP stream before
/// it, which places it among them.
const WHOLE: u64 = 1 << 63;

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

/// Calls (bytes of the caller's buffer) below this size send their raw data frames through
/// the lane whole, header included, when a slot is free and nothing waits on the stream
/// before them: every call that does not send its payloads through the lane with the header
/// on TCP ([`LANE_CALL_BYTES_MIN`]). On a host with more ranks than cores such a call's
/// time is mostly the kernel's TCP path (a `writev` and a `recv` per frame, and the loopback
/// delivery); a receiver that spins finds a whole frame without a system call, one that may
/// sleep in the poller gets a bell over TCP. Measured at N=4 (2 cores, alternating launches,
/// `ringbench -c 1`): the latency path's 4 KiB 51-60 -> 20 us and 64 KiB 133-143 -> 98 us;
/// ring calls of 128 KiB 218-264 -> 103-167 us, 256 KiB 478-571 -> 346-463, 1 MiB
/// 1202-1507 -> 868-1443, 2 MiB 2572-2965 -> 1549-2069; 4-8 MiB level, and from 16 MiB on
/// (payloads through the lane, headers on TCP) no difference either way.
const WHOLE_CALL_BYTES_MAX: usize = LANE_CALL_BYTES_MIN - 1;

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
        self.publish(payload, None);
        Put::Copied
    }

    /// Puts a whole frame, its encoded `header` (lane flag set) and `payload`, into the
    /// next slot if it is free, stamped with `stamp`, the frames written to the TCP stream
    /// before it. Returns `None` if the frame does not fit or the lane is full (the caller
    /// then queues it on the stream as usual), else whether the receiver's loop may be
    /// asleep: then it must be woken with a [`crate::wire::FrameKind::LaneBell`].
    pub(super) fn try_put_frame(&mut self, header: &[u8; HEADER_LEN], payload: &[u8], stamp: u64) -> Option<bool> {
        if payload.len() > self.slot_bytes || stamp >= WHOLE || !self.has_room(Ordering::Acquire) {
            return None;
        }
        self.publish(payload, Some((header, stamp)));
        // Dekker with `RxLane::sleep`: this side stores WRITTEN then reads SLEEPING, the
        // receiver stores SLEEPING then reads WRITTEN, all SeqCst: either it sees the frame
        // before it sleeps, or this side sees it asleep and rings.
        Some(
            self.map.counter(SLEEPING).load(Ordering::SeqCst) != 0
                && self.map.counter(SLEEPING).swap(0, Ordering::SeqCst) != 0,
        )
    }

    /// Copies `payload` into the next slot, fills in the slot's record (a whole frame's
    /// header and stamp, or none) and publishes it.
    fn publish(&mut self, payload: &[u8], whole: Option<(&[u8; HEADER_LEN], u64)>) {
        let slot = (self.sent % self.slots) as usize;
        let at = CONTROL_BYTES + slot * self.slot_bytes;
        self.map.bytes_mut(at, payload.len()).copy_from_slice(payload);
        let record = self.map.bytes_mut(FRAMES + slot * FRAME_RECORD, FRAME_RECORD);
        match whole {
            Some((header, stamp)) => {
                record[..8].copy_from_slice(&(WHOLE | stamp).to_le_bytes());
                record[8..].copy_from_slice(header);
            }
            None => record[..8].copy_from_slice(&0u64.to_le_bytes()),
        }
        self.sent += 1;
        self.map.counter(WRITTEN).store(self.sent, Ordering::SeqCst);
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

    /// The next lane frame if it is a whole frame (header in the lane) that comes before
    /// the TCP stream's frame number `tcp_in` (counting from 0). Loads the sender's counter
    /// sequentially consistent (see [`RxLane::sleep`]).
    pub(super) fn next_whole(&self, tcp_in: u64) -> Whole {
        if self.map.counter(WRITTEN).load(Ordering::SeqCst) <= self.next {
            return Whole::None;
        }
        let slot = (self.next % self.slots) as usize;
        let record = self.map.bytes(FRAMES + slot * FRAME_RECORD, FRAME_RECORD);
        let mut word = [0u8; 8];
        word.copy_from_slice(&record[..8]);
        let word = u64::from_le_bytes(word);
        if word & WHOLE == 0 {
            // Its header comes over TCP.
            return Whole::None;
        }
        let stamp = word & !WHOLE;
        match stamp.cmp(&tcp_in) {
            std::cmp::Ordering::Greater => Whole::Later,
            std::cmp::Ordering::Less => Whole::Misplaced(format!(
                "whole lane frame #{} stamped after TCP frame {stamp}, but TCP frame {tcp_in} was already read",
                self.next
            )),
            std::cmp::Ordering::Equal => {
                let mut header = [0u8; HEADER_LEN];
                header.copy_from_slice(&record[8..]);
                Whole::Ready(header)
            }
        }
    }

    /// Says whether this side's loop may block in the poller (`asleep`): while it is, a
    /// sender that puts a whole frame into the lane rings the bell over TCP. Call
    /// [`RxLane::next_whole`] after saying so, before blocking (see `try_put_frame`).
    pub(super) fn sleep(&self, asleep: bool) {
        self.map.counter(SLEEPING).store(u64::from(asleep), Ordering::SeqCst);
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

/// Whether an encoded header is a raw (uncompressed) data frame's: the only frames lanes
/// carry.
pub(super) fn is_raw_data(header: &[u8; HEADER_LEN]) -> bool {
    header[5] == crate::wire::FrameKind::Data as u8 && header[6] == crate::codec::Codec::Raw as u8
}

/// What the next lane frame is, to a receiver looking for whole frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Whole {
    /// Nothing published, or a payload whose header comes over TCP.
    None,
    /// A whole frame, which comes after a TCP frame not yet read.
    Later,
    /// A whole frame that comes now: its header.
    Ready([u8; HEADER_LEN]),
    /// A whole frame stamped before TCP frames already read: a protocol violation.
    Misplaced(String),
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

    /// Puts a whole raw data frame (encoded `header`, `payload`) of a call on `call_bytes`
    /// bytes into the lane, header and all, if the call is small enough
    /// ([`WHOLE_CALL_BYTES_MAX`]) and a slot is free; `stamp` counts the frames written to
    /// the TCP stream before it, and `payload_crc` says whether the CRC covers the payload.
    /// Returns `None` if the frame must go on the stream as usual, else whether the
    /// receiver may be asleep (send it a bell).
    pub(super) fn try_send_whole(
        &mut self,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
        call_bytes: usize,
        payload_crc: bool,
        stamp: u64,
    ) -> Option<bool> {
        let Tx::Active(lane) = &mut self.tx else { return None };
        if call_bytes > WHOLE_CALL_BYTES_MAX || !is_raw_data(header) {
            return None;
        }
        let mut flagged = *header;
        crate::wire::header::set_flags(&mut flagged, FLAG_LANE, if payload_crc { payload.len() } else { 0 });
        let bell = lane.try_put_frame(&flagged, payload, stamp)?;
        self.bytes_sent += payload.len() as u64;
        Some(bell)
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

    /// Whole frames carry their header and stamp in the slot's record and come out in
    /// order with the TCP stream's frames: before TCP frame number `stamp`, never after it.
    /// Payload-only slots (header over TCP) are not taken for whole frames. A sender rings
    /// only a receiver that said it may sleep, once, and a full lane refuses a whole frame
    /// without asking for a credit (it goes on the stream instead).
    #[test]
    fn whole_frames_come_in_stamp_order_and_ring_only_a_sleeper() {
        let mut tx = TxLane::create(0x2abc, 1, 2, SLOT).unwrap();
        let mut rx = RxLane::accept(&tx.offer(), 0x2abc, 1, 2, SLOT).unwrap();
        let header = |k: u8| [k; HEADER_LEN];
        assert_eq!(rx.next_whole(0), Whole::None, "nothing written yet");
        assert_eq!(tx.try_put_frame(&header(1), &[1; 100], 0), Some(false), "awake: no bell");
        assert_eq!(rx.next_whole(0), Whole::Ready(header(1)));
        assert_eq!(rx.payload(100).unwrap(), &[1; 100][..]);
        assert!(!rx.release());
        // Stamped after two TCP frames: it waits for them, and is misplaced after a third.
        assert_eq!(tx.try_put_frame(&header(2), &[2; 10], 2), Some(false));
        assert_eq!(rx.next_whole(1), Whole::Later);
        assert!(matches!(rx.next_whole(3), Whole::Misplaced(_)));
        assert_eq!(rx.next_whole(2), Whole::Ready(header(2)));
        assert!(!rx.release());
        // A payload whose header goes over TCP is not a whole frame, whatever its slot held.
        assert_eq!(tx.try_put(&[3; 10]), Put::Copied);
        assert_eq!(rx.next_whole(2), Whole::None);
        assert_eq!(rx.payload(10).unwrap(), &[3; 10][..]);
        assert!(!rx.release());
        // A receiver about to sleep gets one bell for what arrives meanwhile.
        rx.sleep(true);
        assert_eq!(tx.try_put_frame(&header(4), &[4; 10], 3), Some(true));
        assert_eq!(tx.try_put_frame(&header(5), &[5; 10], 3), Some(false), "one bell per sleep");
        rx.sleep(false);
        for k in [4, 5] {
            assert_eq!(rx.next_whole(3), Whole::Ready(header(k)));
            assert!(!rx.release());
        }
        // Too big, a stamp out of range, or a full lane: the frame stays on the stream.
        assert_eq!(tx.try_put_frame(&header(6), &vec![0; SLOT + 1], 3), None);
        assert_eq!(tx.try_put_frame(&header(6), &[0; 10], WHOLE), None);
        for k in 0..slots_for(SLOT) {
            assert_eq!(tx.try_put_frame(&header(6), &[k as u8; 10], 3), Some(false));
        }
        assert_eq!(tx.try_put_frame(&header(7), &[0; 10], 3), None);
        assert_eq!(tx.map.counter(WAITING).load(Ordering::SeqCst), 0, "no credit asked for");
        assert_eq!(rx.next_whole(3), Whole::Ready(header(6)));
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
