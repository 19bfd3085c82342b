//! The HTTP port of every long-running binary: `/metrics` (Prometheus text format),
//! `/healthz` (liveness) and `/readyz` (readiness).
//!
//! A binary registers its metrics in a [`Registry`] and flips its [`Health`] as it starts,
//! degrades and recovers; this module only serves them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Liveness and readiness of a process, each with the reason it is not OK.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<HealthState>>,
}

#[derive(Default)]
struct HealthState {
    /// `Some(reason)` when the process should be restarted.
    not_live: Option<String>,
    /// `Some(reason)` while the process should not receive traffic or count as ready.
    not_ready: Option<String>,
}

impl Health {
    /// A process that is live and not yet ready.
    pub fn starting(reason: impl Into<String>) -> Self {
        let health = Self::default();
        health.set_not_ready(reason);
        health
    }

    pub fn set_ready(&self) {
        self.state().not_ready = None;
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.state().not_ready = Some(reason.into());
    }

    /// Marks the process as failed: `/healthz` answers 503 until [`Health::set_live`].
    pub fn set_not_live(&self, reason: impl Into<String>) {
        self.state().not_live = Some(reason.into());
    }

    pub fn set_live(&self) {
        self.state().not_live = None;
    }

    pub fn is_ready(&self) -> bool {
        let state = self.state();
        state.not_ready.is_none() && state.not_live.is_none()
    }

    pub fn is_live(&self) -> bool {
        self.state().not_live.is_none()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Health,
}

/// Binds the HTTP port. Separate from [`serve`] so that a bad address fails start-up.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, health });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics failed: {err}\n"),
        ),
    }
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match &state.health.state().not_live {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let health = state.health.state();
    match (&health.not_live, &health.not_ready) {
        (None, None) => (StatusCode::OK, "ready\n".to_string()),
        (Some(reason), _) | (None, Some(reason)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"))
        }
    }
}

/// The address an `HTTP_BIND` value names, with the accepted form in the error.
pub fn parse_bind_address(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!(
            "`{text}` is not a socket address: expected IP:PORT, e.g. 0.0.0.0:8080 or [::]:8080"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        registry.register(
            "dedup_test_events",
            "Events seen by the test",
            counter.clone(),
        );
        counter.inc_by(3);
        let health = Health::starting("joining consumer group");
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::new(registry), health.clone(), async {
            let _ = stopped.await;
        }));

        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("dedup_test_events_total 3"), "{body}");

        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(
            get(addr, "/readyz").await,
            (503, "joining consumer group\n".into())
        );
        health.set_ready();
        assert_eq!(get(addr, "/readyz").await.0, 200);
        health.set_not_live("store volume is full");
        assert_eq!(
            get(addr, "/healthz").await,
            (503, "store volume is full\n".into())
        );
        assert_eq!(get(addr, "/readyz").await.0, 503);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn bind_address_errors_state_the_form() {
        assert!(parse_bind_address("0.0.0.0:8080").is_ok());
        assert!(parse_bind_address("[::]:9090").is_ok());
        let err = parse_bind_address("localhost").unwrap_err();
        assert!(err.contains("expected IP:PORT"), "{err}");
    }
}
