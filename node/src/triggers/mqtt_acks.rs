//! Which replies the broker has: a reply published on the MQTT trigger's reply connection
//! (QoS 1) is done only once the broker acknowledged it (PUBACK), so the outbox keeps the
//! result until then and a member crash in between sends it again rather than losing it.
//!
//! rumqttc 0.25 does not say which packet id a publish gets, but its event loop takes the
//! requests in the order they were sent and reports each one's first transmission as
//! `Outgoing::Publish(pkid)`. So the replies are numbered in sending order (one lock over
//! "wait" and "send"), and the n-th first transmission is the n-th reply. A transmission
//! again (a resumed session resends what was not acknowledged) carries an id already
//! known, and is not a first one. Requests are lost only when the broker kept no session:
//! the loop drops what it had pending, whose new publishes (packet id 0 there, not yet
//! transmitted) are the oldest waiting replies; those, and the ones transmitted and not
//! acknowledged, fail and are sent again later by the outbox.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{Event, Request};
use rumqttc::Outgoing;
use tokio::sync::oneshot;

/// How long a reply waits for the broker's acknowledgement before the outbox tries again.
const ACK_WAIT: Duration = Duration::from_secs(30);

type Waiter = oneshot::Sender<Result<(), String>>;

#[derive(Default)]
pub struct Acks(Mutex<State>);

#[derive(Default)]
struct State {
    /// Replies sent and not yet transmitted, oldest first.
    waiting: VecDeque<Waiter>,
    /// Replies transmitted and not yet acknowledged, by packet id.
    sent: HashMap<u16, Waiter>,
    /// Of `waiting`, how many the event loop held as pending when its connection dropped:
    /// lost if the next connection has no session.
    pending_at_drop: usize,
    /// A reply held back because its packet id was still in use (the broker acknowledged
    /// out of order); transmitted when that id is free.
    collided: Option<Waiter>,
}

impl State {
    /// The oldest reply not yet transmitted.
    fn next(&mut self) -> Option<Waiter> {
        let w = self.waiting.pop_front()?;
        self.pending_at_drop = self.pending_at_drop.saturating_sub(1);
        Some(w)
    }
}

impl Acks {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one reply with `send` (which hands it to the connection, without waiting) and
    /// waits for the broker's acknowledgement.
    pub async fn publish(&self, send: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self.state();
            s.waiting.push_back(tx);
            if let Err(e) = send() {
                s.waiting.pop_back();
                return Err(e);
            }
        }
        match tokio::time::timeout(ACK_WAIT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the reply connection dropped the reply".into()),
            Err(_) => Err(format!(
                "the broker did not acknowledge the reply within {ACK_WAIT:?}"
            )),
        }
    }

    /// Follows one event of the reply connection.
    pub fn event(&self, e: &Event) {
        let mut s = self.state();
        match e {
            Event::Outgoing(Outgoing::AwaitAck(_)) => {
                // User requests wait until it goes: it is the next first transmission.
                s.collided = s.next();
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if s.sent.contains_key(pkid) {
                    return; // transmitted again
                }
                let w = match s.collided.take() {
                    Some(w) => Some(w),
                    None => s.next(),
                };
                if let Some(w) = w {
                    s.sent.insert(*pkid, w);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(w) = s.sent.remove(&ack.pkid) {
                    let r = match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                        other => Err(format!("the broker refused the reply: {other:?}")),
                    };
                    let _ = w.send(r);
                }
            }
            Event::Incoming(Packet::ConnAck(ack)) if !ack.session_present => {
                // The loop dropped what it held: the replies transmitted and not
                // acknowledged, and the oldest `pending_at_drop` not yet transmitted.
                let lost = std::mem::take(&mut s.pending_at_drop);
                let held = s.collided.take();
                for w in s.sent.drain().map(|(_, w)| w).chain(held) {
                    let _ = w.send(Err("the broker kept no session".into()));
                }
                for _ in 0..lost {
                    if let Some(w) = s.waiting.pop_front() {
                        let _ = w.send(Err("the broker kept no session".into()));
                    }
                }
            }
            _ => {}
        }
    }

    /// The connection dropped; `pending` is what its event loop will send first on the
    /// next connection (if the broker kept the session).
    pub fn dropped(&self, pending: &VecDeque<Request>) {
        let fresh = pending
            .iter()
            .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0))
            .count();
        self.state().pending_at_drop = fresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{ConnAck, ConnectReturnCode, PubAck, Publish};
    use rumqttc::v5::mqttbytes::QoS;

    fn out(pkid: u16) -> Event {
        Event::Outgoing(Outgoing::Publish(pkid))
    }

    fn ack(pkid: u16) -> Event {
        Event::Incoming(Packet::PubAck(PubAck::new(pkid, None)))
    }

    fn connack(session_present: bool) -> Event {
        Event::Incoming(Packet::ConnAck(ConnAck {
            session_present,
            code: ConnectReturnCode::Success,
            properties: None,
        }))
    }

    /// Sends `n` replies, each in a task, and lets them reach the wait.
    async fn send(
        acks: &std::sync::Arc<Acks>,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<Result<(), String>>> {
        let mut hs = Vec::new();
        for _ in 0..n {
            let a = acks.clone();
            hs.push(tokio::spawn(async move { a.publish(|| Ok(())).await }));
            tokio::task::yield_now().await;
        }
        while {
            let s = acks.state();
            s.waiting.len() + s.sent.len() < n
        } {
            tokio::task::yield_now().await;
        }
        hs
    }

    #[tokio::test]
    async fn a_reply_is_done_when_its_own_packet_is_acknowledged() {
        let acks = std::sync::Arc::new(Acks::default());
        let hs = send(&acks, 3).await;
        for p in [1, 2, 3] {
            acks.event(&out(p));
        }
        // Acknowledged out of order, and a transmission again of 2 changes nothing.
        acks.event(&ack(2));
        acks.event(&out(2));
        acks.event(&ack(3));
        assert!(!hs[0].is_finished());
        acks.event(&ack(1));
        for h in hs {
            assert_eq!(h.await.unwrap(), Ok(()));
        }
    }

    #[tokio::test]
    async fn a_resumed_session_keeps_the_replies_and_a_new_one_fails_those_it_dropped() {
        let acks = std::sync::Arc::new(Acks::default());
        let hs = send(&acks, 4).await;
        acks.event(&out(1));
        // The connection drops with 1 transmitted, 2 and 3 pending in the loop, 4 still
        // in its channel; the session is resumed: 1 goes again, then 2, 3 and 4.
        acks.dropped(&pending([1, 0, 0]));
        acks.event(&connack(true));
        for p in [1, 2, 3, 4] {
            acks.event(&out(p));
        }
        for p in [1, 2, 3, 4] {
            acks.event(&ack(p));
        }
        let mut hs = hs.into_iter();
        for h in hs.by_ref().take(4) {
            assert_eq!(h.await.unwrap(), Ok(()));
        }

        // Again, but the broker kept no session: 5 (transmitted) and 6, 7 (pending) fail;
        // 8, still in the channel, is sent as the first new publish and is done.
        let hs = send(&acks, 4).await;
        acks.event(&out(5));
        acks.dropped(&pending([5, 0, 0]));
        acks.event(&connack(false));
        acks.event(&out(1));
        acks.event(&ack(1));
        let got: Vec<bool> = outcomes(hs).await;
        assert_eq!(got, vec![false, false, false, true]);
    }

    /// What the event loop holds pending after a drop: publishes with these packet ids
    /// (0: not yet transmitted).
    fn pending(pkids: [u16; 3]) -> VecDeque<Request> {
        pkids
            .iter()
            .map(|&pkid| {
                let mut p = Publish::new("r", QoS::AtLeastOnce, "x", None);
                p.pkid = pkid;
                Request::Publish(p)
            })
            .collect()
    }

    async fn outcomes(hs: Vec<tokio::task::JoinHandle<Result<(), String>>>) -> Vec<bool> {
        let mut v = Vec::new();
        for h in hs {
            v.push(h.await.unwrap().is_ok());
        }
        v
    }

    #[tokio::test]
    async fn a_refused_reply_fails_with_the_brokers_reason() {
        let acks = std::sync::Arc::new(Acks::default());
        let hs = send(&acks, 1).await;
        acks.event(&out(9));
        let mut a = PubAck::new(9, None);
        a.reason = PubAckReason::NotAuthorized;
        acks.event(&Event::Incoming(Packet::PubAck(a)));
        for h in hs {
            let e = h.await.unwrap().unwrap_err();
            assert!(e.contains("NotAuthorized"), "{e}");
        }
    }
}
