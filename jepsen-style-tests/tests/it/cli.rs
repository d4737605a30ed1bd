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

#[test]
fn check_exits_one_on_an_anomaly_and_zero_when_valid() {
    let dir = tempfile_dir();
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        concat!(
            r#"{"process":0,"type":"invoke","f":"write","key":"x","value":1,"time":1}"#,
            "\n",
            r#"{"process":0,"type":"ok","f":"write","key":"x","value":1,"time":2}"#,
            "\n",
            r#"{"process":1,"type":"invoke","f":"read","key":"x","value":null,"time":3}"#,
            "\n",
            r#"{"process":1,"type":"ok","f":"read","key":"x","value":null,"time":4}"#,
            "\n",
        ),
    )
    .unwrap();
    let out = bin().args(["check", bad.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let good = dir.join("good.jsonl");
    std::fs::write(
        &good,
        concat!(
            r#"{"process":0,"type":"invoke","f":"write","key":"x","value":1,"time":1}"#,
            "\n",
            r#"{"process":0,"type":"ok","f":"write","key":"x","value":1,"time":2}"#,
            "\n",
            r#"{"process":1,"type":"invoke","f":"read","key":"x","value":null,"time":3}"#,
            "\n",
            r#"{"process":1,"type":"ok","f":"read","key":"x","value":1,"time":4}"#,
            "\n",
        ),
    )
    .unwrap();
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
