//! `/docs`: Swagger UI served from the binary, working with no network.

use drover_e2e::Master;

/// `/docs` redirects to `/docs/`; the page and every asset it loads answer
/// 200 from the master itself, and nothing points off-host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_and_assets_load_offline() {
    let master = Master::start().await;
    for base in [
        master.api().base().to_string(),
        master.api_v1().base().to_string(),
    ] {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client");
        let r = http
            .get(format!("{base}/docs"))
            .send()
            .await
            .expect("GET /docs");
        assert!(r.status().is_redirection(), "{base}/docs: {}", r.status());
        let location = r.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        assert!(location.ends_with("/docs/"), "redirect to {location}");

        let page = http
            .get(format!("{base}/docs/"))
            .send()
            .await
            .expect("GET /docs/");
        assert_eq!(page.status(), 200, "{base}/docs/");
        let html = page.text().await.expect("page");
        // Every local asset the page names must load from the master.
        let assets: Vec<String> = html
            .split(['"', '\''])
            .filter(|s| s.ends_with(".js") || s.ends_with(".css") || s.ends_with(".png"))
            .map(str::to_string)
            .collect();
        assert!(
            assets.iter().any(|a| a.contains("swagger-ui")),
            "assets of {html}"
        );
        for asset in &assets {
            assert!(!asset.starts_with("http"), "{asset} is not served locally");
            let url = format!("{base}/docs/{}", asset.trim_start_matches("./"));
            let r = http.get(&url).send().await.expect("asset");
            assert_eq!(r.status(), 200, "{url}");
            let body = r.text().await.unwrap_or_default();
            if asset.contains("initializer") {
                assert!(
                    body.contains("openapi.json"),
                    "initializer points at the spec: {body}"
                );
                assert!(
                    !body.contains("https://"),
                    "initializer reaches out: {body}"
                );
            }
        }
    }
}
