//! What the resolver says to one query (pure): the names of the workloads
//! on its network (and, on a cluster tenant's network, the tenant's service
//! names), their reverse names, NXDOMAIN for other single-label names and
//! for `.internal` (they never leave the host), and "forward" for the rest. Queries
//! come from workloads: hostile input, parsed and written by hickory only.

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::Table;

/// Seconds a client may keep an answer: short, so a removed workload's
/// name goes quickly from caches too.
pub const TTL: u32 = 5;
/// Addresses in one answer, at most (a UDP answer stays under 512 bytes).
pub const MAX_ADDRESSES: usize = 16;

#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// These bytes go back to the client.
    Answer(Vec<u8>),
    /// Not ours: the query goes upstream as it came.
    Forward,
    /// Not answered at all (not from the network, or not a query).
    Drop,
}

/// The reply to `query` from `from`, per `table`.
pub fn answer(table: &Table, from: Ipv4Addr, query: &[u8]) -> Reply {
    if !table.subnet.contains(from) || from == table.subnet.gateway() {
        return Reply::Drop;
    }
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        // A header we can read gets FORMERR; garbage gets nothing.
        Err(_) => return formerr(query),
    };
    if msg.metadata.message_type != MessageType::Query {
        return Reply::Drop;
    }
    if msg.metadata.op_code != OpCode::Query {
        return reply(&msg, ResponseCode::NotImp, Vec::new());
    }
    let [q] = msg.queries.as_slice() else {
        return reply(&msg, ResponseCode::FormErr, Vec::new());
    };
    if q.query_class() != DNSClass::IN {
        return reply(&msg, ResponseCode::Refused, Vec::new());
    }
    let name = q.name().to_lowercase().to_ascii();
    let name = name.strip_suffix('.').unwrap_or(&name);
    if let Some(ips) = table.names.get(name) {
        let recs: Vec<Record> = if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
            ips.iter()
                .take(MAX_ADDRESSES)
                .map(|ip| Record::from_rdata(q.name().clone(), TTL, RData::A(A(*ip))))
                .collect()
        } else {
            Vec::new()
        };
        return reply(&msg, ResponseCode::NoError, recs);
    }
    if let Some(ip) = reverse(name) {
        // Ours: an address we name (a cluster tenant's on other nodes too)
        // or any of this network's; never asked of the host's resolvers.
        let found = table.names.iter().find(|(_, a)| a.contains(&ip));
        return match found.map(|(n, _)| Name::from_ascii(format!("{n}."))) {
            Some(Ok(target)) => {
                let rec = matches!(q.query_type(), RecordType::PTR | RecordType::ANY)
                    .then(|| Record::from_rdata(q.name().clone(), TTL, RData::PTR(PTR(target))));
                reply(&msg, ResponseCode::NoError, rec.into_iter().collect())
            }
            _ if table.subnet.contains(ip) => reply(&msg, ResponseCode::NXDomain, Vec::new()),
            _ => Reply::Forward,
        };
    }
    if !name.contains('.') || name.ends_with(".internal") {
        return reply(&msg, ResponseCode::NXDomain, Vec::new());
    }
    Reply::Forward
}

/// The address of `d.c.b.a.in-addr.arpa`.
fn reverse(name: &str) -> Option<Ipv4Addr> {
    let digits = name.strip_suffix(".in-addr.arpa")?;
    let mut octets = [0u8; 4];
    let mut parts = digits.split('.');
    for o in octets.iter_mut().rev() {
        *o = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

fn reply(query: &Message, code: ResponseCode, answer: Vec<Record>) -> Reply {
    let mut r = Message::response(query.metadata.id, query.metadata.op_code);
    r.metadata.recursion_desired = query.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.metadata.authoritative = code != ResponseCode::Refused;
    r.metadata.response_code = code;
    r.queries = query
        .queries
        .iter()
        .take(1)
        .cloned()
        .collect::<Vec<Query>>();
    r.answers.extend(answer);
    match r.to_vec() {
        Ok(bytes) => Reply::Answer(bytes),
        Err(_) => Reply::Drop,
    }
}

/// FORMERR for a query whose header is readable (12 bytes, QR clear).
fn formerr(query: &[u8]) -> Reply {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return Reply::Drop;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    match Message::error_msg(id, OpCode::Query, ResponseCode::FormErr).to_vec() {
        Ok(b) => Reply::Answer(b),
        Err(_) => Reply::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::subnet::Subnet;

    fn table() -> Table {
        Table {
            subnet: Subnet::parse("10.89.3.0/24").unwrap_or_else(|e| panic!("{e}")),
            names: [
                ("db".to_string(), vec![Ipv4Addr::new(10, 89, 3, 2)]),
                ("web.prod".to_string(), vec![Ipv4Addr::new(10, 89, 3, 3)]),
                (
                    "api.acme.internal".to_string(),
                    vec![Ipv4Addr::new(10, 200, 0, 5), Ipv4Addr::new(10, 200, 0, 70)],
                ),
            ]
            .into(),
        }
    }

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 89, 3, 9);

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii(name).unwrap_or_else(|e| panic!("{e}")),
            kind,
        ));
        m.to_vec().unwrap_or_else(|e| panic!("{e}"))
    }

    fn decoded(r: Reply) -> Message {
        match r {
            Reply::Answer(b) => Message::from_vec(&b).unwrap_or_else(|e| panic!("{e}")),
            other => panic!("{other:?}"),
        }
    }

    fn addresses(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn names_on_the_network_resolve_whatever_their_case() {
        for (name, ip) in [
            ("db", [10, 89, 3, 2]),
            ("DB.", [10, 89, 3, 2]),
            ("web.prod", [10, 89, 3, 3]),
        ] {
            let m = decoded(answer(&table(), CLIENT, &query(name, RecordType::A)));
            assert_eq!(m.metadata.id, 0x4242);
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert!(m.metadata.recursion_desired && m.metadata.authoritative);
            assert_eq!(addresses(&m), vec![Ipv4Addr::from(ip)], "{name}");
            assert_eq!(m.answers[0].ttl, TTL);
        }
        // A name with no IPv6 address: NOERROR and nothing (not NXDOMAIN,
        // which would make clients give up on the A record too).
        let m = decoded(answer(&table(), CLIENT, &query("db", RecordType::AAAA)));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn a_service_name_answers_every_address_and_internal_never_leaves() {
        let m = decoded(answer(
            &table(),
            CLIENT,
            &query("api.acme.internal", RecordType::A),
        ));
        assert_eq!(
            addresses(&m),
            vec![Ipv4Addr::new(10, 200, 0, 5), Ipv4Addr::new(10, 200, 0, 70)]
        );
        let m = decoded(answer(
            &table(),
            CLIENT,
            &query("db.evil.internal", RecordType::A),
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // Another node's instance: its reverse name is ours too.
        let m = decoded(answer(
            &table(),
            CLIENT,
            &query("70.0.200.10.in-addr.arpa", RecordType::PTR),
        ));
        assert!(
            matches!(&m.answers[0].data, RData::PTR(p) if p.0.to_ascii() == "api.acme.internal.")
        );
        let mut many = table();
        many.names.insert(
            "big".into(),
            (1..=40).map(|i| Ipv4Addr::new(10, 89, 3, i)).collect(),
        );
        let m = decoded(answer(&many, CLIENT, &query("big", RecordType::A)));
        assert_eq!(m.answers.len(), MAX_ADDRESSES);
    }

    #[test]
    fn other_short_names_are_nxdomain_and_full_names_go_upstream() {
        let m = decoded(answer(&table(), CLIENT, &query("cache", RecordType::A)));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(
            answer(&table(), CLIENT, &query("example.com", RecordType::A)),
            Reply::Forward
        );
    }

    #[test]
    fn reverse_names_of_the_network_are_ours() {
        let m = decoded(answer(
            &table(),
            CLIENT,
            &query("2.3.89.10.in-addr.arpa", RecordType::PTR),
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(matches!(&m.answers[0].data, RData::PTR(p) if p.0.to_ascii() == "db."));
        let m = decoded(answer(
            &table(),
            CLIENT,
            &query("77.3.89.10.in-addr.arpa", RecordType::PTR),
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(
            answer(
                &table(),
                CLIENT,
                &query("1.1.1.1.in-addr.arpa", RecordType::PTR)
            ),
            Reply::Forward
        );
        assert_eq!(reverse("1.2.3.in-addr.arpa"), None);
        assert_eq!(reverse("1.2.3.4.5.in-addr.arpa"), None);
        assert_eq!(reverse("1.2.3.999.in-addr.arpa"), None);
    }

    #[test]
    fn only_the_networks_own_workloads_are_answered() {
        for from in [
            Ipv4Addr::new(10, 89, 4, 9),
            Ipv4Addr::new(10, 89, 3, 1),
            Ipv4Addr::LOCALHOST,
        ] {
            assert_eq!(
                answer(&table(), from, &query("db", RecordType::A)),
                Reply::Drop,
                "{from}"
            );
        }
    }

    #[test]
    fn malformed_queries_get_formerr_or_nothing() {
        assert_eq!(answer(&table(), CLIENT, b""), Reply::Drop);
        assert_eq!(answer(&table(), CLIENT, &[0xff; 5]), Reply::Drop);
        // A header and a question that runs past the end.
        let mut q = query("db", RecordType::A);
        q.truncate(q.len() - 3);
        let m = decoded(answer(&table(), CLIENT, &q));
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0x4242, ResponseCode::FormErr)
        );
        // A label pointer that points at itself.
        let mut looped = query("db", RecordType::A)[..12].to_vec();
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(matches!(
            answer(&table(), CLIENT, &looped),
            Reply::Answer(_)
        ));
        // Responses are never answered (no loops between resolvers).
        let mut resp = query("db", RecordType::A);
        resp[2] |= 0x80;
        assert_eq!(answer(&table(), CLIENT, &resp), Reply::Drop);
        // Two questions, and an update: refused with a code.
        let mut two =
            Message::from_vec(&query("db", RecordType::A)).unwrap_or_else(|e| panic!("{e}"));
        two.add_query(two.queries[0].clone());
        let m = decoded(answer(&table(), CLIENT, &two.to_vec().unwrap_or_default()));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        let mut upd =
            Message::from_vec(&query("db", RecordType::A)).unwrap_or_else(|e| panic!("{e}"));
        upd.metadata.op_code = OpCode::Update;
        let m = decoded(answer(&table(), CLIENT, &upd.to_vec().unwrap_or_default()));
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        // Any bytes at all: an answer, a drop or a forward, never a panic.
        let mut x: u32 = 0x1234_5678;
        for len in 0..600 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x.to_le_bytes()[0]
                })
                .collect();
            let _ = answer(&table(), CLIENT, &bytes);
        }
    }
}
