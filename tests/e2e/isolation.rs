//! Vault isolation as a property: over random sequences of operations by several keys,
//! nothing one key stored is ever seen, changed or deleted through another key.

use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::{Value, json};
use tests::TestServer;

const USERS: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    Ingest { user: usize, topic: u8 },
    Search { user: usize, topic: u8 },
    Prepare { user: usize, topic: u8 },
    List { user: usize },
    Get { user: usize, id: u8 },
    Delete { user: usize, id: u8 },
    Clear { user: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS;
    let topic = 0u8..4;
    prop_oneof![
        4 => (user.clone(), topic.clone()).prop_map(|(user, topic)| Op::Ingest { user, topic }),
        2 => (user.clone(), topic.clone()).prop_map(|(user, topic)| Op::Search { user, topic }),
        2 => (user.clone(), topic).prop_map(|(user, topic)| Op::Prepare { user, topic }),
        1 => user.clone().prop_map(|user| Op::List { user }),
        1 => (user.clone(), 1u8..6).prop_map(|(user, id)| Op::Get { user, id }),
        1 => (user.clone(), 1u8..6).prop_map(|(user, id)| Op::Delete { user, id }),
        1 => user.prop_map(|user| Op::Clear { user }),
    ]
}

const TOPICS: [&str; 4] = [
    "sailing boats",
    "sourdough bread",
    "jazz piano",
    "mountain hiking",
];

/// Every content in `memories` must belong to `own`.
fn assert_own(memories: &Value, own: &BTreeSet<String>, what: &str) {
    for memory in memories.as_array().expect("memories array") {
        let content = memory["content"].as_str().expect("content");
        assert!(
            own.contains(content),
            "{what} leaked {content:?}; own: {own:?}"
        );
    }
}

async fn run(ops: Vec<Op>) {
    let server = TestServer::start().await;
    let mut keys = Vec::new();
    for user in 0..USERS {
        keys.push(server.mint_key(&format!("user:{user}")).await.1);
    }
    let mut model: Vec<BTreeSet<String>> = vec![BTreeSet::new(); USERS];
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Ingest { user, topic } => {
                let text = format!(
                    "User {user} step {step} talks about {}.",
                    TOPICS[topic as usize]
                );
                server.ingest(&keys[user], &text).await;
                model[user].insert(text);
            }
            Op::Search { user, topic } => {
                let body = json!({"query": TOPICS[topic as usize], "limit": 50});
                let found = server
                    .post("/v1/memory/search", Some(&keys[user]), &body)
                    .await
                    .json();
                assert_own(&found["memories"], &model[user], "search");
            }
            Op::Prepare { user, topic } => {
                let prepared = server
                    .prepare(
                        &keys[user],
                        &format!("What about {}?", TOPICS[topic as usize]),
                    )
                    .await;
                assert_own(&prepared["memories"], &model[user], "prepare");
                for (other, texts) in model.iter().enumerate().filter(|(o, _)| *o != user) {
                    for text in texts.iter().filter(|t| !model[user].contains(*t)) {
                        assert!(
                            !prepared["context"]
                                .as_str()
                                .unwrap()
                                .contains(text.as_str()),
                            "context of {user} shows {other}'s {text}"
                        );
                    }
                }
            }
            Op::List { user } => {
                let listed: BTreeSet<String> =
                    server.contents(&keys[user]).await.into_iter().collect();
                assert_eq!(listed, model[user], "list of user {user}");
            }
            Op::Get { user, id } => {
                let response = server
                    .get(&format!("/v1/memory/{id}"), Some(&keys[user]))
                    .await;
                if response.status == 200 {
                    let content = response.json()["content"].as_str().unwrap().to_owned();
                    assert!(model[user].contains(&content), "get leaked {content:?}");
                } else {
                    response.assert_error(404);
                }
            }
            Op::Delete { user, id } => {
                let before = server
                    .get(&format!("/v1/memory/{id}"), Some(&keys[user]))
                    .await;
                let response = server
                    .delete(&format!("/v1/memory/{id}"), Some(&keys[user]))
                    .await;
                if before.status == 200 {
                    assert_eq!(response.status, 200);
                    model[user].remove(before.json()["content"].as_str().unwrap());
                } else {
                    response.assert_error(404);
                }
            }
            Op::Clear { user } => {
                let response = server.delete("/v1/memory", Some(&keys[user])).await;
                assert_eq!(response.status, 200);
                assert_eq!(
                    response.json()["deleted"].as_u64().unwrap() as usize,
                    model[user].len()
                );
                model[user].clear();
            }
        }
    }
    for user in 0..USERS {
        let listed: BTreeSet<String> = server.contents(&keys[user]).await.into_iter().collect();
        assert_eq!(listed, model[user], "final state of user {user}");
    }
    server.stop().await;
}

#[test]
fn no_operation_crosses_vaults() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 12,
        ..ProptestConfig::default()
    });
    runner
        .run(&prop::collection::vec(op(), 1..30), |ops| {
            runtime.block_on(run(ops));
            Ok(())
        })
        .unwrap();
}
