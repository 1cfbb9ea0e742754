//! A real `redis-server` on a loopback port for the cluster tests (Debian package
//! redis-server, installed by scripts/install-test-deps). Without it a test prints a loud
//! SKIPPED line and passes, except under CI where it fails.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wsgate::pubsub::broker::redis::RedisSettings;

pub fn redis_server_bin() -> Option<PathBuf> {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].iter().map(PathBuf::from).find(|p| p.exists()).or_else(
        || {
            let out = Command::new("sh").args(["-c", "command -v redis-server"]).output().ok()?;
            let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (!path.is_empty()).then(|| PathBuf::from(path))
        },
    )
}

#[macro_export]
macro_rules! require_redis {
    () => {
        match $crate::common::redis::redis_server_bin() {
            Some(bin) => bin,
            None => {
                // In CI (scripts/install-test-deps installs it) a missing server is a failure.
                assert!(std::env::var_os("CI").is_none(), "redis-server is not installed");
                eprintln!("\n!!!!!!!!\n!!! SKIPPED: redis-server is not installed (apt-get install redis-server; scripts/install-test-deps does it)\n!!!!!!!!\n");
                return;
            }
        }
    };
}

/// One `redis-server` process on a loopback port, killed on drop.
pub struct Redis {
    bin: PathBuf,
    pub port: u16,
    extra: Vec<String>,
    child: Option<Child>,
    /// How the test itself talks to it (TLS and password for the TLS test).
    pub settings: Option<RedisSettings>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Redis {
    /// Starts redis-server with no persistence; `extra` are more `--option value` arguments.
    /// With `tls`, `extra` must configure `--tls-port` and the plain port is turned off.
    pub async fn start(bin: &std::path::Path, extra: &[&str]) -> Redis {
        let mut redis = Redis {
            bin: bin.to_path_buf(),
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            settings: None,
        };
        redis.spawn().await;
        redis
    }

    pub fn tls(&self) -> bool {
        self.extra.iter().any(|a| a == "--tls-port")
    }

    pub async fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning"]);
        if self.tls() {
            cmd.args(["--port", "0", "--tls-port", &port]);
            let mut it = self.extra.iter();
            while let Some(a) = it.next() {
                if a == "--tls-port" {
                    it.next();
                } else {
                    cmd.arg(a);
                }
            }
        } else {
            cmd.args(["--port", &port]).args(&self.extra);
        }
        self.child = Some(cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("redis-server starts"));
        // Ready when it accepts TCP connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `PUBSUB NUMSUB channel`: how many connections subscribe to it.
    pub async fn numsub(&self, channel: &str) -> i64 {
        let settings = self.settings.clone().unwrap_or(RedisSettings { url: self.url(), ..Default::default() });
        let client = settings.client().unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let answer: Vec<(String, i64)> =
            redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query_async(&mut conn).await.unwrap();
        answer[0].1
    }

    pub async fn wait_numsub(&self, channel: &str, want: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = self.numsub(channel).await;
            if n == want {
                return;
            }
            assert!(Instant::now() < deadline, "{channel}: {n} subscribers, want {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
