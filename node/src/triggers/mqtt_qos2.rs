//! Exactly once for QoS 2 MQTT messages: the packet ids of the messages that were stored
//! here (queued as calls) and acknowledged (PUBREC) but not yet released by the broker (PUBREL). They are kept
//! in the member's store, so a message the broker delivers again (after a lost connection,
//! a broker restart or a restart of this member) is acknowledged again without being
//! stored and run again: the receiver's side of MQTT 5 §4.3.3. (A crash between storing
//! the call and recording its id stores it twice.)
//!
//! Only a delivery marked as a duplicate (DUP set), under a recorded id, of the message
//! recorded there (the same topic and payload, by a 64-bit fingerprint) is taken for one.
//! The broker reuses a packet id only after it released it, so a record is stale only when
//! its release was lost here (a crash between PUBREL and the store's flush); a new message
//! under that id (no DUP, or another message's content, if its first delivery was lost in
//! the same crash) drops the stale record and is stored.
//!
//! rumqttc 0.25 forgets, when its connection drops, which ids it acknowledged, and then
//! refuses the PUBREL the broker sends again on the resumed session (rumqtt issue #664) by
//! dropping the connection, again and again. A broker may also send a release again after
//! it had the PUBCOMP (Mosquitto does after a restart, for ids released just before it).
//! [`Released::remind_all`] makes the client answer a release of any id on a resumed
//! session, and [`Released::remind`] re-arms an id after each release.

use std::collections::BTreeMap;
use std::sync::Mutex;

use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::MqttState;

use crate::store::{Store, StoreError};

/// The tree of the store that holds the ids, keyed by client id then packet id.
const TREE: &str = "mqtt_qos2_received";

pub struct Released {
    tree: sled::Tree,
    /// The client id and a separator: each broker session has ids of its own.
    prefix: Vec<u8>,
    /// Packet id → the fingerprint of the message stored under it.
    ids: Mutex<BTreeMap<u16, u64>>,
}

/// FNV-1a over the topic, a separator and the payload: which message was stored under an id.
fn fingerprint(p: &Publish) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in p.topic.iter().chain(&[0xff]).chain(p.payload.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Released {
    /// The ids recorded for `client_id`'s session.
    pub fn open(store: &Store, client_id: &str) -> Result<Released, StoreError> {
        let tree = store.tree(TREE)?;
        let mut prefix = client_id.as_bytes().to_vec();
        prefix.push(0);
        let mut ids = BTreeMap::new();
        for kv in tree.scan_prefix(&prefix) {
            let (k, v) = kv?;
            if let ([.., a, b], Ok(f)) = (k.as_ref(), <[u8; 8]>::try_from(v.as_ref())) {
                ids.insert(u16::from_be_bytes([*a, *b]), u64::from_be_bytes(f));
            }
        }
        Ok(Released {
            tree,
            prefix,
            ids: Mutex::new(ids),
        })
    }

    fn key(&self, pkid: u16) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(&pkid.to_be_bytes());
        k
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, u64>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `p` is a message already stored here: delivered again (DUP) under an id
    /// recorded for it and not released. Another message under a recorded id drops the
    /// record.
    pub fn already_stored(&self, p: &Publish) -> bool {
        if p.qos != QoS::ExactlyOnce {
            return false;
        }
        let Some(recorded) = self.ids().get(&p.pkid).copied() else {
            return false;
        };
        if p.dup && recorded == fingerprint(p) {
            return true;
        }
        self.release(p.pkid);
        false
    }

    /// Records that `p` was stored, on disk, before its PUBREC is sent.
    pub async fn record(&self, store: &Store, p: &Publish) -> Result<(), StoreError> {
        let f = fingerprint(p);
        self.ids().insert(p.pkid, f);
        self.tree.insert(self.key(p.pkid), &f.to_be_bytes())?;
        store.flush().await
    }

    /// The broker released `pkid` (PUBREL): its id may now name a new message. Not flushed
    /// at once: see the module's note on a lost release.
    pub fn release(&self, pkid: u16) {
        self.ids().remove(&pkid);
        if let Err(e) = self.tree.remove(self.key(pkid)) {
            tracing::warn!("mqtt: forgetting released packet {pkid}: {e}");
        }
    }

    /// The broker kept no session: every recorded id is void.
    pub fn forget_all(&self) {
        let ids: Vec<u16> = self.ids().keys().copied().collect();
        for pkid in ids {
            self.release(pkid);
        }
    }

    /// Makes the client's state, on a resumed session before anything is read, answer a
    /// PUBREL of any packet id with PUBCOMP instead of dropping the connection (MQTT 5
    /// §4.3.3: a receiver answers every PUBREL). The bookkeeping events this makes are
    /// removed again.
    pub fn remind_all(state: &mut MqttState) {
        for pkid in 1..=u16::MAX {
            Released::remind(state, pkid);
        }
    }

    /// As [`Released::remind_all`], for one id (after its release cleared it).
    pub fn remind(state: &mut MqttState, pkid: u16) {
        let before = state.events.len();
        let mut p = Publish::new("", QoS::ExactlyOnce, Vec::new(), None);
        p.pkid = pkid;
        if let Err(e) = state.handle_incoming_packet(Packet::Publish(p)) {
            tracing::warn!("mqtt: reminding the client of packet {pkid}: {e}");
        }
        state.events.truncate(before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(pkid: u16, dup: bool) -> Publish {
        let mut p = Publish::new("jobs/a", QoS::ExactlyOnce, format!("message {pkid}"), None);
        p.pkid = pkid;
        p.dup = dup;
        p
    }

    #[tokio::test]
    async fn a_delivery_again_is_known_across_a_restart_and_a_reused_id_runs() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let r = Released::open(&store, "fogline-a").unwrap();
            assert!(!r.already_stored(&publish(7, false)));
            r.record(&store, &publish(7, false)).await.unwrap();
            r.record(&store, &publish(9, false)).await.unwrap();
            r.record(&store, &publish(13, false)).await.unwrap();
            // Another client's session has ids of its own.
            let other = Released::open(&store, "fogline-b").unwrap();
            assert!(!other.already_stored(&publish(7, true)));
        }
        let store = crate::store::reopen(dir.path());
        let r = Released::open(&store, "fogline-a").unwrap();
        assert!(
            r.already_stored(&publish(7, true)),
            "delivered again after a restart"
        );
        // QoS 1 is never taken for a duplicate by id.
        let mut q1 = publish(7, true);
        q1.qos = QoS::AtLeastOnce;
        assert!(!r.already_stored(&q1));
        r.release(7);
        assert!(!r.already_stored(&publish(7, true)), "released");
        // A new message (no DUP) under a recorded id: the release was lost; it runs.
        assert!(!r.already_stored(&publish(9, false)));
        assert!(
            !r.already_stored(&publish(9, true)),
            "the stale record was dropped"
        );
        // Another message delivered again under a recorded id (its first delivery lost in
        // the crash that lost the release): it runs.
        let mut other = publish(13, true);
        other.payload = "another message".into();
        assert!(!r.already_stored(&other));
        assert!(
            !r.already_stored(&publish(13, true)),
            "and the record is gone"
        );
        r.record(&store, &publish(11, false)).await.unwrap();
        r.forget_all();
        assert!(!r.already_stored(&publish(11, true)));
        assert!(Released::open(&store, "fogline-a")
            .unwrap()
            .ids()
            .is_empty());
    }

    #[test]
    fn a_reminded_client_answers_a_resent_release_and_keeps_no_events() {
        let mut state = MqttState::new(10, true);
        let rel = |pkid| Packet::PubRel(rumqttc::v5::mqttbytes::v5::PubRel::new(pkid, None));
        // Without the reminder the client refuses the release (what wedged sessions).
        assert!(state.clone().handle_incoming_packet(rel(5)).is_err());
        let t = std::time::Instant::now();
        Released::remind_all(&mut state);
        eprintln!("reminded of every id in {:?}", t.elapsed());
        assert!(state.events.is_empty());
        let answered = |state: &mut MqttState, pkid| match state.handle_incoming_packet(rel(pkid)) {
            Ok(Some(Packet::PubComp(c))) => assert_eq!(c.pkid, pkid),
            other => panic!("release of {pkid}: {other:?}"),
        };
        for pkid in [5, 6, u16::MAX] {
            answered(&mut state, pkid);
        }
        // Released again: answered once reminded.
        assert!(state.clone().handle_incoming_packet(rel(5)).is_err());
        state.events.clear();
        Released::remind(&mut state, 5);
        answered(&mut state, 5);
    }
}
