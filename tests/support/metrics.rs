//! Reading the daemon's `/metrics` the way Prometheus does: one HTTP GET, and the text parsed
//! by the Python `prometheus_client` package's parser (Debian's `python3-prometheus-client`,
//! which `scripts/test` installs), so the format is checked by an implementation not ours.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use crate::command;

/// The Python that has Debian's packages (a `python3` earlier in `PATH` may not).
const PYTHON: &str = "/usr/bin/python3";

/// Parses the text on stdin and prints every sample as JSON: `[[name, {labels}, value], …]`.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append([s.name, s.labels, s.value, family.type])
print(json.dumps(samples))
"#;

/// An HTTP answer: status code, `Content-Type`, body.
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// `GET path` from `addr` over HTTP/1.1, the connection closed after the answer.
pub fn get(addr: SocketAddr, path: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics address");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let raw = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: body.to_owned(),
    }
}

/// One sample as the parser read it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub value: f64,
    pub family_type: String,
}

/// Every sample of `text`, read by `prometheus_client`'s parser (which panics the test with
/// the parser's error if the text is not valid).
pub fn parse(text: &str) -> Vec<Sample> {
    let mut child = command(PYTHON)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (apt-get install python3-prometheus-client)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the metrics");
    let output = child.wait_with_output().expect("parser");
    assert!(
        output.status.success(),
        "prometheus_client cannot parse the metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<(
        String,
        serde_json::Map<String, serde_json::Value>,
        f64,
        String,
    )> = serde_json::from_slice(&output.stdout).expect("the parser's JSON");
    rows.into_iter()
        .map(|(name, labels, value, family_type)| Sample {
            name,
            labels,
            value,
            family_type,
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels`; panics if there is none.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).and_then(|l| l.as_str()) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?} in {samples:#?}"))
        .value
}
