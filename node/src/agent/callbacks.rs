//! Callbacks: an async call's result POSTed to the URL its caller named (from a durable
//! outbox, retried with backoff for `[async] callback_for`: see `outbox.rs`), if the node's
//! `[async] callback_allow` covers it (checked at submit, and again at delivery with the
//! host resolved, so a name cannot be pointed at an internal address in between), signed as
//! Standard Webhooks describes with the secret of the function's namespace (the node's own,
//! `<data-dir>/webhook.secret`, for the default namespace; one derived from it for each
//! other, see [`callback::namespace_secret`]).

use std::time::Duration;

use bytes::Bytes;
use fogline_core::callback::{self, CallbackError};

/// Sends callbacks, one delivery at a time.
pub struct Callbacks {
    allow: Vec<String>,
    secret: Vec<u8>,
}

impl Callbacks {
    /// `secret` signs every delivery; `allow` are the URL prefixes deliveries may go to.
    pub fn new(allow: Vec<String>, secret: Vec<u8>) -> Callbacks {
        Callbacks { allow, secret }
    }

    /// The secret that signs namespace `ns`'s callbacks, as `whsec_…`.
    pub fn secret_of(&self, ns: &str) -> String {
        callback::secret_text(&callback::namespace_secret(&self.secret, ns))
    }

    /// Checks a callback URL at submit.
    pub fn check(&self, url: &str) -> Result<(), CallbackError> {
        callback::check(url, &self.allow).map(|_| ())
    }

    /// One delivery of a result: `Ok`, or why it failed and whether trying again may
    /// help (a URL no longer allowed will not be).
    pub async fn deliver_once(&self, call: &Finished<'_>, url: &str) -> Result<(), Undelivered> {
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

/// Why a callback was not delivered.
pub struct Undelivered {
    /// The receiver's status (0: no answer).
    pub status: u16,
    pub reason: String,
    /// Whether another delivery may succeed.
    pub retry: bool,
}

/// A finished async call, as its callback reports it.
pub struct Finished<'a> {
    /// The call id its caller was given.
    pub id: String,
    pub function: &'a str,
    pub status: u16,
    pub body: Bytes,
}
