//! Search requests and answers: [`SearchQuery`], [`Filter`], [`Hit`], and how a filter is
//! evaluated against one record during a scan or graph walk.

use crate::record::{Memory, Metadata, Role};

/// Which memories a search (or list) may return. Every set field must match.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Restrict to this session.
    pub session_id: Option<String>,
    pub roles: Option<Vec<Role>>,
    /// Inclusive.
    pub created_after_ms: Option<i64>,
    /// Exclusive.
    pub created_before_ms: Option<i64>,
    /// Every pair must be equal to the memory's metadata value under that key.
    pub metadata: Vec<(String, serde_json::Value)>,
}

impl Filter {
    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.session_id.is_none()
            && self.roles.is_none()
            && self.created_after_ms.is_none()
            && self.created_before_ms.is_none()
            && self.metadata.is_empty()
    }

    /// Evaluates the filter; `metadata` is called only when a metadata pair must be checked
    /// (parsing JSON is the expensive part, so it happens last and lazily).
    pub(crate) fn matches(
        &self,
        session_id: &str,
        role: Role,
        created_at_ms: i64,
        metadata: impl FnOnce() -> Option<Metadata>,
    ) -> bool {
        if self.session_id.as_ref().is_some_and(|s| s != session_id) {
            return false;
        }
        if self
            .roles
            .as_ref()
            .is_some_and(|roles| !roles.contains(&role))
        {
            return false;
        }
        if self.created_after_ms.is_some_and(|t| created_at_ms < t) {
            return false;
        }
        if self.created_before_ms.is_some_and(|t| created_at_ms >= t) {
            return false;
        }
        if self.metadata.is_empty() {
            return true;
        }
        let Some(md) = metadata() else {
            return false;
        };
        self.metadata.iter().all(|(k, v)| md.get(k) == Some(v))
    }

    /// Evaluates the filter against a materialised memory.
    pub fn matches_memory(&self, m: &Memory) -> bool {
        self.matches(&m.session_id, m.role, m.created_at_ms, || {
            m.metadata.clone()
        })
    }
}

/// A search request.
#[derive(Clone, Debug)]
pub struct SearchQuery {
    pub text: String,
    pub k: usize,
    /// Applied during search: `k` results still come back when that many match.
    pub filter: Filter,
    /// Rank this session up without restricting to it.
    pub boost_session: Option<String>,
    /// Reference time for the recency prior.
    pub now_ms: i64,
}

/// One search result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Hit {
    pub memory: Memory,
    /// In [0, 1]; hits come sorted by score, best first.
    pub score: f32,
    /// Cosine between the query's embedding and the memory's stored vector (in [-1, 1]):
    /// an absolute measure of relatedness, where `score` only ranks. Lets a caller gate on
    /// relevance without embedding the memory again (which costs milliseconds with a
    /// transformer model).
    pub similarity: f32,
    /// The memory's own text (not its indexing context) shares at least one index term
    /// with the query (stopwords dropped, stemmed: "training" meets "train"). With
    /// `similarity`, what a caller's relevance gate needs, without running the analyzer.
    pub shares_query_term: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_fields_combine() {
        let mut md = Metadata::new();
        md.insert("topic".into(), serde_json::json!("cats"));
        let f = Filter {
            session_id: Some("s1".into()),
            roles: Some(vec![Role::User, Role::Note]),
            created_after_ms: Some(10),
            created_before_ms: Some(20),
            metadata: vec![("topic".into(), serde_json::json!("cats"))],
        };
        assert!(f.matches("s1", Role::User, 10, || Some(md.clone())));
        assert!(!f.matches("s2", Role::User, 10, || Some(md.clone())));
        assert!(!f.matches("s1", Role::Assistant, 10, || Some(md.clone())));
        assert!(!f.matches("s1", Role::User, 9, || Some(md.clone())));
        assert!(!f.matches("s1", Role::User, 20, || Some(md.clone())));
        assert!(!f.matches("s1", Role::User, 15, || None));
        assert!(Filter::default().matches("x", Role::Tool, 0, || None));
        assert!(Filter::default().is_empty());
        assert!(!f.is_empty());
    }
}
