//! Opaque cursors: a position in a deterministic order, encoded with the name of the feed
//! and a check, so that a cursor of another feed, or an edited one, is refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

fn check(body: &str) -> String {
    let d = Sha256::digest(body.as_bytes());
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodes a position of feed `feed`.
pub fn encode(feed: &str, parts: &[i64]) -> String {
    let nums: Vec<String> = parts.iter().map(i64::to_string).collect();
    let body = format!("{feed}:{}", nums.join(","));
    let c = check(&body);
    URL_SAFE_NO_PAD.encode(format!("{body}:{c}"))
}

/// Decodes a cursor of feed `feed` with `n` parts; `None` when it is not one.
pub fn decode(feed: &str, cursor: &str, n: usize) -> Option<Vec<i64>> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (body, c) = text.rsplit_once(':')?;
    if check(body) != c {
        return None;
    }
    let (f, nums) = body.split_once(':')?;
    if f != feed {
        return None;
    }
    let parts: Vec<i64> = nums.split(',').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    (parts.len() == n).then_some(parts)
}

/// Decodes an optional cursor (empty: from the start), or INVALID_ARGUMENT on `field`.
pub fn decode_field(feed: &str, cursor: &str, n: usize, field: &str) -> Result<Option<Vec<i64>>, tonic::Status> {
    if cursor.is_empty() {
        return Ok(None);
    }
    decode(feed, cursor, n).map(Some).ok_or_else(|| {
        shep_runtime::status::invalid_field(field, "not a cursor this method returned", "INVALID_CURSOR")
    })
}

/// Decodes an optional cursor holding one index: the position after it (0 when empty),
/// or INVALID_ARGUMENT on `field`.
pub fn next_index(feed: &str, cursor: &str, field: &str) -> Result<usize, tonic::Status> {
    match decode_field(feed, cursor, 1, field)? {
        None => Ok(0),
        Some(v) => usize::try_from(v[0]).ok().and_then(|i| i.checked_add(1)).ok_or_else(|| {
            shep_runtime::status::invalid_field(field, "not a cursor this method returned", "INVALID_CURSOR")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_others() {
        let c = encode("acts", &[20_000, -1, 7]);
        assert_eq!(decode("acts", &c, 3), Some(vec![20_000, -1, 7]));
        assert_eq!(decode("renames", &c, 3), None);
        assert_eq!(decode("acts", &c, 2), None);
        assert_eq!(decode("acts", "garbage", 3), None);
        assert_eq!(decode("acts", "", 3), None);
        let forged = URL_SAFE_NO_PAD.encode("acts:20000,-1,8:00000000");
        assert_eq!(decode("acts", &forged, 3), None);
        assert!(decode_field("acts", "", 3, "cursor").unwrap().is_none());
        assert_eq!(decode_field("acts", "x", 3, "cursor").unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(next_index("f", "", "cursor").unwrap(), 0);
        assert_eq!(next_index("f", &encode("f", &[4]), "cursor").unwrap(), 5);
        assert!(next_index("f", &encode("f", &[-2]), "cursor").is_err());
    }
}
