//! Every series `/metrics` can serve is described in `docs/METRICS.md`, the operator's
//! reference for dashboards and alerts: the ones a running camera serves, and the ones only an
//! output (recording, HLS, RTMP, MJPEG, snapshots) or the standalone server adds, found in the
//! source where they are written.

mod common;
use common::*;
use std::path::Path;

fn reference() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/METRICS.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Those of `names` that the reference does not have as `` `name` ``.
fn undocumented<'a>(names: impl IntoIterator<Item = &'a str>, doc: &str) -> Vec<&'a str> {
    let mut missing: Vec<&str> = names
        .into_iter()
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_a_running_camera_serves_is_in_the_reference() {
    let (_cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__VIDEO__WIDTH", "320"),
            ("CAMPEER__VIDEO__HEIGHT", "240"),
        ],
    );
    let (status, reply) = http_get(&base_of(&url), "/metrics").await;
    assert_eq!(status, 200, "{reply}");
    let metrics = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    // Prometheus' text format, line by line: a `# TYPE` line or a sample, from the line's
    // first character (stricter scrapers refuse indented lines).
    for line in metrics.lines().filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with("# TYPE campeer_") || line.starts_with("campeer_"),
            "not a Prometheus line: {line:?}"
        );
    }
    let names: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.len() >= 30,
        "a camera with its embedded server serves its own and the server's series: {metrics}"
    );
    let missing = undocumented(names, &reference());
    assert!(
        missing.is_empty(),
        "served by /metrics but not described in docs/METRICS.md: {missing:?}"
    );
}

/// `campeer_…` names written in `src/` as a Prometheus `# TYPE` line or as a quoted string.
fn names_in_source(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            names_in_source(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("a source file");
            for marker in ["TYPE campeer_", "\"campeer_"] {
                for (i, _) in text.match_indices(marker) {
                    let start = i + marker.len() - "campeer_".len();
                    let name: String = text[start..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    out.push(name);
                }
            }
        }
    }
}

#[test]
fn every_series_written_in_the_source_is_in_the_reference() {
    let mut names = Vec::new();
    names_in_source(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut names,
    );
    names.sort();
    names.dedup();
    // Recording, HLS, RTMP, MJPEG, snapshots, renditions, VP8, TURN and signaling all write some.
    assert!(names.len() >= 50, "found only {names:?}");
    let missing = undocumented(names.iter().map(String::as_str), &reference());
    assert!(
        missing.is_empty(),
        "written in src/ but not described in docs/METRICS.md: {missing:?}"
    );
}
