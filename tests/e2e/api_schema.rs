//! Regressions found by the schema-driven fuzzer (`scripts/api-fuzz`,
//! schemathesis against the OpenAPI document): `Allow` on every 405, query
//! strings that do not parse answered as JSON 400s, arrays where objects
//! belong refused, `null` fields taken as left out.

use reqwest::Method;
use serde_json::json;

use drover_e2e::api::id_of;
use drover_e2e::{KEY_ID, Master, free_addr};

/// A reverse-mode server on fresh ports (runs without a client).
fn server_url() -> String {
    format!("server://{}/{}?mode=1", free_addr(), free_addr())
}

/// Every route answers a method it lacks with 405 JSON and an `Allow`
/// header listing exactly the methods the OpenAPI document gives that path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_not_allowed_lists_the_allowed_methods() {
    let master = Master::start().await;
    let id = id_of(&master.api().create_url(&server_url()).await);
    let doc = master.api().get("/openapi.json").await.ok_json(200);
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 12);
    for (path, item) in paths {
        let mut allowed: Vec<String> = item
            .as_object()
            .expect("path item")
            .keys()
            .filter(|m| *m != "parameters")
            .map(|m| m.to_ascii_uppercase())
            .collect();
        allowed.sort();
        let concrete = path.replace("{id}", &id).replace("{client}", "someone");
        for api in [master.api(), master.api_v1()] {
            for method in ["TRACE", "HEAD", "PROPFIND"] {
                if allowed.iter().any(|m| m == method) {
                    continue;
                }
                let method = Method::from_bytes(method.as_bytes()).expect("method");
                let resp = api.call(method, &concrete, None).await;
                assert_eq!(resp.status, 405, "{} {:?}", resp.what, resp.text());
                if resp.what.starts_with("HEAD") {
                    assert!(resp.body.is_empty());
                } else {
                    resp.assert_error(405, "Method not allowed");
                }
                assert_eq!(resp.allow(), allowed, "{}", resp.what);
            }
        }
    }
}

/// A query string that does not parse is 400 JSON `Invalid query: …`, not
/// plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_strings_are_json_400() {
    let master = Master::start().await;
    let id = id_of(&master.api().create_url(&server_url()).await);
    for path in [
        format!("/instances/{id}/logs?tail=-1"),
        format!("/instances/{id}/logs?tail=1.5"),
        format!("/instances/{id}/logs?tail=99999999999999999999999"),
        "/clients?limit=x".to_string(),
        "/clients?limit=-3".to_string(),
    ] {
        for api in [master.api(), master.api_v1()] {
            api.get(&path)
                .await
                .assert_error_prefix(400, "Invalid query: ");
        }
    }
    // In range is fine, and a huge `tail` is capped, not refused.
    let lines = master
        .api()
        .get(&format!("/instances/{id}/logs?tail=18446744073709551615"))
        .await
        .ok_json(200);
    assert!(lines["logs"].is_array());
}

/// A body, or a field holding an object, given as an array is 400 (serde
/// would otherwise read the array as the fields in order); nothing is
/// applied. A field that is `null` is the same as one left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrays_are_not_objects_and_null_means_absent() {
    let master = Master::start().await;
    let api = master.api();
    let id = id_of(&api.create_url(&server_url()).await);
    let inst = format!("/instances/{id}");
    api.patch_instance(
        &id,
        json!({ "alias": "kept", "meta": { "tags": { "k": "v" } } }),
    )
    .await;
    let url = server_url();
    for (method, path, body) in [
        (Method::POST, "/instances", json!([url])),
        (Method::POST, "/info", json!([null])),
        (Method::POST, "/info", json!(["x"])),
        (Method::PATCH, inst.as_str(), json!(["changed"])),
        (
            Method::PATCH,
            inst.as_str(),
            json!({ "action": "restart", "meta": [null, null] }),
        ),
        (
            Method::PATCH,
            inst.as_str(),
            json!({ "meta": { "peer": ["s", "t", "a"] } }),
        ),
        (Method::PUT, inst.as_str(), json!([url])),
        (Method::PUT, "/clients/c", json!([id])),
        (
            Method::PATCH,
            &format!("/instances/{KEY_ID}"),
            json!(["restart"]),
        ),
    ] {
        api.call(method, path, Some(body.to_string().into_bytes()))
            .await
            .assert_error_prefix(400, "Invalid request body: ");
    }
    assert_eq!(api.list().await.len(), 2);
    let now = api.instance(&id).await;
    assert_eq!(now["alias"], "kept");
    assert_eq!(now["meta"]["tags"], json!({ "k": "v" }));

    let same = api
        .patch_instance(
            &id,
            json!({ "alias": null, "restart": null, "action": null, "meta": null }),
        )
        .await;
    assert_eq!(same["alias"], "kept");
    assert_eq!(same["restart"], true);
    assert_eq!(same["meta"]["tags"], json!({ "k": "v" }));
    let same = api
        .patch_instance(&id, json!({ "meta": { "peer": null, "tags": null } }))
        .await;
    assert_eq!(same["meta"]["tags"], json!({ "k": "v" }));
    api.post("/info", &json!({ "alias": null }))
        .await
        .ok_json(200);
}
