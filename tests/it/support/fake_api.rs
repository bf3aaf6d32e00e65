//! A small HTTP server on 127.0.0.1, built on warp, that records every request and answers
//! through a closure: the base of the GitHub and Kubernetes fakes, whose clients keep
//! connections alive.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio_util::task::AbortOnDropHandle;
use warp::Filter;
use warp::http::{HeaderMap, Method, Response};

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The value of one query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == name).then_some(value)
        })
    }
}

pub type Handler = Arc<dyn Fn(&Recorded) -> Response<Vec<u8>> + Send + Sync>;

/// A running fake; dropping it stops the server.
pub struct FakeHttp {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    _server: AbortOnDropHandle<()>,
}

impl FakeHttp {
    pub async fn start(handler: Handler) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let route = warp::method()
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .map(
                move |method, path: warp::path::FullPath, query, headers, body: bytes::Bytes| {
                    let request = Recorded {
                        method,
                        path: path.as_str().to_string(),
                        query,
                        headers,
                        body: body.to_vec(),
                    };
                    let response = handler(&request);
                    log.lock().unwrap().push(request);
                    response
                },
            );
        let server = tokio::spawn(warp::serve(route).incoming(listener).run());
        FakeHttp {
            addr,
            requests,
            _server: AbortOnDropHandle::new(server),
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

pub fn respond(status: u16, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .body(body.into())
        .unwrap()
}
