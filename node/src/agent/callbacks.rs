//! Callbacks: an async call's result POSTed to the URL its caller named (from a durable
//! outbox, retried with backoff for `[async] callback_for`: see `outbox.rs`), if the node's
//! `[async] callback_allow` covers it (checked at submit, and again at delivery with the
//! host resolved, so a name cannot be pointed at an internal address in between), signed as
//! Standard Webhooks describes with the secret of the function's namespace (the node's own,
//! `<data-dir>/webhook.secret`, for the default namespace; one derived from it for each
//! other, see [`callback::namespace_secret`]).
//!
//! A result may go back as a message instead: an MQTT message's call is queued with an
//! internal destination ([`MessageReply::destination`], `mqtt:{...}`, never accepted from a
//! caller), and its result is published on the MQTT trigger's reply connection
//! ([`Callbacks::set_publisher`]) through the same outbox.

use std::time::Duration;

use bytes::Bytes;
use fogline_core::callback::{self, CallbackError};

/// Sends callbacks, one delivery at a time.
pub struct Callbacks {
    allow: Vec<String>,
    secret: Vec<u8>,
    /// Publishes results that go back as messages (set when the MQTT trigger starts).
    publisher: std::sync::OnceLock<Publisher>,
}

/// Publishes one result as a message: `Ok` once the broker acknowledged it.
pub type Publisher = std::sync::Arc<
    dyn Fn(MessageReply, Finished<'_>) -> crate::dispatch::BoxFut<'static, Result<(), String>>
        + Send
        + Sync,
>;

/// Where a message's result goes: kept with its queued call as its callback.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageReply {
    /// The topic the result is published to.
    pub reply: String,
    /// The topic the message came on.
    pub topic: String,
    /// MQTT 5 correlation data, hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub correlation: String,
    /// The message's trace, carried on in the reply.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceparent: String,
}

const MQTT: &str = "mqtt:";

impl MessageReply {
    /// The destination as the queue keeps it.
    pub fn destination(&self) -> String {
        format!("{MQTT}{}", serde_json::to_string(self).unwrap_or_default())
    }

    /// The reply a destination names, if it is a message's.
    pub fn parse(destination: &str) -> Option<MessageReply> {
        serde_json::from_str(destination.strip_prefix(MQTT)?).ok()
    }
}

impl Callbacks {
    /// `secret` signs every delivery; `allow` are the URL prefixes deliveries may go to.
    pub fn new(allow: Vec<String>, secret: Vec<u8>) -> Callbacks {
        Callbacks {
            allow,
            secret,
            publisher: std::sync::OnceLock::new(),
        }
    }

    /// The secret that signs namespace `ns`'s callbacks, as `whsec_…`.
    pub fn secret_of(&self, ns: &str) -> String {
        callback::secret_text(&callback::namespace_secret(&self.secret, ns))
    }

    /// Checks a callback URL at submit.
    pub fn check(&self, url: &str) -> Result<(), CallbackError> {
        callback::check(url, &self.allow).map(|_| ())
    }

    /// Where results that go back as messages are published from now on (the first one
    /// set stays).
    pub fn set_publisher(&self, p: Publisher) {
        let _ = self.publisher.set(p);
    }

    /// One delivery of a result: `Ok`, or why it failed and whether trying again may
    /// help (a URL no longer allowed will not be).
    pub async fn deliver_once(&self, call: &Finished<'_>, url: &str) -> Result<(), Undelivered> {
        if let Some(to) = MessageReply::parse(url) {
            let Some(publish) = self.publisher.get() else {
                return Err(Undelivered {
                    status: 0,
                    reason: "the MQTT trigger is not connected yet".into(),
                    retry: true,
                });
            };
            return publish(to, call.clone())
                .await
                .map_err(|reason| Undelivered {
                    status: 0,
                    reason,
                    retry: true,
                });
        }
        let id = &call.id;
        let client = self.client_for(url).await.map_err(|why| Undelivered {
            status: 0,
            reason: format!("refused: {why}"),
            retry: false,
        })?;
        let ns = fogline_core::access::split(call.function).1;
        let secret = callback::namespace_secret(&self.secret, ns);
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let res = client
            .post(url)
            .header("webhook-id", id.as_str())
            .header("webhook-timestamp", ts.to_string())
            .header(
                "webhook-signature",
                callback::sign(&secret, id, ts, &call.body),
            )
            .header("X-Call-Id", id.as_str())
            .header("X-Function-Name", call.function)
            .header("X-Function-Status", call.status.to_string())
            .body(call.body.clone())
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(Undelivered {
                status: r.status().as_u16(),
                reason: format!("{url} answered HTTP {}", r.status()),
                retry: true,
            }),
            Err(e) => Err(Undelivered {
                status: 0,
                reason: format!("{url}: {e}"),
                retry: true,
            }),
        }
    }

    /// An HTTP client pinned to the address the URL's host resolves to now, once that
    /// address is allowed.
    async fn client_for(&self, url: &str) -> Result<reqwest::Client, String> {
        let allowed = callback::check(url, &self.allow).map_err(|e| e.to_string())?;
        let (host, port) = allowed
            .host_port()
            .ok_or_else(|| format!("{url:?} has no host and port"))?;
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?
            .collect();
        let first = *addrs
            .first()
            .ok_or_else(|| format!("{host} resolves to no address"))?;
        for a in &addrs {
            allowed.check_ip(a.ip()).map_err(|e| e.to_string())?;
        }
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&host, first)
            .build()
            .map_err(|e| format!("http client: {e}"))
    }
}

impl super::Node {
    /// Where results that go back as messages are published (the MQTT trigger's reply
    /// connection).
    pub fn publish_replies_with(&self, p: Publisher) {
        self.callbacks.set_publisher(p);
    }
}

/// Why a callback was not delivered.
pub struct Undelivered {
    /// The receiver's status (0: no answer).
    pub status: u16,
    pub reason: String,
    /// Whether another delivery may succeed.
    pub retry: bool,
}

/// A finished async call, as its callback reports it.
#[derive(Clone)]
pub struct Finished<'a> {
    /// The call id its caller was given.
    pub id: String,
    pub function: &'a str,
    pub status: u16,
    pub body: Bytes,
    /// The place that ran it (`node (tier)`), when it ran.
    pub placed_on: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished() -> Finished<'static> {
        Finished {
            id: "c1".into(),
            function: "hello",
            status: 200,
            body: Bytes::from_static(b"out"),
            placed_on: Some("edge-1 (edge)"),
        }
    }

    #[test]
    fn a_message_destination_reads_back_and_is_never_a_callers_url() {
        let to = MessageReply {
            reply: "dev/7/in:box".into(),
            topic: "sensors/a".into(),
            correlation: hex::encode(b"req-42"),
            traceparent: String::new(),
        };
        let d = to.destination();
        assert_eq!(MessageReply::parse(&d), Some(to));
        assert_eq!(MessageReply::parse("https://hooks.example.com/x"), None);
        assert_eq!(MessageReply::parse("mqtt:not json"), None);
        // A caller cannot name one as its callback: it is not a web URL.
        let cb = Callbacks::new(vec!["http://".into(), "mqtt:".into()], vec![1; 32]);
        assert!(cb.check(&d).is_err());
    }

    #[tokio::test]
    async fn a_message_reply_waits_for_its_publisher() {
        let cb = Callbacks::new(Vec::new(), vec![1; 32]);
        let to = MessageReply {
            reply: "r".into(),
            topic: "t".into(),
            correlation: String::new(),
            traceparent: String::new(),
        };
        let err = cb
            .deliver_once(&finished(), &to.destination())
            .await
            .err()
            .unwrap();
        assert!(
            err.retry && err.reason.contains("not connected"),
            "{}",
            err.reason
        );
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = got.clone();
        cb.set_publisher(std::sync::Arc::new(
            move |to: MessageReply, f: Finished<'_>| {
                seen.lock()
                    .unwrap()
                    .push((to.reply, f.id, f.placed_on.map(str::to_string)));
                Box::pin(async { Ok(()) })
            },
        ));
        assert!(cb
            .deliver_once(&finished(), &to.destination())
            .await
            .is_ok());
        assert_eq!(
            *got.lock().unwrap(),
            vec![("r".into(), "c1".into(), Some("edge-1 (edge)".into()))]
        );
    }
}
