//! Which accepted connections get served: at most `[limits] connections_per_address_max`
//! at once from one client address, and a first byte within `[limits]
//! first_byte_timeout_ms`.
//!
//! Why: a connection holds one of the `connections_max` slots from its accept until it
//! closes. Issue 14 measured ~1,024 connections that never sent a byte holding every slot
//! until hyper's 10 s header timeout, so other clients' `/healthz` waited up to 5.9 s. Now
//! one address cannot hold more than its share of the slots (a refused connection gets a
//! `503 too_many_connections` in the error shape and is closed at once), and a connection
//! that sends nothing gives its slot back after the first-byte timeout instead of the
//! whole header timeout, which still bounds a head that trickles in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::ApiError;

/// The connections open now per client address.
pub(crate) struct AddressCounts {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// `[limits] connections_per_address_max`.
    max: usize,
}

/// One connection's place in its address's count; given back when dropped.
pub(crate) struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl AddressCounts {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            counts: Arc::new(Mutex::new(HashMap::new())),
            max,
        }
    }

    /// A slot for one more connection from `address`, or `None` if it has `max` open.
    /// IPv4-mapped IPv6 addresses count as their IPv4 address.
    pub(crate) fn admit(&self, address: IpAddr) -> Option<AddressSlot> {
        let address = address.to_canonical();
        let mut counts = self.counts.lock();
        let count = counts.entry(address).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: Arc::clone(&self.counts),
            address,
        })
    }

    /// Connections open now from `address` (for the tests).
    #[cfg(test)]
    fn open(&self, address: IpAddr) -> usize {
        self.counts.lock().get(&address).copied().unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// The whole answer written to a connection refused for its address, before it is closed:
/// a 503 with `Retry-After` and the error body, like every other refusal.
pub(crate) fn refusal(max: usize) -> Vec<u8> {
    let mut error = ApiError::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "too_many_connections",
        format!("This address already has {max} connections open; close one or retry later."),
    );
    error.retry_after_secs = Some(1);
    let body = error.body().to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_at_most_its_share_and_slots_come_back() {
        let counts = AddressCounts::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let first = counts.admit(a).unwrap();
        let second = counts.admit(a).unwrap();
        assert!(counts.admit(a).is_none());
        // The same address written as IPv4-mapped IPv6 is the same client.
        assert!(counts.admit("::ffff:127.0.0.2".parse().unwrap()).is_none());
        let other = counts.admit(b).unwrap();
        drop(first);
        assert_eq!(counts.open(a), 1);
        let third = counts.admit(a).unwrap();
        drop((second, third, other));
        assert_eq!(counts.open(a), 0);
        assert!(counts.counts.lock().is_empty(), "no entry left behind");
    }

    #[test]
    fn the_refusal_is_a_whole_503_in_the_error_shape() {
        let answer = String::from_utf8(refusal(7)).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains("retry-after: 1"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "too_many_connections");
    }
}
