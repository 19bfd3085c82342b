//! A bucket on the test S3 (moto), read and changed with plain HTTP calls (moto needs no
//! valid signature for them; the deduplicator itself signs with test credentials).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::http::http_request_with;

/// The S3 the checkpoint tests use: `moto_server` started by
/// `scripts/start-test-services.sh`, at `DEDUP_TEST_S3_ENDPOINT` (default
/// http://127.0.0.1:5000). Not reachable: the test fails, unless
/// `DEDUP_ALLOW_MISSING_SERVICES=1` (local runs only) makes it skip (`None`).
pub fn test_s3() -> Option<TestS3> {
    let (_, addr) = crate::services::moto()?;
    Some(TestS3::at(addr))
}

fn unique_bucket() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "dedup-it-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        Instant::now().elapsed().as_nanos() % 1000
    )
}

/// A bucket on an S3-compatible server (moto: no authentication needed for these plain
/// HTTP calls; the deduplicator itself signs with test credentials).
pub struct TestS3 {
    pub addr: SocketAddr,
    pub bucket: String,
}

impl TestS3 {
    pub fn at(addr: SocketAddr) -> Self {
        Self {
            addr,
            bucket: unique_bucket(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A plain HTTP call to moto, which wants an `Authorization` header on object reads
    /// but does not check the signature.
    fn call(&self, method: &str, path: &str) -> Option<(u16, String)> {
        http_request_with(self.addr, method, path, MOTO_AUTH)
    }

    /// An object's bytes.
    pub fn get_bytes(&self, key: &str) -> Option<Vec<u8>> {
        match raw_request(
            self.addr,
            "GET",
            &format!("/{}/{key}", self.bucket),
            MOTO_AUTH,
            &[],
        ) {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }

    /// Writes an object.
    pub fn put(&self, key: &str, body: &[u8]) -> bool {
        matches!(
            raw_request(
                self.addr,
                "PUT",
                &format!("/{}/{key}", self.bucket),
                MOTO_AUTH,
                body
            ),
            Some((200, _))
        )
    }

    pub fn create_bucket(&self) -> bool {
        matches!(
            self.call("PUT", &format!("/{}", self.bucket)),
            Some((200, _))
        )
    }

    pub fn delete(&self, key: &str) -> bool {
        matches!(
            self.call("DELETE", &format!("/{}/{key}", self.bucket)),
            Some((204 | 200, _))
        )
    }

    /// Every key under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let Some((200, body)) = self.call(
            "GET",
            &format!("/{}?list-type=2&max-keys=1000&prefix={prefix}", self.bucket),
        ) else {
            return Vec::new();
        };
        body.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect()
    }

    pub fn get(&self, key: &str) -> Option<String> {
        match self.call("GET", &format!("/{}/{key}", self.bucket)) {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }

    /// The settings that point a deduplicator (or restorer) at this bucket.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("S3_BUCKET", self.bucket.clone()),
            ("S3_ENDPOINT", self.endpoint()),
            ("S3_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The `Authorization` header moto wants on object calls (it does not check it).
const MOTO_AUTH: &str = "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\n";

/// One HTTP/1.1 request with a body; the status and the raw body (no chunked encoding
/// expected: moto sends Content-Length).
fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    )
    .ok()?;
    stream.write_all(body).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = std::str::from_utf8(response.get(9..12)?)
        .ok()?
        .parse()
        .ok()?;
    Some((status, response[split + 4..].to_vec()))
}
