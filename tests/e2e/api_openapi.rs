//! `/openapi.json` as the running master serves it: valid OpenAPI 3.1
//! (checked against the official schema the master's unit test uses), and
//! describing every route the master serves with the methods it serves.

use reqwest::Method;
use serde_json::Value;

use drover_e2e::{Api, Master};

/// The official OAS 3.1 schema, shared with `master/src/api/openapi.rs`.
const OAS_31_SCHEMA: &str = include_str!("../../master/tests/data/oas-3.1-schema.json");

/// Every route the master serves (DESIGN §5 and Drover's own), as the
/// document names it.
const SERVED: &[&str] = &[
    "/instances",
    "/instances/{id}",
    "/instances/********",
    "/instances/{id}/logs",
    "/events",
    "/info",
    "/tcping",
    "/metrics",
    "/clients",
    "/clients/{client}",
    "/healthz",
    "/openapi.json",
    "/docs",
];

/// Errors of `doc` against the OAS 3.1 schema, and of each component schema
/// against the JSON Schema 2020-12 meta-schema.
fn schema_errors(doc: &Value) -> Vec<String> {
    let oas: Value = serde_json::from_str(OAS_31_SCHEMA).expect("schema JSON");
    let validator = jsonschema::validator_for(&oas).expect("the OAS schema compiles");
    let mut errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    for (name, schema) in doc["components"]["schemas"]
        .as_object()
        .expect("components.schemas")
    {
        if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
            errors.push(format!("schema {name}: {e}"));
        }
    }
    errors
}

/// The methods the master serves at `path`: the `Allow` of its 405 to a
/// method no route has (an unserved path is a 404 instead).
async fn served_methods(api: &Api, path: &str) -> Vec<String> {
    let concrete = path
        .replace("{id}", "deadbeef")
        .replace("{client}", "someone");
    let method = Method::from_bytes(b"TRACE").expect("method");
    let resp = api.call(method, &concrete, None).await;
    resp.assert_error(405, "Method not allowed");
    resp.allow()
}

/// Fetched from each spelling of a custom prefix, the document validates,
/// names that spelling's bases as its servers, and lists every served route
/// with exactly the methods the master answers there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_document_validates_and_covers_every_route() {
    let master = Master::start_url("master://127.0.0.1:0/admin").await;
    for api in [master.api(), master.api_v1()] {
        let doc = api
            .clone()
            .without_key()
            .get("/openapi.json")
            .await
            .ok_json(200);
        let errors = schema_errors(&doc);
        assert!(errors.is_empty(), "{}: {errors:#?}", api.base());
        assert_eq!(doc["servers"][0]["url"], "/admin");
        assert_eq!(doc["servers"][1]["url"], "/admin/v1");
        for path in SERVED {
            let item = doc["paths"][*path]
                .as_object()
                .unwrap_or_else(|| panic!("{path} is not in the document"));
            let mut documented: Vec<String> = item
                .keys()
                .filter(|k| *k != "parameters")
                .map(|k| k.to_ascii_uppercase())
                .collect();
            documented.sort();
            assert_eq!(
                documented,
                served_methods(&api, path).await,
                "{}{path}: documented vs served methods",
                api.base()
            );
        }
    }
}
