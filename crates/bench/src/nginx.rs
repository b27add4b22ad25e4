//! nginx (Debian's package) as a bare gRPC reverse proxy: TLS with client-certificate checks
//! towards the client, `grpc_pass grpcs://` with mutual TLS and kept-alive connections towards
//! one upstream service. Run as a child process with a generated configuration.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use referral_core::pki::TlsFiles;

/// The nginx binary: `$NGINX`, else `nginx` on the PATH or in /usr/sbin.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NGINX") {
        return Ok(PathBuf::from(path));
    }
    for candidate in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if std::path::Path::new(candidate).exists() {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!("nginx not found: apt-get install -y nginx (crates/bench/run.sh does)")
}

pub fn version() -> String {
    binary()
        .ok()
        .and_then(|b| Command::new(b).arg("-v").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default()
}

/// What nginx needs to stand in front of one service.
pub struct ProxyPlan<'a> {
    /// Presented to clients: the upstream service's own certificate, so a client's TLS settings
    /// are the same as for the direct call.
    pub server: &'a TlsFiles,
    /// Presented to the upstream: the certificate the direct client uses.
    pub upstream_client: &'a TlsFiles,
    pub upstream_port: u16,
    /// The name the upstream's certificate must carry.
    pub upstream_name: &'a str,
}

/// A running nginx; stopped on drop.
pub struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl Nginx {
    pub async fn start(plan: &ProxyPlan<'_>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("referral-bench-nginx-")
            .tempdir()?;
        // nginx's workers run unprivileged: they must reach the directory's temporary paths.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        }
        let port = crate::hub::free_port()?;
        let config = config(plan, port, dir.path());
        let file = dir.path().join("nginx.conf");
        std::fs::write(&file, config)?;
        let child = Command::new(binary()?)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&file)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log"))?)
            .spawn()
            .context("cannot start nginx")?;
        let mut nginx = Self {
            child,
            _dir: dir,
            port,
        };
        // Another process: poll its port until it accepts, for at most 10 s.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = nginx.child.try_wait()? {
                let log = std::fs::read_to_string(nginx._dir.path().join("stderr.log"))
                    .unwrap_or_default();
                bail!("nginx exited ({status}): {log}");
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {port} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Nginx {
    /// Stops nginx with SIGTERM (its fast shutdown, which ends the workers too: killed with
    /// SIGKILL, the master left its workers running after the bench), and kills it if it has not
    /// ended within 5 s.
    fn drop(&mut self) {
        let asked = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while asked && std::time::Instant::now() < until {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The generated configuration: as lean as a bare proxy gets (no access log), the worker count
/// nginx picks for the machine, kept-alive upstream connections and TLS session reuse.
pub fn config(plan: &ProxyPlan<'_>, port: u16, prefix: &std::path::Path) -> String {
    let p = |path: &std::path::Path| path.display().to_string();
    let prefix = p(prefix);
    format!(
        r#"worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream service {{
        server 127.0.0.1:{upstream_port};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {server_cert};
        ssl_certificate_key {server_key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_protocols TLSv1.3;
        location / {{
            grpc_pass grpcs://service;
            grpc_ssl_certificate {client_cert};
            grpc_ssl_certificate_key {client_key};
            grpc_ssl_trusted_certificate {ca};
            grpc_ssl_verify on;
            grpc_ssl_name {upstream_name};
            grpc_ssl_server_name on;
            grpc_ssl_protocols TLSv1.3;
            grpc_ssl_session_reuse on;
        }}
    }}
}}
"#,
        upstream_port = plan.upstream_port,
        server_cert = p(&plan.server.cert),
        server_key = p(&plan.server.key),
        ca = p(&plan.server.ca),
        client_cert = p(&plan.upstream_client.cert),
        client_key = p(&plan.upstream_client.key),
        upstream_name = plan.upstream_name,
    )
}
