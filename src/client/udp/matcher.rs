//! Which request a UDP reply answers: the bookkeeping behind "late" and "duplicate" replies.
//!
//! The protocol carries no request id: a reply is just the request upper-cased. So the client
//! remembers what it sent and matches each reply by content, ignoring ASCII case (which makes the
//! matching work against a server with `--transform upper` and `--transform none` alike). A request
//! is *waiting* until it is answered or its timeout passes, then *expired*; a reply that matches an
//! expired request is *late*, one that matches an already answered request is a *duplicate*.
//!
//! Identical lines cannot be told apart by their replies, so the rule for choosing among several
//! matching requests is: the oldest one still waiting, else the oldest expired one. Preferring a
//! waiting request is right because a request that got no reply within its timeout was most likely
//! lost, not delayed; taking the oldest among equals keeps replies in send order, which is the
//! order the network nearly always delivers them in.
//!
//! This module knows nothing of sockets or clocks: the caller passes `now`, so tests can drive any
//! interleaving of sends, replies and timeouts. Memory is bounded: the expired and answered
//! histories keep only the most recent entries (see [`HISTORY_LEN`], [`HISTORY_BYTES`]); a reply
//! older than that is reported as unexpected.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::client::Id;

/// How many expired and how many answered requests are remembered for recognising late and
/// duplicate replies. Far more than any real reordering; it only bounds memory in a long pipe run.
pub const HISTORY_LEN: usize = 1024;

/// Payload bytes remembered in each history, so that large datagrams cannot make it grow to
/// `HISTORY_LEN` times 64 KiB.
pub const HISTORY_BYTES: usize = 1 << 20;

/// What a reply turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The answer to request `id`, which was still waiting.
    Answer { id: Id, rtt: Duration },
    /// The answer to request `id`, which had already expired (and was reported as lost).
    Late {
        id: Id,
        rtt: Duration,
        request: Vec<u8>,
    },
    /// A second reply to request `id`, which was already answered.
    Duplicate { id: Id, request: Vec<u8> },
    /// Matches nothing the client remembers sending.
    Unexpected,
}

#[derive(Debug)]
struct Request {
    id: Id,
    payload: Vec<u8>,
    sent: Instant,
}

impl Request {
    fn matches(&self, reply: &[u8]) -> bool {
        self.payload.eq_ignore_ascii_case(reply)
    }
}

/// Requests in send order, trimmed from the front to stay within the history bounds.
#[derive(Debug, Default)]
struct History {
    items: VecDeque<Request>,
    bytes: usize,
}

impl History {
    fn push(&mut self, r: Request) {
        self.bytes += r.payload.len();
        self.items.push_back(r);
        while self.items.len() > 1 && (self.items.len() > HISTORY_LEN || self.bytes > HISTORY_BYTES)
        {
            if let Some(old) = self.items.pop_front() {
                self.bytes -= old.payload.len();
            }
        }
    }

    fn take_oldest_match(&mut self, reply: &[u8]) -> Option<Request> {
        let i = self.items.iter().position(|r| r.matches(reply))?;
        let r = self.items.remove(i)?;
        self.bytes -= r.payload.len();
        Some(r)
    }

    fn newest_match(&self, reply: &[u8]) -> Option<&Request> {
        self.items.iter().rev().find(|r| r.matches(reply))
    }
}

/// The requests a UDP client has sent and what became of them.
#[derive(Debug)]
pub struct Tracker {
    timeout: Duration,
    next_id: Id,
    /// Unanswered and within their timeout, in send order (so deadlines are in order too).
    waiting: VecDeque<Request>,
    waiting_bytes: usize,
    expired: History,
    answered: History,
}

impl Tracker {
    /// A tracker whose requests expire `timeout` after they are sent.
    pub fn new(timeout: Duration) -> Tracker {
        Tracker {
            timeout,
            next_id: 1,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            expired: History::default(),
            answered: History::default(),
        }
    }

    /// Records that `payload` was sent at `now`; returns its id.
    pub fn send(&mut self, payload: &[u8], now: Instant) -> Id {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting_bytes += payload.len();
        self.waiting.push_back(Request {
            id,
            payload: payload.to_vec(),
            sent: now,
        });
        id
    }

    /// Uses up an id for a request that could not be sent, so ids stay equal to line numbers.
    pub fn skip(&mut self) -> Id {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Stops waiting for request `id` (the server refused it): it moves to the expired history,
    /// where a reply that still comes is recognised as late.
    pub fn abandon(&mut self, id: Id) {
        if let Some(i) = self.waiting.iter().position(|r| r.id == id)
            && let Some(r) = self.waiting.remove(i)
        {
            self.waiting_bytes -= r.payload.len();
            self.expired.push(r);
        }
    }

    /// Classifies a reply received at `now`.
    ///
    /// A request whose deadline has passed still counts as waiting until [`expire`](Self::expire)
    /// is called, so a caller that handles the replies already received before expiring gives
    /// each request the benefit of any reply that was queued in time.
    pub fn on_reply(&mut self, reply: &[u8], now: Instant) -> Verdict {
        if let Some(i) = self.waiting.iter().position(|r| r.matches(reply))
            && let Some(r) = self.waiting.remove(i)
        {
            self.waiting_bytes -= r.payload.len();
            let (id, rtt) = (r.id, now.saturating_duration_since(r.sent));
            self.answered.push(r);
            return Verdict::Answer { id, rtt };
        }
        if let Some(r) = self.expired.take_oldest_match(reply) {
            let verdict = Verdict::Late {
                id: r.id,
                rtt: now.saturating_duration_since(r.sent),
                request: r.payload.clone(),
            };
            self.answered.push(r);
            return verdict;
        }
        match self.answered.newest_match(reply) {
            Some(r) => Verdict::Duplicate {
                id: r.id,
                request: r.payload.clone(),
            },
            None => Verdict::Unexpected,
        }
    }

    /// Moves every waiting request whose timeout has passed at `now` to the expired history and
    /// returns their ids, oldest first.
    pub fn expire(&mut self, now: Instant) -> Vec<Id> {
        let mut gone = Vec::new();
        while let Some(r) = self.waiting.front() {
            if r.sent + self.timeout > now {
                break;
            }
            if let Some(r) = self.waiting.pop_front() {
                self.waiting_bytes -= r.payload.len();
                gone.push(r.id);
                self.expired.push(r);
            }
        }
        gone
    }

    /// When the oldest waiting request expires, if any is waiting.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.front().map(|r| r.sent + self.timeout)
    }

    /// Whether request `id` is still waiting for its answer.
    pub fn is_waiting(&self, id: Id) -> bool {
        self.waiting.iter().any(|r| r.id == id)
    }

    /// How many requests are waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Payload bytes of the waiting requests.
    pub fn waiting_bytes(&self) -> usize {
        self.waiting_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    const T: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    mod waiting {
        use super::*;

        #[test]
        fn a_reply_answers_its_request_with_the_rtt() {
            let t0 = Instant::now();
            let mut m = Tracker::new(T);
            let id = m.send(b"hello", t0);
            assert_eq!(m.waiting(), 1);
            assert_eq!(m.waiting_bytes(), 5);
            assert_eq!(
                m.on_reply(b"HELLO", t0 + ms(3)),
                Verdict::Answer { id, rtt: ms(3) }
            );
            assert_eq!(m.waiting(), 0);
            assert_eq!(m.waiting_bytes(), 0);
            assert_eq!(m.next_deadline(), None);
        }

        #[test]
        fn matching_ignores_case_so_a_plain_echo_also_matches() {
            let t0 = Instant::now();
            let mut m = Tracker::new(T);
            let id = m.send(b"MiXeD 1", t0);
            assert!(matches!(m.on_reply(b"MiXeD 1", t0), Verdict::Answer { id: i, .. } if i == id));
        }

        #[test]
        fn an_empty_datagram_is_answered_by_an_empty_reply() {
            let t0 = Instant::now();
            let mut m = Tracker::new(T);
            let id = m.send(b"", t0);
            assert!(matches!(m.on_reply(b"", t0), Verdict::Answer { id: i, .. } if i == id));
        }

        #[test]
        fn replies_out_of_order_find_their_own_requests() {
            let t0 = Instant::now();
            let mut m = Tracker::new(T);
            let a = m.send(b"a", t0);
            let b = m.send(b"b", t0);
            assert!(matches!(m.on_reply(b"B", t0), Verdict::Answer { id, .. } if id == b));
            assert!(matches!(m.on_reply(b"A", t0), Verdict::Answer { id, .. } if id == a));
        }

        #[test]
        fn identical_requests_are_answered_oldest_first() {
            let t0 = Instant::now();
            let mut m = Tracker::new(T);
            let first = m.send(b"x", t0);
            let second = m.send(b"x", t0 + ms(10));
            assert!(
                matches!(m.on_reply(b"X", t0 + ms(20)), Verdict::Answer { id, .. } if id == first)
            );
            assert!(
                matches!(m.on_reply(b"X", t0 + ms(20)), Verdict::Answer { id, .. } if id == second)
            );
        }

        #[test]
        fn a_request_past_its_deadline_still_takes_a_reply_until_expired() {
            let t0 = Instant::now();
            let mut m = Tracker::new(T);
            let id = m.send(b"q", t0);
            assert_eq!(m.next_deadline(), Some(t0 + T));
            assert!(
                matches!(m.on_reply(b"Q", t0 + T + ms(1)), Verdict::Answer { id: i, .. } if i == id)
            );
            assert!(m.expire(t0 + T + ms(1)).is_empty());
        }
    }

    mod expired {
        use super::*;

        #[test]
        fn requests_expire_in_send_order_at_their_deadline() {
            let t0 = Instant::now();
            let mut m = Tracker::new(T);
            let a = m.send(b"a", t0);
            let b = m.send(b"b", t0 + ms(500));
            assert!(m.expire(t0 + ms(999)).is_empty());
            assert_eq!(m.expire(t0 + T), vec![a]);
            assert!(m.is_waiting(b));
            assert_eq!(m.next_deadline(), Some(t0 + ms(1500)));
            assert_eq!(m.expire(t0 + ms(5000)), vec![b]);
            assert_eq!(m.waiting(), 0);
        }

        #[test]
        fn a_reply_to_an_expired_request_is_late_not_the_next_answer() {
            let t0 = Instant::now();
            let mut m = Tracker::new(T);
            let a = m.send(b"first", t0);
            m.expire(t0 + T);
            let b = m.send(b"second", t0 + ms(1200));
            assert_eq!(
                m.on_reply(b"FIRST", t0 + ms(1300)),
                Verdict::Late {
                    id: a,
                    rtt: ms(1300),
                    request: b"first".to_vec()
                }
            );
            assert!(m.is_waiting(b));
            // Once late-answered, a further copy is a duplicate.
            assert!(
                matches!(m.on_reply(b"FIRST", t0 + ms(1400)), Verdict::Duplicate { id, .. } if id == a)
            );
        }

        #[test]
        fn a_waiting_identical_request_is_preferred_to_an_expired_one() {
            let t0 = Instant::now();
            let mut m = Tracker::new(T);
            let old = m.send(b"same", t0);
            m.expire(t0 + T);
            let new = m.send(b"same", t0 + ms(1100));
            assert!(
                matches!(m.on_reply(b"SAME", t0 + ms(1101)), Verdict::Answer { id, .. } if id == new)
            );
            assert!(
                matches!(m.on_reply(b"SAME", t0 + ms(1102)), Verdict::Late { id, .. } if id == old)
            );
        }
    }

    #[test]
    fn skipped_ids_are_never_waited_for_and_abandoned_ones_can_be_late() {
        let t0 = Instant::now();
        let mut m = Tracker::new(T);
        assert_eq!(m.skip(), 1);
        let id = m.send(b"x", t0);
        assert_eq!(id, 2);
        m.abandon(id);
        assert_eq!(m.waiting(), 0);
        assert_eq!(m.waiting_bytes(), 0);
        assert!(m.expire(t0 + T).is_empty());
        assert!(matches!(m.on_reply(b"X", t0), Verdict::Late { id: 2, .. }));
    }

    mod answered {
        use super::*;

        #[test]
        fn a_second_reply_is_a_duplicate() {
            let t0 = Instant::now();
            let mut m = Tracker::new(T);
            let id = m.send(b"dup", t0);
            m.on_reply(b"DUP", t0);
            assert_eq!(
                m.on_reply(b"DUP", t0),
                Verdict::Duplicate {
                    id,
                    request: b"dup".to_vec()
                }
            );
        }

        #[test]
        fn a_reply_to_nothing_sent_is_unexpected() {
            let t0 = Instant::now();
            let mut m = Tracker::new(T);
            assert_eq!(m.on_reply(b"WHO", t0), Verdict::Unexpected);
            m.send(b"abc", t0);
            assert_eq!(m.on_reply(b"ABCD", t0), Verdict::Unexpected);
        }

        #[test]
        fn history_is_bounded() {
            let t0 = Instant::now();
            let mut m = Tracker::new(T);
            for i in 0..(HISTORY_LEN + 10) {
                let p = i.to_string();
                m.send(p.as_bytes(), t0);
                m.on_reply(p.as_bytes(), t0);
            }
            assert_eq!(m.answered.items.len(), HISTORY_LEN);
            assert_eq!(m.on_reply(b"0", t0), Verdict::Unexpected);
            assert!(matches!(
                m.on_reply(HISTORY_LEN.to_string().as_bytes(), t0),
                Verdict::Duplicate { .. }
            ));
            let big = vec![b'z'; HISTORY_BYTES];
            m.send(&big, t0);
            m.on_reply(&big, t0);
            // The newest entry is always kept, even alone over the byte bound.
            assert_eq!(m.answered.items.len(), 1);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Send(u8),
        Reply(u8, bool),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // A tiny alphabet of payloads makes identical requests, duplicates and mix-ups common.
        prop_oneof![
            (0..4u8).prop_map(Op::Send),
            (0..5u8, any::<bool>()).prop_map(|(p, up)| Op::Reply(p, up)),
            (0..1500u64).prop_map(Op::Advance),
        ]
    }

    fn payload(p: u8) -> Vec<u8> {
        format!("line{p}").into_bytes()
    }

    proptest! {
        /// Whatever the interleaving: a request is answered at most once, only by a reply that
        /// matches it; it is never both answered in time and expired; only expired requests are
        /// late; only answered ones are duplicated; and nothing matching is called unexpected.
        #[test]
        fn every_request_has_one_consistent_fate(ops in proptest::collection::vec(op(), 0..200)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut m = Tracker::new(T);
            let mut sent: HashMap<Id, Vec<u8>> = HashMap::new();
            let mut answered = HashSet::new();
            let mut expired = HashSet::new();
            for op in ops {
                match op {
                    Op::Send(p) => {
                        let id = m.send(&payload(p), now);
                        prop_assert!(sent.insert(id, payload(p)).is_none());
                    }
                    Op::Reply(p, up) => {
                        let mut reply = payload(p);
                        if up {
                            reply.make_ascii_uppercase();
                        }
                        match m.on_reply(&reply, now) {
                            Verdict::Answer { id, .. } => {
                                prop_assert!(sent[&id].eq_ignore_ascii_case(&reply));
                                prop_assert!(!expired.contains(&id));
                                prop_assert!(answered.insert(id));
                            }
                            Verdict::Late { id, request, .. } => {
                                prop_assert_eq!(&request, &sent[&id]);
                                prop_assert!(request.eq_ignore_ascii_case(&reply));
                                prop_assert!(expired.contains(&id));
                                prop_assert!(answered.insert(id));
                            }
                            Verdict::Duplicate { id, request } => {
                                prop_assert!(request.eq_ignore_ascii_case(&reply));
                                prop_assert!(answered.contains(&id));
                                // Nothing unanswered could have taken this reply instead.
                                prop_assert!(sent.iter().all(|(i, p)| answered.contains(i)
                                    || !p.eq_ignore_ascii_case(&reply)));
                            }
                            Verdict::Unexpected => {
                                prop_assert!(sent.values().all(|p| !p.eq_ignore_ascii_case(&reply)));
                            }
                        }
                    }
                    Op::Advance(d) => {
                        now += ms(d);
                        for id in m.expire(now) {
                            prop_assert!(!answered.contains(&id));
                            prop_assert!(expired.insert(id));
                            prop_assert!(now >= t0);
                        }
                    }
                }
                let unanswered_expired = expired.iter().filter(|i| !answered.contains(i)).count();
                let gone = answered.len() + unanswered_expired;
                prop_assert_eq!(m.waiting(), sent.len() - gone);
            }
        }
    }
}
