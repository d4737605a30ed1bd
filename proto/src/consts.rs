//! Wire constants that servers and clients must agree on, and the one pure helper both
//! use to build etcd prefix ranges. Hand-written; the rest of this crate is generated.

/// Metadata key of a not-leader answer (`unavailable`): the leader's address, when known.
pub const LEADER_ADDR_HEADER: &str = "x-cluster-leader-addr";
/// Metadata key of a not-leader answer (`unavailable`): the leader's node id, when known.
pub const LEADER_ID_HEADER: &str = "x-cluster-leader-id";
/// Set on a request a master forwards to the leader, so that it is never forwarded twice.
pub const FORWARDED_HEADER: &str = "x-cluster-forwarded";

/// Returns the smallest key greater than every key that starts with `prefix`, as etcd's
/// `clientv3.GetPrefixRangeEnd` does; `"\0"` when no such key exists.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_range_end;

    #[test]
    fn prefix_range_end_skips_trailing_ff_and_falls_back_to_all_keys() {
        assert_eq!(prefix_range_end(b"p/"), b"p0");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }
}
