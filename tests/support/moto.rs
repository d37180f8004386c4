//! A second S3 implementation, moto (`moto_server`, installed by scripts/test with pip), for
//! what s3s-fs does not implement (ListMultipartUploads). Its bucket is driven with boto3,
//! which moto depends on, through `python3 -c`.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, run_ok};

/// `moto_server` on a loopback port, killed when dropped.
pub struct MotoServer {
    child: Child,
    pub addr: SocketAddr,
}

impl MotoServer {
    pub fn start() -> MotoServer {
        let addr = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "cannot start moto_server (scripts/test installs it: pip install 'moto[server]')",
            );
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        MotoServer { child, addr }
    }

    pub fn url(&self, bucket: &str) -> String {
        format!(
            "s3://{bucket}?endpoint=http://{}&region=us-east-1",
            self.addr
        )
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "moto".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "moto".to_owned()),
        ]
    }

    /// Runs `script` (Python) with `s3`, a boto3 client of this server, in scope; returns stdout.
    pub fn boto3(&self, script: &str) -> String {
        let prelude = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='http://{}', \
             region_name='us-east-1', aws_access_key_id='moto', aws_secret_access_key='moto')\n",
            self.addr
        );
        run_ok(Command::new("python3").arg("-c").arg(prelude + script))
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
