use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_jepsen-style-tests"))
}

#[test]
fn schedule_is_a_function_of_the_seed() {
    let run = |seed: &str| {
        let out = bin()
            .args([
                "schedule",
                "--nemesis",
                "partition-majority,kill,pause",
                "--nodes",
                "5",
                "--time",
                "120",
                "--seed",
                seed,
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
}

/// A history file: write 1 acknowledged, then a read that answers `read_value`.
fn write_then_read(path: &std::path::Path, read_value: &str) {
    let lines = [
        r#"{"process":0,"type":"invoke","f":"write","key":"x","value":1,"time":1}"#.to_string(),
        r#"{"process":0,"type":"ok","f":"write","key":"x","value":1,"time":2}"#.to_string(),
        r#"{"process":1,"type":"invoke","f":"read","key":"x","value":null,"time":3}"#.to_string(),
        format!(r#"{{"process":1,"type":"ok","f":"read","key":"x","value":{read_value},"time":4}}"#),
    ];
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn check_exits_one_on_an_anomaly_and_zero_when_valid() {
    let dir = tempfile_dir();
    let bad = dir.join("bad.jsonl");
    write_then_read(&bad, "null");
    let out = bin().args(["check", bad.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let good = dir.join("good.jsonl");
    write_then_read(&good, "1");
    let out = bin().args(["check", good.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = bin().args(["check", dir.join("missing.jsonl").to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.jsonl"));
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("jst-it-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
