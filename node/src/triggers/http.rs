//! The HTTP trigger, the gateway: the OpenFaaS API subset that OpenFaaS clients use, plus Fogline's own
//! `/v1` routes. Handlers parse, call the [`Node`], and map its typed errors onto statuses.
//!
//! | route | what |
//! |---|---|
//! | `POST /function/{name}` | run now, response is the function's stdout |
//! | `POST /async-function/{name}` | queue durably, 202 with `X-Call-Id` |
//! | `GET/POST/PUT/DELETE /system/functions` | list, deploy, update, delete (token) |
//! | `GET /system/function/{name}`, `/system/info`, `/system/logs` | status, info, logs |
//! | `GET /healthz`, `/metrics` | health, Prometheus |
//! | `PUT /v1/functions/{name}` | upload a module with its manifest (token) |
//! | `PUT /v1/modules` | upload a module, get its digest (token) |
//! | `GET /v1/calls/{id}` | an async call's result |
//! | `GET /v1/status` | node status |
//! | `GET /v1/mesh` | the gossip mesh as this node sees it |
//! | `GET/POST /system/namespaces` | namespaces (creating one needs the admin token) |
//! | `GET/POST/PUT/DELETE /system/secrets` | a namespace's secrets (names only ever listed) |
//! | `GET/POST /v1/tokens`, `DELETE /v1/tokens/{id}` | minted tokens (admin) |
//! | `GET /v1/webhook-secret` | the secret a namespace's callbacks are signed with (read) |
//! | `GET/POST /v1/revocations` | the certificate revocation list held; hand it a newer one (admin) |
//! | `/ui…`, `/v1/placements/stream`, `/v1/traces…`, `/v1/simulate…` | the dashboard and what it reads ([`super::ui`]) |
//!
//! Every invocation's answer carries `X-Call-Id` and a `traceparent` (W3C Trace Context):
//! the caller's trace continued, or a new one.
//!
//! Every route but invocations and `/healthz` needs a token; what each token may do is
//! [`fogline_core::access`]. System routes take `?namespace=` (default `openfaas-fn`);
//! invocations name a namespace as `/function/NAME.NAMESPACE`.

// Helpers return a ready `Response` as their error: it goes straight back to axum, so boxing
// it would only add an allocation on the error path.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use fogline_core::access::{Grant, Need, Scope};
use fogline_core::openfaas::{
    namespace_of, DeleteFunctionRequest, FunctionDeployment, FunctionStatus, GatewayInfo,
    ProviderInfo, VersionInfo,
};
use fogline_core::{FunctionManifest, ManifestError};
use serde::Deserialize;

use crate::agent::{new_call_id, DeployError, InvokeError, Node};

type Shared = Arc<Node>;

/// The gateway, bound.
pub struct Http {
    listener: tokio::net::TcpListener,
    /// Set when it serves HTTPS.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Http {
    pub async fn bind(config: &fogline_core::config::NodeConfig) -> anyhow::Result<Http> {
        let tls = super::https::server_config(config)?;
        let listen = config.http.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        Ok(Http { listener, tls })
    }
}

/// Serves `app` on `listener` until `stopping`; then in-flight requests finish, but idle
/// keep-alive connections must not hold the process up forever, so the drain has a deadline.
pub(crate) async fn run<L>(
    listener: L,
    app: Router,
    stopping: tokio::sync::watch::Receiver<bool>,
    deadline: std::time::Duration,
) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let s = stopping.clone();
        async move {
            super::stopped(s).await;
        }
    });
    tokio::select! {
        r = server => r.map_err(|e| anyhow::anyhow!("gateway: {e}")),
        _ = async {
            if !super::stopped(stopping).await {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(deadline).await;
        } => {
            tracing::warn!("connections still open {deadline:?} after the stop signal (node.stop_timeout); closing them");
            Ok(())
        }
    }
}

impl super::Trigger for Http {
    fn name(&self) -> &'static str {
        "gateway"
    }

    fn address(&self) -> Option<std::net::SocketAddr> {
        self.listener.local_addr().ok()
    }

    fn serve(
        self: Box<Self>,
        node: Arc<Node>,
        stopping: tokio::sync::watch::Receiver<bool>,
        deadline: std::time::Duration,
    ) -> crate::dispatch::BoxFut<'static, anyhow::Result<()>> {
        Box::pin(async move {
            let app = router(node);
            match self.tls {
                Some(tls) => {
                    let l = super::https::TlsListener::new(self.listener, tls)?;
                    run(l, app, stopping, deadline).await
                }
                None => run(self.listener, app, stopping, deadline).await,
            }
        })
    }
}

/// Builds the gateway's routes over a node.
pub fn router(node: Shared) -> Router {
    // Invocations are open unless `http.invoke_requires_token` (OpenFaaS's default); every
    // other route but /healthz needs the token, as OpenFaaS puts /system/* behind auth.
    let open = Router::new()
        .route("/function/{name}", post(invoke))
        .route("/function/{name}/{*rest}", post(invoke_sub))
        .route("/async-function/{name}", post(invoke_async))
        .route("/async-function/{name}/{*rest}", post(invoke_async_sub))
        .route("/healthz", get(|| async { "OK" }))
        .route("/ui", get(super::ui::page))
        .route("/ui/", get(super::ui::page))
        .route("/ui/assets/{file}", get(super::ui::asset))
        .route("/ui/{*page}", get(super::ui::page));
    let guarded = Router::new()
        .route(
            "/system/functions",
            get(list_functions)
                .post(deploy_function)
                .put(update_function)
                .delete(delete_function),
        )
        .route("/system/function/{name}", get(function_status))
        .route("/system/info", get(system_info))
        .route("/system/logs", get(function_logs))
        .route("/metrics", get(metrics))
        .route("/v1/functions/{name}", put(upload_function))
        .route("/v1/modules", put(upload_module))
        .route("/v1/images", put(upload_image))
        .route("/v1/calls/{id}", get(call_result))
        .route("/v1/dlq", get(super::dlq::list))
        .route(
            "/v1/dlq/{id}",
            get(super::dlq::show).delete(super::dlq::drop_call),
        )
        .route("/v1/dlq/{id}/replay", post(super::dlq::replay))
        .route("/v1/federation", get(super::federation::list))
        .route("/v1/federation/invites", post(super::federation::invite))
        .route("/v1/federation/peers", post(super::federation::join))
        .route(
            "/v1/federation/peers/{name}",
            delete(super::federation::leave),
        )
        .route("/v1/federation/offload", put(super::federation::offload))
        .route("/v1/federation/refuse", put(super::federation::refuse))
        .route("/v1/status", get(status))
        .route("/v1/mesh", get(mesh_view))
        .route("/v1/placements", get(placements))
        .route("/v1/placements/stream", get(super::ui::placement_stream))
        .route("/v1/functions/{name}/stats", get(super::ui::function_stats))
        .route("/v1/traces", get(super::ui::list_traces))
        .route("/v1/traces/{id}", get(super::ui::get_trace))
        .route("/v1/simulate/scenarios", get(super::ui::scenarios))
        .route("/v1/simulate", post(super::ui::simulate))
        .route(
            "/system/namespaces",
            get(list_namespaces).post(create_namespace),
        )
        .route(
            "/system/secrets",
            get(list_secrets)
                .post(create_secret)
                .put(update_secret)
                .delete(delete_secret),
        )
        .route("/v1/tokens", get(list_tokens).post(mint_token))
        .route("/v1/webhook-secret", get(webhook_secret))
        .route("/v1/revocations", get(revocations).post(take_revocations))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route_layer(axum::middleware::from_fn_with_state(
            node.clone(),
            require_token,
        ));
    open.merge(guarded)
        .fallback(fallback)
        // Bodies are read with explicit limits in each handler.
        .layer(DefaultBodyLimit::disable())
        .with_state(node)
}

/// Lets a request through only with a valid token, whose grant the handler then checks.
async fn require_token(
    State(node): State<Shared>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match authenticate(&node, req.headers()) {
        Ok(grant) => {
            req.extensions_mut().insert(grant);
            next.run(req).await
        }
        Err(r) => r,
    }
}

// ---- invocation -----------------------------------------------------------------------

async fn invoke(
    State(node): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    invoke_inner(node, name, headers, body).await
}

async fn invoke_sub(
    State(node): State<Shared>,
    Path((name, _rest)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    invoke_inner(node, name, headers, body).await
}

/// Runs an invocation's handler as one traced call: in the caller's trace (`traceparent`,
/// `tracestate`) or a new one, answered with its `X-Call-Id` and `traceparent`.
async fn traced<F>(node: &Node, headers: &HeaderMap, call_id: String, f: F) -> Response
where
    F: std::future::Future<Output = Response>,
{
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    let rec = node
        .traces
        .begin(header("traceparent"), header("tracestate"));
    rec.set_call_id(&call_id);
    let mut r = crate::traces::Traces::run(rec.clone(), f).await;
    node.traces
        .commit(&rec, "http", &[("status", &r.status().as_u16())]);
    let h = r.headers_mut();
    if !h.contains_key("x-call-id") {
        if let Ok(v) = HeaderValue::from_str(&call_id) {
            h.insert("x-call-id", v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&rec.traceparent()) {
        h.insert("traceparent", v);
    }
    if let Some(v) = rec.tracestate().and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert("tracestate", v);
    }
    r
}

async fn invoke_inner(node: Shared, name: String, headers: HeaderMap, body: Body) -> Response {
    let call_id = new_call_id();
    let n = node.clone();
    let (parts, f) = split_headers(headers);
    traced(&n, &parts, call_id, invoke_call(node, name, f, body)).await
}

/// The two trace headers, apart from the rest (which the handler takes).
fn split_headers(mut headers: HeaderMap) -> (HeaderMap, HeaderMap) {
    let mut trace = HeaderMap::new();
    for h in ["traceparent", "tracestate"] {
        if let Some(v) = headers.remove(h) {
            trace.insert(h, v);
        }
    }
    (trace, headers)
}

async fn invoke_call(node: Shared, name: String, headers: HeaderMap, body: Body) -> Response {
    let name = match function_name(&name) {
        Ok(n) => n,
        Err(r) => return r,
    };
    crate::traces::note("function", &name);
    if let Err(r) = may_invoke(&node, &name, &headers) {
        return r;
    }
    let body = match read_body(body, &headers, node.config.http.max_body.bytes()).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(target) = headers.get("x-fogline-target") {
        // Making this member dial an address of the caller's choice is an admin's call.
        if let Err(r) = authorize(&node, &headers, Need::Admin) {
            return r;
        }
        return forward(&node, &name, body, target).await;
    }
    match node.call(&name, body).await {
        Ok(out) => placed_response(out),
        Err(e) => refused(e),
    }
}

fn placed_response(mut out: crate::dispatch::Placed) -> Response {
    let ct = if std::str::from_utf8(&out.body).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    let mut r = Response::new(Body::from(std::mem::take(&mut out.body)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    let mut put = |name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(name, v);
        }
    };
    put("x-duration-seconds", format!("{:.6}", out.run_ms / 1e3));
    put("x-fogline-cold", out.cold.to_string());
    if out.truncated {
        put("x-fogline-truncated", "true".into());
    }
    put("x-fogline-node", out.node.clone());
    if let Some(sent) = out.module_sent {
        put("x-fogline-module-sent", sent.to_string());
    }
    if let Some(p) = out.predicted_ms {
        put("x-fogline-placed-on", out.place());
        put("x-fogline-predicted-ms", format!("{p:.2}"));
        put("x-fogline-took-ms", format!("{:.2}", out.took_ms));
        put("x-fogline-attempts", out.attempts.to_string());
    }
    r
}

fn refused(e: crate::dispatch::Refused) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = text(status, e.message);
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// Runs the call on the member named by `X-Fogline-Target: quic://HOST:PORT`, through the
/// node's one path for calls sent to another member.
async fn forward(node: &Shared, name: &str, body: Bytes, target: &HeaderValue) -> Response {
    let Some((member, addr)) = target.to_str().ok().and_then(crate::quic::parse_target) else {
        return text(
            StatusCode::BAD_REQUEST,
            "X-Fogline-Target must be quic://IP:PORT or quic://MEMBER@IP:PORT",
        );
    };
    match node.call_at(name, body, addr, member.as_deref()).await {
        Ok(out) => placed_response(out),
        Err(e) => refused(e),
    }
}

async fn invoke_async(
    State(node): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    invoke_async_inner(node, name, headers, body).await
}

async fn invoke_async_sub(
    State(node): State<Shared>,
    Path((name, _rest)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    invoke_async_inner(node, name, headers, body).await
}

async fn invoke_async_inner(
    node: Shared,
    name: String,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Until it is accepted the call has no id of its own; a refused one is known by this.
    let provisional = new_call_id();
    let n = node.clone();
    let (parts, f) = split_headers(headers);
    traced(&n, &parts, provisional, submit_call(node, name, f, body)).await
}

async fn submit_call(node: Shared, name: String, headers: HeaderMap, body: Body) -> Response {
    let name = match function_name(&name) {
        Ok(n) => n,
        Err(r) => return r,
    };
    crate::traces::note("function", &name);
    crate::traces::note_static("async", "true");
    if let Err(r) = may_invoke(&node, &name, &headers) {
        return r;
    }
    // The node checks it against `[async] callback_allow`.
    let callback = match headers.get("x-callback-url").map(|v| v.to_str()) {
        None => None,
        Some(Ok(u)) => Some(u.to_string()),
        Some(Err(_)) => {
            return text(
                StatusCode::BAD_REQUEST,
                "X-Callback-Url must be an http:// or https:// URL",
            )
        }
    };
    let key = match headers.get("x-idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if crate::agent::keyed::key_ok(k) => Some(k.to_string()),
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "X-Idempotency-Key must be 1 to 255 printable ASCII characters",
            )
        }
    };
    let deadline = match headers.get("x-fogline-deadline").map(|v| v.to_str()) {
        None => None,
        Some(Ok(d)) => match parse_deadline(d) {
            Ok(d) => Some(d),
            Err(why) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("X-Fogline-Deadline: {why}"),
                )
            }
        },
        Some(Err(_)) => {
            return text(
                StatusCode::BAD_REQUEST,
                "X-Fogline-Deadline must be a duration such as 30s, 10m or 2h",
            )
        }
    };
    let body = match read_body(body, &headers, node.config.http.max_body.bytes()).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let how = crate::agent::queue::Submit {
        callback,
        key,
        deadline,
        reply: None,
    };
    match node.submit(&name, body, how).await {
        Ok(accepted) => {
            let id = accepted.id;
            crate::traces::set_call_id(&id);
            let mut r = if accepted.existing {
                (
                    StatusCode::ACCEPTED,
                    format!("accepted earlier: call {id} has this idempotency key\n"),
                )
                    .into_response()
            } else {
                (StatusCode::ACCEPTED, format!("accepted: call {id}\n")).into_response()
            };
            if accepted.existing {
                r.headers_mut()
                    .insert("x-idempotent-replay", HeaderValue::from_static("true"));
            }
            if let Ok(v) = HeaderValue::from_str(&id) {
                r.headers_mut().insert("x-call-id", v);
            }
            if let Ok(v) = HeaderValue::from_str(&format!("/v1/calls/{id}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Err(e) => invoke_error(e),
    }
}

/// `X-Fogline-Deadline`: how long an async call may take to succeed, retries included
/// (`30s`, `10m`, `2h`; at most 30 days).
fn parse_deadline(d: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(d.trim())
        .map_err(|e| format!("{d:?} is not a duration such as 30s, 10m or 2h ({e})"))?;
    if d.is_zero() || d > std::time::Duration::from_secs(30 * 24 * 3600) {
        return Err(format!(
            "{} is outside 1ms..=30 days",
            humantime::format_duration(d)
        ));
    }
    Ok(d)
}

#[derive(serde::Deserialize)]
pub(super) struct Limit {
    pub(super) limit: Option<usize>,
}

async fn placements(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    Query(q): Query<Limit>,
) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Member) {
        return r;
    }
    match node.links.dispatch.get() {
        Some(d) => axum::Json(d.placements(q.limit.unwrap_or(100))).into_response(),
        None => text(
            StatusCode::NOT_FOUND,
            "this is not a router: placements are decided by `fogline router`",
        ),
    }
}

async fn call_result(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    Path(id): Path<String>,
) -> Response {
    let found = node.call_result(&id);
    // A call is read by a token of its function's namespace.
    if let Ok(Some((function, _))) = &found {
        let ns = fogline_core::access::split(function).1;
        if let Err(r) = permit(&node, &grant, Need::Any(ns)) {
            return r;
        }
    }
    match found.map(|f| f.map(|(_, r)| r)) {
        Ok(None) => text(
            StatusCode::NOT_FOUND,
            format!("call {id:?} not found (call ids are 32 hex digits; results are kept for a limited time)"),
        ),
        Ok(Some(None)) => {
            let mut r = (StatusCode::ACCEPTED, format!("call {id} is queued\n")).into_response();
            r.headers_mut()
                .insert("x-fogline-call-state", HeaderValue::from_static("queued"));
            r
        }
        Ok(Some(Some(res))) => {
            let status =
                StatusCode::from_u16(res.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut r = (status, res.body).into_response();
            r.headers_mut()
                .insert("x-fogline-call-state", HeaderValue::from_static("done"));
            r.headers_mut()
                .insert("x-fogline-finished-ms", HeaderValue::from(res.finished_ms));
            if let Ok(v) = HeaderValue::from_str(&res.function) {
                r.headers_mut().insert("x-function-name", v);
            }
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn invoke_error(e: InvokeError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = text(status, e.to_string());
    if status == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// The key of the function an invocation route names: `name` or `name.namespace`, as
/// OpenFaaS routes write it.
fn function_name(raw: &str) -> Result<String, Response> {
    let (name, ns) = match raw.split_once('.') {
        Some((n, ns)) => (n, Some(ns)),
        None => (raw, None),
    };
    fogline_core::access::qualify(name, ns).map_err(|e| {
        text(
            StatusCode::NOT_FOUND,
            format!("function {raw:?} not found: {}", e.problem),
        )
    })
}

/// Whether this request may invoke the function of key `key`: open in the default
/// namespace (unless `http.invoke_requires_token`) and in public namespaces; elsewhere a
/// token with the invoke scope of its namespace.
fn may_invoke(node: &Node, key: &str, headers: &HeaderMap) -> Result<(), Response> {
    if node.open_to_anyone(key) {
        return Ok(());
    }
    let ns = fogline_core::access::split(key).1;
    authorize(node, headers, Need::In(Scope::Invoke, ns)).map(drop)
}

async fn list_functions(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    q: Query<NamespaceQuery>,
) -> Response {
    let ns = match scoped(&node, &grant, q.namespace.as_deref(), Scope::Read) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    let list: Vec<FunctionStatus> = node
        .list()
        .iter()
        .filter(|f| fogline_core::access::split(&f.manifest.name).1 == ns)
        .map(|f| describe(&node, f))
        .collect();
    axum::Json(list).into_response()
}

/// The namespace a system route names (`?namespace=`, default `openfaas-fn`), when it
/// exists and the grant has `scope` there; 404 when it does not (or cannot, by its name).
pub(super) fn scoped(
    node: &Node,
    grant: &Grant,
    ns: Option<&str>,
    scope: Scope,
) -> Result<String, Response> {
    scoped_or(node, grant, ns, scope, StatusCode::NOT_FOUND)
}

/// [`scoped`], answering `missing` for a namespace that does not exist (400 where a
/// route documents no 404: creating).
fn scoped_or(
    node: &Node,
    grant: &Grant,
    ns: Option<&str>,
    scope: Scope,
    missing: StatusCode,
) -> Result<String, Response> {
    let ns = namespace_of(ns)
        .map_err(|e| text(missing, format!("namespace does not exist: {}", e.problem)))?;
    permit(node, grant, Need::In(scope, ns))?;
    if !node.access.exists(ns) {
        return Err(text(
            missing,
            format!("namespace {ns:?} does not exist (create it with POST /system/namespaces or `fogline namespace create`)"),
        ));
    }
    Ok(ns.to_string())
}

async fn function_status(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    Path(name): Path<String>,
    q: Query<NamespaceQuery>,
) -> Response {
    let ns = match scoped(&node, &grant, q.namespace.as_deref(), Scope::Read) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    let Ok(key) = fogline_core::access::qualify(&name, Some(&ns)) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("function {name:?} not found"),
        );
    };
    match node.lookup(&key) {
        Some(f) => axum::Json(describe(&node, &f)).into_response(),
        None => text(
            StatusCode::NOT_FOUND,
            format!("function {name:?} not found"),
        ),
    }
}

#[derive(Deserialize)]
struct NamespaceQuery {
    namespace: Option<String>,
}

fn describe(node: &Node, f: &crate::agent::Deployed) -> FunctionStatus {
    FunctionStatus::from_manifest(
        &f.manifest,
        node.invocations(&f.manifest.name),
        true,
        f.created_at.clone(),
    )
}

async fn deploy_function(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    deploy_openfaas(node, grant, headers, body, false).await
}

async fn update_function(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    deploy_openfaas(node, grant, headers, body, true).await
}

async fn deploy_openfaas(
    node: Shared,
    grant: Grant,
    headers: HeaderMap,
    body: Body,
    update: bool,
) -> Response {
    let dep: FunctionDeployment = match json_body(&headers, body, 1 << 20).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let missing = if update {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_REQUEST
    };
    if let Err(r) = scoped_or(
        &node,
        &grant,
        dep.namespace.as_deref(),
        Scope::Deploy,
        missing,
    ) {
        return r;
    }
    let manifest = match dep.to_manifest() {
        Ok(m) => m,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match node.deploy(manifest, None, update).await {
        Ok(report) if update => (StatusCode::OK, axum::Json(report)).into_response(),
        Ok(report) => (StatusCode::ACCEPTED, axum::Json(report)).into_response(),
        Err(e) => deploy_error(e),
    }
}

async fn delete_function(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    q: Query<NamespaceQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ns = match scoped(&node, &grant, q.namespace.as_deref(), Scope::Deploy) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    let req: DeleteFunctionRequest = match json_body(&headers, body, 64 * 1024).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(key) = fogline_core::access::qualify(&req.function_name, Some(&ns)) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("function {:?} not found", req.function_name),
        );
    };
    match node.remove(&key).await {
        Ok(true) => text(
            StatusCode::OK,
            format!("function {:?} deleted", req.function_name),
        ),
        Ok(false) => text(
            StatusCode::NOT_FOUND,
            format!("function {:?} not found", req.function_name),
        ),
        Err(e) => deploy_error(e),
    }
}

/// `PUT /v1/functions/{name}`: the body is the module; the optional `X-Fogline-Manifest`
/// header carries the rest of the manifest as JSON (name and module are filled in).
async fn upload_function(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    Path(name): Path<String>,
    q: Query<NamespaceQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ns = match scoped_or(
        &node,
        &grant,
        q.namespace.as_deref(),
        Scope::Deploy,
        StatusCode::BAD_REQUEST,
    ) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    let name = match fogline_core::access::qualify(&name, Some(&ns)) {
        Ok(k) => k,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut spec = match headers.get("x-fogline-manifest").map(|v| v.as_bytes()) {
        None => serde_json::Map::new(),
        Some(raw) => match serde_json::from_slice::<serde_json::Value>(raw) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "X-Fogline-Manifest must be a JSON object",
                )
            }
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("X-Fogline-Manifest is not valid JSON: {e}"),
                )
            }
        },
    };
    spec.insert("name".into(), serde_json::Value::String(name));
    spec.remove("module");
    let manifest = match FunctionManifest::from_json(&serde_json::to_vec(&spec).unwrap_or_default())
    {
        Ok(m) => m,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let module = match read_body(body, &headers, node.config.http.max_module.bytes()).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let is_container = !manifest.runtime.code_is_module();
    if module.is_empty() && !is_container {
        return text(
            StatusCode::BAD_REQUEST,
            "the request body must be the function's Wasm module; it is empty",
        );
    }
    if !module.is_empty() && is_container {
        return text(
            StatusCode::BAD_REQUEST,
            "a container function's code is its image: send no body (upload an image tar to PUT /v1/images)",
        );
    }
    let module = (!is_container).then_some(module);
    match node.deploy(manifest, module, false).await {
        Ok(report) => {
            let status = if report.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, axum::Json(report)).into_response()
        }
        Err(e) => deploy_error(e),
    }
}

/// `PUT /v1/images`: the body is an image tar (as `docker save` writes it), loaded into
/// this node's container engine; answers with the image names it held.
async fn upload_image(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Images go into the host's engine, shared by every namespace.
    if let Err(r) = permit(&node, &grant, Need::Admin) {
        return r;
    }
    let tar = match read_body(
        body,
        &headers,
        node.config.http.max_module.bytes().max(1 << 30),
    )
    .await
    {
        Ok(b) => b,
        Err(r) => return r,
    };
    if tar.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "the request body must be an image tar; it is empty",
        );
    }
    match node
        .load_archive(fogline_core::Runtime::Container, tar)
        .await
    {
        Ok(images) => axum::Json(serde_json::json!({ "images": images })).into_response(),
        Err(e) => deploy_error(e),
    }
}

async fn upload_module(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = permit(&node, &grant, Need::DeployAnywhere) {
        return r;
    }
    let module = match read_body(body, &headers, node.config.http.max_module.bytes()).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !module.starts_with(b"\0asm") {
        return text(
            StatusCode::BAD_REQUEST,
            "not a WebAssembly module: it does not start with \\0asm",
        );
    }
    match node.put_module(&module) {
        Ok(d) => axum::Json(serde_json::json!({ "digest": d.to_string(), "size": module.len() }))
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn deploy_error(e: DeployError) -> Response {
    let status = match &e {
        DeployError::Manifest(_) | DeployError::UnknownModule(_) => StatusCode::BAD_REQUEST,
        DeployError::NotFound(_) => StatusCode::NOT_FOUND,
        DeployError::Exec(crate::executor::ExecError::Invalid(_)) => StatusCode::BAD_REQUEST,
        DeployError::Exec(crate::executor::ExecError::Unavailable(_)) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        DeployError::Quota(_) => StatusCode::FORBIDDEN,
        // A deploy naming a secret that does not exist is a bad request, not a missing route.
        DeployError::Secret(crate::secrets::SecretError::NotFound { .. }) => {
            StatusCode::BAD_REQUEST
        }
        DeployError::Secret(e) => return secret_error(e),
        DeployError::Exec(_) | DeployError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, e.to_string())
}

// ---- information ----------------------------------------------------------------------

async fn system_info(State(_node): State<Shared>) -> Response {
    let version = VersionInfo {
        sha: option_env!("FOGLINE_GIT_SHA")
            .unwrap_or("unknown")
            .to_string(),
        release: env!("CARGO_PKG_VERSION").to_string(),
    };
    axum::Json(GatewayInfo {
        provider: ProviderInfo {
            provider: "fogline".into(),
            orchestration: "fogline-node".into(),
            version: version.clone(),
        },
        version,
        arch: std::env::consts::ARCH.to_string(),
    })
    .into_response()
}

#[derive(Deserialize)]
struct LogsQuery {
    name: String,
    namespace: Option<String>,
    tail: Option<String>,
    /// Streaming is not offered: the lines so far are returned either way, but the value
    /// must be the boolean the spec says (anything else is a 400).
    #[allow(dead_code)]
    follow: Option<bool>,
}

/// `tail` as OpenFaaS defines it: an integer, where 0 or less means all lines. Integers too
/// large for 64 bits saturate rather than fail.
fn parse_tail(t: Option<&str>) -> Result<i64, String> {
    let Some(t) = t.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(0);
    };
    let digits = t.strip_prefix('-').unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("tail {t:?} is not an integer"));
    }
    Ok(t.parse::<i64>()
        .unwrap_or(if t.starts_with('-') { 0 } else { i64::MAX }))
}

async fn function_logs(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("bad query: {}", e.body_text()),
            )
        }
    };
    let ns = match scoped(&node, &grant, q.namespace.as_deref(), Scope::Read) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    let key = match fogline_core::access::qualify(&q.name, Some(&ns)) {
        Ok(k) => k,
        Err(e) => return text(StatusCode::NOT_FOUND, e.to_string()),
    };
    if node.lookup(&key).is_none() {
        return text(
            StatusCode::NOT_FOUND,
            format!("function {:?} not found", q.name),
        );
    }
    let tail = match parse_tail(q.tail.as_deref()) {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let mut out = String::new();
    for entry in node.logs.tail(&key, tail) {
        if let Ok(line) = serde_json::to_string(&entry) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    ([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response()
}

async fn metrics(State(node): State<Shared>, Extension(grant): Extension<Grant>) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Member) {
        return r;
    }
    let mut text = node.metrics.render(&node.gauges());
    node.traces.metrics(&mut text);
    node.queue_metrics(&mut text);
    if let Some(m) = node.links.mesh.get() {
        m.metrics(&mut text);
    }
    if let Some(d) = node.links.dispatch.get() {
        d.metrics(&mut text);
    }
    if let Some(f) = node.links.federation.get() {
        f.metrics(&mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn status(State(node): State<Shared>, Extension(grant): Extension<Grant>) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Member) {
        return r;
    }
    axum::Json(node.status()).into_response()
}

async fn mesh_view(State(node): State<Shared>, Extension(grant): Extension<Grant>) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Member) {
        return r;
    }
    match node.links.mesh.get() {
        Some(m) => axum::Json(serde_json::json!({
            "self": m.address,
            "members": m.rows(),
            "peer_places": m.peer_rows(),
        }))
        .into_response(),
        None => text(
            StatusCode::NOT_FOUND,
            "the mesh is off on this node (set mesh.listen)",
        ),
    }
}

async fn fallback(method: Method, uri: Uri) -> Response {
    text(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

// ---- helpers --------------------------------------------------------------------------

pub(super) fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut m = msg.into();
    if !m.ends_with('\n') {
        m.push('\n');
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        m,
    )
        .into_response()
}

/// The token a request carries: `Authorization: Bearer TOKEN`, or Basic auth with the
/// token as the password (what faas-cli sends).
fn given_token(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = v.strip_prefix("Bearer ") {
        return Some(t.trim().to_string());
    }
    let b = v.strip_prefix("Basic ")?;
    let decoded = base64_decode(b.trim())?;
    let s = String::from_utf8(decoded).ok()?;
    Some(s.split_once(':')?.1.to_string())
}

/// The grant of the request's token; 401 without a valid one.
fn authenticate(node: &Node, headers: &HeaderMap) -> Result<Grant, Response> {
    use crate::agent::access::AuthError;
    match node.access.authenticate(given_token(headers).as_deref()) {
        Ok(g) => Ok(g),
        Err(AuthError::Wrong) => {
            node.metrics
                .refused("reason=\"token\",problem=\"wrong\"".into());
            Err(unauthorized("the token is wrong (or was revoked)"))
        }
        Err(AuthError::JoinOnly) => {
            node.metrics
                .refused("reason=\"token\",problem=\"join_only\"".into());
            Err(unauthorized(
                "a join token is only for `fogline join`, not for the gateway",
            ))
        }
        Err(AuthError::Missing) => {
            node.metrics
                .refused("reason=\"token\",problem=\"missing\"".into());
            Err(unauthorized(
                "this route needs a token: send Authorization: Bearer <token> (the admin token is in <data-dir>/admin.token)",
            ))
        }
    }
}

/// 403 naming what the grant lacks.
pub(super) fn permit(node: &Node, grant: &Grant, need: Need<'_>) -> Result<(), Response> {
    grant.allows(need).map_err(|d| {
        node.metrics
            .refused("reason=\"scope\",problem=\"denied\"".into());
        text(StatusCode::FORBIDDEN, d.0)
    })
}

/// [`authenticate`], then [`permit`].
fn authorize(node: &Node, headers: &HeaderMap, need: Need<'_>) -> Result<Grant, Response> {
    let g = authenticate(node, headers)?;
    permit(node, &g, need)?;
    Ok(g)
}

// ---- secrets --------------------------------------------------------------------------

fn secret_error(e: &crate::secrets::SecretError) -> Response {
    use crate::secrets::SecretError as E;
    let status = match e {
        E::NotFound { .. } => StatusCode::NOT_FOUND,
        E::Exists { .. } => StatusCode::CONFLICT,
        E::Invalid(_) => StatusCode::BAD_REQUEST,
        E::Sealed(_) | E::Io(_) | E::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, e.to_string())
}

async fn list_secrets(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    q: Query<NamespaceQuery>,
) -> Response {
    let ns = match scoped(&node, &grant, q.namespace.as_deref(), Scope::Read) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    match node.secrets.names(&ns) {
        Ok(names) => axum::Json(
            names
                .into_iter()
                .map(|n| serde_json::json!({ "name": n, "namespace": ns }))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => secret_error(&e),
    }
}

/// The OpenFaaS `Secret` body: a name, its namespace, and `value` (text) or `rawValue`
/// (base64).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretBody {
    name: String,
    #[serde(default, deserialize_with = "fogline_core::openfaas::non_null")]
    namespace: Option<String>,
    #[serde(default, deserialize_with = "fogline_core::openfaas::non_null")]
    value: Option<String>,
    #[serde(default, deserialize_with = "fogline_core::openfaas::non_null")]
    raw_value: Option<String>,
}

/// Parses a secrets request and checks the grant may deploy in its namespace.
async fn secret_request(
    node: &Node,
    grant: &Grant,
    q: &NamespaceQuery,
    headers: &HeaderMap,
    body: Body,
    missing: StatusCode,
) -> Result<(String, SecretBody), Response> {
    let req: SecretBody = json_body(headers, body, (crate::secrets::MAX_VALUE as u64) * 2).await?;
    let ns = req.namespace.as_deref().or(q.namespace.as_deref());
    let ns = scoped_or(node, grant, ns, Scope::Deploy, missing)?;
    Ok((ns, req))
}

fn secret_value(req: &SecretBody) -> Result<Vec<u8>, Response> {
    match (&req.value, &req.raw_value) {
        (Some(v), None) => Ok(v.as_bytes().to_vec()),
        (None, Some(raw)) => base64_decode(raw.trim())
            .ok_or_else(|| text(StatusCode::BAD_REQUEST, "rawValue is not valid base64")),
        (Some(_), Some(_)) => Err(text(
            StatusCode::BAD_REQUEST,
            "give value or rawValue, not both",
        )),
        (None, None) => Err(text(
            StatusCode::BAD_REQUEST,
            "give the secret's value (value, or rawValue in base64)",
        )),
    }
}

async fn create_secret(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    q: Query<NamespaceQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    put_secret(node, grant, q.0, headers, body, true).await
}

async fn update_secret(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    q: Query<NamespaceQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    put_secret(node, grant, q.0, headers, body, false).await
}

async fn put_secret(
    node: Shared,
    grant: Grant,
    q: NamespaceQuery,
    headers: HeaderMap,
    body: Body,
    create: bool,
) -> Response {
    let missing = if create {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::NOT_FOUND
    };
    let (ns, req) = match secret_request(&node, &grant, &q, &headers, body, missing).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let value = match secret_value(&req) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match node.secrets.put(&ns, &req.name, &value, create) {
        Ok(()) => {
            if !create {
                node.refresh_secret(&ns, &req.name, false).await;
            }
            let what = if create { "created" } else { "updated" };
            tracing::info!(namespace = %ns, secret = %req.name, "secret {what}");
            let status = if create {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            text(status, format!("secret {:?} {what}", req.name))
        }
        Err(e) => secret_error(&e),
    }
}

async fn delete_secret(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    q: Query<NamespaceQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (ns, req) =
        match secret_request(&node, &grant, &q, &headers, body, StatusCode::NOT_FOUND).await {
            Ok(r) => r,
            Err(r) => return r,
        };
    match node.secrets.delete(&ns, &req.name) {
        Ok(true) => {
            node.refresh_secret(&ns, &req.name, true).await;
            tracing::info!(namespace = %ns, secret = %req.name, "secret removed");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => secret_error(&crate::secrets::SecretError::NotFound {
            namespace: ns,
            name: req.name,
        }),
        Err(e) => secret_error(&e),
    }
}

// ---- revocations ----------------------------------------------------------------------

/// `GET /v1/revocations`: the signed list this member enforces (404 when none).
async fn revocations(State(node): State<Shared>, Extension(grant): Extension<Grant>) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Member) {
        return r;
    }
    match node.revocations.signed() {
        Some(s) => axum::Json(s).into_response(),
        None => text(
            StatusCode::NOT_FOUND,
            "this member holds no revocation list",
        ),
    }
}

/// `POST /v1/revocations`: a list signed by the cluster CA (`fogline certs revoke --push`);
/// taken when it verifies and is newer, then spread over the mesh.
async fn take_revocations(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Admin) {
        return r;
    }
    let signed: fogline_core::revocation::SignedList =
        match json_body(&headers, body, 4 << 20).await {
            Ok(v) => v,
            Err(r) => return r,
        };
    match node.revocations.accept(&signed) {
        Ok(true) => text(
            StatusCode::OK,
            format!(
                "revocation list {} taken; spreading over the mesh",
                node.revocations.number()
            ),
        ),
        Ok(false) => text(
            StatusCode::OK,
            format!(
                "this member holds list {} already, as new or newer",
                node.revocations.number()
            ),
        ),
        Err(e) => text(
            StatusCode::BAD_REQUEST,
            format!("revocation list refused: {e}"),
        ),
    }
}

// ---- namespaces and tokens ------------------------------------------------------------

/// `GET /v1/webhook-secret?namespace=N`: what receivers of N's callbacks verify with.
async fn webhook_secret(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    q: Query<NamespaceQuery>,
) -> Response {
    match scoped(&node, &grant, q.namespace.as_deref(), Scope::Read) {
        Ok(ns) => text(StatusCode::OK, node.webhook_secret(&ns)),
        Err(r) => r,
    }
}

async fn list_namespaces(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
) -> Response {
    let names: Vec<String> = node
        .access
        .namespaces()
        .into_iter()
        .map(|n| n.name)
        .filter(|n| grant.namespace().is_none_or(|mine| mine == n))
        .collect();
    axum::Json(names).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNamespace {
    name: String,
    #[serde(default)]
    public: bool,
    /// Accepted as OpenFaaS sends them; not kept.
    #[serde(default)]
    #[allow(dead_code)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// `POST /system/namespaces {"name": N, "public": false}`: creates it and mints its token,
/// returned this once.
async fn create_namespace(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Admin) {
        return r;
    }
    let req: NewNamespace = match json_body(&headers, body, 64 * 1024).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match node.access.create_namespace(&req.name, req.public) {
        Ok(true) => {}
        Ok(false) => {
            return text(
                StatusCode::CONFLICT,
                format!("namespace {:?} exists already", req.name),
            )
        }
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    }
    let grant = crate::agent::access::namespace_grant(&req.name);
    match node
        .access
        .mint(grant, Some(format!("namespace {}", req.name)))
    {
        Ok((rec, token)) => {
            tracing::info!(namespace = %req.name, public = req.public, token = %rec.id, "namespace created");
            (
                StatusCode::CREATED,
                axum::Json(serde_json::json!({
                    "name": req.name, "public": req.public, "token_id": rec.id, "token": token,
                })),
            )
                .into_response()
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn list_tokens(State(node): State<Shared>, Extension(grant): Extension<Grant>) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Admin) {
        return r;
    }
    let list: Vec<_> = node
        .access
        .tokens()
        .into_iter()
        .map(|t| serde_json::json!({ "id": t.id, "grant": t.grant, "created_at": t.created_at, "note": t.note }))
        .collect();
    axum::Json(list).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    /// A namespace token: its namespace and scopes.
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    scopes: Vec<Scope>,
    /// A join token: the role it signs (node or bridge), how long and how often it may
    /// be used, and the site the new member joins.
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    uses: Option<u32>,
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

/// `POST /v1/tokens`: `{"namespace": N, "scopes": ["read"]}` mints a namespace token;
/// `{"role": "node", "ttl": "1h", "uses": 1, "site": "S"}` a join token for `fogline
/// join` (on a member that takes enrollments). The token is returned this once.
async fn mint_token(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Admin) {
        return r;
    }
    let req: NewToken = match json_body(&headers, body, 64 * 1024).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let grant = match (&req.role, req.namespace.clone()) {
        (Some(_), Some(_)) => {
            return text(
                StatusCode::BAD_REQUEST,
                "a token is for a namespace or for joining (role), not both",
            )
        }
        (Some(role), None) => match join_grant(&node, role, &req) {
            Ok(g) => g,
            Err(r) => return r,
        },
        (None, Some(namespace)) => {
            let mut scopes = req.scopes.clone();
            scopes.sort();
            scopes.dedup();
            Grant::Namespace { namespace, scopes }
        }
        (None, None) => {
            return text(
                StatusCode::BAD_REQUEST,
                "name the token's namespace (with scopes), or a role for a join token",
            )
        }
    };
    let is_join = matches!(grant, Grant::Join(_));
    match node.access.mint(grant, req.note) {
        Ok((rec, token)) => {
            // A join token carries where to enroll and which CA to trust.
            let token = match (is_join, node.links.issuer.get()) {
                (true, Some(i)) => fogline_core::enroll::JoinToken {
                    addr: i.addr.clone(),
                    ca: i.ca_fingerprint.clone(),
                    token,
                }
                .encode(),
                _ => token,
            };
            (
                StatusCode::CREATED,
                axum::Json(serde_json::json!({ "id": rec.id, "grant": rec.grant, "token": token })),
            )
                .into_response()
        }
        Err(e) => text(StatusCode::BAD_REQUEST, e),
    }
}

/// The grant of a join token, when this member takes enrollments.
fn join_grant(node: &Node, role: &str, req: &NewToken) -> Result<Grant, Response> {
    use fogline_core::roles::Role;
    if node.links.issuer.get().is_none() {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "this member takes no enrollments: set [enroll] (listen, ca_dir) on a bridge or router that holds the cluster CA",
        ));
    }
    let role = match Role::parse(role) {
        Some(r @ (Role::Node | Role::Bridge)) => r,
        _ => {
            return Err(text(
                StatusCode::BAD_REQUEST,
                format!("a join token is for role node or bridge, not {role:?}"),
            ))
        }
    };
    let ttl = match req.ttl.as_deref().map(fogline_core::units::parse_duration) {
        None => std::time::Duration::from_secs(3600),
        Some(Ok(d)) => d,
        Some(Err(e)) => return Err(text(StatusCode::BAD_REQUEST, format!("ttl: {e}"))),
    };
    if let Some(site) = &req.site {
        if site.is_empty() || site.len() > 63 {
            return Err(text(
                StatusCode::BAD_REQUEST,
                "site must be 1 to 63 characters",
            ));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(Grant::Join(fogline_core::enroll::JoinGrant {
        role,
        site: req.site.clone(),
        expires_at: now + ttl.as_secs(),
        uses_left: req.uses.unwrap_or(1),
    }))
}

async fn revoke_token(
    State(node): State<Shared>,
    Extension(grant): Extension<Grant>,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = permit(&node, &grant, Need::Admin) {
        return r;
    }
    match node.access.revoke(&id) {
        Ok(true) => {
            tracing::info!(token = %id, "token revoked");
            text(StatusCode::OK, format!("token {id} revoked"))
        }
        Ok(false) => text(StatusCode::NOT_FOUND, format!("no token with id {id:?}")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn unauthorized(msg: &str) -> Response {
    let mut r = text(StatusCode::UNAUTHORIZED, msg);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"fogline\""),
    );
    r
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

/// Reads a body up to `limit` bytes; 413 beyond.
async fn read_body(body: Body, headers: &HeaderMap, limit: u64) -> Result<Bytes, Response> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than this node's limit of {limit} bytes"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let is_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.to_string().contains("length limit"));
            if is_limit || e.to_string().contains("length limit") {
                Err(too_large())
            } else {
                Err(text(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {e}"),
                ))
            }
        }
    }
}

/// Reads a JSON body of at most `limit` bytes; 400 naming the field when it does not parse.
async fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<T, Response> {
    let body = read_body(body, headers, limit).await?;
    parse_json(&body).map_err(|e| text(StatusCode::BAD_REQUEST, e.to_string()))
}

/// JSON parsing whose errors name the field.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ManifestError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if path == "." {
            "(body)".to_string()
        } else {
            path
        };
        ManifestError::new(field, format!("invalid JSON: {inner}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_decodes() {
        assert_eq!(base64_decode("YWRtaW46c2VjcmV0").unwrap(), b"admin:secret");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("!!!!").is_none());
    }

    #[test]
    fn tail_follows_openfaas() {
        assert_eq!(parse_tail(None), Ok(0));
        assert_eq!(parse_tail(Some("5")), Ok(5));
        assert_eq!(parse_tail(Some("-3")), Ok(-3));
        assert_eq!(parse_tail(Some("99999999999999999999999")), Ok(i64::MAX));
        assert_eq!(parse_tail(Some("-99999999999999999999999")), Ok(0));
        assert!(parse_tail(Some("null")).is_err());
    }

    #[test]
    fn names_with_namespaces() {
        assert_eq!(function_name("hello").unwrap(), "hello");
        assert_eq!(function_name("hello.openfaas-fn").unwrap(), "hello");
        assert_eq!(function_name("hello.team-a").unwrap(), "hello.team-a");
        assert!(function_name("hello.Other").is_err());
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<DeleteFunctionRequest>(b"{}").unwrap_err();
        assert!(e.to_string().contains("functionName"), "{e}");
        let e = parse_json::<FunctionDeployment>(br#"{"service":"a","image":7}"#).unwrap_err();
        assert_eq!(e.field, "image");
    }
}
