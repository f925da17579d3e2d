//! The dashboard (`/ui`) and the routes it reads, part of the gateway.
//!
//! | route | what |
//! |---|---|
//! | `GET /ui`, `/ui/placements`, `/ui/functions[/NAME]`, `/ui/simulate` | the pages (open: they hold no data) |
//! | `GET /ui/assets/{app.js,style.css}` | their script and style, embedded in the binary |
//! | `GET /v1/placements/stream` | decisions as they are made (Server-Sent Events, batched every 100 ms) |
//! | `GET /v1/functions/{name}/stats` | one function's histogram, cold starts, tiers and prediction error over time |
//! | `GET /v1/traces`, `GET /v1/traces/{id}` | recent traces; one call's spans across every member it touched |
//! | `GET /v1/simulate/scenarios`, `POST /v1/simulate` | the simulator, run in the request |
//!
//! Every `/v1` route needs a token with read scope (or the admin token), as the rest of the
//! gateway's member-wide reads do; the page asks for it once and keeps it in the tab's
//! session storage. Assets are compiled in: nothing is fetched from elsewhere, so the
//! dashboard works offline at the edge.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fogline_core::access::{Grant, Need};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::http::{permit, text, Limit};
use crate::agent::Node;

type Shared = Arc<Node>;

const INDEX: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/style.css");

/// Every page is the same document; its script renders the page its path names.
pub(super) async fn page(State(node): State<Shared>) -> Response {
    if node.config.ui.disabled {
        return text(
            StatusCode::NOT_FOUND,
            "the dashboard is off here (ui.disabled)",
        );
    }
    let mut r = Response::new(Body::from(INDEX));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Only our own script and style, never framed: a token typed here stays here.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

pub(super) async fn asset(State(node): State<Shared>, Path(file): Path<String>) -> Response {
    if node.config.ui.disabled {
        return text(
            StatusCode::NOT_FOUND,
            "the dashboard is off here (ui.disabled)",
        );
    }
    let (body, ct) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return text(StatusCode::NOT_FOUND, format!("no asset {file:?}")),
    };
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn not_a_router() -> Response {
    text(
        StatusCode::NOT_FOUND,
        "this member is not a router: placements are decided (and watched) on `fogline router` or `fogline up`",
    )
}

/// Decisions as they are made: every 100 ms one `data:` event holding a JSON array of
/// them; `event: dropped` says how many a slow reader missed. Ends when the member stops.
pub(super) async fn placement_stream(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Member) {
        return r;
    }
    let Some(rx) = node.links.dispatch.get().and_then(|d| d.watch()) else {
        return not_a_router();
    };
    struct Feed {
        rx: tokio::sync::broadcast::Receiver<Arc<str>>,
        node: Shared,
        quiet: u32,
        first: bool,
    }
    let feed = Feed {
        rx,
        node,
        quiet: 0,
        first: true,
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        if f.node.stopping() {
            return None;
        }
        let mut out = String::new();
        if f.first {
            // Opens the stream at once, so the reader knows it is connected.
            f.first = false;
            out.push_str(": connected\n\n");
            return Some((Ok::<_, Infallible>(Bytes::from(out)), f));
        }
        let mut batch: Vec<Arc<str>> = Vec::new();
        let mut dropped = 0u64;
        let tick = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                m = f.rx.recv() => match m {
                    Ok(j) => {
                        batch.push(j);
                        if batch.len() >= 1000 {
                            break;
                        }
                    }
                    Err(RecvError::Lagged(n)) => dropped += n,
                    Err(RecvError::Closed) => return None,
                },
                _ = &mut tick => break,
            }
        }
        if dropped > 0 {
            out.push_str(&format!("event: dropped\ndata: {dropped}\n\n"));
        }
        if batch.is_empty() {
            f.quiet += 1;
            // A comment now and then keeps proxies from closing an idle stream.
            if f.quiet >= 150 {
                f.quiet = 0;
                out.push_str(": idle\n\n");
            }
        } else {
            f.quiet = 0;
            out.push_str("data: [");
            for (i, j) in batch.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(j);
            }
            out.push_str("]\n\n");
        }
        Some((Ok::<_, Infallible>(Bytes::from(out)), f))
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) async fn function_stats(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Member) {
        return r;
    }
    let Some(d) = node.links.dispatch.get() else {
        return not_a_router();
    };
    match d.function_stats(&name) {
        Some(v) => axum::Json(v).into_response(),
        None if node.lookup(&name).is_some() => axum::Json(serde_json::json!({
            "function": name, "calls": 0, "failed": 0, "retried": 0, "cold_starts": 0,
            "histogram": [], "series": [], "step_s": 10,
        }))
        .into_response(),
        None => text(
            StatusCode::NOT_FOUND,
            format!("function {name:?} is not deployed on this router"),
        ),
    }
}

pub(super) async fn list_traces(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    Query(q): Query<Limit>,
) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Member) {
        return r;
    }
    let (traces, spans) = node.traces.held();
    axum::Json(serde_json::json!({
        "member": node.id,
        "held": { "traces": traces, "spans": spans, "keep": node.traces.config().keep },
        "traces": node.traces.recent(q.limit.unwrap_or(50).min(10_000)),
    }))
    .into_response()
}

/// One call's trace, by its call id or trace id: this member's spans and those of every
/// member its attempts went to, in tree order with each span's depth.
pub(super) async fn get_trace(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Member) {
        return r;
    }
    let Some(trace) = node.traces.find(&id) else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "no trace of {id:?} on {}: give a call id (X-Call-Id) or trace id (32 hex digits) of a call this member took; it keeps its newest {} traces{}",
                node.id,
                node.traces.config().keep,
                if node.traces.config().enabled { "" } else { ", and tracing is off here (trace.enabled)" }
            ),
        );
    };
    let reply = crate::traces::gather(&node, trace, crate::traces::MAX_DEPTH).await;
    let spans: Vec<serde_json::Value> = fogline_core::trace::tree(&reply.spans)
        .into_iter()
        .map(|(depth, s)| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["depth"] = depth.into();
            v
        })
        .collect();
    axum::Json(serde_json::json!({
        "trace_id": trace,
        "calls": node.traces.calls(trace),
        "spans": spans,
        "unreachable": reply.unreachable,
    }))
    .into_response()
}

pub(super) async fn scenarios(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Member) {
        return r;
    }
    let dir = crate::simulate::scenario_dir(node.config.ui.scenarios.as_deref());
    axum::Json(serde_json::json!({
        "folder": dir.as_ref().map(|d| d.display().to_string()),
        "scenarios": dir.as_deref().map(crate::simulate::offered).unwrap_or_default(),
        "policies": fogline_core::sim::Policy::ALL.map(|p| p.name()),
        "cdf_at": fogline_core::sim::CDF_AT,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SimRequest {
    /// A file of the scenario folder…
    scenario: Option<String>,
    /// …or a scenario's text (its files named relative to the folder).
    text: Option<String>,
    seed: Option<u64>,
    invocations: Option<usize>,
    #[serde(default)]
    policies: Option<String>,
}

/// Calls one run in the request may simulate.
const SIM_MAX: usize = 1_000_000;
/// Calls simulated when the request does not say (the page stays quick).
const SIM_DEFAULT: usize = 50_000;

static SIMULATING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

pub(super) async fn simulate(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    body: Bytes,
) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Member) {
        return r;
    }
    let bad = |m: String| text(StatusCode::BAD_REQUEST, m);
    let req: SimRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("simulate: {e} (send {{\"scenario\": FILE}} or {{\"text\": TOML}}, with optional seed, invocations, policies)")),
    };
    let Some(dir) = crate::simulate::scenario_dir(node.config.ui.scenarios.as_deref()) else {
        return text(
            StatusCode::NOT_FOUND,
            "no scenario folder here: set ui.scenarios (configs/sim in the source tree; /usr/share/fogline/configs/sim from the package)",
        );
    };
    let (name, text_of) = match (&req.scenario, &req.text) {
        (Some(f), None) => {
            if f.contains(['/', '\\']) || !f.ends_with(".toml") {
                return bad(format!(
                    "scenario {f:?} must be a file name of the scenario folder (NAME.toml)"
                ));
            }
            match std::fs::read_to_string(dir.join(f)) {
                Ok(t) => (f.clone(), t),
                Err(e) => return bad(format!("scenario {f:?}: {e}")),
            }
        }
        (None, Some(t)) => ("the scenario sent".to_string(), t.clone()),
        _ => return bad("give one of scenario (a file name) or text (a scenario)".into()),
    };
    let policies =
        match fogline_core::sim::Policy::parse_list(req.policies.as_deref().unwrap_or("all")) {
            Ok(p) => p,
            Err(e) => return bad(format!("policies: {e}")),
        };
    if req.invocations.is_some_and(|n| n == 0 || n > SIM_MAX) {
        return bad(format!("invocations must be within 1..={SIM_MAX}"));
    }
    let Ok(_one) = SIMULATING.try_acquire() else {
        let mut r = text(
            StatusCode::TOO_MANY_REQUESTS,
            "a simulation is running on this member; retry when it is done",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        return r;
    };
    // Files may come from under the folder's grandparent (configs/sim beside data/).
    let root = match dir.canonicalize() {
        Ok(d) => d
            .parent()
            .and_then(|p| p.parent())
            .map_or(d.clone(), |p| p.to_path_buf()),
        Err(e) => return bad(format!("scenario folder {}: {e}", dir.display())),
    };
    let run = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
        let (mut s, inputs) = crate::simulate::load(
            &name,
            &text_of,
            &dir,
            &crate::simulate::Overrides::default(),
            &crate::simulate::Files::Under(&root),
        )?;
        if let Some(seed) = req.seed {
            s.seed = seed;
        }
        s.invocations = req
            .invocations
            .unwrap_or_else(|| s.invocations.min(SIM_DEFAULT));
        let t = std::time::Instant::now();
        let report = fogline_core::sim::run(&s, &inputs, &policies);
        let mut v = serde_json::to_value(&report)?;
        v["took_s"] = t.elapsed().as_secs_f64().into();
        v["cdf_at"] = serde_json::to_value(fogline_core::sim::CDF_AT)?;
        Ok(v)
    })
    .await;
    match run {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => bad(format!("{e:#}")),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the simulation failed: {e}"),
        ),
    }
}
