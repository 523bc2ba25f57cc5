//! WebSocket frames as a client sees them (RFC 6455), pure: the handshake's accept key, masked
//! frames out, server frames in (bounded before their payload is buffered), and messages
//! assembled from fragments with control frames in between.

use base64::Engine as _;

/// The largest payload of a control frame (ping, pong, close).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    sha.update(key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finish())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Why frames were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A frame or message over the limit (its size and the limit).
    TooLarge(String),
    /// The peer broke the protocol.
    Protocol(String),
}

fn protocol(why: &str) -> FrameError {
    FrameError::Protocol(why.to_string())
}

/// One frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: Vec<u8>,
}

/// One client frame, masked with `mask` (a client must mask every frame).
pub fn encode(opcode: Opcode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode.bits());
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// A close frame's payload: the code, then the reason cut to fit a control frame.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(reason.as_bytes().get(..end).unwrap_or_default());
    payload
}

/// The frame at the start of `buf` and the bytes it took; `None` while it is incomplete. A
/// payload over `max_frame` is refused from the header, before it is buffered.
pub fn decode(buf: &[u8], max_frame: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    let [first, second, ..] = *buf else { return Ok(None) };
    if first & 0x70 != 0 {
        return Err(protocol("reserved bits set (no extension was agreed)"));
    }
    let opcode = Opcode::from_bits(first & 0x0f).ok_or_else(|| protocol("unknown opcode"))?;
    let fin = first & 0x80 != 0;
    if second & 0x80 != 0 {
        return Err(protocol("the server masked a frame"));
    }
    let (len, header) = match second & 0x7f {
        126 => match buf.get(2..4) {
            Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
            _ => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(bytes) => (u64::from_be_bytes(bytes), 10),
            None => return Ok(None),
        },
        len => (u64::from(len), 2),
    };
    if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(protocol("a control frame is fragmented or over 125 bytes"));
    }
    if len > max_frame as u64 {
        return Err(FrameError::TooLarge(format!("a {len}-byte frame (limit {max_frame})")));
    }
    let end = header + len as usize;
    let Some(payload) = buf.get(header..end) else { return Ok(None) };
    Ok(Some((Frame { fin, opcode, payload: payload.to_vec() }, end)))
}

/// A whole message or control frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close { code: Option<u16>, reason: String },
}

/// Joins fragments into messages, at most `max_message` bytes each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembler {
    /// The message being assembled: text or binary, and its bytes so far.
    partial: Option<(Opcode, Vec<u8>)>,
    max_message: usize,
}

impl Assembler {
    pub fn new(max_message: usize) -> Assembler {
        Assembler { partial: None, max_message }
    }

    /// Take one frame; a message once its last fragment is in.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Incoming>, FrameError> {
        let Frame { fin, opcode, payload } = frame;
        match opcode {
            Opcode::Ping => Ok(Some(Incoming::Ping(payload))),
            Opcode::Pong => Ok(Some(Incoming::Pong)),
            Opcode::Close => close_frame(&payload).map(Some),
            Opcode::Text | Opcode::Binary => {
                if self.partial.is_some() {
                    return Err(protocol("a new message began inside a fragmented one"));
                }
                self.check(payload.len())?;
                if fin {
                    return message(opcode, payload).map(Some);
                }
                self.partial = Some((opcode, payload));
                Ok(None)
            }
            Opcode::Continuation => {
                let Some((kind, mut data)) = self.partial.take() else {
                    return Err(protocol("a continuation frame without a message"));
                };
                self.check(data.len() + payload.len())?;
                data.extend_from_slice(&payload);
                if fin {
                    return message(kind, data).map(Some);
                }
                self.partial = Some((kind, data));
                Ok(None)
            }
        }
    }

    fn check(&self, len: usize) -> Result<(), FrameError> {
        if len > self.max_message {
            return Err(FrameError::TooLarge(format!("a message of over {} bytes", self.max_message)));
        }
        Ok(())
    }
}

fn message(kind: Opcode, data: Vec<u8>) -> Result<Incoming, FrameError> {
    match kind {
        Opcode::Text => {
            String::from_utf8(data).map(Incoming::Text).map_err(|_| protocol("a text message is not UTF-8"))
        }
        _ => Ok(Incoming::Binary(data)),
    }
}

fn close_frame(payload: &[u8]) -> Result<Incoming, FrameError> {
    match payload {
        [] => Ok(Incoming::Close { code: None, reason: String::new() }),
        [_] => Err(protocol("a close frame with a one-byte payload")),
        [a, b, reason @ ..] => Ok(Incoming::Close {
            code: Some(u16::from_be_bytes([*a, *b])),
            reason: String::from_utf8_lossy(reason).into_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_matches_the_rfc_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    /// An unmasked server frame.
    fn server(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![first];
        match payload.len() {
            len @ 0..=125 => frame.push(len as u8),
            len @ 126..=0xffff => {
                frame.push(126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn client_frames_are_masked_with_the_right_length_form() {
        let mask = [1, 2, 3, 4];
        assert_eq!(encode(Opcode::Text, b"Hi", mask), vec![0x81, 0x82, 1, 2, 3, 4, b'H' ^ 1, b'i' ^ 2]);
        assert_eq!(encode(Opcode::Ping, b"", mask), vec![0x89, 0x80, 1, 2, 3, 4]);
        let mid = encode(Opcode::Binary, &[0; 300], mask);
        assert_eq!(mid[..4], [0x82, 0x80 | 126, 1, 44]);
        assert_eq!(mid.len(), 4 + 4 + 300);
        let big = encode(Opcode::Text, &[0; 70_000], mask);
        assert_eq!(big[..10], [0x81, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        // Unmasking gives the payload back.
        let text = "héllo ⚡".as_bytes();
        let frame = encode(Opcode::Text, text, [9, 8, 7, 6]);
        let back: Vec<u8> = frame[6..].iter().zip([9u8, 8, 7, 6].iter().cycle()).map(|(b, m)| b ^ m).collect();
        assert_eq!(back, text);
    }

    #[test]
    fn close_payloads_fit_a_control_frame() {
        assert_eq!(close_payload(1000, "bye"), vec![0x03, 0xe8, b'b', b'y', b'e']);
        let long = close_payload(4000, &"é".repeat(100));
        assert!(long.len() <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&long[2..]).is_ok());
    }

    #[test]
    fn server_frames_decode_whole_or_wait_for_more() {
        let cases: Vec<(Vec<u8>, Opcode, bool, Vec<u8>)> = vec![
            (server(0x81, b"hello"), Opcode::Text, true, b"hello".to_vec()),
            (server(0x02, &[7; 200]), Opcode::Binary, false, vec![7; 200]),
            (server(0x80, &[1; 70_000]), Opcode::Continuation, true, vec![1; 70_000]),
            (server(0x89, b"p"), Opcode::Ping, true, b"p".to_vec()),
            (server(0x8a, b""), Opcode::Pong, true, vec![]),
            (server(0x88, &[3, 232]), Opcode::Close, true, vec![3, 232]),
        ];
        for (bytes, opcode, fin, payload) in cases {
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut], 100_000), Ok(None), "{opcode:?} cut at {cut}");
            }
            let mut more = bytes.clone();
            more.extend_from_slice(b"next");
            let (frame, used) = decode(&more, 100_000).unwrap().unwrap();
            assert_eq!((frame.opcode, frame.fin, frame.payload, used), (opcode, fin, payload, bytes.len()));
        }
    }

    #[test]
    fn bad_server_frames_are_refused() {
        let masked = vec![0x81, 0x81, 1, 2, 3, 4, b'x'];
        let cases: &[(Vec<u8>, &str)] = &[
            (vec![0xc1, 0x00], "reserved bits set (no extension was agreed)"),
            (vec![0x83, 0x00], "unknown opcode"),
            (masked, "the server masked a frame"),
            (server(0x09, b"x"), "a control frame is fragmented or over 125 bytes"),
            (server(0x89, &[0; 126]), "a control frame is fragmented or over 125 bytes"),
        ];
        for (bytes, why) in cases {
            assert_eq!(decode(bytes, 1000), Err(FrameError::Protocol(why.to_string())), "{bytes:?}");
        }
        // Over the frame limit: refused from the header alone.
        let header = [0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0];
        assert!(matches!(decode(&header, 1000), Err(FrameError::TooLarge(_))));
        assert!(matches!(decode(&[0x82, 126, 0x03, 0xe9], 1000), Err(FrameError::TooLarge(_))));
        assert_eq!(decode(&[0x82, 126, 0x03, 0xe8], 1000), Ok(None));
    }

    fn frame(fin: bool, opcode: Opcode, payload: &[u8]) -> Frame {
        Frame { fin, opcode, payload: payload.to_vec() }
    }

    #[test]
    fn fragments_join_into_messages_around_control_frames() {
        let mut assembler = Assembler::new(20);
        assert_eq!(assembler.push(frame(false, Opcode::Text, "hé".as_bytes()[..2].as_ref())), Ok(None));
        assert_eq!(assembler.push(frame(true, Opcode::Ping, b"x")), Ok(Some(Incoming::Ping(b"x".to_vec()))));
        assert_eq!(assembler.push(frame(false, Opcode::Continuation, &"hé".as_bytes()[2..])), Ok(None));
        assert_eq!(
            assembler.push(frame(true, Opcode::Continuation, b"llo")),
            Ok(Some(Incoming::Text("héllo".to_string())))
        );
        assert_eq!(assembler.push(frame(true, Opcode::Binary, &[1, 2])), Ok(Some(Incoming::Binary(vec![1, 2]))));
        assert_eq!(assembler.push(frame(true, Opcode::Pong, b"")), Ok(Some(Incoming::Pong)));
        let close = frame(true, Opcode::Close, &close_payload(4014, "Disallowed intent(s)."));
        let reason = "Disallowed intent(s).".to_string();
        assert_eq!(assembler.push(close), Ok(Some(Incoming::Close { code: Some(4014), reason })));
        let bare = Incoming::Close { code: None, reason: String::new() };
        assert_eq!(assembler.push(frame(true, Opcode::Close, b"")), Ok(Some(bare)));
    }

    #[test]
    fn broken_and_oversize_messages_are_refused() {
        let refused = |frames: &[Frame]| {
            let mut assembler = Assembler::new(10);
            frames.iter().cloned().map(|f| assembler.push(f)).find_map(Result::err)
        };
        let protocol_error = |e: Option<FrameError>| matches!(e, Some(FrameError::Protocol(_)));
        let too_large = |e: Option<FrameError>| matches!(e, Some(FrameError::TooLarge(_)));
        assert!(protocol_error(refused(&[frame(true, Opcode::Continuation, b"x")])));
        assert!(protocol_error(refused(&[frame(false, Opcode::Text, b"a"), frame(true, Opcode::Text, b"b")])));
        assert!(protocol_error(refused(&[frame(true, Opcode::Text, &[0xff, 0xfe])])));
        assert!(protocol_error(refused(&[frame(true, Opcode::Close, &[3])])));
        assert!(too_large(refused(&[frame(true, Opcode::Binary, &[0; 11])])));
        let parts = [frame(false, Opcode::Text, b"123456"), frame(true, Opcode::Continuation, b"78901")];
        assert!(too_large(refused(&parts)));
        assert_eq!(refused(&[frame(true, Opcode::Binary, &[0; 10])]), None);
    }
}
