//! Target `sdcl`: both directions of the chainloader's wire protocol
//! (`shootdown_chainloader::protocol`) on arbitrary bytes. The host reads the loader's lines
//! with `Reply::parse`: whatever the line, no panic, and a line it reads says what it parsed
//! (the loader's own writers print the same values back to the same line; a NAK keeps its code
//! and its message is the end of the line). The loader reads the host's header with
//! `Header::decode`: no panic, and a header it accepts encodes back to the same bytes.

use shootdown_chainloader::protocol::{self, Header, Reply, Sink, HEADER_LEN, LINE_PREFIX};

struct Line(Vec<u8>);

impl Sink for Line {
    fn put(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

fn written(f: impl FnOnce(&mut Line)) -> String {
    let mut l = Line(Vec::new());
    f(&mut l);
    String::from_utf8(l.0)
        .expect("the loader writes ASCII")
        .trim_end_matches("\r\n")
        .to_string()
}

/// Runs `data` through both parsers and checks what they accept.
pub fn fuzz(data: &[u8]) {
    if let Some(bytes) = data.get(..HEADER_LEN) {
        let bytes: &[u8; HEADER_LEN] = bytes.try_into().expect("HEADER_LEN bytes");
        if let Ok(h) = Header::decode(bytes) {
            assert_eq!(
                &h.encode(),
                bytes,
                "an accepted header re-encodes differently"
            );
        }
    }
    // The host splits on '\n' and drops a trailing '\r' (`Session::line`).
    for raw in data.split(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(raw);
        let line = text.trim_end_matches('\r');
        // Also as a protocol line, so that short inputs reach the word parser.
        let prefixed = format!("{LINE_PREFIX}{line}");
        for l in [line, prefixed.as_str()] {
            check(l);
        }
    }
}

fn check(line: &str) {
    let Some(reply) = Reply::parse(line) else {
        return;
    };
    match reply {
        Reply::Ready { version, max } => {
            // The loader only writes its own version.
            let again = written(|o| protocol::write_ready(o, max));
            if version == protocol::VERSION {
                assert_eq!(Reply::parse(&again), Some(reply), "{line:?}");
            }
        }
        Reply::AckHeader { kernel, dtb } => {
            let again = written(|o| protocol::write_ack_header(o, kernel, dtb));
            assert_eq!(Reply::parse(&again), Some(reply), "{line:?}");
        }
        Reply::AckData { crc } => {
            let again = written(|o| protocol::write_ack_data(o, crc));
            assert_eq!(Reply::parse(&again), Some(reply), "{line:?}");
        }
        Reply::Nak {
            code,
            reason,
            message,
        } => {
            assert_eq!(reason, protocol::Nak::from_code(code), "{line:?}");
            assert!(line.ends_with(message), "{line:?}");
            assert!(line.starts_with(LINE_PREFIX), "{line:?}");
        }
    }
}
