//! Rendezvous: registrations and joins, the first view, and job-wide refusals.

use std::time::Instant;

use mio::Token;

use super::{Phase, State};
use crate::coord::{Member, Registration, View};
use crate::core::membership::{Membership, MembershipConfig};
use crate::wire::control::{Control, Refusal};

impl State {
    pub(super) fn register(&mut self, token: Token, reg: Registration) {
        let rank = reg.rank;
        if let Some(c) = self.conns.get_mut(&token) {
            if c.rank.is_some() {
                return self.refuse_all(Refusal::Rendezvous { reason: format!("rank {rank} registered twice") });
            }
            c.rank = Some(rank);
        }
        match &self.phase {
            Phase::Refused(r) => {
                let r = r.clone();
                self.send(token, &Control::Refused(r));
                return;
            }
            Phase::Running(_) => return self.register_join(token, reg),
            Phase::Rendezvous => {}
        }
        let world = self.options.world_size;
        if reg.world_size != world {
            return self.refuse_all(Refusal::ConfigMismatch {
                field: "world_size".into(),
                rank: rank as u32,
                value: reg.world_size.to_string(),
                other_rank: u32::MAX,
                other_value: format!("{world} (coordinator)"),
            });
        }
        if rank >= world {
            return self.refuse_all(Refusal::Rendezvous { reason: format!("rank {rank} is outside 0..{world}") });
        }
        if self.registered.contains_key(&rank) {
            return self.refuse_all(Refusal::Rendezvous { reason: format!("two processes registered as rank {rank}") });
        }
        if let Some((first_rank, (_, first))) = self.registered.iter().next() {
            if let Some(m) = mismatch(first, *first_rank, &reg) {
                self.registered.insert(rank, (token, reg));
                return self.refuse_all(m);
            }
        }
        self.registered.insert(rank, (token, reg));
        if self.registered.len() == world {
            let view = self.first_view();
            tracing::info!(epoch = view.epoch, world, "rendezvous complete");
            let tokens: Vec<Token> = self.registered.values().map(|(t, _)| *t).collect();
            for t in tokens {
                self.send(t, &Control::View(view.clone()));
            }
            // Every rank agreed on the fingerprint, so any registration tells the mode.
            let join_points = self
                .registered
                .values()
                .next()
                .is_some_and(|(_, r)| r.fingerprint.iter().any(|(k, v)| k == "join_points" && v == "true"));
            let config = MembershipConfig {
                heartbeat_timeout: self.options.heartbeat_timeout,
                min_world: self.options.min_world,
                join_points,
            };
            let members = view.members.iter().map(|m| (m.rank, m.clone())).collect();
            self.phase = Phase::Running(Box::new(Membership::new(config, view.epoch, members, Instant::now())));
        }
    }

    /// A rank registering while the job runs: a restarted process (a later incarnation of a
    /// rank) or one that was evicted and comes back. It must match the job's configuration;
    /// an earlier incarnation still in the ring is evicted (its process was replaced). It is
    /// admitted later, at a call boundary, with the view sent to every member.
    pub(super) fn register_join(&mut self, token: Token, reg: Registration) {
        let rank = reg.rank;
        let refuse = |reason: String| Control::Refused(Refusal::Rendezvous { reason });
        if reg.world_size != self.options.world_size || rank >= self.options.world_size {
            let reason = format!(
                "rank {rank} of world {} cannot join a job of world {}",
                reg.world_size, self.options.world_size
            );
            return self.send(token, &refuse(reason));
        }
        let previous = self.registered.get(&rank).map(|(t, r)| (*t, r.incarnation));
        if let Some((_, inc)) = previous.filter(|(_, inc)| reg.incarnation <= *inc) {
            let reason = format!(
                "rank {rank} incarnation {} cannot join: incarnation {inc} was already registered",
                reg.incarnation
            );
            return self.send(token, &refuse(reason));
        }
        if let Some(m) = self.registered.values().find(|(t, _)| *t != token).and_then(|(_, first)| {
            let first_rank = first.rank;
            mismatch(first, first_rank, &reg)
        }) {
            return self.send(token, &Control::Refused(m));
        }
        // The earlier incarnation's connection, if still open, belongs to a replaced process.
        if let Some((old, _)) = previous.filter(|(t, _)| *t != token) {
            self.close(old);
        }
        if let Phase::Running(m) = &mut self.phase {
            m.handle_replaced(rank, Instant::now());
        }
        let member = Member { rank, addr: reg.listen, host: reg.host.clone() };
        let incarnation = reg.incarnation;
        self.registered.insert(rank, (token, reg));
        let result = match &mut self.phase {
            Phase::Running(m) => m.handle_join(rank, member, Instant::now()),
            _ => Err("the job is not running".into()),
        };
        match result {
            Ok(()) => tracing::warn!(rank, incarnation, "rank asks to join the running job"),
            Err(reason) => self.send(token, &refuse(format!("rank {rank} cannot join: {reason}"))),
        }
    }

    /// Ring order: hosts in order of their lowest rank, ranks ascending within a host, so
    /// each direction of the ring crosses each host boundary once.
    pub(super) fn first_view(&self) -> View {
        let mut hosts: Vec<(String, Vec<Member>)> = Vec::new();
        for (rank, (_, reg)) in &self.registered {
            let m = Member { rank: *rank, addr: reg.listen, host: reg.host.clone() };
            match hosts.iter_mut().find(|(h, _)| *h == reg.host) {
                Some((_, v)) => v.push(m),
                None => hosts.push((reg.host.clone(), vec![m])),
            }
        }
        View {
            job: self.options.job,
            epoch: 1,
            world_size: self.options.world_size,
            members: hosts.into_iter().flat_map(|(_, v)| v).collect(),
            start_seq: None,
            joined: Vec::new(),
        }
    }

    pub(super) fn refuse_all(&mut self, refusal: Refusal) {
        tracing::warn!("coordinator refuses the job: {refusal:?}");
        let tokens: Vec<Token> = self.conns.iter().filter(|(_, c)| c.rank.is_some()).map(|(t, _)| *t).collect();
        for t in tokens {
            self.send(t, &Control::Refused(refusal.clone()));
        }
        self.phase = Phase::Refused(refusal);
    }
}

/// The first fingerprint field on which `reg` differs from `first`.
fn mismatch(first: &Registration, first_rank: usize, reg: &Registration) -> Option<Refusal> {
    let lookup = |r: &Registration, k: &str| r.fingerprint.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
    let mut fields: Vec<&String> = first.fingerprint.iter().map(|(k, _)| k).collect();
    fields.extend(reg.fingerprint.iter().map(|(k, _)| k));
    for field in fields {
        let (a, b) = (lookup(first, field), lookup(reg, field));
        if a != b {
            return Some(Refusal::ConfigMismatch {
                field: field.clone(),
                rank: first_rank as u32,
                value: a.unwrap_or_else(|| "(absent)".into()),
                other_rank: reg.rank as u32,
                other_value: b.unwrap_or_else(|| "(absent)".into()),
            });
        }
    }
    None
}
