use std::collections::BTreeMap;

use super::*;

/// A directory made by hand: services with their tasks, agents, masters.
#[derive(Default)]
struct Fixture {
    services: BTreeMap<String, Vec<Endpoint>>,
    agents: BTreeMap<NodeId, IpAddr>,
    masters: Vec<(IpAddr, bool)>,
}

impl Directory for Fixture {
    fn endpoints(&self, service: &str) -> Option<Vec<Endpoint>> {
        self.services.get(service).cloned()
    }
    fn has_services_under(&self, prefix: &str) -> bool {
        self.services.keys().any(|s| s.starts_with(&format!("{prefix}/")))
    }
    fn agent_ip(&self, agent: NodeId) -> Option<IpAddr> {
        self.agents.get(&agent).copied()
    }
    fn masters(&self) -> Vec<(IpAddr, bool)> {
        self.masters.clone()
    }
}

fn ep(id: &str, ip: Option<&str>, agent: NodeId, healthy: bool, ports: &[(&str, u16)]) -> Endpoint {
    Endpoint {
        task_id: id.into(),
        ip: ip.map(|s| s.parse().unwrap()),
        agent,
        healthy,
        ports: ports.iter().map(|(n, p)| PortEntry { name: n.to_string(), port: *p, tcp: true, udp: false }).collect(),
    }
}

fn fixture() -> Fixture {
    let mut f = Fixture::default();
    f.services.insert(
        "/prod/web".into(),
        vec![
            ep("prod_web.1", Some("10.0.0.2"), 4, true, &[("http", 31001)]),
            ep("prod_web.2", Some("10.0.0.3"), 5, true, &[("http", 31002)]),
            ep("prod_web.3", Some("10.0.0.4"), 5, false, &[("http", 31003)]),
        ],
    );
    f.services.insert("/db".into(), vec![ep("db.7", None, 4, true, &[("port0", 31010)])]);
    f.services.insert("/empty".into(), vec![]);
    f.agents.insert(4, "127.0.0.4".parse().unwrap());
    f.agents.insert(5, "127.0.0.5".parse().unwrap());
    f.masters = vec![("127.0.0.1".parse().unwrap(), false), ("127.0.0.2".parse().unwrap(), true)];
    f
}

/// The answers' data as text, sorted (A answers are shuffled).
fn texts(l: &Lookup) -> (Vec<String>, Vec<String>) {
    match l {
        Lookup::Found { answers, additionals } => {
            let show = |rs: &Vec<Record>| {
                let mut v: Vec<String> = rs.iter().map(|r| format!("{} {}", r.name, r.data)).collect();
                v.sort();
                v
            };
            (show(answers), show(additionals))
        }
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn ask(name: &str, t: RecordType) -> Lookup {
    resolve(&fixture(), &DnsConfig::default(), name, t)
}

#[test]
fn a_service_answers_its_healthy_tasks_only() {
    let (a, _) = texts(&ask("web.prod.cluster.local.", RecordType::A));
    assert_eq!(a, vec!["web.prod.cluster.local. 10.0.0.2", "web.prod.cluster.local. 10.0.0.3"]);
}

#[test]
fn a_task_without_an_overlay_ip_answers_with_its_agents_address() {
    let (a, _) = texts(&ask("db.cluster.local", RecordType::A));
    assert_eq!(a, vec!["db.cluster.local. 127.0.0.4"]);
}

#[test]
fn one_task_by_its_id_healthy_or_not() {
    let (a, _) = texts(&ask("prod_web.3.web.prod.cluster.local", RecordType::A));
    assert_eq!(a, vec!["prod_web.3.web.prod.cluster.local. 10.0.0.4"]);
    assert_eq!(ask("prod_web.9.web.prod.cluster.local", RecordType::A), Lookup::NxDomain);
}

#[test]
fn srv_gives_each_healthy_tasks_agent_and_port_with_glue() {
    let (a, glue) = texts(&ask("_http._tcp.web.prod.cluster.local", RecordType::SRV));
    assert_eq!(
        a,
        vec![
            "_http._tcp.web.prod.cluster.local. 0 1 31001 4.agents.cluster.local.",
            "_http._tcp.web.prod.cluster.local. 0 1 31002 5.agents.cluster.local.",
        ]
    );
    assert_eq!(glue, vec!["4.agents.cluster.local. 127.0.0.4", "5.agents.cluster.local. 127.0.0.5"]);
    // An unnamed port answers by its index.
    let (a, _) = texts(&ask("_port0._tcp.db.cluster.local", RecordType::SRV));
    assert_eq!(a, vec!["_port0._tcp.db.cluster.local. 0 1 31010 4.agents.cluster.local."]);
    // A port the service does not have, or a protocol it does not speak.
    assert_eq!(ask("_grpc._tcp.web.prod.cluster.local", RecordType::SRV), Lookup::NxDomain);
    assert_eq!(ask("_http._udp.web.prod.cluster.local", RecordType::SRV), Lookup::NxDomain);
}

#[test]
fn leader_and_masters() {
    let (a, _) = texts(&ask("leader.cluster.local", RecordType::A));
    assert_eq!(a, vec!["leader.cluster.local. 127.0.0.2"]);
    let (a, _) = texts(&ask("masters.cluster.local", RecordType::A));
    assert_eq!(a, vec!["masters.cluster.local. 127.0.0.1", "masters.cluster.local. 127.0.0.2"]);
    let mut no_leader = fixture();
    no_leader.masters.iter_mut().for_each(|m| m.1 = false);
    let l = resolve(&no_leader, &DnsConfig::default(), "leader.cluster.local", RecordType::A);
    assert_eq!(texts(&l).0, Vec::<String>::new());
}

#[test]
fn agents_by_id() {
    let (a, _) = texts(&ask("5.agents.cluster.local", RecordType::A));
    assert_eq!(a, vec!["5.agents.cluster.local. 127.0.0.5"]);
    assert_eq!(ask("9.agents.cluster.local", RecordType::A), Lookup::NxDomain);
    assert_eq!(ask("x.agents.cluster.local", RecordType::A), Lookup::NxDomain);
}

#[test]
fn known_names_without_that_type_are_nodata_not_nxdomain() {
    assert_eq!(texts(&ask("web.prod.cluster.local", RecordType::AAAA)).0, Vec::<String>::new());
    assert_eq!(texts(&ask("web.prod.cluster.local", RecordType::MX)).0, Vec::<String>::new());
    assert_eq!(texts(&ask("empty.cluster.local", RecordType::A)).0, Vec::<String>::new());
    let (soa, _) = texts(&ask("cluster.local", RecordType::SOA));
    assert_eq!(soa.len(), 1);
}

#[test]
fn unknown_names_are_nxdomain_and_foreign_ones_refused() {
    assert_eq!(ask("nope.cluster.local", RecordType::A), Lookup::NxDomain);
    assert_eq!(ask("web.nope.cluster.local", RecordType::A), Lookup::NxDomain);
    assert_eq!(ask("example.com", RecordType::A), Lookup::Refused);
    assert_eq!(ask("xcluster.local", RecordType::A), Lookup::Refused);
    assert_eq!(ask("_x._tcp.cluster.local", RecordType::SRV), Lookup::NxDomain);
}

#[test]
fn names_are_case_insensitive_and_the_domain_configurable() {
    let (a, _) = texts(&ask("WEB.Prod.Cluster.Local", RecordType::A));
    assert_eq!(a.len(), 2);
    let cfg = DnsConfig { domain: "dc1.example".into(), ttl_s: 5 };
    let l = resolve(&fixture(), &cfg, "db.dc1.example.", RecordType::A);
    match &l {
        Lookup::Found { answers, .. } => assert_eq!(answers[0].ttl, 5),
        other => panic!("{other:?}"),
    }
    assert_eq!(resolve(&fixture(), &cfg, "db.cluster.local", RecordType::A), Lookup::Refused);
}

#[test]
fn names_with_names_below_them_are_nodata_not_nxdomain() {
    // RFC 8020: NXDOMAIN would deny everything below, and resolvers believe it.
    let empty = Vec::<String>::new();
    assert_eq!(texts(&ask("prod.cluster.local", RecordType::A)).0, empty, "a group");
    assert_eq!(texts(&ask("_tcp.web.prod.cluster.local", RecordType::A)).0, empty, "above SRV names");
    assert_eq!(texts(&ask("3.web.prod.cluster.local", RecordType::A)).0, empty, "part of a task's name");
    assert_eq!(ask("4.web.prod.cluster.local", RecordType::A), Lookup::NxDomain);
}

#[test]
fn config_is_validated() {
    assert!(DnsConfig::default().validate().is_ok());
    for bad in ["", "Cluster.local", "a..b", "-a.b", "a_b.c"] {
        assert!(DnsConfig { domain: bad.into(), ttl_s: 1 }.validate().is_err(), "{bad}");
    }
    assert!(DnsConfig { domain: "a.b".into(), ttl_s: 3601 }.validate().is_err());
}

#[test]
fn listen_addresses() {
    assert_eq!(parse_listen("127.0.0.1:5353").unwrap().port(), 5353);
    assert_eq!(parse_listen("127.0.0.1").unwrap().port(), default_port());
    assert!(parse_listen("localhost:53").is_err());
}
