//! Which line TCP reply bytes belong to: the stream's side of matching replies to lines (UDP's is
//! [`super::super::udp`]'s `matcher`).
//!
//! TCP keeps order and the server's transform keeps length, so the next `line.len()` bytes
//! received are the oldest line's reply, whether or not it timed out: a line given up on is still
//! owed, and its reply, when it comes, is *late* instead of being taken for the next line's.
//! Pure: the caller passes the clock.

use std::collections::VecDeque;
use std::time::Instant;

use crate::client::Id;
use crate::client::session::Arrival;

/// A line sent and the reply bytes received for it so far.
#[derive(Debug)]
struct Owing {
    id: Id,
    line: Vec<u8>,
    sent: Instant,
    reply: Vec<u8>,
    timed_out: bool,
}

/// The replies the server owes, in send order, and what the connection has brought so far.
#[derive(Debug)]
pub(crate) struct Owed {
    next_id: Id,
    queue: VecDeque<Owing>,
    opened: Instant,
    received: u64,
}

impl Owed {
    /// Nothing owed yet on a connection made at `opened`.
    pub fn new(opened: Instant) -> Owed {
        Owed {
            next_id: 1,
            queue: VecDeque::new(),
            opened,
            received: 0,
        }
    }

    /// Records that `line` was (about to be) sent at `now`; returns its id.
    pub fn send(&mut self, line: &[u8], now: Instant) -> Id {
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back(Owing {
            id,
            line: line.to_vec(),
            sent: now,
            reply: Vec::with_capacity(line.len()),
            timed_out: false,
        });
        id
    }

    /// Hands `bytes`, received at `now`, to the replies they belong to.
    pub fn feed(&mut self, mut bytes: &[u8], now: Instant) -> Vec<Arrival> {
        self.received += bytes.len() as u64;
        let mut done = Vec::new();
        while !bytes.is_empty() {
            let Some(front) = self.queue.front_mut() else {
                done.push(Arrival::Unasked(bytes.to_vec()));
                break;
            };
            let take = (front.line.len() - front.reply.len()).min(bytes.len());
            front.reply.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if front.reply.len() == front.line.len()
                && let Some(o) = self.queue.pop_front()
            {
                let rtt = now.saturating_duration_since(o.sent);
                done.push(if o.timed_out {
                    Arrival::Late {
                        line: o.line,
                        reply: o.reply,
                        rtt,
                    }
                } else {
                    Arrival::Answer {
                        id: o.id,
                        reply: o.reply,
                        rtt,
                    }
                });
            }
        }
        done
    }

    /// Gives up waiting for line `id`: its reply, if it comes, is late.
    pub fn time_out(&mut self, id: Id) {
        if let Some(o) = self.queue.iter_mut().find(|o| o.id == id) {
            o.timed_out = true;
        }
    }

    /// How many of line `id`'s reply bytes have arrived, and how many are owed in all.
    pub fn progress(&self, id: Id) -> Option<(usize, usize)> {
        self.queue
            .iter()
            .find(|o| o.id == id)
            .map(|o| (o.reply.len(), o.line.len()))
    }

    /// When the connection was made.
    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// Bytes received on the connection, replies or not.
    pub fn received(&self) -> u64 {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn owed_bytes_go_to_the_oldest_line_and_a_timed_out_line_gets_a_late_reply() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut owed = Owed::new(t0);
        let first = owed.send(b"first", t0);
        owed.time_out(first);
        let second = owed.send(b"two", t0 + ms(1000));
        // One segment carrying the end of the late reply and the start of the next.
        assert_eq!(owed.feed(b"FIR", t0 + ms(1500)), []);
        assert_eq!(
            owed.feed(b"STT", t0 + ms(1700)),
            [Arrival::Late {
                line: b"first".to_vec(),
                reply: b"FIRST".to_vec(),
                rtt: ms(1700)
            }]
        );
        assert_eq!(owed.progress(second), Some((1, 3)));
        assert_eq!(
            owed.feed(b"WOextra", t0 + ms(1800)),
            [
                Arrival::Answer {
                    id: second,
                    reply: b"TWO".to_vec(),
                    rtt: ms(800)
                },
                Arrival::Unasked(b"extra".to_vec())
            ]
        );
        assert_eq!(owed.progress(second), None);
        assert_eq!(owed.received(), 13);
    }
}
