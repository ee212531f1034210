//! Control messages between ranks and the coordinator.
//!
//! Each message is a 12-byte head — magic `RGCT` (4), version (1), type (1), reserved (2),
//! body length (u32 LE) — then the body. Bodies are capped at [`CONTROL_BYTES_MAX`];
//! strings at [`CONTROL_STRING_MAX`]; lists at [`WORLD_MAX`] entries. Integers are
//! little-endian; strings are a u16 length then UTF-8; addresses are strings `ip:port`.

use std::net::SocketAddr;
use std::time::Duration;

use super::{CollKind, WireError, PROTOCOL_VERSION};
use crate::coord::status::{is_phase_name, Activity, CallProgress, Progress};
use crate::coord::{Member, Registration, View};
use crate::limits::{CONTROL_BYTES_MAX, CONTROL_STRING_MAX, RESULT_RETAIN_BYTES_MAX, WORLD_MAX};

/// Size of the message head in bytes.
pub const CONTROL_HEAD_LEN: usize = 12;

const CONTROL_MAGIC: [u8; 4] = *b"RGCT";

/// Most (name, value) pairs in a config fingerprint.
const FINGERPRINT_FIELDS_MAX: usize = 64;

/// Why the coordinator refuses a rank (and, for job-wide problems, every rank).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Two ranks disagree on a configuration field.
    ConfigMismatch {
        /// Field name.
        field: String,
        /// One rank and its value.
        rank: u32,
        /// Its value.
        value: String,
        /// The other rank.
        other_rank: u32,
        /// Its value.
        other_value: String,
    },
    /// Rendezvous cannot complete (missing ranks, duplicate rank, rank out of range).
    Rendezvous {
        /// What went wrong.
        reason: String,
    },
}

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Rank to coordinator: here I am.
    Register(Registration),
    /// Coordinator to rank: the membership view to run in.
    View(View),
    /// Coordinator to rank: the job cannot go on as configured.
    Refused(Refusal),
    /// Rank to coordinator: this rank is shutting down cleanly.
    Leave {
        /// The rank leaving.
        rank: u32,
    },
    /// Either direction: still alive. A rank that stops sending them (dead or frozen) is
    /// evicted after the heartbeat timeout; a rank that stops hearing them has lost its
    /// coordinator.
    Heartbeat {
        /// The sender's rank (`u32::MAX` from the coordinator).
        rank: u32,
        /// The sender's current epoch.
        epoch: u64,
    },
    /// Rank to coordinator: a ring neighbour failed (its link closed, reset, sent garbage,
    /// or stalled past the progress timeout). The coordinator alone decides.
    Suspect {
        /// The reporting rank.
        rank: u32,
        /// The suspected rank.
        suspect: u32,
        /// Epoch of the reporter's view.
        epoch: u64,
        /// True for a stall (alive but stuck), false for a closed or broken link.
        stalled: bool,
        /// What the reporter saw.
        reason: String,
    },
    /// Coordinator to rank: this rank is no longer a member (it was declared failed).
    Evicted {
        /// Epoch of the view that excludes it.
        epoch: u64,
        /// Why.
        reason: String,
    },
    /// Coordinator to rank: too few ranks remain; the job cannot go on.
    QuorumLost {
        /// Epoch at which the quorum was lost.
        epoch: u64,
        /// Ranks alive.
        alive: u32,
        /// `min_world`.
        required: u32,
    },
    /// Rank to coordinator, on receiving the view of `epoch`: where this rank stands, so
    /// the coordinator can decide how the interrupted call ends (`core::membership`).
    Resync {
        /// The reporting rank.
        rank: u32,
        /// Epoch of the view being installed.
        epoch: u64,
        /// Calls this rank has completed (returned from).
        completed: u64,
        /// Whether it holds the whole result of call `completed`.
        holds: bool,
        /// Epoch in which that result was computed (meaningful when `holds`).
        attempt_epoch: u64,
    },
    /// Coordinator to rank: how call `seq` ends in the view of `epoch`. `finish`: every
    /// survivor holds its result from the same attempt and returns it; otherwise nobody
    /// returned it, and it is redone over the new view.
    Decision {
        /// Epoch of the view.
        epoch: u64,
        /// The interrupted call.
        seq: u64,
        /// Finish with the held result (true) or redo (false).
        finish: bool,
    },
    /// Rank to coordinator, with each heartbeat: where this rank stands (for `ringrun
    /// status`; see [`crate::coord::status`]). A phase name that is not
    /// [`is_phase_name`] is sent as `unknown`, and refused when received.
    Progress(Progress),
    /// Coordinator to every member of the view of `epoch`: a rank asks to join. Start no
    /// call beyond the one running and answer with [`Control::JoinAck`]; the admitting
    /// view (or [`Control::JoinCancel`], or a newer view) releases the hold.
    JoinPrepare {
        /// Epoch of the current view.
        epoch: u64,
    },
    /// Rank to coordinator: holding at the boundary before call `next_seq` (calls started
    /// so far, the running one included).
    JoinAck {
        /// The answering rank.
        rank: u32,
        /// Epoch of the `JoinPrepare` answered.
        epoch: u64,
        /// First call this rank has not started.
        next_seq: u64,
    },
    /// Coordinator to every member: the join prepared in `epoch` is off (the joiner went
    /// away); release the hold.
    JoinCancel {
        /// Epoch of the `JoinPrepare` cancelled.
        epoch: u64,
    },
    /// Rank to coordinator, with join points on (`Config::join_points`): the application
    /// reached a join point; this rank holds before call `seq` until the coordinator
    /// answers (an admitting view starting at `seq`, or [`Control::JoinPointDone`]).
    JoinPoint {
        /// The rank at the join point.
        rank: u32,
        /// Epoch of its view.
        epoch: u64,
        /// The call after the join point.
        seq: u64,
    },
    /// Coordinator to every member: nobody joins at the join point before call `seq`.
    JoinPointDone {
        /// Epoch of the view.
        epoch: u64,
        /// The call after the join point.
        seq: u64,
    },
    /// The result of a call without completion tokens: rank to coordinator right before
    /// its `Resync` (it holds or retains that result), and coordinator to the members that
    /// lack it right before the `Decision` that finishes the call from it.
    Result(HandedResult),
}

/// A copy of one call's result handed over after a failure (`docs/FAILURES.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedResult {
    /// The rank that computed (or retained) it.
    pub rank: u32,
    /// Epoch of the view being installed.
    pub epoch: u64,
    /// The call.
    pub seq: u64,
    /// Epoch of the attempt that computed it.
    pub attempt_epoch: u64,
    /// Ranks of that attempt, ascending (what the report of the call names).
    pub members: Vec<usize>,
    /// The result bytes, at most [`RESULT_RETAIN_BYTES_MAX`].
    pub bytes: Vec<u8>,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        let mut end = s.len().min(CONTROL_STRING_MAX);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.0.extend_from_slice(&(end as u16).to_le_bytes());
        self.0.extend_from_slice(&s.as_bytes()[..end]);
    }
    fn progress(&mut self, p: &Progress) {
        self.u32(p.rank as u32);
        self.u64(p.epoch);
        self.u64(p.completed);
        self.u8(p.activity as u8);
        self.u32(p.queued);
        self.u64(p.received_bytes);
        let Some(c) = &p.call else { return self.u8(0) };
        self.u8(1);
        self.u64(c.seq);
        self.u8(c.coll as u8);
        self.str(if is_phase_name(&c.phase) { &c.phase } else { "unknown" });
        self.u32(c.step);
        match c.waits_for {
            None => self.u8(0),
            Some(r) => {
                self.u8(1);
                self.u32(r as u32);
            }
        }
        self.u64(u64::try_from(c.running.as_millis()).unwrap_or(u64::MAX));
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(WireError::Truncated { what: "control message" })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Result<String, WireError> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        let n = usize::from(u16::from_le_bytes(a));
        if n > CONTROL_STRING_MAX {
            return Err(WireError::TooLong { field: "string", value: n as u64, limit: CONTROL_STRING_MAX as u64 });
        }
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| WireError::Malformed { what: "string is not UTF-8" })
    }
    fn flag(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Malformed { what }),
        }
    }
    fn addr(&mut self) -> Result<SocketAddr, WireError> {
        self.str()?.parse().map_err(|_| WireError::Malformed { what: "address" })
    }
    fn count(&mut self, limit: usize, field: &'static str) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n > limit {
            return Err(WireError::TooLong { field, value: n as u64, limit: limit as u64 });
        }
        Ok(n)
    }
    fn rank(&mut self) -> Result<usize, WireError> {
        let r = self.u32()? as usize;
        if r >= WORLD_MAX {
            return Err(WireError::Malformed { what: "rank beyond the world limit" });
        }
        Ok(r)
    }
    fn handed(&mut self) -> Result<HandedResult, WireError> {
        let (rank, epoch, seq, attempt_epoch) = (self.u32()?, self.u64()?, self.u64()?, self.u64()?);
        let n = self.count(WORLD_MAX, "result members")?;
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            members.push(self.rank()?);
        }
        let n = self.count(RESULT_RETAIN_BYTES_MAX, "result bytes")?;
        let bytes = self.take(n)?.to_vec();
        Ok(HandedResult { rank, epoch, seq, attempt_epoch, members, bytes })
    }

    fn progress(&mut self) -> Result<Progress, WireError> {
        let rank = self.rank()?;
        let epoch = self.u64()?;
        let completed = self.u64()?;
        let activity = Activity::from_u8(self.u8()?)?;
        let queued = self.u32()?;
        let received_bytes = self.u64()?;
        let call = if self.flag("progress call flag")? {
            let seq = self.u64()?;
            let coll = CollKind::from_u8(self.u8()?)?;
            let phase = self.str()?;
            if !is_phase_name(&phase) {
                return Err(WireError::Malformed { what: "phase name" });
            }
            let step = self.u32()?;
            let waits_for = if self.flag("progress wait flag")? { Some(self.rank()?) } else { None };
            let running = Duration::from_millis(self.u64()?);
            Some(CallProgress { seq, coll, phase, step, waits_for, running })
        } else {
            None
        };
        Ok(Progress { rank, epoch, completed, activity, queued, received_bytes, call })
    }
}

impl Control {
    fn type_id(&self) -> u8 {
        match self {
            Control::Register(_) => 1,
            Control::View(_) => 2,
            Control::Refused(_) => 3,
            Control::Leave { .. } => 4,
            Control::Heartbeat { .. } => 5,
            Control::Suspect { .. } => 6,
            Control::Evicted { .. } => 7,
            Control::QuorumLost { .. } => 8,
            Control::Resync { .. } => 9,
            Control::Decision { .. } => 10,
            Control::Progress(_) => 11,
            Control::JoinPrepare { .. } => 12,
            Control::JoinAck { .. } => 13,
            Control::JoinCancel { .. } => 14,
            Control::JoinPoint { .. } => 15,
            Control::JoinPointDone { .. } => 16,
            Control::Result(_) => 17,
        }
    }

    /// Encodes the message with its head.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(256));
        match self {
            Control::Register(r) => {
                w.u32(r.rank as u32);
                w.u32(r.world_size as u32);
                w.u64(r.incarnation);
                w.str(&r.listen.to_string());
                w.str(&r.host);
                w.u32(r.fingerprint.len() as u32);
                for (k, v) in &r.fingerprint {
                    w.str(k);
                    w.str(v);
                }
            }
            Control::View(v) => {
                w.u64(v.job);
                w.u64(v.epoch);
                w.u32(v.world_size as u32);
                w.u32(v.members.len() as u32);
                for m in &v.members {
                    w.u32(m.rank as u32);
                    w.str(&m.addr.to_string());
                    w.str(&m.host);
                }
                match v.start_seq {
                    None => w.u8(0),
                    Some(seq) => {
                        w.u8(1);
                        w.u64(seq);
                    }
                }
                w.u32(v.joined.len() as u32);
                for r in &v.joined {
                    w.u32(*r as u32);
                }
            }
            Control::Refused(Refusal::ConfigMismatch { field, rank, value, other_rank, other_value }) => {
                w.u8(1);
                w.str(field);
                w.u32(*rank);
                w.str(value);
                w.u32(*other_rank);
                w.str(other_value);
            }
            Control::Refused(Refusal::Rendezvous { reason }) => {
                w.u8(2);
                w.str(reason);
            }
            Control::Leave { rank } => w.u32(*rank),
            Control::Heartbeat { rank, epoch } => {
                w.u32(*rank);
                w.u64(*epoch);
            }
            Control::Suspect { rank, suspect, epoch, stalled, reason } => {
                w.u32(*rank);
                w.u32(*suspect);
                w.u64(*epoch);
                w.u8(u8::from(*stalled));
                w.str(reason);
            }
            Control::Evicted { epoch, reason } => {
                w.u64(*epoch);
                w.str(reason);
            }
            Control::QuorumLost { epoch, alive, required } => {
                w.u64(*epoch);
                w.u32(*alive);
                w.u32(*required);
            }
            Control::Resync { rank, epoch, completed, holds, attempt_epoch } => {
                w.u32(*rank);
                w.u64(*epoch);
                w.u64(*completed);
                w.u8(u8::from(*holds));
                w.u64(*attempt_epoch);
            }
            Control::Decision { epoch, seq, finish } => {
                w.u64(*epoch);
                w.u64(*seq);
                w.u8(u8::from(*finish));
            }
            Control::Progress(p) => w.progress(p),
            Control::JoinPrepare { epoch } | Control::JoinCancel { epoch } => w.u64(*epoch),
            Control::JoinAck { rank, epoch, next_seq: seq } | Control::JoinPoint { rank, epoch, seq } => {
                w.u32(*rank);
                w.u64(*epoch);
                w.u64(*seq);
            }
            Control::JoinPointDone { epoch, seq } => {
                w.u64(*epoch);
                w.u64(*seq);
            }
            Control::Result(h) => {
                w.u32(h.rank);
                w.u64(h.epoch);
                w.u64(h.seq);
                w.u64(h.attempt_epoch);
                w.u32(h.members.len() as u32);
                for m in &h.members {
                    w.u32(*m as u32);
                }
                w.u32(h.bytes.len() as u32);
                w.0.extend_from_slice(&h.bytes);
            }
        }
        let body = w.0;
        let mut out = Vec::with_capacity(CONTROL_HEAD_LEN + body.len());
        out.extend_from_slice(&CONTROL_MAGIC);
        out.push(PROTOCOL_VERSION);
        out.push(self.type_id());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Looks for one whole message at the start of `buf`: `Ok(None)` if more bytes are
    /// needed, `Ok(Some((message, bytes used)))`, or an error after which the connection
    /// must be closed. Never reads past a declared length, never allocates more than the
    /// caps allow.
    ///
    /// # Errors
    /// A [`WireError`] for a bad magic, version, type, length or body.
    pub fn decode(buf: &[u8]) -> Result<Option<(Control, usize)>, WireError> {
        if buf.len() < CONTROL_HEAD_LEN {
            // Reject garbage early: the magic is known after 4 bytes.
            let n = buf.len().min(4);
            if buf[..n] != CONTROL_MAGIC[..n] {
                let mut found = [0u8; 4];
                found[..n].copy_from_slice(&buf[..n]);
                return Err(WireError::BadMagic { found });
            }
            return Ok(None);
        }
        let magic = [buf[0], buf[1], buf[2], buf[3]];
        if magic != CONTROL_MAGIC {
            return Err(WireError::BadMagic { found: magic });
        }
        if buf[4] != PROTOCOL_VERSION {
            return Err(WireError::BadVersion { found: buf[4], expected: PROTOCOL_VERSION });
        }
        let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        if len > CONTROL_BYTES_MAX {
            return Err(WireError::TooLong {
                field: "control body",
                value: len as u64,
                limit: CONTROL_BYTES_MAX as u64,
            });
        }
        if buf.len() < CONTROL_HEAD_LEN + len {
            return Ok(None);
        }
        let mut r = Reader { b: &buf[CONTROL_HEAD_LEN..CONTROL_HEAD_LEN + len], pos: 0 };
        let msg = match buf[5] {
            1 => {
                let rank = r.rank()?;
                let world_size = r.u32()? as usize;
                let incarnation = r.u64()?;
                let listen = r.addr()?;
                let host = r.str()?;
                let n = r.count(FINGERPRINT_FIELDS_MAX, "fingerprint")?;
                let mut fingerprint = Vec::with_capacity(n);
                for _ in 0..n {
                    fingerprint.push((r.str()?, r.str()?));
                }
                Control::Register(Registration { rank, world_size, incarnation, listen, host, fingerprint })
            }
            2 => {
                let job = r.u64()?;
                let epoch = r.u64()?;
                let world_size = r.u32()? as usize;
                let n = r.count(WORLD_MAX, "members")?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(Member { rank: r.rank()?, addr: r.addr()?, host: r.str()? });
                }
                let start_seq = if r.flag("view start flag")? { Some(r.u64()?) } else { None };
                let n = r.count(WORLD_MAX, "joined")?;
                let mut joined = Vec::with_capacity(n);
                for _ in 0..n {
                    joined.push(r.rank()?);
                }
                Control::View(View { job, epoch, world_size, members, start_seq, joined })
            }
            3 => match r.u8()? {
                1 => Control::Refused(Refusal::ConfigMismatch {
                    field: r.str()?,
                    rank: r.u32()?,
                    value: r.str()?,
                    other_rank: r.u32()?,
                    other_value: r.str()?,
                }),
                2 => Control::Refused(Refusal::Rendezvous { reason: r.str()? }),
                v => return Err(WireError::UnknownId { field: "refusal", value: v.into() }),
            },
            4 => Control::Leave { rank: r.u32()? },
            5 => Control::Heartbeat { rank: r.u32()?, epoch: r.u64()? },
            6 => Control::Suspect {
                rank: r.u32()?,
                suspect: r.u32()?,
                epoch: r.u64()?,
                stalled: r.flag("suspect flag")?,
                reason: r.str()?,
            },
            7 => Control::Evicted { epoch: r.u64()?, reason: r.str()? },
            8 => Control::QuorumLost { epoch: r.u64()?, alive: r.u32()?, required: r.u32()? },
            9 => Control::Resync {
                rank: r.u32()?,
                epoch: r.u64()?,
                completed: r.u64()?,
                holds: r.flag("resync flag")?,
                attempt_epoch: r.u64()?,
            },
            10 => Control::Decision { epoch: r.u64()?, seq: r.u64()?, finish: r.flag("decision flag")? },
            11 => Control::Progress(r.progress()?),
            12 => Control::JoinPrepare { epoch: r.u64()? },
            13 => Control::JoinAck { rank: r.u32()?, epoch: r.u64()?, next_seq: r.u64()? },
            14 => Control::JoinCancel { epoch: r.u64()? },
            15 => Control::JoinPoint { rank: r.u32()?, epoch: r.u64()?, seq: r.u64()? },
            16 => Control::JoinPointDone { epoch: r.u64()?, seq: r.u64()? },
            17 => Control::Result(r.handed()?),
            v => return Err(WireError::UnknownId { field: "control type", value: v.into() }),
        };
        if r.pos != len {
            return Err(WireError::Malformed { what: "trailing bytes in control message" });
        }
        Ok(Some((msg, CONTROL_HEAD_LEN + len)))
    }
}

#[cfg(test)]
#[path = "control_tests.rs"]
mod tests;
