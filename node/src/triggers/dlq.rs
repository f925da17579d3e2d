//! The dead-letter queue over HTTP: async calls given up (after their attempts, or past
//! their deadline), each with every attempt's reason; replayed or dropped one by one.
//!
//! | route | needs |
//! |---|---|
//! | `GET /v1/dlq?namespace=NS` | read in NS (default namespace when absent) |
//! | `GET /v1/dlq/{id}` | any scope in the call's namespace |
//! | `POST /v1/dlq/{id}/replay` | invoke in the call's namespace |
//! | `DELETE /v1/dlq/{id}` | invoke in the call's namespace |

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fogline_core::access::{split, Grant, Need, Scope};
use serde::Deserialize;

use super::http::{permit, scoped, text};
use crate::agent::Node;

type Shared = Arc<Node>;

#[derive(Deserialize)]
pub(super) struct Listing {
    namespace: Option<String>,
}

pub(super) async fn list(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    Query(q): Query<Listing>,
) -> Response {
    let ns = match scoped(&node, &grant, q.namespace.as_deref(), Scope::Read) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    match node.dead_calls() {
        Ok(all) => axum::Json(
            all.into_iter()
                .filter(|d| split(&d.function).1 == ns)
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The dead call `id`, once the grant may `need` in its namespace.
#[allow(clippy::result_large_err)] // the refusal is the response itself, as elsewhere
fn find(
    node: &Node,
    grant: &Grant,
    id: &str,
    scope: Option<Scope>,
) -> Result<crate::agent::queue::DeadEntry, Response> {
    let missing = || {
        text(
            StatusCode::NOT_FOUND,
            format!("no call {id:?} in the dead-letter queue (call ids are 32 hex digits)"),
        )
    };
    let entry = node
        .dead_call(id)
        .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .ok_or_else(missing)?;
    let ns = split(&entry.function).1;
    let need = match scope {
        Some(s) => Need::In(s, ns),
        None => Need::Any(ns),
    };
    permit(node, grant, need)?;
    Ok(entry)
}

/// Replayed or dropped by someone else between the lookup and the change.
fn gone(id: &str) -> Response {
    text(
        StatusCode::NOT_FOUND,
        format!("call {id} is no longer in the dead-letter queue"),
    )
}

pub(super) async fn show(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    Path(id): Path<String>,
) -> Response {
    match find(&node, &grant, &id, None) {
        Ok(e) => axum::Json(e).into_response(),
        Err(r) => r,
    }
}

pub(super) async fn replay(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    Path(id): Path<String>,
) -> Response {
    let entry = match find(&node, &grant, &id, Some(Scope::Invoke)) {
        Ok(e) => e,
        Err(r) => return r,
    };
    match node.replay(&entry.id).await {
        Ok(true) => (
            StatusCode::ACCEPTED,
            format!("replaying: call {} is queued again\n", entry.id),
        )
            .into_response(),
        Ok(false) => gone(&entry.id),
        Err(e) => {
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            text(status, e.to_string())
        }
    }
}

pub(super) async fn drop_call(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    Path(id): Path<String>,
) -> Response {
    let entry = match find(&node, &grant, &id, Some(Scope::Invoke)) {
        Ok(e) => e,
        Err(r) => return r,
    };
    match node.drop_dead(&entry.id).await {
        Ok(true) => text(StatusCode::OK, format!("dropped call {}\n", entry.id)),
        Ok(false) => gone(&entry.id),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
