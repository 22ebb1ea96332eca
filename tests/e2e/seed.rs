//! The seed flow of issue 3: one key per user; what A said comes back for A, never for B.

use serde_json::json;
use tests::TestServer;

const FACT: &str = "Remember that I prefer concise coaching and train at 6am.";
const QUESTION: &str = "How should we adjust tomorrow?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_returns_a_users_memory_to_that_user_only() {
    let server = TestServer::start().await;
    let (_a_id, a) = server.mint_key("user:A").await;
    let (_b_id, b) = server.mint_key("user:B").await;

    let ingested = server.ingest(&a, FACT).await;
    assert_eq!(ingested["stored"], 1);
    assert_eq!(ingested["ids"].as_array().unwrap().len(), 1);

    let for_a = server.prepare(&a, QUESTION).await;
    assert_eq!(for_a["memories_found"], 1, "{for_a}");
    assert_eq!(for_a["memories"][0]["content"], FACT);
    assert_eq!(for_a["memories"][0]["role"], "user");
    let context = for_a["context"].as_str().unwrap();
    assert!(context.contains(FACT), "{context}");
    assert!(
        context.contains("user:"),
        "the context names the role: {context}"
    );
    let today = for_a["memories"][0]["created_at"].as_str().unwrap()[..10].to_owned();
    assert!(
        context.contains(&today),
        "the context names the date: {context}"
    );
    assert!(for_a["tokens"].as_u64().unwrap() > 0);

    let for_b = server.prepare(&b, QUESTION).await;
    assert_eq!(
        for_b,
        json!({"context": "", "memories_found": 0, "memories": [], "tokens": 0})
    );

    let search_b = server
        .post(
            "/v1/memory/search",
            Some(&b),
            &json!({"query": "concise coaching"}),
        )
        .await;
    assert_eq!(search_b.json()["memories"], json!([]));
    let search_a = server
        .post(
            "/v1/memory/search",
            Some(&a),
            &json!({"query": "concise coaching"}),
        )
        .await;
    assert_eq!(search_a.json()["memories"][0]["content"], FACT);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irrelevant_memories_stay_out_of_a_large_vault_context() {
    let server = TestServer::start().await;
    let (_id, key) = server.mint_key("user").await;
    // More memories than the small-vault recency fallback covers, none about cats.
    let messages: Vec<_> = (0..30)
        .map(|i| json!({"role": "user", "content": format!("Invoice {i} for the warehouse lease was paid in full.")}))
        .collect();
    let response = server
        .post(
            "/v1/memory/ingest",
            Some(&key),
            &json!({"messages": messages}),
        )
        .await;
    assert_eq!(response.status, 202);

    let unrelated = server.prepare(&key, "What is my cat called?").await;
    assert_eq!(unrelated["context"], "", "{unrelated}");
    assert_eq!(unrelated["memories_found"], 0);

    let related = server.prepare(&key, "Was invoice 7 paid?").await;
    assert!(related["memories_found"].as_u64().unwrap() >= 1);
    assert!(
        related["context"].as_str().unwrap().contains("Invoice 7 "),
        "{related}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_respects_limits_density_and_the_conversation() {
    let server = TestServer::start().await;
    let (_id, key) = server.mint_key("user").await;
    let messages: Vec<_> = (0..40)
        .map(|i| json!({"role": "user", "content": format!("Kayak trip {i}: we paddled {i} kilometres along the fjord and camped.")}))
        .collect();
    server
        .post(
            "/v1/memory/ingest",
            Some(&key),
            &json!({"messages": messages}),
        )
        .await;

    let ask = |density: &str, limit: u64| json!({"messages": [{"role": "user", "content": "Tell me about the kayak trips on the fjord"}], "density": density, "context_limit": limit});
    let limited = server
        .post("/v1/memory/prepare", Some(&key), &ask("xhigh", 3))
        .await
        .json();
    assert_eq!(limited["memories_found"], 3);
    let mut tokens = Vec::new();
    for density in ["low", "default", "high", "xhigh"] {
        let body = server
            .post("/v1/memory/prepare", Some(&key), &ask(density, 0))
            .await
            .json();
        tokens.push(body["tokens"].as_u64().unwrap());
    }
    assert!(
        tokens.windows(2).all(|w| w[0] <= w[1]),
        "budgets grow with density: {tokens:?}"
    );
    assert!(tokens[0] <= 400 && tokens[0] > 0, "{tokens:?}");

    // A memory already in the conversation is not repeated.
    let echo = "Kayak trip 5: we paddled 5 kilometres along the fjord and camped.";
    let body = json!({"messages": [{"role": "user", "content": echo}, {"role": "assistant", "content": "Nice."}, {"role": "user", "content": "kayak fjord trip 5"}]});
    let prepared = server
        .post("/v1/memory/prepare", Some(&key), &body)
        .await
        .json();
    assert!(
        prepared["memories"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["content"] != echo),
        "{prepared}"
    );
    server.stop().await;
}
