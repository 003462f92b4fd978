//! A linearizability checker for the histories the fault tests record: Wing and Gong's search
//! with Lowe's memoisation ("WGL"), the algorithm of porcupine and of Knossos' `wgl` checker,
//! over the history of one object (a KV key, a lock). Histories partition by key, so a test
//! checks each key's history on its own.
//!
//! Hand-written, as the issue allows: stateright's `LinearizabilityTester` (the maintained Rust
//! candidate) searches by plain backtracking without memoisation, and a history with operations
//! whose outcome is unknown (a timeout during a partition) keeps those operations concurrent with
//! everything after them, which makes an unmemoised search exponential in their number. No
//! maintained Rust crate implements WGL; porcupine is Go.
//!
//! The search: events (calls and returns) in time order in a doubly linked list; repeatedly take
//! the first call whose operation the model accepts from the current state and whose
//! (linearized set, state) pair is new, "lift" it (and its return) out of the list, and start
//! again from the head; on reaching a return, the operation it ends cannot be linearized later,
//! so undo the last lift and try the call after it. The list empties exactly when the history is
//! linearizable. An operation with an unknown outcome returns at the end of time: it may take
//! effect anywhere after its call, and linearizing it after everything else is the same as it
//! never taking effect, as Jepsen models `:info` operations.

#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification: the object's state and what each operation (input and recorded
/// output together) does to it.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Op: Debug;
    fn init(&self) -> Self::State;
    /// The state after `op` from `state`, or None if `op`'s recorded output cannot happen there.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

/// One operation as a client saw it: its call and return times (any monotonic clock, in the
/// same unit), `ret` None when the outcome is unknown (the operation may or may not have taken
/// effect, at any time after its call).
#[derive(Clone, Debug)]
pub struct Operation<O> {
    pub op: O,
    pub call: u64,
    pub ret: Option<u64>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order exists. `longest` is the deepest partial linearization the search reached (as
    /// indices into the history, in order); `stuck` are the operations that were candidates to
    /// come next there and that the model refused.
    Violation {
        longest: Vec<usize>,
        stuck: Vec<usize>,
    },
    /// The search visited `budget` states without an answer.
    Inconclusive {
        explored: usize,
    },
}

/// Is `history` linearizable under `model`? Explores at most `budget` distinct (linearized
/// set, state) pairs.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Op>], budget: usize) -> Verdict {
    let n = history.len();
    // Nodes 0..n are calls, n..2n returns, 2n is the head sentinel, 2n+1 the tail sentinel.
    let head = 2 * n;
    let tail = 2 * n + 1;
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in history.iter().enumerate() {
        // Calls sort before returns at the same instant: two operations that touch at one
        // instant count as concurrent, never as ordered, so ties cannot make a false violation.
        events.push((o.call, 0, i));
        events.push((o.ret.unwrap_or(u64::MAX), 1, n + i));
    }
    events.sort_unstable();
    let mut next = vec![tail; 2 * n + 2];
    let mut prev = vec![head; 2 * n + 2];
    let mut last = head;
    for &(_, _, node) in &events {
        next[last] = node;
        prev[node] = last;
        last = node;
    }
    next[last] = tail;
    prev[tail] = last;

    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, q) = (prev[node], next[node]);
        next[p] = q;
        prev[q] = p;
    };
    // Reinsertion in the reverse order of removal restores the list exactly (dancing links).
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, q) = (prev[node], next[node]);
        next[p] = node;
        prev[q] = node;
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state = model.init();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut seen: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut stuck: Vec<usize> = Vec::new();
    let mut entry = next[head];
    while next[head] != tail {
        if entry < n {
            let i = entry;
            let mut accepted = false;
            if let Some(after) = model.step(&state, &history[i].op) {
                linearized[i / 64] |= 1 << (i % 64);
                if seen.insert((linearized.clone(), after.clone())) {
                    if seen.len() > budget {
                        return Verdict::Inconclusive {
                            explored: seen.len(),
                        };
                    }
                    stack.push((i, std::mem::replace(&mut state, after)));
                    unlink(&mut next, &mut prev, i);
                    unlink(&mut next, &mut prev, n + i);
                    entry = next[head];
                    accepted = true;
                } else {
                    linearized[i / 64] &= !(1 << (i % 64));
                }
            }
            if !accepted {
                if stack.len() >= longest.len() {
                    if stack.len() > longest.len() {
                        stuck.clear();
                    }
                    stuck.push(i);
                }
                entry = next[entry];
            }
        } else {
            if stack.len() > longest.len() {
                longest = stack.iter().map(|(i, _)| *i).collect();
            }
            let Some((i, before)) = stack.pop() else {
                stuck.sort_unstable();
                stuck.dedup();
                return Verdict::Violation { longest, stuck };
            };
            linearized[i / 64] &= !(1 << (i % 64));
            state = before;
            relink(&mut next, &mut prev, n + i);
            relink(&mut next, &mut prev, i);
            entry = next[i];
        }
    }
    Verdict::Linearizable
}

/// A Consul KV key as a register with compare-and-set. Every write stores a value no other
/// write stores, so a `?cas=N` write (Consul compares the key's ModifyIndex with N) is a
/// compare-and-set against the value the client read at index N; `cas=0` means "only if the
/// key does not exist".
pub struct Register;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOp {
    /// `GET ?consistent`: the value seen (None: 404).
    Read(Option<u64>),
    /// `PUT`: acknowledged `true`, or unknown.
    Write(u64),
    /// `DELETE`.
    Delete,
    /// `PUT ?cas=`: `ok` is the answer, None if unknown.
    Cas {
        expect: Option<u64>,
        new: u64,
        ok: Option<bool>,
    },
}

impl Model for Register {
    type State = Option<u64>;
    type Op = RegisterOp;

    fn init(&self) -> Option<u64> {
        None
    }

    fn step(&self, state: &Option<u64>, op: &RegisterOp) -> Option<Option<u64>> {
        match op {
            RegisterOp::Read(seen) => (seen == state).then_some(*state),
            RegisterOp::Write(v) => Some(Some(*v)),
            RegisterOp::Delete => Some(None),
            RegisterOp::Cas { expect, new, ok } => {
                let matches = expect == state;
                match ok {
                    Some(true) => matches.then_some(Some(*new)),
                    Some(false) => (!matches).then_some(*state),
                    None => Some(if matches { Some(*new) } else { *state }),
                }
            }
        }
    }
}

/// A Consul lock: a KV key taken with `?acquire=<session>` and given back with `?release=`, or
/// by destroying the holding session. Mutual exclusion is the register's rule: an acquire
/// succeeds only while nobody else holds the key. Lock-delay (after a holding session is
/// destroyed, acquires are refused for its duration) has no clock here: a destroy that freed
/// the key allows later acquires to be refused until one succeeds.
pub struct Lock;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LockState {
    pub holder: Option<u64>,
    /// A destroy freed the key and no acquire has succeeded since: lock-delay may refuse.
    pub delayed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockOp {
    /// `PUT ?acquire=<session>`: `ok` is the answer, None if unknown.
    Acquire { session: u64, ok: Option<bool> },
    /// `PUT ?release=<session>`.
    Release { session: u64, ok: Option<bool> },
    /// `PUT /v1/session/destroy/<session>` (Behavior `release`): the key is freed.
    Destroy { session: u64 },
    /// `GET ?consistent`: the key's `Session` (None: not held, or no key).
    Read(Option<u64>),
}

impl Model for Lock {
    type State = LockState;
    type Op = LockOp;

    fn init(&self) -> LockState {
        LockState::default()
    }

    fn step(&self, state: &LockState, op: &LockOp) -> Option<LockState> {
        let free_or_mine = |s: u64| state.holder.is_none() || state.holder == Some(s);
        let held = |s: u64| LockState {
            holder: Some(s),
            delayed: false,
        };
        match op {
            LockOp::Acquire { session, ok } => match ok {
                Some(true) => free_or_mine(*session).then(|| held(*session)),
                Some(false) => (!free_or_mine(*session)
                    || (state.holder.is_none() && state.delayed))
                    .then(|| state.clone()),
                // Refused or not applied is the same as taking effect after everything else.
                None => Some(if free_or_mine(*session) {
                    held(*session)
                } else {
                    state.clone()
                }),
            },
            LockOp::Release { session, ok } => {
                let mine = state.holder == Some(*session);
                let freed = LockState {
                    holder: None,
                    delayed: state.delayed,
                };
                match ok {
                    Some(true) => mine.then_some(freed),
                    Some(false) => (!mine).then(|| state.clone()),
                    None => Some(if mine { freed } else { state.clone() }),
                }
            }
            LockOp::Destroy { session } => Some(if state.holder == Some(*session) {
                LockState {
                    holder: None,
                    delayed: true,
                }
            } else {
                state.clone()
            }),
            LockOp::Read(holder) => (*holder == state.holder).then(|| state.clone()),
        }
    }
}

/// [`check`] for a [`Register`], first without the operations of unknown outcome whose value
/// nobody observed (no read returned it, no compare-and-set expected it). Without them the
/// search stays small; and if the rest is linearizable, so is the whole (each of them can take
/// effect after everything else, which nobody sees). Only if the rest is not linearizable (a
/// failed compare-and-set may need one of them to explain it) is the whole history searched.
pub fn check_register(history: &[Operation<RegisterOp>], budget: usize) -> Verdict {
    let observed: HashSet<u64> = history
        .iter()
        .filter_map(|o| match &o.op {
            RegisterOp::Read(v) => *v,
            RegisterOp::Cas { expect, .. } => *expect,
            _ => None,
        })
        .collect();
    let unseen = |o: &Operation<RegisterOp>| {
        o.ret.is_none()
            && match &o.op {
                RegisterOp::Write(v) | RegisterOp::Cas { new: v, .. } => !observed.contains(v),
                _ => false,
            }
    };
    // Stage one drops every operation of unknown outcome: the model accepts each of them from
    // any state, so each can also take effect after everything else.
    if history.iter().any(|o| o.ret.is_none()) {
        let known: Vec<Operation<RegisterOp>> = history
            .iter()
            .filter(|o| o.ret.is_some())
            .cloned()
            .collect();
        if check(&Register, &known, budget) == Verdict::Linearizable {
            return Verdict::Linearizable;
        }
    }
    if history.iter().any(unseen) {
        let rest: Vec<Operation<RegisterOp>> =
            history.iter().filter(|o| !unseen(o)).cloned().collect();
        if check(&Register, &rest, budget) == Verdict::Linearizable {
            return Verdict::Linearizable;
        }
    }
    check(&Register, history, budget)
}

#[cfg(test)]
mod tests {
    use super::RegisterOp::*;
    use super::*;

    fn cas(expect: Option<u64>, new: u64, ok: Option<bool>) -> RegisterOp {
        RegisterOp::Cas { expect, new, ok }
    }

    fn acquire(session: u64, ok: Option<bool>) -> LockOp {
        LockOp::Acquire { session, ok }
    }

    fn release(session: u64, ok: Option<bool>) -> LockOp {
        LockOp::Release { session, ok }
    }

    fn op(op: RegisterOp, call: u64, ret: Option<u64>) -> Operation<RegisterOp> {
        Operation { op, call, ret }
    }

    fn verdict(history: &[Operation<RegisterOp>]) -> Verdict {
        let whole = check(&Register, history, 1_000_000);
        assert_eq!(
            whole,
            check_register(history, 1_000_000),
            "pruning changed the verdict"
        );
        whole
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            op(Read(None), 0, Some(1)),
            op(Write(1), 2, Some(3)),
            op(Read(Some(1)), 4, Some(5)),
            op(cas(Some(1), 2, Some(true)), 6, Some(7)),
            op(cas(Some(1), 3, Some(false)), 8, Some(9)),
            op(Delete, 10, Some(11)),
            op(Read(None), 12, Some(13)),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_reads_may_see_either_side_of_a_write() {
        // The write overlaps both reads: one sees the old value, the other the new one.
        let h = [
            op(Write(1), 0, Some(1)),
            op(Write(2), 2, Some(10)),
            op(Read(Some(2)), 3, Some(4)),
            op(Read(Some(1)), 3, Some(5)),
        ];
        // Reading 2 then 1 needs the write of 2 to land before the first read and after the
        // second: impossible only if the reads were ordered; here they overlap, so the order
        // read(1), write(2), read(2) exists.
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_an_acknowledged_write_is_a_violation() {
        let h = [
            op(Write(1), 0, Some(1)),
            op(Write(2), 2, Some(3)),
            op(Read(Some(1)), 4, Some(5)),
        ];
        assert!(matches!(verdict(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn a_read_that_goes_back_is_a_violation() {
        // Both reads overlap the write, but the second starts after the first returned: once a
        // client saw 2, nobody may see 1 again.
        let h = [
            op(Write(1), 0, Some(1)),
            op(Write(2), 2, Some(20)),
            op(Read(Some(2)), 3, Some(4)),
            op(Read(Some(1)), 5, Some(6)),
        ];
        let Verdict::Violation { longest, stuck } = verdict(&h) else {
            panic!("expected a violation");
        };
        assert!(stuck.contains(&3), "{longest:?} {stuck:?}");
    }

    #[test]
    fn a_lost_acknowledged_write_is_a_violation() {
        let h = [
            op(Write(1), 0, Some(1)),
            op(Delete, 2, Some(3)),
            op(Read(Some(1)), 4, Some(5)),
        ];
        assert!(matches!(verdict(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn unknown_writes_may_take_effect_or_not() {
        // Seen later: it took effect, after its call.
        let applied = [
            op(Write(1), 0, Some(1)),
            op(Write(2), 2, None),
            op(Read(Some(1)), 3, Some(4)),
            op(Read(Some(2)), 10, Some(11)),
        ];
        assert_eq!(verdict(&applied), Verdict::Linearizable);
        // Never seen: it did not (or was overwritten); both are fine.
        let lost = [
            op(Write(1), 0, Some(1)),
            op(Write(2), 2, None),
            op(Read(Some(1)), 10, Some(11)),
        ];
        assert_eq!(verdict(&lost), Verdict::Linearizable);
        // But not before its call.
        let early = [op(Read(Some(2)), 0, Some(1)), op(Write(2), 2, None)];
        assert!(matches!(verdict(&early), Verdict::Violation { .. }));
    }

    #[test]
    fn cas_must_agree_with_the_value_it_replaced() {
        // A successful compare-and-set from 1 when 2 was written (and acknowledged) in between.
        let h = [
            op(Write(1), 0, Some(1)),
            op(Write(2), 2, Some(3)),
            op(cas(Some(1), 3, Some(true)), 4, Some(5)),
        ];
        assert!(matches!(verdict(&h), Verdict::Violation { .. }));
        // A failed one when nothing changed the value.
        let h = [
            op(Write(1), 0, Some(1)),
            op(cas(Some(1), 3, Some(false)), 4, Some(5)),
        ];
        assert!(matches!(verdict(&h), Verdict::Violation { .. }));
        // A failed one explained by a concurrent unknown write.
        let h = [
            op(Write(1), 0, Some(1)),
            op(Write(9), 2, None),
            op(cas(Some(1), 3, Some(false)), 4, Some(5)),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn a_lock_is_never_held_by_two_sessions() {
        use LockOp::*;
        let lock = |h: &[Operation<LockOp>]| check(&Lock, h, 1_000_000);
        let o = |op, call, ret| Operation { op, call, ret };
        let fine = [
            o(acquire(1, Some(true)), 0, Some(1)),
            o(acquire(2, Some(false)), 2, Some(3)),
            o(Read(Some(1)), 4, Some(5)),
            o(release(1, Some(true)), 6, Some(7)),
            o(release(1, Some(false)), 8, Some(9)),
            o(acquire(2, Some(true)), 10, Some(11)),
            o(Destroy { session: 2 }, 12, Some(13)),
            // Lock-delay after the destroy.
            o(acquire(3, Some(false)), 14, Some(15)),
            o(acquire(3, Some(true)), 16, Some(17)),
        ];
        assert_eq!(lock(&fine), Verdict::Linearizable);
        let two_holders = [
            o(acquire(1, Some(true)), 0, Some(1)),
            o(acquire(2, Some(true)), 2, Some(3)),
        ];
        assert!(matches!(lock(&two_holders), Verdict::Violation { .. }));
        // Refused while free, with no destroy to explain a lock-delay.
        let refused = [
            o(acquire(1, Some(true)), 0, Some(1)),
            o(release(1, Some(true)), 2, Some(3)),
            o(acquire(2, Some(false)), 4, Some(5)),
        ];
        assert!(matches!(lock(&refused), Verdict::Violation { .. }));
        // An unknown acquire explains a later holder, and a refusal.
        let unknown = [
            o(acquire(1, None), 0, None),
            o(acquire(2, Some(false)), 4, Some(5)),
            o(Read(Some(1)), 6, Some(7)),
        ];
        assert_eq!(lock(&unknown), Verdict::Linearizable);
    }

    #[test]
    fn many_unknown_operations_stay_tractable() {
        // 40 writes that timed out, a long tail of reads of one acknowledged value, then a read
        // of the last unknown write. The whole search would try the 2^40 subsets of unknown
        // writes that may precede the first read; without the 39 nobody saw it is small.
        let mut h = vec![op(Write(0), 0, Some(1))];
        for i in 0..40u64 {
            h.push(op(Write(100 + i), 2 + i, None));
        }
        for i in 0..200u64 {
            h.push(op(Read(Some(0)), 50 + 2 * i, Some(51 + 2 * i)));
        }
        h.push(op(Read(Some(139)), 1000, Some(1001)));
        assert_eq!(check_register(&h, 200_000), Verdict::Linearizable);
        assert!(matches!(
            check(&Register, &h, 200_000),
            Verdict::Inconclusive { .. }
        ));
    }
}
