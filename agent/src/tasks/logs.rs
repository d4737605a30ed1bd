//! Task logs for the masters. Agents serve nothing, so the runner keeps one `AgentLogs`
//! channel open to a master (moving to the next when it breaks); over it the masters
//! ask for a task's stdout or stderr, and this streams the sandbox file back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::clusterpb as pb;
use proto::clusterpb::services_client::ServicesClient;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tracing::debug;

use super::sandbox;

const CHUNK_BYTES: usize = 64 << 10;
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// Masters send an empty ask every 30 s; this long without one, the master is gone.
const MASTER_SILENCE: Duration = Duration::from_secs(90);

/// Keeps a log channel open to some master, for as long as the agent runs.
pub(super) async fn serve_loop(masters: Arc<Mutex<Vec<String>>>, tls: pki::ClientTls, node_id: u64, dir: PathBuf) {
    let mut next = 0usize;
    loop {
        let list = masters.lock().expect("masters").clone();
        if !list.is_empty() {
            let addr = &list[next % list.len()];
            next += 1;
            if let Err(e) = serve_one(addr, &tls, node_id, &dir).await {
                debug!(master = %addr, "log channel: {e}");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn serve_one(addr: &str, tls: &pki::ClientTls, node_id: u64, dir: &Path) -> Result<(), String> {
    // The channel lives as long as the agent: no request deadline.
    let settings = client::Settings { request_timeout: None, ..Default::default() };
    let ch = client::channel_with(addr, tls, &settings).map_err(|e| e.to_string())?;
    let (out, rx) = mpsc::channel::<pb::AgentLogReply>(64);
    // The first message names this agent.
    out.send(pb::AgentLogReply { node_id, ..Default::default() }).await.map_err(|e| e.to_string())?;
    let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut asks =
        ServicesClient::new(ch).agent_logs(outbound).await.map_err(|e| e.message().to_string())?.into_inner();
    let mut running: std::collections::BTreeMap<u64, tokio::task::AbortHandle> = Default::default();
    loop {
        let next = tokio::time::timeout(MASTER_SILENCE, asks.message()).await;
        let ask = match next {
            Err(_) => break,
            Ok(r) => match r.map_err(|e| e.message().to_string())? {
                Some(a) => a,
                None => break,
            },
        };
        running.retain(|_, h| !h.is_finished());
        if ask.request == 0 {
            // The master's keepalive.
            continue;
        }
        if ask.cancel {
            if let Some(h) = running.remove(&ask.request) {
                h.abort();
            }
            continue;
        }
        let h = tokio::spawn(stream_file(ask.clone(), node_id, dir.to_path_buf(), out.clone()));
        running.insert(ask.request, h.abort_handle());
    }
    for h in running.values() {
        h.abort();
    }
    Ok(())
}

/// Whether `id` can only name a task's own directory under the sandbox root.
fn plain_task_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 512 && !id.starts_with('.') && !id.contains(['/', '\0'])
}

fn ended(task_dir: &Path) -> bool {
    std::fs::read(task_dir.join("task.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<sandbox::Record>(&b).ok())
        .is_none_or(|r| r.ended.is_some())
}

async fn stream_file(ask: pb::AgentLogAsk, node_id: u64, data_dir: PathBuf, out: mpsc::Sender<pb::AgentLogReply>) {
    let reply =
        |data: Vec<u8>, end: bool, error: String| pb::AgentLogReply { node_id, request: ask.request, data, end, error };
    if !plain_task_id(&ask.task_id) {
        let _ = out.send(reply(vec![], true, format!("{:?} is not a task id", ask.task_id))).await;
        return;
    }
    let task_dir = sandbox::dir(&data_dir, &ask.task_id);
    let path = task_dir.join(if ask.stderr { "stderr" } else { "stdout" });
    // A task may replace its log with a symlink: never follow one.
    let mut f = match tokio::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path).await {
        Ok(f) => f,
        Err(e) => {
            let why = format!("task {} has no {} on this agent: {e}", ask.task_id, path.display());
            let _ = out.send(reply(vec![], true, why)).await;
            return;
        }
    };
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let mut pos = if ask.tail_bytes > 0 { len.saturating_sub(ask.tail_bytes) } else { 0 };
    if f.seek(std::io::SeekFrom::Start(pos)).await.is_err() {
        pos = 0;
    }
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = f.read(&mut buf).await.unwrap_or(0);
        if n > 0 {
            pos += n as u64;
            if out.send(reply(buf[..n].to_vec(), false, String::new())).await.is_err() {
                return;
            }
            continue;
        }
        if !ask.follow {
            break;
        }
        // Rotation copies the file away and truncates it: start again from its top.
        if tokio::fs::metadata(&path).await.is_ok_and(|m| m.len() < pos) {
            pos = 0;
            let _ = f.seek(std::io::SeekFrom::Start(0)).await;
            continue;
        }
        if ended(&task_dir) {
            // One last read: the task may have written before it ended.
            let n = f.read(&mut buf).await.unwrap_or(0);
            if n > 0 {
                let _ = out.send(reply(buf[..n].to_vec(), false, String::new())).await;
                continue;
            }
            break;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
    let _ = out.send(reply(vec![], true, String::new())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_reach_the_sandbox() {
        assert!(plain_task_id("web.3"));
        assert!(plain_task_id("group_app.12"));
        for bad in ["", "..", "../x", "a/b", ".hidden", "a\0b"] {
            assert!(!plain_task_id(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_log_is_streamed_from_the_tail_and_followed_until_the_task_ends() {
        let d = tempfile::tempdir().unwrap();
        let t = sandbox::dir(d.path(), "web.1");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("stdout"), b"0123456789").unwrap();
        let rec = sandbox::Record {
            id: "web.1".into(),
            service: "/web".into(),
            pid: 1,
            start_ticks: 0,
            group: None,
            ended: None,
        };
        std::fs::write(t.join("task.json"), serde_json::to_vec(&rec).unwrap()).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let ask =
            pb::AgentLogAsk { request: 7, task_id: "web.1".into(), follow: true, tail_bytes: 4, ..Default::default() };
        let h = tokio::spawn(stream_file(ask, 3, d.path().to_path_buf(), tx));
        let first = rx.recv().await.unwrap();
        assert_eq!((first.node_id, first.request, &first.data[..]), (3, 7, &b"6789"[..]));
        // Appended while followed.
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(t.join("stdout")).unwrap().write_all(b"ab").unwrap();
        assert_eq!(rx.recv().await.unwrap().data, b"ab");
        let ended = sandbox::Record {
            ended: Some(sandbox::Ended { state: "finished".into(), reason: String::new(), exit_code: Some(0) }),
            ..rec
        };
        std::fs::write(t.join("task.json"), serde_json::to_vec(&ended).unwrap()).unwrap();
        let last = rx.recv().await.unwrap();
        assert!(last.end && last.error.is_empty() && last.data.is_empty(), "{last:?}");
        h.await.unwrap();
        // A task that is not here answers an error, and a path is refused.
        let (tx, mut rx) = mpsc::channel(4);
        stream_file(pb::AgentLogAsk { task_id: "web.9".into(), ..Default::default() }, 3, d.path().into(), tx).await;
        assert!(rx.recv().await.unwrap().error.contains("no"));
        let (tx, mut rx) = mpsc::channel(4);
        stream_file(pb::AgentLogAsk { task_id: "../etc".into(), ..Default::default() }, 3, d.path().into(), tx).await;
        assert!(rx.recv().await.unwrap().error.contains("not a task id"));
        // A log replaced by a symlink is not followed out of the sandbox.
        let t2 = sandbox::dir(d.path(), "web.2");
        std::fs::create_dir_all(&t2).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", t2.join("stdout")).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        stream_file(pb::AgentLogAsk { task_id: "web.2".into(), ..Default::default() }, 3, d.path().into(), tx).await;
        let r = rx.recv().await.unwrap();
        assert!(r.end && r.data.is_empty() && !r.error.is_empty(), "{r:?}");
    }
}
