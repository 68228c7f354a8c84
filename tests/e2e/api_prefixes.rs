//! Drover's routes beyond NodePass (`/metrics`, `/clients`,
//! `/clients/{client}`) and the key regeneration answer under both
//! spellings of a custom prefix, `{prefix}` and `{prefix}/v1`.

use serde_json::json;

use drover_e2e::api::id_of;
use drover_e2e::prom::parse;
use drover_e2e::{KEY_ID, Master, free_addr};

/// `/metrics` and every `/clients` route, under `/admin` and `/admin/v1`;
/// a binding made under one spelling is seen under the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_clients_under_both_spellings() {
    let master = Master::start_url("master://127.0.0.1:0/admin").await;
    let url = format!("server://{}/{}?mode=1", free_addr(), free_addr());
    let id = id_of(&master.api().create_url(&url).await);
    let spellings = [master.api(), master.api_v1()];
    for (n, (api, other)) in [
        (&spellings[0], &spellings[1]),
        (&spellings[1], &spellings[0]),
    ]
    .into_iter()
    .enumerate()
    {
        let resp = api.get("/metrics").await;
        resp.expect(200).assert_cors();
        let text = resp.text();
        let expo = parse(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", resp.what));
        assert_eq!(
            expo.value("drover_instances", &[("status", "running")]),
            1.0,
            "{}",
            resp.what
        );

        let client = format!("client-{n}");
        let path = format!("/clients/{client}");
        let bound = api
            .put(&path, &json!({ "instance": id }))
            .await
            .ok_json(200);
        let want = json!({ "client": client, "instance": id });
        assert_eq!(bound, want);
        assert_eq!(other.get(&path).await.ok_json(200), want);
        let page = other.get("/clients").await.ok_json(200);
        assert_eq!(page["clients"], json!([want]), "{page}");
        api.delete(&path).await.expect(204).assert_cors();
        other.get(&path).await.assert_error_prefix(404, "");
        assert_eq!(api.get("/clients").await.ok_json(200)["clients"], json!([]));
    }
}

/// `PATCH {prefix}/v1/instances/********` `{"action":"restart"}` makes a new
/// key: the answer's `url`; the old key is refused at once under both
/// spellings and the new one accepted under both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_regeneration_under_v1() {
    let master = Master::start_url("master://127.0.0.1:0/admin").await;
    let old = master.key();
    let rec = master
        .api_v1()
        .patch_instance(KEY_ID, json!({ "action": "restart" }))
        .await;
    assert_eq!(rec["id"], KEY_ID);
    let new = rec["url"].as_str().expect("url").to_string();
    assert!(
        new.len() == 32 && new.bytes().all(|c| c.is_ascii_hexdigit()) && new != old,
        "new key {new:?} (old {old:?})"
    );
    for api in [master.api(), master.api_v1()] {
        api.get("/instances")
            .await
            .assert_error(401, "Unauthorized: Invalid API key");
    }
    master.set_key(&new);
    for api in [master.api(), master.api_v1()] {
        assert_eq!(api.list().await[0]["url"], new.as_str());
    }
}
