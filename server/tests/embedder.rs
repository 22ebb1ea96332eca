//! The OpenAI-compatible embedder (`[embedder] kind = "openai"`), driving the real binary
//! against a loopback fake embeddings server: deterministic vectors, and scripted failures
//! (429 then OK, 500s, a wrong dimension, NaN, HTML, a wrong count, silence → timeout).
//!
//! What must hold: an ingest is acknowledged only when every text got a checked vector;
//! otherwise 502 (garbage) or 503 (endpoint away) in the error shape and nothing stored;
//! searches, prepare and the proxy answer by words alone with `X-MemoryRouter-Degraded`.

mod common;

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{Binary, admin_key, json, request_with_head};

/// Vector length the fake answers with unless told otherwise.
const DIM: usize = 16;

/// What the fake does with one embeddings request.
#[derive(Clone, Debug)]
enum Act {
    Ok,
    Status(u16, Option<&'static str>),
    WrongDim,
    WrongCount,
    NanLiteral,
    Infinite,
    Html,
    /// Reads the request and never answers (the socket is kept open).
    Silent,
}

#[derive(Default)]
struct FakeState {
    /// Consumed front first; empty = `Act::Ok`.
    script: VecDeque<Act>,
    /// Each embeddings request: (authorization header, model, number of inputs).
    requests: Vec<(Option<String>, String, usize)>,
    /// Chat completions proxied to the fake.
    chats: usize,
    /// Sockets of `Silent` requests, held so the client sees no answer and no close.
    held: Vec<TcpStream>,
}

/// A loopback fake of `POST /v1/embeddings` (and a canned `POST /v1/chat/completions`).
struct Fake {
    addr: String,
    state: Arc<Mutex<FakeState>>,
}

impl Fake {
    fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || answer(stream, &shared));
            }
        });
        Fake { addr, state }
    }

    fn script(&self, acts: &[Act]) {
        self.state
            .lock()
            .unwrap()
            .script
            .extend(acts.iter().cloned());
    }

    fn requests(&self) -> Vec<(Option<String>, String, usize)> {
        self.state.lock().unwrap().requests.clone()
    }
}

/// The fake's vector of a text: each word hashed to a dimension (so texts sharing words are
/// near), plus a constant so no vector is zero.
fn fake_vector(text: &str, dim: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; dim];
    // Exact in f32 and f64, so the answer's text holds `[0.5,` for the scripted damage.
    v[0] = 0.5;
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let h = word
            .to_lowercase()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        v[(h % dim as u64) as usize] += 1.0;
    }
    v
}

fn answer(stream: TcpStream, state: &Mutex<FakeState>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let (mut length, mut auth) = (0usize, None);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap(),
            "authorization" => auth = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut stream = stream;
    if request_line.contains("/chat/completions") {
        state.lock().unwrap().chats += 1;
        let answer = r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Noted."},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        respond(&mut stream, 200, None, "application/json", answer);
        return;
    }
    assert!(
        request_line.starts_with("POST /v1/embeddings "),
        "{request_line}"
    );
    assert_eq!(body["encoding_format"], "float");
    let inputs: Vec<String> = body["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    let act = {
        let mut s = state.lock().unwrap();
        s.requests.push((
            auth,
            body["model"].as_str().unwrap_or("").to_owned(),
            inputs.len(),
        ));
        s.script.pop_front().unwrap_or(Act::Ok)
    };
    let data = |dim: usize, n: usize| -> String {
        let items: Vec<serde_json::Value> = inputs
            .iter()
            .take(n)
            .enumerate()
            .map(|(i, t)| serde_json::json!({"object": "embedding", "index": i, "embedding": fake_vector(t, dim)}))
            .collect();
        serde_json::json!({"object": "list", "data": items, "model": "fake"}).to_string()
    };
    let n = inputs.len();
    match act {
        Act::Ok => respond(&mut stream, 200, None, "application/json", &data(DIM, n)),
        Act::Status(code, retry_after) => respond(
            &mut stream,
            code,
            retry_after,
            "application/json",
            r#"{"error":{"message":"scripted failure"}}"#,
        ),
        Act::WrongDim => respond(
            &mut stream,
            200,
            None,
            "application/json",
            &data(DIM + 1, n),
        ),
        Act::WrongCount => respond(
            &mut stream,
            200,
            None,
            "application/json",
            &data(DIM, n - 1),
        ),
        Act::NanLiteral => {
            let text = data(DIM, n).replacen("[0.5,", "[NaN,", 1);
            respond(&mut stream, 200, None, "application/json", &text);
        }
        Act::Infinite => {
            let text = data(DIM, n).replacen("[0.5,", "[1e300,", 1);
            respond(&mut stream, 200, None, "application/json", &text);
        }
        Act::Html => respond(
            &mut stream,
            200,
            None,
            "text/html",
            "<html><body>502 Bad Gateway</body></html>",
        ),
        Act::Silent => state.lock().unwrap().held.push(stream),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    retry_after: Option<&str>,
    content_type: &str,
    body: &str,
) {
    let retry = retry_after
        .map(|r| format!("Retry-After: {r}\r\n"))
        .unwrap_or_default();
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Starts the binary with `[embedder]` pointing at `fake`, plus `extra` lines in that table.
fn serve(dir: &Path, fake: &Fake, extra: &str) -> Binary {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[embedder]\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\nmodel = \"fake-embed\"\n\
             dimensions = {DIM}\napi_key_env = \"MR_TEST_EMBED_KEY\"\n{extra}\n\
             [providers.fake]\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\nmodels = [\"m\"]\n",
            fake.addr, fake.addr
        ),
    )
    .unwrap();
    Binary::serve_with_env(
        &dir.join("data"),
        &["--config", config.to_str().unwrap()],
        &[("MR_TEST_EMBED_KEY", "sk-test-123")],
    )
}

fn ingest(binary: &Binary, key: &str, texts: &[&str]) -> (u16, serde_json::Value) {
    let messages: Vec<serde_json::Value> = texts
        .iter()
        .map(|t| serde_json::json!({"role": "user", "content": t}))
        .collect();
    let body = serde_json::json!({"messages": messages, "session_id": "s1"}).to_string();
    let (status, text) = binary
        .request("POST", "/v1/memory/ingest", Some(key), &body)
        .unwrap();
    (status, json(&text))
}

fn stored(binary: &Binary, key: &str) -> usize {
    let (status, body) = binary.request("GET", "/v1/memory", Some(key), "").unwrap();
    assert_eq!(status, 200, "{body}");
    json(&body)["memories"].as_array().unwrap().len()
}

/// (status, head, body) of a search for `query`.
fn search(binary: &Binary, key: &str, query: &str) -> (u16, String, serde_json::Value) {
    let body = serde_json::json!({"query": query}).to_string();
    let (status, head, text) =
        request_with_head(&binary.addr, "POST", "/v1/memory/search", Some(key), &body).unwrap();
    (status, head.to_ascii_lowercase(), json(&text))
}

fn metrics(binary: &Binary) -> String {
    binary.request("GET", "/metrics", None, "").unwrap().1
}

/// The value of the Prometheus sample `name` (exact label set), 0 when absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn ingest_is_batched_retried_after_429_and_searchable() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::start();
    let binary = serve(dir.path(), &fake, "batch_size_max = 2");
    let key = admin_key(&dir.path().join("data"));
    // The first request is refused with 429 and Retry-After: 0; the retry succeeds.
    fake.script(&[Act::Status(429, Some("0"))]);
    let (status, body) = ingest(
        &binary,
        &key,
        &[
            "My dog is called Rex",
            "I grow tomatoes in the garden",
            "My sister lives in Lisbon",
        ],
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["stored"], 3);
    // Three texts in batches of at most two: [2 (429), 2 (retry), 1].
    let requests = fake.requests();
    let sizes: Vec<usize> = requests.iter().map(|r| r.2).collect();
    assert_eq!(sizes, vec![2, 2, 1]);
    for (auth, model, _) in &requests {
        assert_eq!(auth.as_deref(), Some("Bearer sk-test-123"));
        assert_eq!(model, "fake-embed");
    }
    let (status, head, body) = search(&binary, &key, "what is my dog called");
    assert_eq!(status, 200, "{body}");
    assert!(!head.contains("x-memoryrouter-degraded"), "{head}");
    assert_eq!(
        body["memories"][0]["content"], "My dog is called Rex",
        "{body}"
    );
    let text = metrics(&binary);
    let ok = "memoryrouter_embedder_remote_request_duration_seconds_count{outcome=\"ok\"}";
    let limited =
        "memoryrouter_embedder_remote_request_duration_seconds_count{outcome=\"rate_limited\"}";
    assert_eq!(sample(&text, ok), 3.0, "{text}");
    assert_eq!(sample(&text, limited), 1.0);
    let store = "memoryrouter_embedding_duration_seconds_count{kind=\"openai\",purpose=\"store\"}";
    let query = "memoryrouter_embedding_duration_seconds_count{kind=\"openai\",purpose=\"query\"}";
    assert_eq!(sample(&text, store), 1.0, "{text}");
    assert_eq!(sample(&text, query), 1.0);
    binary.terminate();

    // The vault pinned kind, model and dimension: another model is refused, not mixed in.
    std::fs::write(
        dir.path().join("config.toml"),
        std::fs::read_to_string(dir.path().join("config.toml"))
            .unwrap()
            .replace("fake-embed", "other-embed"),
    )
    .unwrap();
    let binary = Binary::serve_with_env(
        &dir.path().join("data"),
        &["--config", dir.path().join("config.toml").to_str().unwrap()],
        &[("MR_TEST_EMBED_KEY", "sk-test-123")],
    );
    let (status, body) = ingest(&binary, &key, &["another fact"]);
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("openai:fake-embed:16") && message.contains("openai:other-embed:16"),
        "{message}"
    );
}

#[test]
fn garbage_answers_and_server_errors_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::start();
    let binary = serve(dir.path(), &fake, "retries_max = 2");
    let key = admin_key(&dir.path().join("data"));
    for (act, says) in [
        (Act::WrongDim, "length 17"),
        (Act::WrongCount, "1 vectors for 2 texts"),
        (Act::NanLiteral, "not an embeddings answer"),
        (Act::Infinite, "NaN or infinite"),
        (Act::Html, "not an embeddings answer"),
        (Act::Status(401, None), "401"),
    ] {
        fake.script(std::slice::from_ref(&act));
        let (status, body) = ingest(&binary, &key, &["first fact", "second fact"]);
        assert_eq!(status, 502, "{act:?}: {body}");
        assert_eq!(body["error"]["code"], "embedder_bad_response", "{act:?}");
        assert_eq!(body["error"]["type"], "server_error");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{act:?}: {message}");
        assert!(!message.contains("sk-test-123"), "{message}");
        assert_eq!(stored(&binary, &key), 0, "{act:?} stored something");
    }
    // Garbage is not retried: one request each.
    assert_eq!(fake.requests().len(), 6);
    // 500 on every attempt (1 + 2 retries): 503, nothing stored.
    fake.script(&[
        Act::Status(500, None),
        Act::Status(500, None),
        Act::Status(500, None),
    ]);
    let (status, body) = ingest(&binary, &key, &["first fact"]);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "embedder_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("3 attempts"),
        "{body}"
    );
    assert_eq!(fake.requests().len(), 9);
    assert_eq!(stored(&binary, &key), 0);
    // Two 503s then an answer: stored.
    fake.script(&[Act::Status(503, None), Act::Status(502, None)]);
    let (status, body) = ingest(&binary, &key, &["first fact"]);
    assert_eq!(status, 202, "{body}");
    assert_eq!(stored(&binary, &key), 1);
    let text = metrics(&binary);
    let bad = "memoryrouter_embedder_remote_request_duration_seconds_count{outcome=\"bad_answer\"}";
    let server =
        "memoryrouter_embedder_remote_request_duration_seconds_count{outcome=\"server_error\"}";
    assert_eq!(sample(&text, bad), 5.0, "{text}");
    assert_eq!(sample(&text, server), 5.0, "{text}");
}

#[test]
fn a_silent_endpoint_times_out_and_retrieval_falls_back_to_words() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::start();
    let binary = serve(
        dir.path(),
        &fake,
        "timeout_ms = 400\nquery_timeout_ms = 300\nretries_max = 0",
    );
    let key = admin_key(&dir.path().join("data"));
    let (status, body) = ingest(&binary, &key, &["My dog is called Rex", "I like tea"]);
    assert_eq!(status, 202, "{body}");

    // The endpoint goes silent: an ingest times out (503, nothing stored) ...
    fake.script(&[Act::Silent]);
    let (status, body) = ingest(&binary, &key, &["Rex is three years old"]);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "embedder_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no answer within"),
        "{body}"
    );
    assert_eq!(stored(&binary, &key), 2);

    // ... and searches answer by words alone, saying so (the endpoint is skipped for a
    // moment after it was found down, so these do not wait out the timeout).
    fake.script(&[Act::Silent, Act::Silent, Act::Silent]);
    let (status, head, body) = search(&binary, &key, "what is the dog called");
    assert_eq!(status, 200, "{body}");
    assert!(
        head.contains("x-memoryrouter-degraded: embedder_unavailable"),
        "{head}"
    );
    assert_eq!(
        body["memories"][0]["content"], "My dog is called Rex",
        "{body}"
    );

    let prepare =
        serde_json::json!({"messages": [{"role": "user", "content": "Tell me about my dog Rex"}]})
            .to_string();
    let (status, head, text) = request_with_head(
        &binary.addr,
        "POST",
        "/v1/memory/prepare",
        Some(&key),
        &prepare,
    )
    .unwrap();
    assert_eq!(status, 200, "{text}");
    assert_degraded(&head);
    assert!(
        json(&text)["context"].as_str().unwrap().contains("Rex"),
        "{text}"
    );

    // The proxy too: the chat is answered, with the header.
    let chat = serde_json::json!({
        "model": "fake/m",
        "messages": [{"role": "user", "content": "What is my dog called?"}]
    })
    .to_string();
    let (status, head, text) = request_with_head(
        &binary.addr,
        "POST",
        "/v1/chat/completions",
        Some(&key),
        &chat,
    )
    .unwrap();
    assert_eq!(status, 200, "{text}");
    assert_degraded(&head);
    assert_eq!(fake.state.lock().unwrap().chats, 1);

    let text = metrics(&binary);
    assert!(
        sample(&text, "memoryrouter_searches_degraded_total") >= 3.0,
        "{text}"
    );
    let timeouts =
        "memoryrouter_embedder_remote_request_duration_seconds_count{outcome=\"timeout\"}";
    assert!(sample(&text, timeouts) >= 1.0, "{text}");
}

#[test]
fn a_missing_key_variable_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[embedder]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n\
         dimensions = 8\napi_key_env = \"MR_TEST_UNSET_VARIABLE\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let (ok, _, stderr) = common::cli(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("embedder.api_key_env") && stderr.contains("MR_TEST_UNSET_VARIABLE"),
        "{stderr}"
    );
    std::fs::write(
        &config,
        "[embedder]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = common::cli(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("embedder.dimensions"), "{stderr}");
}

/// Runs `memoryrouter reembed --key-id ID` with the `[embedder]` of `dir/config.toml`.
fn reembed(dir: &Path, id: &str) -> (bool, String) {
    let output = std::process::Command::new(common::BIN)
        .args(["reembed", "--key-id", id, "--quiet", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env("MEMORYROUTER_LOG", "warn")
        .env("MR_TEST_EMBED_KEY", "sk-test-123")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn reembed_rebuilds_a_builtin_vault_for_the_endpoint_and_keeps_it_whole_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Written by the built-in embedder.
    let binary = Binary::serve(&data, &[]);
    let key = admin_key(&data);
    let (status, body) = ingest(
        &binary,
        &key,
        &[
            "My dog is called Rex",
            "I grow tomatoes",
            "My sister lives in Lisbon",
        ],
    );
    assert_eq!(status, 202, "{body}");
    let (_, keys) = binary.request("GET", "/v1/keys", Some(&key), "").unwrap();
    let id = json(&keys)["keys"][0]["id"].as_str().unwrap().to_owned();
    binary.terminate();

    // The endpoint fails: reembed stops before its swap, and the vault is untouched.
    let fake = Fake::start();
    let binary = serve(dir.path(), &fake, "retries_max = 0");
    let (status, _) = ingest(&binary, &key, &["another fact"]);
    assert_eq!(
        status, 422,
        "a builtin vault must refuse the endpoint's vectors"
    );
    binary.terminate();
    fake.script(&[Act::Status(500, None)]);
    let (ok, stderr) = reembed(dir.path(), &id);
    assert!(!ok, "{stderr}");
    let binary = Binary::serve(&data, &[]);
    assert_eq!(stored(&binary, &key), 3);
    let (status, _, body) = search(&binary, &key, "dog Rex");
    assert_eq!(status, 200);
    assert_eq!(body["memories"][0]["content"], "My dog is called Rex");
    binary.terminate();

    // Then it works: every stored text embedded by the endpoint, swapped in.
    let before = fake.requests().len();
    let (ok, stderr) = reembed(dir.path(), &id);
    assert!(ok, "{stderr}");
    let texts: usize = fake.requests()[before..].iter().map(|r| r.2).sum();
    assert_eq!(texts, 3, "{stderr}");
    assert!(
        std::fs::read_dir(data.join("reembed")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{id}.old-"))),
        "the old vault is kept for the operator"
    );
    let binary = serve(dir.path(), &fake, "");
    assert_eq!(stored(&binary, &key), 3);
    let (status, head, body) = search(&binary, &key, "what is my dog called");
    assert_eq!(status, 200, "{body}");
    assert!(!head.contains("x-memoryrouter-degraded"), "{head}");
    assert_eq!(
        body["memories"][0]["content"], "My dog is called Rex",
        "{body}"
    );
    let (status, body) = ingest(&binary, &key, &["Rex is three"]);
    assert_eq!(status, 202, "{body}");
    binary.terminate();
    // A second run has nothing to do.
    let (ok, stderr) = reembed(dir.path(), &id);
    assert!(ok && stderr.contains("reembedded 0 of 1"), "{stderr}");
}

#[test]
fn the_key_can_be_a_stored_provider_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let binary = Binary::serve(&data, &[]);
    let key = admin_key(&data);
    let (status, body) = binary
        .request(
            "PUT",
            "/v1/provider-keys/embedhost",
            Some(&key),
            r#"{"api_key":"sk-stored-9"}"#,
        )
        .unwrap();
    assert!(status == 200 || status == 201, "{status} {body}");
    binary.terminate();
    let fake = Fake::start();
    let config = dir.path().join("stored.toml");
    std::fs::write(
        &config,
        format!(
            "[embedder]\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\nmodel = \"fake-embed\"\n\
             dimensions = {DIM}\napi_key_provider = \"embedhost\"\n",
            fake.addr
        ),
    )
    .unwrap();
    let binary = Binary::serve(&data, &["--config", config.to_str().unwrap()]);
    let (status, body) = ingest(&binary, &key, &["a fact"]);
    assert_eq!(status, 202, "{body}");
    assert_eq!(fake.requests()[0].0.as_deref(), Some("Bearer sk-stored-9"));
}

/// The answer says it was retrieved by words alone.
fn assert_degraded(head: &str) {
    assert!(
        head.to_ascii_lowercase()
            .contains("x-memoryrouter-degraded: embedder_unavailable"),
        "{head}"
    );
}
