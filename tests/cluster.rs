//! Several gateway processes on one component domain, attached to the two nodes of a real
//! ejabberd cluster (`scripts/ejabberd-cluster.sh`): the routing facts the multi-instance
//! design (issue 12) relies on. Each gateway has its own data directory, so the instance
//! that handled a registration is the one whose log says so.
//! The figures are in `bench/results/issue12-ejabberd-cluster.md`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use minidom::Element;
use testkit::*;

/// A gateway attached to `component_port`, with its keepalive ping off in effect: an idle
/// instance's ping to itself may be routed to another instance of the domain and would make
/// it reconnect (see bench/results/issue12-ejabberd-cluster.md), which is not what these
/// tests measure.
fn gateway(component_port: u16) -> Gateway {
    Gateway::start_at(component_port, 3600)
}

/// How many of `gateway`'s log lines record a registration of `user` (new or updated).
fn registrations(gateway: &Gateway, user: &str) -> usize {
    let field = format!("user={user}");
    gateway.log_text().lines().filter(|line| line.contains("regist") && line.split_whitespace().any(|word| word == field)).count()
}

/// Registers `client` (IRC nick `nick`) and returns the index in `gateways` of the one
/// instance that handled it (its log shows one more registration of the user).
async fn register(client: &mut Client, nick: &str, gateways: &[&Gateway]) -> usize {
    let user = client.bare().to_owned();
    let before: Vec<usize> = gateways.iter().map(|g| registrations(g, &user)).collect();
    let reply = client.iq("set", &register_form(&[("irc_nick", nick)])).await;
    assert_eq!(reply.attr("type"), Some("result"), "{user}: {reply:?}");
    // The gateway replies, then logs: wait for the line.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let grown: Vec<usize> =
            (0..gateways.len()).filter(|&i| registrations(gateways[i], &user) > before[i]).collect();
        match grown.as_slice() {
            [one] => return *one,
            [] => assert!(std::time::Instant::now() < deadline, "no gateway logged the registration of {user}"),
            many => panic!("one registration of {user} logged by several gateways: {many:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Adds users `u1`..`uN` (password `pw`) to `cluster`; their names.
fn add_numbered_users(cluster: &EjabberdCluster, count: usize) -> Vec<String> {
    let users: Vec<String> = (1..=count).map(|i| format!("u{i}")).collect();
    cluster.add_users(&users.iter().map(|u| (u.as_str(), "localhost")).collect::<Vec<_>>());
    users
}

/// Logs every one of `users` in on `node` and registers it: each client with the index in
/// `gateways` of the instance that handled its registration.
async fn registered_clients(cluster: &EjabberdCluster, node: usize, users: &[String], gateways: &[&Gateway]) -> Vec<(Client, usize)> {
    let mut clients = Vec::new();
    for user in users {
        let mut client = cluster.client(node, user, "localhost").await;
        let pinned = register(&mut client, "first", gateways).await;
        clients.push((client, pinned));
    }
    clients
}

/// A new id for a ping of the gateway.
fn probe_id() -> String {
    static PROBES: AtomicUsize = AtomicUsize::new(0);
    format!("probe{}", PROBES.fetch_add(1, Ordering::Relaxed))
}

/// Sends a ping of the gateway with `id`.
async fn send_ping(client: &mut Client, id: &str) {
    client.send_raw(&format!("<iq type='get' id='{id}' to='{GW}'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
}

/// The answer to a ping of the gateway if one comes within `within` (a dropped stanza
/// gets none): a result, or an error bounced by the server.
async fn ping(client: &mut Client, within: Duration) -> Option<Element> {
    let id = probe_id();
    send_ping(client, &id).await;
    client.receive_within(within, |e| e.name() == "iq" && e.attr("id") == Some(id.as_str())).await
}

/// Pings the gateway every second until one of the pings is answered with a result;
/// returns how many were sent before the first one answered (a component connection that
/// has just died takes the stanzas routed to it along, until the server notices).
async fn pings_lost_until_answered(client: &mut Client) -> usize {
    let deadline = std::time::Instant::now() + WAIT;
    let mut ids = Vec::new();
    while std::time::Instant::now() < deadline {
        ids.push(probe_id());
        send_ping(client, ids.last().unwrap()).await;
        let answer = |e: &Element| e.name() == "iq" && ids.iter().any(|id| e.attr("id") == Some(id.as_str()));
        if let Some(reply) = client.receive_within(Duration::from_secs(1), answer).await {
            assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
            return ids.iter().position(|id| reply.attr("id") == Some(id.as_str())).unwrap();
        }
    }
    panic!("{}: no ping answered within {WAIT:?}", client.bare());
}

#[tokio::test]
async fn a_user_on_node_2_is_answered_by_a_gateway_attached_to_node_1() {
    let cluster = EjabberdCluster::start();
    let gateway = gateway(cluster.component_port(1));
    let mut alice = cluster.client(2, "alice", "localhost").await;
    assert_eq!(register(&mut alice, "alice_irc", &[&gateway]).await, 0);
    let pong = alice.iq("get", "<ping xmlns='urn:xmpp:ping'/>").await;
    assert_eq!(pong.attr("type"), Some("result"), "{pong:?}");
    // And the other way: the gateway's stanzas reach a user on the other node.
    alice
        .wait_for("the gateway's subscription request", |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribe") && e.attr("from") == Some(GW)
        })
        .await;
    // A user registered through node 1 logs in on node 2: accounts are shared.
    let mut eve = cluster.client(2, "eve", "other.localhost").await;
    let info = eve.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>").await;
    assert_eq!(info.attr("type"), Some("result"), "{info:?}");
}

#[tokio::test]
async fn without_balancing_a_users_stanzas_go_to_the_gateways_on_its_own_node() {
    let cluster = EjabberdCluster::start();
    let on_1a = gateway(cluster.component_port(1));
    let on_2 = gateway(cluster.component_port(2));
    let on_1b = gateway(cluster.component_port(1));
    let gateways = [&on_1a, &on_2, &on_1b];
    let mut alice = cluster.client(1, "alice", "localhost").await;
    let mut bob = cluster.client(2, "bob", "localhost").await;
    let (mut alice_to, mut bob_to) = ([0; 3], [0; 3]);
    for i in 0..30 {
        alice_to[register(&mut alice, &format!("alice{i}"), &gateways).await] += 1;
        bob_to[register(&mut bob, &format!("bob{i}"), &gateways).await] += 1;
    }
    eprintln!("alice (node 1) -> [1a, 2, 1b] = {alice_to:?}; bob (node 2) -> {bob_to:?}");
    // Node 1 has two connections: each stanza picks one at random, never node 2's.
    assert_eq!(alice_to[1], 0, "{alice_to:?}");
    assert!(alice_to[0] > 0 && alice_to[2] > 0, "{alice_to:?}");
    // Node 2 has one: all of bob's go there.
    assert_eq!(bob_to, [0, 30, 0]);
}

#[tokio::test]
async fn without_balancing_a_node_without_a_gateway_routes_to_the_other_nodes() {
    let cluster = EjabberdCluster::start();
    let mut on_1 = gateway(cluster.component_port(1));
    let on_2 = gateway(cluster.component_port(2));
    let mut alice = cluster.client(1, "alice", "localhost").await;
    assert_eq!(register(&mut alice, "alice_irc", &[&on_1, &on_2]).await, 0);
    // Node 1's gateway goes: its users reach node 2's, nothing is lost.
    on_1.kill_9();
    let lost = pings_lost_until_answered(&mut alice).await;
    eprintln!("node 1's gateway killed: {lost} pings lost before node 2's gateway answered");
    for i in 0..10 {
        assert_eq!(register(&mut alice, &format!("alice{i}"), &[&on_1, &on_2]).await, 1);
    }
    // It comes back: node 1's users are served locally again.
    on_1.spawn();
    assert_eq!(register(&mut alice, "alice_back", &[&on_1, &on_2]).await, 0);
}

#[tokio::test]
async fn with_bare_source_thirty_users_are_each_pinned_to_one_of_three_gateways() {
    let cluster = EjabberdCluster::start_bare_source(3);
    let users = add_numbered_users(&cluster, 30);
    let gateways =
        [gateway(cluster.component_port(1)), gateway(cluster.component_port(2)), gateway(cluster.component_port(1))];
    let gateways: Vec<&Gateway> = gateways.iter().collect();
    let mut per_gateway = [0; 3];
    for (i, user) in users.iter().enumerate() {
        // Each user on one node, then on the other: the same gateway both times.
        let first = i % 2 + 1;
        let mut client = cluster.client(first, user, "localhost").await;
        let pinned = register(&mut client, "first", &gateways).await;
        for n in 0..3 {
            assert_eq!(register(&mut client, &format!("again{n}"), &gateways).await, pinned, "{user}");
        }
        // (Another resource: the same full JID at once on the other node can be refused
        // with a conflict while the first session is still being closed.)
        drop(client);
        let mut client = cluster.client_as(3 - first, user, "localhost", "other").await;
        assert_eq!(register(&mut client, "other_node", &gateways).await, pinned, "{user} on node {}", 3 - first);
        per_gateway[pinned] += 1;
    }
    eprintln!("30 users over [node 1, node 2, node 1] gateways: {per_gateway:?}");
    assert!(per_gateway.iter().all(|&n| n > 0), "{per_gateway:?}");
}

#[tokio::test]
async fn with_bare_source_a_pinned_gateways_users_are_dropped_until_a_connection_takes_its_slot() {
    let cluster = EjabberdCluster::start_bare_source(2);
    let mut gateways = [gateway(cluster.component_port(1)), gateway(cluster.component_port(2))];
    let mut alice = cluster.client(2, "alice", "localhost").await;
    let pinned = register(&mut alice, "alice_irc", &gateways.iter().collect::<Vec<_>>()).await;
    gateways[pinned].kill_9();
    // Slot vacant: the stanza is dropped, no error comes back.
    let reply = ping(&mut alice, Duration::from_secs(3)).await;
    eprintln!("gateway {pinned} killed: ping answer {reply:?}");
    assert!(reply.is_none(), "a ping answered while its gateway was down: {reply:?}");
    // The same process started again takes the slot (a new connection, of either node).
    gateways[pinned].spawn();
    let lost = pings_lost_until_answered(&mut alice).await;
    eprintln!("gateway {pinned} back: {lost} pings lost");
    assert_eq!(register(&mut alice, "again", &gateways.iter().collect::<Vec<_>>()).await, pinned);
}

#[tokio::test]
async fn after_a_node_is_killed_users_on_the_other_node_still_reach_a_gateway() {
    let cluster = EjabberdCluster::start();
    let on_1 = gateway(cluster.component_port(1));
    let on_2 = gateway(cluster.component_port(2));
    let gateways = [&on_1, &on_2];
    let mut alice = cluster.client(1, "alice", "localhost").await;
    let mut bob = cluster.client(2, "bob", "localhost").await;
    assert_eq!(register(&mut alice, "alice_irc", &gateways).await, 0);
    assert_eq!(register(&mut bob, "bob_irc", &gateways).await, 1);

    cluster.kill_node(1);
    // Bob, on node 2, keeps working, served by node 2's gateway.
    for i in 0..5 {
        assert_eq!(register(&mut bob, &format!("bob{i}"), &gateways).await, 1);
    }
    // Alice's connection died with node 1; she logs in on node 2 and is served there.
    let mut alice = cluster.client(2, "alice", "localhost").await;
    assert_eq!(register(&mut alice, "alice_moved", &gateways).await, 1);

    // Node 1 comes back: its gateway reconnects to it by itself and serves node 1's users.
    let connections = on_1.connections();
    cluster.start_node(1);
    on_1.wait_connected(connections + 1, WAIT);
    let mut carol = cluster.client(1, "eve", "other.localhost").await;
    let pong = carol.iq("get", "<ping xmlns='urn:xmpp:ping'/>").await;
    assert_eq!(pong.attr("type"), Some("result"), "{pong:?}");
    let mut alice = cluster.client(1, "alice", "localhost").await;
    assert_eq!(register(&mut alice, "alice_back", &gateways).await, 0);
}

#[tokio::test]
async fn with_bare_source_a_killed_nodes_gateway_slot_drops_its_users_until_it_reconnects() {
    let cluster = EjabberdCluster::start_bare_source(2);
    let users = add_numbered_users(&cluster, 8);
    let on_1 = gateway(cluster.component_port(1));
    let on_2 = gateway(cluster.component_port(2));
    let gateways = [&on_1, &on_2];
    // Users on node 2, pinned to either gateway.
    let mut clients = registered_clients(&cluster, 2, &users, &gateways).await;
    eprintln!("pinned: {:?}", clients.iter().map(|(_, p)| *p).collect::<Vec<_>>());
    assert!(clients.iter().any(|(_, p)| *p == 0) && clients.iter().any(|(_, p)| *p == 1));

    let connections = on_1.connections();
    cluster.kill_node(1);
    // While node 1 is down its gateway's slot stays (vacant): the users pinned to it get
    // nothing back, the others are served by node 2's gateway as before.
    for (client, pinned) in &mut clients {
        // (Nothing within 3 s stands for "dropped"; an answer may take as long as it needs.)
        let within = if *pinned == 0 { Duration::from_secs(3) } else { WAIT };
        let reply = ping(client, within).await;
        eprintln!("node 1 down: {} pinned to gateway {pinned}: answered {}", client.bare(), reply.is_some());
        match pinned {
            0 => assert!(reply.is_none(), "{}: {reply:?}", client.bare()),
            _ => assert_eq!(reply.and_then(|r| r.attr("type").map(str::to_owned)).as_deref(), Some("result"), "{}", client.bare()),
        }
    }
    // Node 1 back: its gateway reconnects to it and takes its slot again.
    cluster.start_node(1);
    on_1.wait_connected(connections + 1, WAIT);
    for (client, pinned) in &mut clients {
        let lost = pings_lost_until_answered(client).await;
        assert_eq!(register(client, "back", &gateways).await, *pinned, "{} after {lost} pings lost", client.bare());
    }
}

#[tokio::test]
async fn a_killed_nodes_users_go_offline_without_a_presence_to_the_gateway() {
    let cluster = EjabberdCluster::start();
    let on_2 = gateway(cluster.component_port(2));
    let mut alice = cluster.client(1, "alice", "localhost").await;
    register(&mut alice, "alice_irc", &[&on_2]).await;
    // Alice accepts the gateway's subscription (XEP-0100): her presence now reaches it.
    alice
        .wait_for("the gateway's subscription request", |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribe") && e.attr("from") == Some(GW)
        })
        .await;
    // (Her presence reaches the gateway on the approval itself, or on the next broadcast.)
    let online = on_2.log_lines_with(&["user online", "user=alice@localhost"]);
    alice.send_raw(&format!("<presence to='{GW}' type='subscribed'/>")).await;
    alice.send_raw("<presence/>").await;
    on_2.wait_log("alice online", &["user online", "user=alice@localhost"], online).await;
    // A clean logout on node 1 is reported...
    let offline = on_2.log_lines_with(&["user offline", "user=alice@localhost"]);
    drop(alice);
    on_2.wait_log("alice offline", &["user offline", "user=alice@localhost"], offline).await;

    // ...but when node 1 dies, nobody tells the gateway that its users are gone.
    // (Counted before she connects: her presence may reach the gateway before `client` returns.)
    let online = on_2.log_lines_with(&["user online", "user=alice@localhost"]);
    let mut alice = cluster.client(1, "alice", "localhost").await;
    on_2.wait_log("alice online again", &["user online", "user=alice@localhost"], online).await;
    let offline = on_2.log_lines_with(&["user offline", "user=alice@localhost"]);
    cluster.kill_node(1);
    // Her stream on node 1 is gone...
    assert!(alice.ends_within(WAIT).await);
    // ...and node 2 says nothing about her to the gateway: it still thinks her online.
    let mut bob = cluster.client(2, "bob", "localhost").await;
    assert!(ping(&mut bob, WAIT).await.is_some());
    let quiet = std::time::Instant::now();
    while quiet.elapsed() < Duration::from_secs(5) {
        assert_eq!(on_2.log_lines_with(&["user offline", "user=alice@localhost"]), offline, "{}", on_2.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn with_bare_source_a_connection_to_the_surviving_node_takes_the_dead_nodes_slot() {
    let cluster = EjabberdCluster::start_bare_source(2);
    let users = add_numbered_users(&cluster, 8);
    let on_1 = gateway(cluster.component_port(1));
    let on_2 = gateway(cluster.component_port(2));
    let mut clients = registered_clients(&cluster, 2, &users, &[&on_1, &on_2]).await;
    let connections = on_1.connections();
    cluster.kill_node(1);
    // A spare instance attached to node 2 takes the slot node 1's gateway left.
    let spare = gateway(cluster.component_port(2));
    let gateways = [&on_1, &on_2, &spare];
    for (client, pinned) in &mut clients {
        let lost = pings_lost_until_answered(client).await;
        let now = register(client, "spare", &gateways).await;
        eprintln!("node 1 down, spare up: {} pinned to {pinned}, now served by {now} ({lost} pings lost)", client.bare());
        assert_eq!(now, if *pinned == 0 { 2 } else { 1 }, "{}", client.bare());
    }
    // Node 1 back: its gateway connects again, a third connection for two slots. It is
    // accepted but gets no slot: nothing moves back to it.
    cluster.start_node(1);
    on_1.wait_connected(connections + 1, WAIT);
    let mut served = [0; 3];
    for (client, pinned) in &mut clients {
        let lost = pings_lost_until_answered(client).await;
        let now = register(client, "back", &gateways).await;
        eprintln!("node 1 back: {} pinned to {pinned}, now served by {now} ({lost} pings lost)", client.bare());
        assert_eq!(now, if *pinned == 0 { 2 } else { 1 }, "{}", client.bare());
        served[now] += 1;
    }
    eprintln!("node 1 back, served by [node 1's, node 2's, spare]: {served:?}");
}

#[tokio::test]
async fn a_stanza_to_a_domain_no_connection_serves_is_bounced_with_an_error() {
    // What a forward to a dead instance's own domain (`<instance>.gw.localhost`) meets.
    let cluster = EjabberdCluster::start();
    let _gateway = gateway(cluster.component_port(1));
    let mut alice = cluster.client(2, "alice", "localhost").await;
    let reply = alice.iq_raw("get", Some("instance1.gw.localhost"), "<ping xmlns='urn:xmpp:ping'/>").await;
    // Bounced at once: no route, and s2s is off here (`s2s_access: none`), so ejabberd
    // refuses it as it would refuse any remote domain.
    assert_eq!(reply.attr("type"), Some("error"), "{reply:?}");
    assert_eq!(error_condition(&reply).as_deref(), Some("forbidden"), "{reply:?}");
}

#[tokio::test]
async fn three_instances_thirty_users_one_node_killed_the_other_nodes_users_keep_working() {
    // The setting of issue 12's proof, without leases yet: each instance has its own store.
    let cluster = EjabberdCluster::start();
    let users = add_numbered_users(&cluster, 30);
    let instances = [gateway(cluster.component_port(1)), gateway(cluster.component_port(1)), gateway(cluster.component_port(2))];
    let gateways: Vec<&Gateway> = instances.iter().collect();
    let (on_1, on_2): (Vec<String>, Vec<String>) = users.iter().cloned().partition(|u| u[1..].parse::<usize>().unwrap() % 2 == 1);
    let mut clients_1 = registered_clients(&cluster, 1, &on_1, &gateways).await;
    let mut clients_2 = registered_clients(&cluster, 2, &on_2, &gateways).await;
    assert!(clients_1.iter().all(|(_, g)| *g < 2) && clients_2.iter().all(|(_, g)| *g == 2));

    cluster.kill_node(1);
    for (client, _) in &mut clients_2 {
        assert_eq!(register(client, "after", &gateways).await, 2, "{}", client.bare());
    }
    // Node 1's users lost their streams; logged in on node 2 they are served there.
    for (client, _) in &mut clients_1 {
        assert!(client.ends_within(WAIT).await, "{}", client.bare());
    }
    for user in &on_1 {
        let mut client = cluster.client_as(2, user, "localhost", "moved").await;
        assert_eq!(register(&mut client, "moved", &gateways).await, 2, "{user}");
    }
}
