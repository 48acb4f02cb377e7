//! moto's standalone S3 server, started on a free loopback port for a
//! test or a benchmark, and killed when dropped. Shared by
//! `tests/replicate.rs` and `examples/replicate_bench.rs`.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;

/// moto's S3 server on loopback, killed when dropped.
pub struct Moto {
    child: std::process::Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    pub fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let spawn = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
        };
        let child = spawn("moto_server", &[])
            .or_else(|_| spawn("python3", &["-m", "moto.server"]))
            .unwrap_or_else(|e| {
                panic!(
                    "moto's S3 server is not installed ({e}): run \
                     `python3 -m pip install 'moto[server]'` (.ci/run does)"
                )
            });
        let mut moto = Moto { child, port };
        // Wait (bounded) until it answers.
        for _ in 0..300 {
            if let Some(status) = moto.child.try_wait().expect("try_wait") {
                panic!(
                    "moto's S3 server exited at start ({status}): is `moto[server]` installed? \
                     run `python3 -m pip install 'moto[server]'`"
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return moto;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        moto.child.kill().ok();
        panic!("moto's S3 server did not start listening on 127.0.0.1:{port} in 30 s");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket with a plain (unsigned) HTTP PUT, as moto allows.
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("reply");
        assert!(reply.starts_with("HTTP/1.1 200"), "create bucket: {reply}");
    }

    /// The S3 client of object_store, on this server.
    pub fn bucket(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        dedupstore_replicate::install_tls_provider();
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(bucket)
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .expect("s3 client");
        Arc::new(s3)
    }
}
