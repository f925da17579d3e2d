//! Callbacks: an async call's result POSTed to the URL its caller named.

use std::time::Duration;

use bytes::Bytes;

use crate::logs::Logs;

/// Sends callbacks, retrying a failed one a few times.
pub struct Callbacks {
    http: reqwest::Client,
}

impl Callbacks {
    pub fn new() -> anyhow::Result<Callbacks> {
        Ok(Callbacks {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| anyhow::anyhow!("http client: {e}"))?,
        })
    }

    /// Delivers one result; what could not be delivered is written to the function's log.
    pub async fn deliver(&self, logs: &Logs, node: &str, call: &Finished<'_>, url: &str) {
        let id = super::call_id(call.id);
        for attempt in 0..3u32 {
            let res = self
                .http
                .post(url)
                .header("X-Call-Id", &id)
                .header("X-Function-Name", call.function)
                .header("X-Function-Status", call.status.to_string())
                .body(call.body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => tracing::warn!("callback {url} for call {id}: HTTP {}", r.status()),
                Err(e) => tracing::warn!("callback {url} for call {id}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        logs.push(
            call.function,
            node,
            &format!("callback to {url} for call {id} failed after 3 attempts"),
        );
    }
}

/// A finished async call, as its callback reports it.
pub struct Finished<'a> {
    pub id: u64,
    pub function: &'a str,
    pub status: u16,
    pub body: Bytes,
}
