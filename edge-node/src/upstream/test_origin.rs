//! A loopback origin for the pools' unit tests: real TCP and HTTP/1.1 (hyper's server),
//! counting the connections and requests it gets.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{Response, header};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::{body::Frame, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinHandle};

/// How the origin answers every request.
#[derive(Clone, Copy)]
pub enum Answer {
    /// 200 with this body.
    Ok(&'static str),
    /// 200 with this body and `Connection: close`.
    Close(&'static str),
    /// The head and a first chunk of the body, then nothing more.
    Stall,
    /// Nothing at all (the request is read, the connection kept open).
    Silent,
}

pub struct TestOrigin {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl TestOrigin {
    pub async fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (connections, requests) = (Arc::default(), Arc::default());
        let accept = tokio::spawn({
            let (connections, requests): (Arc<AtomicUsize>, Arc<AtomicUsize>) =
                (Arc::clone(&connections), Arc::clone(&requests));
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::Relaxed);
                    let requests = requests.clone();
                    let service = service_fn(move |_req| {
                        requests.fetch_add(1, Ordering::Relaxed);
                        respond(answer)
                    });
                    tokio::spawn(
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                    );
                }
            }
        });
        Self {
            addr,
            connections,
            requests,
            accept,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

async fn respond(answer: Answer) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let full =
        |text: &'static str| http_body_util::Full::new(Bytes::from_static(text.as_bytes())).boxed();
    Ok(match answer {
        Answer::Ok(text) => Response::new(full(text)),
        Answer::Close(text) => {
            let mut resp = Response::new(full(text));
            resp.headers_mut()
                .insert(header::CONNECTION, "close".parse().expect("value"));
            resp
        }
        Answer::Stall => {
            let first = futures_util::stream::iter([Ok(Frame::data(Bytes::from_static(b"x")))]);
            Response::new(BodyExt::boxed(StreamBody::new(
                first.chain(futures_util::stream::pending()),
            )))
        }
        Answer::Silent => std::future::pending().await,
    })
}

/// An address nothing listens on: connecting to it is refused.
pub fn refusing() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}
