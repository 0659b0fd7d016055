//! dim-standin: an axum server standing in for Dim, wrapped in the dimplugd
//! layer, to try plugins against without Dim.
//!
//! ```sh
//! cargo run --example dim-standin -- /run/dimplugd/dimplugd.sock 127.0.0.1:8099
//! curl -H 'X-Dim-User: 1' http://127.0.0.1:8099/api/v1/media/42
//! ```
//!
//! It serves a few of Dim's media routes with made-up items (42 is rated G,
//! 43 R, the rest NR) and listens on loopback only. The user comes from an
//! `X-Dim-User: <id>` header: a stand-in for Dim's authentication, which
//! must never be taken from a request in a real host.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dimplugd_host::{DimplugdLayer, Session};

fn rating(id: i64) -> &'static str {
    match id {
        42 => "G",
        43 => "R",
        _ => "NR",
    }
}

fn json(body: String) -> Response {
    ([("content-type", "application/json")], body).into_response()
}

async fn media(Path(id): Path<i64>) -> Response {
    json(format!(r#"{{"id":{id},"name":"Item {id}","rating":"{}"}}"#, rating(id)))
}

async fn library(Path(id): Path<i64>) -> Response {
    let cards: Vec<String> = (40..46)
        .map(|m| format!(r#"{{"id":{m},"name":"Item {m}","rating":"{}","library_id":{id}}}"#, rating(m)))
        .collect();
    json(format!(r#"{{"Movies":[{}]}}"#, cards.join(",")))
}

async fn dashboard() -> Response {
    json(format!(r#"{{"Continue watching":[{{"id":42,"name":"Item 42","rating":"{}"}}]}}"#, rating(42)))
}

async fn manifest(Path(id): Path<String>) -> Response {
    ([("content-type", "application/dash+xml")], format!("<MPD id=\"{id}\"/>\n")).into_response()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let socket = args.next().unwrap_or_else(|| "/run/dimplugd/dimplugd.sock".into());
    let addr: SocketAddr = args.next().unwrap_or_else(|| "127.0.0.1:8099".into()).parse()?;
    if !addr.ip().is_loopback() {
        return Err(format!("{addr}: dim-standin listens on loopback only").into());
    }
    let session = Session::connect(&socket).await?;
    eprintln!(
        "dim-standin: connected to dimplugd at {socket} (protocol v{}), {} hooked routes",
        session.version(),
        session.route_table().map_or(0, |t| t.entries.len())
    );
    session.watch_routes(|t| eprintln!("dim-standin: route table version {} ({} entries)", t.version, t.entries.len()));

    let layer = DimplugdLayer::new(session.clone())
        .user(|p| p.headers.get("x-dim-user")?.to_str().ok()?.parse().ok())
        .remote_addr(|p| p.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.to_string()));
    let app = Router::new()
        .route("/api/v1/media/:id", get(media))
        .route("/api/v1/library/:id/media", get(library))
        .route("/api/v1/dashboard", get(dashboard))
        .route("/api/v1/stream/:id/manifest", get(manifest))
        .route("/health", get(|| async { "ok\n" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(layer.clone());

    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("dim-standin: listening on http://{addr}");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Hand the observers what was served before leaving.
    layer.flush_observers(std::time::Duration::from_secs(5)).await;
    session.close();
    Ok(())
}
