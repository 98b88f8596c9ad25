//! gRPC on the wire, as far as a forwarding gateway needs it: the 5-byte message framing,
//! `grpc-timeout`, statuses as headers and trailers, W3C `traceparent`.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

/// The length prefix of a gRPC message: 1 byte compressed flag, 4 bytes big-endian length.
pub const PREFIX: usize = 5;

/// Follows message boundaries across DATA chunks without keeping the payload: reports the
/// header of each message as it is seen.
#[derive(Debug, Default, Clone)]
pub struct FrameScanner {
    header: [u8; PREFIX],
    have: usize,
    remaining: u64,
    /// Messages whose header was seen.
    pub messages: u64,
}

impl FrameScanner {
    /// Feeds a chunk; calls `on_header(compressed, len)` for each message header completed.
    pub fn feed<E>(
        &mut self,
        mut chunk: &[u8],
        mut on_header: impl FnMut(bool, u32) -> Result<(), E>,
    ) -> Result<(), E> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining as usize).min(chunk.len());
                self.remaining -= n as u64;
                chunk = &chunk[n..];
                continue;
            }
            let n = (PREFIX - self.have).min(chunk.len());
            self.header[self.have..self.have + n].copy_from_slice(&chunk[..n]);
            self.have += n;
            chunk = &chunk[n..];
            if self.have == PREFIX {
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                self.have = 0;
                self.remaining = len as u64;
                self.messages += 1;
                on_header(self.header[0] & 1 == 1, len)?;
            }
        }
        Ok(())
    }

    /// True between messages (no partial header or payload pending).
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }
}

/// One whole gRPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub compressed: bool,
    pub payload: Bytes,
}

/// Collects whole messages out of DATA chunks.
#[derive(Debug, Default)]
pub struct Assembler {
    buf: BytesMut,
}

/// A message longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge(pub u32);

impl Assembler {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole message, if buffered; `Err` as soon as a header announces more than
    /// `max` bytes (before buffering them).
    pub fn next(&mut self, max: usize) -> Result<Option<Message>, TooLarge> {
        if self.buf.len() < PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        if len as usize > max {
            return Err(TooLarge(len));
        }
        if self.buf.len() < PREFIX + len as usize {
            return Ok(None);
        }
        let compressed = self.buf[0] & 1 == 1;
        self.buf.advance(PREFIX);
        let payload = self.buf.split_to(len as usize).freeze();
        Ok(Some(Message {
            compressed,
            payload,
        }))
    }

    /// Bytes buffered (of a message not yet whole).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Frames one message (uncompressed).
pub fn frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(PREFIX + payload.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.freeze()
}

/// Parses a `grpc-timeout` value: 1 to 8 digits and a unit (H M S m u n).
pub fn parse_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a timeout as `grpc-timeout` (at most 8 digits, the finest unit that fits).
pub fn format_timeout(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let candidates: [(u128, &str); 6] = [
        (d.as_nanos(), "n"),
        (d.as_micros(), "u"),
        (d.as_millis(), "m"),
        (d.as_secs() as u128, "S"),
        (d.as_secs() as u128 / 60, "M"),
        (d.as_secs() as u128 / 3600, "H"),
    ];
    for (v, unit) in candidates {
        if v <= MAX {
            return format!("{v}{unit}");
        }
    }
    format!("{MAX}H")
}

/// The `grpc-status` of headers or trailers, if present.
pub fn grpc_status(h: &HeaderMap) -> Option<i32> {
    h.get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

/// Trailers (or trailers-only headers) that carry `status`.
pub fn status_headers(status: &tonic::Status) -> HeaderMap {
    let mut h = HeaderMap::new();
    if status.add_header(&mut h).is_err() {
        h.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    h
}

/// A trailers-only gRPC response carrying `status` (HTTP 200, never a bare HTTP error).
pub fn status_response(status: tonic::Status) -> http::Response<tonic::body::Body> {
    status.into_http()
}

/// A W3C trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits: the span of the sender.
    pub parent_id: String,
    /// 2 hex digits.
    pub flags: String,
}

impl TraceParent {
    /// Parses `00-<trace-id>-<parent-id>-<flags>`; `None` when malformed or all-zero.
    pub fn parse(v: &str) -> Option<TraceParent> {
        let parts: Vec<&str> = v.trim().split('-').collect();
        if parts.len() < 4 {
            return None;
        }
        let hex = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        };
        let (ver, tid, pid, fl) = (parts[0], parts[1], parts[2], parts[3]);
        if !hex(ver, 2) || ver == "ff" || (ver == "00" && parts.len() != 4) {
            return None;
        }
        if !hex(tid, 32)
            || !hex(pid, 16)
            || !hex(fl, 2)
            || tid.bytes().all(|c| c == b'0')
            || pid.bytes().all(|c| c == b'0')
        {
            return None;
        }
        Some(TraceParent {
            trace_id: tid.to_owned(),
            parent_id: pid.to_owned(),
            flags: fl.to_owned(),
        })
    }

    /// A new trace (sampled) started by the bus.
    pub fn generate() -> TraceParent {
        TraceParent {
            trace_id: random_hex(16),
            parent_id: random_hex(8),
            flags: "01".into(),
        }
    }

    /// The context the bus sends upstream: the same trace, the bus's hop as parent.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id.clone(),
            parent_id: random_hex(8),
            flags: self.flags.clone(),
        }
    }

    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.parent_id, self.flags)
    }
}

fn random_hex(bytes: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let v: Vec<u8> = (0..bytes).map(|_| rng.random()).collect();
        if v.iter().any(|&b| b != 0) {
            return hex::encode(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_follows_messages_across_chunks() {
        let mut s = FrameScanner::default();
        let mut wire = frame(b"hello").to_vec();
        wire.extend_from_slice(&frame(&[0u8; 300]));
        wire.extend_from_slice(&frame(b""));
        let mut seen = vec![];
        for chunk in wire.chunks(3) {
            s.feed::<()>(chunk, |c, l| {
                seen.push((c, l));
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(seen, vec![(false, 5), (false, 300), (false, 0)]);
        assert!(s.at_boundary());
        assert_eq!(s.messages, 3);
        let r = FrameScanner::default()
            .feed(&frame(&[1; 10]), |_, l| if l > 4 { Err(l) } else { Ok(()) });
        assert_eq!(r, Err(10));
    }

    #[test]
    fn assembler_yields_whole_messages_and_refuses_large_ones() {
        let mut a = Assembler::default();
        let wire = [frame(b"ab"), frame(b"cde")].concat();
        a.push(&wire[..4]);
        assert_eq!(a.next(100), Ok(None));
        a.push(&wire[4..]);
        assert_eq!(
            a.next(100).unwrap().unwrap().payload,
            Bytes::from_static(b"ab")
        );
        assert_eq!(
            a.next(100).unwrap().unwrap().payload,
            Bytes::from_static(b"cde")
        );
        assert_eq!(a.next(100), Ok(None));
        a.push(&frame(&[0; 50])[..PREFIX]);
        assert_eq!(a.next(10), Err(TooLarge(50)));
    }

    #[test]
    fn timeouts_round_trip() {
        assert_eq!(parse_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "10", "10x", "123456789m", "-1m", "1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
        for d in [
            Duration::from_millis(1500),
            Duration::from_secs(86_400 * 30),
            Duration::from_nanos(7),
        ] {
            let f = format_timeout(d);
            let back = parse_timeout(&f).unwrap();
            assert!(
                back <= d && d - back < Duration::from_secs(60),
                "{d:?} -> {f} -> {back:?}"
            );
        }
        assert_eq!(format_timeout(Duration::from_millis(250)), "250000u");
    }

    #[test]
    fn traceparent_parses_and_keeps_the_trace() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceParent::parse(v).unwrap();
        assert_eq!(t.header(), v);
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert_ne!(c.parent_id, t.parent_id);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
        let g = TraceParent::generate();
        assert!(TraceParent::parse(&g.header()).is_some());
    }

    #[test]
    fn status_headers_carry_code_and_details() {
        let st =
            shep_runtime::status::error(tonic::Code::PermissionDenied, "no", "ACCESS_DENIED", []);
        let h = status_headers(&st);
        assert_eq!(grpc_status(&h), Some(7));
        assert!(h.contains_key("grpc-status-details-bin"));
        let back = tonic::Status::from_header_map(&h).unwrap();
        assert_eq!(back.code(), tonic::Code::PermissionDenied);
    }
}
