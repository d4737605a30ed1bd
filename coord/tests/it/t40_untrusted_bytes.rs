//! Every decode of bytes from the network, driven with random and mutated input
//! (proptest as a bounded fuzzer: a fixed number of cases, so CI's time is bounded). The
//! property: a decode returns a value or an error. It never panics, never aborts on an
//! allocation, and a length prefix that claims more than the input could hold fails.

use coord::codec::{decode_untrusted, encode};
use coord::token::{format_token, parse_token};
use coord::types::{Entry, LogEntry, SnapshotMeta, TypeConfig, Vote};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::EntryPayload;
use proptest::prelude::*;

type Append = AppendEntriesRequest<TypeConfig>;

fn sample_append(n: u64) -> Append {
    let entries: Vec<Entry> = (1..=n)
        .map(|i| {
            let mut e: Entry = openraft::testing::blank_ent::<TypeConfig>(2, 1, i);
            e.payload = EntryPayload::Normal(LogEntry {
                time_ms: 1_700_000_000_000 + i,
                cmd: coord::command::Command::Put(coord::kv::types::PutRequest {
                    key: format!("key-{i}").into(),
                    value: vec![b'v'; 40],
                    ..Default::default()
                }),
            });
            e
        })
        .collect();
    AppendEntriesRequest {
        vote: Vote::new_committed(2, 1),
        prev_log_id: Some(openraft::testing::log_id::<TypeConfig>(1, 1, 0)),
        entries,
        leader_commit: Some(openraft::testing::log_id::<TypeConfig>(2, 1, n)),
    }
}

/// Every type a master decodes from a peer or a client, tried on the same bytes.
fn decode_all(b: &[u8]) {
    let _ = decode_untrusted::<Append>(b);
    let _ = decode_untrusted::<VoteRequest<TypeConfig>>(b);
    let _ = decode_untrusted::<(Vote, SnapshotMeta)>(b);
    let _ = decode_untrusted::<Result<openraft::raft::AppendEntriesResponse<TypeConfig>, String>>(b);
    let _ = decode_untrusted::<Result<openraft::raft::VoteResponse<TypeConfig>, String>>(b);
}

/// A varint length prefix (bincode's standard encoding) that claims `n` bytes.
fn varint(n: u64) -> Vec<u8> {
    let mut v = vec![253u8];
    v.extend_from_slice(&n.to_le_bytes());
    v
}

#[test]
fn length_bombs_fail_without_allocating_what_they_claim() {
    // A string, a vector and an entry list that each claim 2^40 or 2^60 bytes, in a few
    // bytes of input.
    for claim in [1u64 << 40, 1 << 60, u64::MAX] {
        let mut b = varint(claim);
        b.extend_from_slice(b"abc");
        assert!(decode_untrusted::<String>(&b).is_err());
        assert!(decode_untrusted::<Vec<u8>>(&b).is_err());
        assert!(decode_untrusted::<Vec<Entry>>(&b).is_err());
        // Inside a real message: the entries' count replaced by a bomb.
        let good = encode(&sample_append(0)).unwrap();
        let mut bomb = good.clone();
        bomb.truncate(good.len() - 2);
        bomb.extend_from_slice(&varint(claim));
        decode_all(&bomb);
        assert!(decode_untrusted::<Append>(&bomb).is_err());
    }
}

#[test]
fn real_messages_decode_under_the_limits() {
    for n in [0, 1, 300, 20_000] {
        let m = sample_append(n);
        let b = encode(&m).unwrap();
        let back: Append = decode_untrusted(&b).unwrap();
        assert_eq!(back.entries.len(), m.entries.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&b);
    }

    /// Valid messages with bytes flipped, inserted or cut: close to real input, so the
    /// decoder gets deep into the structure before it meets the damage.
    #[test]
    fn mutated_messages_never_panic(
        n in 0u64..4,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut b = encode(&sample_append(n)).unwrap();
        for (at, byte, op) in edits {
            if b.is_empty() { break; }
            let i = at.index(b.len());
            match op {
                0 => b[i] = byte,
                1 => b.insert(i, byte),
                _ => b.truncate(i),
            }
        }
        decode_all(&b);
    }

    #[test]
    fn any_string_parses_as_a_token_or_is_refused(s in "\\PC{0,120}") {
        let _ = parse_token(&s);
    }

    /// A token that parses is exactly the parts it was made of.
    #[test]
    fn tokens_round_trip(d in "[0-9a-f]{64}", secret in "[A-Za-z0-9]{16,64}", junk in "[-A-Za-z0-9]{0,8}") {
        let t = parse_token(&format_token(&d, &secret)).unwrap();
        prop_assert_eq!(&t.digest, &d);
        prop_assert_eq!(&t.secret, &secret);
        // A secret with anything but letters and digits is refused.
        if junk.contains('-') {
            let bad = format!("{secret}{junk}");
            prop_assert!(parse_token(&format_token(&d, &bad)).is_err());
        }
    }
}
