//! The registry against a plain model, over random sequences of register, transition,
//! drain/activate, remove and snapshot-restore. After every step the records persisted
//! incrementally (`take_changes`) must load into the same registry as a full snapshot.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const NEXT_NODE_ID: u64 = 5;
const STATES: [NodeState; 4] = [NodeState::Registered, NodeState::Active, NodeState::Unreachable, NodeState::Down];

#[derive(Debug, Clone)]
enum Op {
    Register { id: u64, secret: u8, zone: u8 },
    Transition { id: u64, from: usize, to: usize },
    Availability { id: u64, drain: bool },
    Remove { id: u64, force: bool },
    SnapshotRestore,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..=5u64, 0..2u8, 0..2u8).prop_map(|(id, secret, zone)| Op::Register { id, secret, zone }),
        5 => (1..=5u64, 0..4usize, 0..4usize).prop_map(|(id, from, to)| Op::Transition { id, from, to }),
        2 => (1..=5u64, any::<bool>()).prop_map(|(id, drain)| Op::Availability { id, drain }),
        1 => (1..=5u64, any::<bool>()).prop_map(|(id, force)| Op::Remove { id, force }),
        1 => Just(Op::SnapshotRestore),
    ]
}

fn registration(id: u64, secret: u8, zone: u8) -> Registration {
    Registration {
        node_id: id,
        secret_hash: format!("{secret:064}"),
        name: format!("n{id}"),
        addr: format!("10.0.0.{id}:1"),
        role: Role::Worker,
        resources: NodeResources { cpus_milli: 1000, memory_mb: 512, disk_mb: 0, ports: vec![(31000, 32000)] },
        labels: BTreeMap::from([("zone".to_string(), format!("z{zone}"))]),
    }
}

/// The model: what a node is, in the simplest terms.
#[derive(Debug, Clone, PartialEq)]
struct ModelNode {
    secret: u8,
    zone: u8,
    state: NodeState,
    drain: bool,
}

/// The allowed transitions, spelled out independently of `can_become`.
fn allowed(from: NodeState, to: NodeState) -> bool {
    use NodeState::*;
    [
        (Registered, Active),
        (Unreachable, Active),
        (Down, Active),
        (Registered, Unreachable),
        (Active, Unreachable),
        (Unreachable, Down),
    ]
    .contains(&(from, to))
}

fn apply_changes(disk: &mut BTreeMap<Vec<u8>, Vec<u8>>, changes: Vec<Change>) {
    for (k, v) in changes {
        match v {
            Some(v) => disk.insert(k, v),
            None => disk.remove(&k),
        };
    }
}

fn load(disk: &BTreeMap<Vec<u8>, Vec<u8>>) -> Registry {
    Registry::load(disk.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).unwrap()
}

proptest! {
    #[test]
    fn registry_matches_model_and_survives_snapshot_restore(ops in proptest::collection::vec(op(), 1..80), kept in 3..12usize) {
        let mut reg = Registry::with_retention(kept);
        let mut model: BTreeMap<u64, ModelNode> = BTreeMap::new();
        let mut removed: Vec<u64> = Vec::new();
        let mut events = 0u64;
        let mut disk: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (step, op) in ops.into_iter().enumerate() {
            let t = 1000 + step as u64;
            match op {
                Op::Register { id, secret, zone } => {
                    let r = reg.apply(1, t, NEXT_NODE_ID, &RegistryCommand::Register(registration(id, secret, zone)));
                    if id >= NEXT_NODE_ID {
                        prop_assert_eq!(r, Err(RegistryError::NeverJoined(id)));
                    } else if removed.contains(&id) {
                        prop_assert_eq!(r, Err(RegistryError::Removed(id)));
                    } else if let Some(m) = model.get_mut(&id) {
                        if m.secret != secret {
                            prop_assert_eq!(r, Err(RegistryError::IdTaken(id)));
                        } else {
                            prop_assert!(r.is_ok());
                            if m.zone != zone {
                                m.zone = zone;
                                events += 1;
                            }
                        }
                    } else {
                        prop_assert!(r.is_ok());
                        model.insert(id, ModelNode { secret, zone, state: NodeState::Registered, drain: false });
                        events += 1;
                    }
                }
                Op::Transition { id, from, to } => {
                    let (from, to) = (STATES[from], STATES[to]);
                    let tr = Transition { node_id: id, from, to, reason: "test".into() };
                    let r = reg.apply(1, t, NEXT_NODE_ID, &RegistryCommand::Transitions { term: 1, transitions: vec![tr] }).unwrap();
                    let applies = model.get(&id).is_some_and(|m| m.state == from) && allowed(from, to);
                    prop_assert_eq!(r, RegistryOutput::Transitions(applies as u32));
                    if applies {
                        model.get_mut(&id).unwrap().state = to;
                        events += 1;
                    }
                }
                Op::Availability { id, drain } => {
                    let availability = if drain { Availability::Drain } else { Availability::Active };
                    let r = reg.apply(1, t, NEXT_NODE_ID, &RegistryCommand::SetAvailability { node_id: id, availability });
                    match model.get_mut(&id) {
                        None => prop_assert_eq!(r, Err(RegistryError::UnknownNode(id))),
                        Some(m) => {
                            prop_assert!(r.is_ok());
                            if m.drain != drain {
                                m.drain = drain;
                                events += 1;
                            }
                        }
                    }
                }
                Op::Remove { id, force } => {
                    let r = reg.apply(1, t, NEXT_NODE_ID, &RegistryCommand::Remove { node_id: id, force });
                    match model.get(&id) {
                        None => prop_assert_eq!(r, Err(RegistryError::UnknownNode(id))),
                        Some(m) if m.state == NodeState::Active && !force => {
                            prop_assert_eq!(r, Err(RegistryError::StillActive(id, NodeState::Active)))
                        }
                        Some(_) => {
                            prop_assert_eq!(r, Ok(RegistryOutput::Removed));
                            model.remove(&id);
                            removed.push(id);
                            events += 1;
                        }
                    }
                }
                Op::SnapshotRestore => {
                    let full = reg.records();
                    let restored = Registry::load(full.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).unwrap();
                    prop_assert_eq!(&restored, &reg);
                    // A snapshot of the restored registry is byte-identical.
                    prop_assert_eq!(restored.records(), full);
                    apply_changes(&mut disk, reg.take_changes());
                    reg = restored;
                    reg.set_events_kept(kept);
                }
            }
            apply_changes(&mut disk, reg.take_changes());
            prop_assert!(!reg.has_changes());
            // What was persisted step by step is exactly the full record set.
            let on_disk: Vec<(Vec<u8>, Vec<u8>)> = disk.clone().into_iter().collect();
            if events > 0 {
                prop_assert_eq!(&on_disk, &reg.records());
            }
            prop_assert_eq!(&load(&disk), &reg);
            // The registry equals the model.
            prop_assert_eq!(reg.nodes.len(), model.len());
            for (id, m) in &model {
                let n = &reg.nodes[id];
                prop_assert_eq!(n.state, m.state);
                prop_assert_eq!(n.availability == Availability::Drain, m.drain);
                prop_assert_eq!(&n.labels["zone"], &format!("z{}", m.zone));
                prop_assert_eq!(&n.secret_hash, &format!("{:064}", m.secret));
            }
            for id in &removed {
                prop_assert!(reg.removed.contains(id) && !reg.nodes.contains_key(id));
            }
            // Events: numbered without gaps, the newest `kept` retained.
            prop_assert_eq!(reg.last_event_index(), events);
            prop_assert_eq!(reg.events.len() as u64, events.min(kept as u64));
            for (i, e) in reg.events.iter().enumerate() {
                prop_assert_eq!(e.index, events - reg.events.len() as u64 + 1 + i as u64);
            }
        }
    }
}

#[test]
fn bad_registrations_are_refused_and_change_nothing() {
    let mut reg = Registry::default();
    let mut r = registration(1, 0, 0);
    r.resources.cpus_milli = 0;
    assert!(matches!(reg.apply(1, 1, 5, &RegistryCommand::Register(r)), Err(RegistryError::Invalid(_))));
    let mut r = registration(1, 0, 0);
    r.resources.ports = vec![(100, 200), (150, 300)];
    assert!(matches!(reg.apply(1, 1, 5, &RegistryCommand::Register(r)), Err(RegistryError::Invalid(_))));
    let mut r = registration(1, 0, 0);
    r.labels.insert("-bad".into(), "x".into());
    assert!(matches!(reg.apply(1, 1, 5, &RegistryCommand::Register(r)), Err(RegistryError::Invalid(_))));
    assert_eq!(reg, Registry::default());
    assert!(!reg.has_changes());
}

#[test]
fn transitions_decided_in_another_term_are_skipped() {
    let mut reg = Registry::default();
    reg.apply(3, 1, 5, &RegistryCommand::Register(registration(1, 0, 0))).unwrap();
    let tr = Transition { node_id: 1, from: NodeState::Registered, to: NodeState::Unreachable, reason: "x".into() };
    let cmd = RegistryCommand::Transitions { term: 3, transitions: vec![tr] };
    assert_eq!(reg.apply(4, 2, 5, &cmd), Ok(RegistryOutput::Transitions(0)));
    assert_eq!(reg.nodes[&1].state, NodeState::Registered);
    assert_eq!(reg.apply(3, 2, 5, &cmd), Ok(RegistryOutput::Transitions(1)));
    assert_eq!(reg.nodes[&1].state, NodeState::Unreachable);
}
