//! The benchmark's ceiling: a bare hyper HTTP/1.1 server that answers every request, whatever
//! its method, path or headers, with the same small JSON object (about the size of one
//! integration). It does nothing a real server must do (no routing, no authentication, no
//! storage), so its requests per second on this machine are the most our server could hope
//! for over the same connections, with the same load generator.
//!
//! `ceiling [PORT]` listens on `127.0.0.1:PORT` (port 0, the default, picks a free one) and
//! prints the bound address (`127.0.0.1:PORT`) on stdout. It runs on a multi-threaded tokio
//! runtime with one worker per core, like the server.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The one answer: shaped like a v1.0 PagerDuty integration with its key masked.
const BODY: &[u8] =
    br#"{"serviceKey":"****************************7f3a","region":"US","type":"PAGER_DUTY"}"#;

fn main() -> anyhow::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(text) => text
            .parse()
            .with_context(|| format!("usage: ceiling [PORT]; {text:?} is not a port"))?,
        None => 0,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(serve(SocketAddr::from(([127, 0, 0, 1], port))))
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{bound}")?;
    stdout.flush()?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                eprintln!("accept: {err}");
                continue;
            }
        };
        // Socket options as the server's (`startup::serve`): Nagle off.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body (PUT/POST) so that the connection stays reusable, as the server does.
    let _ = request.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
