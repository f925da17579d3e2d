//! A bridge's peer clusters over HTTP (the admin token only: peering changes what another
//! cluster may run here, or where this cluster's calls may go).
//!
//! | route | does |
//! |---|---|
//! | `GET /v1/federation` | peers: direction, state, round trip, share, calls, last error |
//! | `POST /v1/federation/invites` `{"ttl_s":3600,"share_pct":90}` | mints a one-time invite |
//! | `POST /v1/federation/peers` `{"token":"fogfed1…","name":"cluster-b"}` | joins a provider |
//! | `DELETE /v1/federation/peers/{name}` | leaves: no new calls, in-flight ones finish |
//! | `PUT /v1/federation/offload` `{"namespace":"ns","to":"cluster-b","on":true}` | what may go there |
//! | `PUT /v1/federation/refuse` `{"namespace":"ns","from":"cluster-a","on":true}` | what a consumer may not send here |

use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fogline_core::access::{Grant, Need};
use serde::Deserialize;

use super::http::{permit, text};
use crate::agent::Node;
use crate::federate::Admin;

type Shared = Arc<Node>;

async fn run(node: &Node, grant: &Grant, req: Admin) -> Response {
    if let Err(r) = permit(node, grant, Need::Admin) {
        return r;
    }
    let Some(fed) = node.links.federation.get() else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "{} has no federation: run a bridge with a [federation] section (listen = \"ADDR:PORT\")",
                node.id
            ),
        );
    };
    match fed.admin(req).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => text(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            e.message,
        ),
    }
}

pub(super) async fn list(State(node): State<Shared>, Extension(g): Extension<Grant>) -> Response {
    run(&node, &g, Admin::List).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InviteBody {
    #[serde(default = "hour")]
    ttl_s: u64,
    #[serde(default = "ninety")]
    share_pct: u8,
}

fn hour() -> u64 {
    3600
}

fn ninety() -> u8 {
    90
}

#[allow(clippy::result_large_err)] // the refusal is the response itself, as elsewhere
fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| text(StatusCode::BAD_REQUEST, format!("request body: {e}")))
}

pub(super) async fn invite(
    State(node): State<Shared>,
    Extension(g): Extension<Grant>,
    body: axum::body::Bytes,
) -> Response {
    let b: InviteBody = match json(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    run(
        &node,
        &g,
        Admin::Invite {
            ttl_s: b.ttl_s,
            share_pct: b.share_pct,
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JoinBody {
    token: String,
    name: Option<String>,
}

pub(super) async fn join(
    State(node): State<Shared>,
    Extension(g): Extension<Grant>,
    body: axum::body::Bytes,
) -> Response {
    let b: JoinBody = match json(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    run(
        &node,
        &g,
        Admin::Join {
            token: b.token,
            name: b.name,
        },
    )
    .await
}

pub(super) async fn leave(
    State(node): State<Shared>,
    Extension(g): Extension<Grant>,
    Path(name): Path<String>,
) -> Response {
    run(&node, &g, Admin::Leave { name }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OffloadBody {
    namespace: String,
    to: String,
    #[serde(default = "yes")]
    on: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RefuseBody {
    namespace: String,
    from: String,
    #[serde(default = "yes")]
    on: bool,
}

pub(super) async fn refuse(
    State(node): State<Shared>,
    Extension(g): Extension<Grant>,
    body: axum::body::Bytes,
) -> Response {
    let b: RefuseBody = match json(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    run(
        &node,
        &g,
        Admin::Refuse {
            namespace: b.namespace,
            from: b.from,
            on: b.on,
        },
    )
    .await
}

pub(super) async fn offload(
    State(node): State<Shared>,
    Extension(g): Extension<Grant>,
    body: axum::body::Bytes,
) -> Response {
    let b: OffloadBody = match json(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    run(
        &node,
        &g,
        Admin::Offload {
            namespace: b.namespace,
            to: b.to,
            on: b.on,
        },
    )
    .await
}
