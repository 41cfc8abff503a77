//! The server's life: bind, answer `/health` with 503 while the `-m` model loads in the
//! background (a multi-model server is ready at once and loads models on demand), build the
//! router (both API flavours, model management routes, auth, limits, CORS), and shut down
//! gracefully on SIGTERM/SIGINT: stop accepting, let running requests finish within the
//! grace period, cut the rest cleanly, and return.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::watch;

use crate::admission::Admission;
use crate::api::common::{error_body, ApiError, Flavor};
use crate::api::{llama, manage, ollama, openai};
use crate::config::{ModelSpec, ServerConfig};
use crate::device::DeviceHandle;
use crate::metrics::Metrics;
use crate::models::{Activity, Busy, Defaults, Registry};
use crate::scheduler::SchedulerHandle;
use crate::template::ChatTemplate;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding or serving failed.
    #[error("{0}")]
    Io(String),
    /// The model could not be loaded.
    #[error("cannot load {path}: {msg}")]
    Load {
        /// The file.
        path: String,
        /// Why.
        msg: String,
    },
}

/// A GGUF model run by this engine, and its continuous-batching scheduler.
pub struct Native {
    /// The model.
    pub model: Arc<engine::Model>,
    /// The scheduler.
    pub sched: SchedulerHandle,
}

/// What runs a loaded model.
pub enum Runner {
    /// This engine's kernels over GGUF weights.
    Native(Native),
    /// A text device (a Hailo NPU) running the whole model.
    Device(DeviceHandle),
}

impl Runner {
    /// Asks the scheduler or device worker to finish within `grace`, then stop.
    pub fn shutdown(&self, grace: std::time::Duration) {
        match self {
            Runner::Native(n) => n.sched.shutdown(grace),
            Runner::Device(d) => d.shutdown(grace),
        }
    }
}

/// A loaded model, with what requests need from it.
pub struct Loaded {
    /// What runs it.
    pub runner: Runner,
    /// Its chat template.
    pub template: ChatTemplate,
    /// Names the model answers to (the first is reported).
    pub names: Vec<String>,
    /// Unix time the model finished loading.
    pub created: u64,
    /// File size in bytes.
    pub file_size: u64,
    /// Context per sequence.
    pub n_ctx: usize,
    /// An identifier of the loaded file (the store's sha256, else a sha256 of its path,
    /// size and modification time).
    pub digest: String,
    /// What is served: file, preset, origin.
    pub spec: Arc<ModelSpec>,
    /// Request defaults from the preset (system prompt, sampling, stop, length).
    pub defaults: Defaults,
    /// This model's request metrics (folded into `/metrics`).
    pub metrics: Arc<Metrics>,
    /// The memory estimate it was admitted with.
    pub estimate: engine::memory::MemoryEstimate,
    /// Busy count and keep-alive.
    pub activity: Arc<Activity>,
    /// When it was loaded.
    pub loaded_at: std::time::SystemTime,
}

impl Loaded {
    /// Keeps the model loaded while the returned guard lives (a queued job holds one).
    pub fn busy(&self) -> Busy {
        self.activity.busy()
    }

    /// The GGUF model and its scheduler, or a 400 naming what a text device cannot do.
    pub fn native(&self, flavor: Flavor, what: &str) -> Result<&Native, ApiError> {
        match &self.runner {
            Runner::Native(n) => Ok(n),
            Runner::Device(d) => Err(ApiError::bad_request(
                flavor,
                format!(
                    "model '{}' runs on a {} device, which takes text and returns text only: {what} is not supported for it",
                    self.names[0], d.device
                ),
            )),
        }
    }

    /// The device running the model, if a device does.
    pub fn device(&self) -> Option<&DeviceHandle> {
        match &self.runner {
            Runner::Device(d) => Some(d),
            Runner::Native(_) => None,
        }
    }
}

/// State shared by every handler.
pub struct AppState {
    /// Settings.
    pub cfg: ServerConfig,
    /// Server-wide metrics (each loaded model keeps its own; `/metrics` sums them).
    pub metrics: Arc<Metrics>,
    /// The request bound.
    pub admission: Arc<Admission>,
    /// The served models.
    pub registry: Arc<Registry>,
    /// False while the `-m` model is loading at startup.
    pub ready: AtomicBool,
    /// Drafting sessions of verifiers using this server as their drafter (`/v1/draft`).
    pub drafts: crate::draft::endpoint::DraftSessions,
}

impl AppState {
    /// True when serving one `-m` model, llama-server style.
    pub fn single(&self) -> bool {
        self.cfg.models.is_empty()
    }
}

/// Runs the server until SIGTERM/SIGINT (or a load failure of the `-m` model). `on_listening`
/// is called with the bound address once the socket accepts connections.
pub async fn serve(
    cfg: ServerConfig,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|e| ServeError::Io(format!("cannot listen on {}: {e}", cfg.addr)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Io(e.to_string()))?;
    let metrics = Arc::new(Metrics::new());
    let registry = Registry::new(&cfg, metrics.clone()).map_err(ServeError::Io)?;
    let single = cfg.models.is_empty();
    let state = Arc::new(AppState {
        admission: Admission::new(cfg.parallel() + cfg.queue_size),
        metrics,
        registry: registry.clone(),
        ready: AtomicBool::new(!single),
        drafts: Default::default(),
        cfg,
    });
    if single {
        tracing::info!(%addr, model = %state.cfg.model_path.display(), "listening; loading the model");
    } else {
        let names: Vec<&str> = registry
            .entries()
            .iter()
            .map(|e| e.names[0].as_str())
            .collect();
        tracing::info!(
            %addr,
            models = names.len(),
            memory_budget = %engine::memory::human(registry.budget()),
            "listening; models load on demand: {}",
            names.join(", ")
        );
    }
    on_listening(addr);
    tokio::spawn(registry.clone().reaper());

    let load_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let (fail_tx, mut fail_rx) = watch::channel(false);
    if single {
        let state = state.clone();
        let load_error = load_error.clone();
        tokio::spawn(async move {
            match state.registry.acquire_index(0, None).await {
                Ok(lease) => {
                    drop(lease);
                    state.ready.store(true, Ordering::Release);
                    tracing::info!("model loaded; ready");
                    drop(fail_tx);
                }
                Err(e) => {
                    *load_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                    let _ = fail_tx.send(true);
                }
            }
        });
    } else {
        drop(fail_tx);
    }

    let app = router(state.clone());
    let shutdown_state = state.clone();
    let shutdown = async move {
        tokio::select! {
            _ = termination() => {
                tracing::info!("shutting down: no new requests; finishing running ones");
            }
            _ = async {
                // The sender is dropped after a successful load: only a real change counts.
                if fail_rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => {}
        }
        shutdown_state.admission.close();
        shutdown_state
            .registry
            .begin_shutdown(shutdown_state.cfg.shutdown_timeout);
    };
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| ServeError::Io(format!("server error: {e}")));
    // Every connection is closed: the schedulers have nothing left to deliver.
    state.registry.finish_shutdown().await;
    if let Some(msg) = load_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(ServeError::Load {
            path: state.cfg.model_path.display().to_string(),
            msg,
        });
    }
    served?;
    tracing::info!("stopped");
    Ok(())
}

pub(crate) fn file_digest(path: &std::path::Path, meta: Option<&std::fs::Metadata>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(path.to_string_lossy().as_bytes());
    if let Some(m) = meta {
        h.update(m.len().to_le_bytes());
        if let Ok(t) = m.modified() {
            if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
                h.update(d.as_nanos().to_le_bytes());
            }
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Every route, with auth, the body limit, CORS and panic containment.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/models", get(openai::models))
        .route("/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/embeddings", post(openai::embeddings))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/version", get(ollama::version))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings))
        .route("/completion", post(llama::completion))
        .route("/tokenize", post(llama::tokenize))
        .route("/detokenize", post(llama::detokenize))
        .route("/apply-template", post(llama::apply_template))
        .route("/models/load", post(manage::load))
        .route("/models/unload", post(manage::unload))
        .route("/unload", get(manage::unload_all).post(manage::unload_all))
        .route(
            crate::draft::protocol::PATH,
            post(crate::draft::endpoint::draft),
        )
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/", get(root))
        .merge(api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), body_size))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state.clone());
    if !state.cfg.cors_origins.is_empty() {
        use tower_http::cors::{AllowOrigin, Any, CorsLayer};
        let origins = &state.cfg.cors_origins;
        let allow = if origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok())
                    .collect::<Vec<_>>(),
            )
        };
        app = app.layer(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                .allow_headers(Any),
        );
    }
    app
}

fn flavor_of(path: &str) -> Flavor {
    if path.starts_with("/api/") {
        Flavor::Ollama
    } else {
        Flavor::OpenAi
    }
}

/// Bearer-token check for everything but `/health`.
async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if state.cfg.api_keys.is_empty() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let ok = given.is_some_and(|g| {
        state
            .cfg
            .api_keys
            .iter()
            .any(|k| ct_eq(k.as_bytes(), g.as_bytes()))
    });
    if ok {
        return next.run(req).await;
    }
    let flavor = flavor_of(req.uri().path());
    let msg = if given.is_some() {
        "invalid API key"
    } else {
        "missing API key: send 'Authorization: Bearer <key>'"
    };
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, flavor, msg).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// Refuses a declared body over the limit before reading it (a client sending
/// `Expect: 100-continue` then never uploads it).
async fn body_size(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.cfg.max_body_bytes as u64) {
        let flavor = flavor_of(req.uri().path());
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            flavor,
            format!(
                "the request body is larger than the limit of {} bytes (--max-body-size)",
                state.cfg.max_body_bytes
            ),
        )
        .into_response();
    }
    next.run(req).await
}

/// Compares without an early exit on the first differing byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    diff == 0
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))).into_response()
    } else {
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "loading model"})),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&state.cfg.retry_after_secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

async fn root() -> &'static str {
    "engine is running"
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if !state.cfg.metrics {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            Flavor::OpenAi,
            "metrics are off; start the server with --metrics",
        )
        .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.registry.metrics().render() + &state.registry.device_metrics(),
    )
        .into_response()
}

async fn not_found(req: Request) -> Response {
    let path = req.uri().path().to_string();
    ApiError::new(
        StatusCode::NOT_FOUND,
        flavor_of(&path),
        format!("no route for {} {path}", req.method()),
    )
    .into_response()
}

fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown".into());
    tracing::error!(panic = %msg, "a request handler panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(error_body(
            Flavor::OpenAi,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error",
        )),
    )
        .into_response()
}

/// Time since `t` in nanoseconds (Ollama's duration unit).
pub fn nanos_since(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}
