//! Node identity (issue 21): the name a node goes by among the nodes sharing one
//! database, on `/metrics` and never an address.

use crate::harness::Env;

fn node_line(metrics: &str) -> Option<&str> {
    metrics
        .lines()
        .find(|l| l.starts_with("sipward_node_info{"))
}

#[test]
fn the_node_name_is_on_metrics_and_the_flag_wins_over_the_file() {
    let env = Env::with_config("[cluster]\nnode = \"from-file\"\n");
    let server = env.serve_with(&["--node-name", "PBX-A"]);
    let (code, metrics) = server.http_get("/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        node_line(&metrics),
        Some("sipward_node_info{node=\"pbx-a\"} 1")
    );
    server.stop();
    // Without the flag, the file's name.
    let server = env.serve();
    let metrics = server.http_get("/metrics").1;
    assert_eq!(
        node_line(&metrics),
        Some("sipward_node_info{node=\"from-file\"} 1")
    );
    server.stop();
}

#[test]
fn without_a_name_the_host_name_names_the_node() {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name");
    let host = host.trim().to_ascii_lowercase();
    let env = Env::new();
    let server = env.serve();
    let metrics = server.http_get("/metrics").1;
    assert_eq!(
        node_line(&metrics).map(str::to_owned),
        Some(format!("sipward_node_info{{node=\"{host}\"}} 1"))
    );
    server.stop();
}

#[test]
fn an_address_never_names_a_node() {
    let env = Env::new();
    let err = env.fails(
        &[
            "serve",
            "--sip",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--node-name",
            "10.0.0.1",
        ],
        2,
    );
    assert!(err.contains("--node-name"), "{err}");
    assert!(err.contains("IP address"), "{err}");
    // The control, a name that starts, is the test above.
}
