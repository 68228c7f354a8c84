//! What the store promises beyond a clean restart: a master SIGKILLed the
//! moment a 2xx arrives has every acknowledged change on disk.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use drover_e2e::api::{id_of, stored_fields, worker_state};
use drover_e2e::procs::{tcp_port_free, udp_port_free};
use drover_e2e::{DEADLINE, KEY_ID, Master, free_addr, wait_for, wait_until};

/// How long after the master's death its workers may still hold ports.
const ORPHAN_DEADLINE: Duration = Duration::from_secs(2);

/// A reverse-mode server URL on fresh ports (runs without a client), and
/// the ports, so a test can wait for them to be free.
fn server_url(ports: &mut Vec<SocketAddr>) -> String {
    let (tunnel, entrance) = (free_addr(), free_addr());
    ports.extend([tunnel, entrance]);
    format!("server://{tunnel}/{entrance}?mode=1")
}

/// Replaces the acknowledged state of `v`'s instance with `v`.
fn ack(acked: &mut [Value], v: Value) {
    let id = id_of(&v);
    let slot = acked.iter_mut().find(|a| a["id"] == id.as_str());
    *slot.unwrap_or_else(|| panic!("{id} was not acknowledged before")) = v;
}

/// A burst of mutations of every kind, each answer taken as the acknowledged
/// state, and SIGKILL the moment the last 2xx is read: a new master on the
/// same data dir has exactly those records, the master alias and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_2xx_loses_nothing_acknowledged() {
    let master = Master::start().await;
    let api = master.api();
    let mut ports = Vec::new();
    let mut acked: Vec<Value> = Vec::new();
    let mut ids = Vec::new();
    for i in 0..4 {
        let v = api
            .create(json!({
                "url": server_url(&mut ports),
                "alias": format!("i{i}"),
                "restart": i % 2 == 0,
                "tenant": "blue",
            }))
            .await;
        ids.push(id_of(&v));
        acked.push(v);
    }
    let v = api
        .patch_instance(&ids[0], json!({ "alias": "renamed", "restart": false }))
        .await;
    ack(&mut acked, v);
    let meta = json!({ "peer": { "sid": "s", "type": "2", "alias": "p" }, "tags": { "a": "1" } });
    let v = api.patch_instance(&ids[1], json!({ "meta": meta })).await;
    ack(&mut acked, v);
    let put = api
        .put(
            &format!("/instances/{}", ids[2]),
            &json!({ "url": server_url(&mut ports) }),
        )
        .await
        .ok_json(200);
    ack(&mut acked, put);
    api.delete(&format!("/instances/{}", ids[3]))
        .await
        .expect(204);
    acked.retain(|a| a["id"] != ids[3].as_str());
    let info = api
        .post("/info", &json!({ "alias": "edge" }))
        .await
        .ok_json(200);
    assert_eq!(info["alias"], "edge");
    let last = api
        .patch_instance(
            &ids[2],
            json!({ "alias": "last", "restart": true, "meta": { "tags": { "z": "9" } } }),
        )
        .await;
    master.kill();
    ack(&mut acked, last);

    // The killed master's workers go (PDEATHSIG); the new master needs the
    // ports to start the restart:true ones.
    wait_until(ORPHAN_DEADLINE, "every tunnel port is free again", || {
        ports.iter().all(|a| tcp_port_free(*a) && udp_port_free(*a))
    })
    .await;
    let master = Master::restart(&master).await;
    let api = master.api();
    let list = api.list().await;
    assert_eq!(list[0]["id"], KEY_ID);
    assert_eq!(list[0]["url"], master.key().as_str(), "the API key");
    assert_eq!(list[0]["alias"], "edge", "the master alias");
    assert_eq!(
        stored_fields(&list[1..]),
        stored_fields(&acked),
        "instances after SIGKILL vs what was acknowledged"
    );
    for v in acked.iter().filter(|v| v["restart"] == true) {
        let id = id_of(v);
        wait_for(DEADLINE, &format!("{id} to run again"), || async {
            let now = api.instance(&id).await;
            (worker_state(&now) == "ready").then_some(())
        })
        .await;
    }
}
