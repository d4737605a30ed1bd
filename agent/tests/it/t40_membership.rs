//! Membership: at most five voters, later masters stay learners; `leave` removes a
//! member, its process exits, and a caught-up learner takes the free voter seat.

use std::time::{Duration, Instant};

use crate::harness::{cli, Cluster};

async fn roles(c: &Cluster) -> Vec<(String, String)> {
    let l = c.leader(Duration::from_secs(5)).await;
    let s = c.status(l).await.expect("leader status");
    s.members.into_iter().map(|m| (m.addr, m.role)).collect()
}

async fn wait_for<F: Fn(&[(String, String)]) -> bool>(c: &Cluster, what: &str, ok: F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = roles(c).await;
        if ok(&r) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: members are {r:?}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixth_master_stays_learner_until_a_voter_leaves() {
    let mut c = Cluster::start(5).await;
    let sixth = c.add_node().await;
    let sixth_addr = c.nodes[sixth].addr.clone();
    wait_for(&c, "six members, the sixth a learner", |r| {
        r.len() == 6
            && r.iter().filter(|(_, role)| role == "voter").count() == 5
            && r.iter().any(|(a, role)| *a == sixth_addr && role == "learner")
    })
    .await;
    // The sixth node holds the data although it does not vote.
    let o = cli(&["kv", "put", "k", "v", "--endpoints", &c.nodes[0].addr]);
    assert!(o.status.success());
    c.wait_caught_up(sixth, Duration::from_secs(10)).await;

    // A follower voter leaves.
    let l = c.leader(Duration::from_secs(5)).await;
    let leaver = (0..5).find(|i| *i != l).unwrap();
    let leaver_id = c.status(leaver).await.unwrap().node_id.to_string();
    let o = cli(&["leave", &leaver_id, "--endpoints", &c.nodes[l].addr]);
    assert!(o.status.success(), "leave failed: {}", String::from_utf8_lossy(&o.stderr));
    let st = c.wait_exit(leaver, Duration::from_secs(15)).await;
    assert!(st.is_some_and(|s| s.success()), "the removed node did not exit cleanly: {st:?}\n{}", c.logs());

    let leaver_addr = c.nodes[leaver].addr.clone();
    wait_for(&c, "the learner promoted into the free seat", |r| {
        r.len() == 5
            && r.iter().all(|(_, role)| role == "voter")
            && !r.iter().any(|(a, _)| *a == leaver_addr)
            && r.iter().any(|(a, _)| *a == sixth_addr)
    })
    .await;

    // Leaving twice is refused with a clear error and changes nothing.
    let o = cli(&["leave", &leaver_id, "--endpoints", &c.nodes[l].addr]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a member"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(roles(&c).await.len(), 5);
}
