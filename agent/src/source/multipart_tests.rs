use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    P(Vec<u8>),
    Big,
    Bad,
}
use Ev::{Big, P};

fn p(s: &str) -> Ev {
    P(s.as_bytes().to_vec())
}

fn run(boundary: &str, max: usize, chunks: &[&[u8]]) -> Vec<Ev> {
    let mut parser = MultipartParser::new(boundary, max).expect("boundary");
    let mut out = Vec::new();
    for chunk in chunks {
        parser.push(chunk);
        while let Some(ev) = parser.next_event() {
            out.push(match ev {
                Event::Part(b) => P(b.to_vec()),
                Event::Oversized => Big,
                Event::Malformed => Ev::Bad,
            });
        }
    }
    out
}

/// Parses `stream` whole, one byte at a time, and split in two at every position: all must give `expected`.
fn check(boundary: &str, max: usize, stream: &[u8], expected: &[Ev]) {
    assert_eq!(run(boundary, max, &[stream]), expected, "whole stream");
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(run(boundary, max, &bytes), expected, "byte by byte");
    for cut in 1..stream.len() {
        let (a, b) = stream.split_at(cut);
        assert_eq!(run(boundary, max, &[a, b]), expected, "split at {cut}");
    }
}

#[test]
fn parts_with_content_length() {
    check(
        "frame",
        100,
        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: 5\r\n\r\nhello\r\n--frame\r\nContent-Length: 3\r\n\r\nabc\r\n",
        &[p("hello"), p("abc")],
    );
}

#[test]
fn parts_without_content_length_end_at_the_next_boundary() {
    check(
        "frame",
        100,
        b"--frame\r\nContent-Type: image/jpeg\r\n\r\nhello\r\n--frame\r\n\r\nab\r\ncd\r\n--frame\r\n\r\nx",
        &[p("hello"), p("ab\r\ncd")],
    );
}

#[test]
fn a_counted_body_may_contain_the_boundary() {
    check(
        "frame",
        100,
        b"--frame\r\nContent-Length: 12\r\n\r\n\n--frame\r\nxx\r\n--frame\r\n\r\nz\r\n--frame--\r\n",
        &[p("\n--frame\r\nxx"), p("z")],
    );
}

#[test]
fn boundary_dash_quirks() {
    let stream = b"preamble\r\n--abc\r\n\r\none\r\n--abc\r\n\r\ntwo\r\n--abc--\r\n";
    // The header said `boundary=--abc` and the wire has `--abc`.
    check("--abc", 100, stream, &[p("one"), p("two")]);
    // Quoted in the header, no dashes on the wire, LF line ends.
    check(
        &boundary_from_content_type("multipart/x-mixed-replace; boundary=\"abc\"").expect("boundary"),
        100,
        b"abc\n\none\nabc\n\ntwo\nabc\n",
        &[p("one"), p("two")],
    );
    // Four dashes.
    check("abc", 100, b"----abc\r\n\r\none\r\n----abc\r\n", &[p("one")]);
}

#[test]
fn boundary_text_inside_a_line_is_not_a_boundary() {
    check("abc", 100, b"--abc\r\n\r\nx--abc y\r\n--abcd\r\n--abc\r\n", &[p("x--abc y\r\n--abcd")]);
}

#[test]
fn oversized_parts_are_skipped_and_parsing_resumes() {
    let big = "B".repeat(50);
    // Counted: skipped by count without buffering.
    let counted = format!("--f\r\nContent-Length: 50\r\n\r\n{big}\r\n--f\r\nContent-Length: 2\r\n\r\nok\r\n--f--\r\n");
    check("f", 10, counted.as_bytes(), &[Big, p("ok")]);
    // Uncounted: dropped once it outgrows the cap, then resynchronised on the next boundary.
    let uncounted = format!("--f\r\n\r\n{big}\r\n--f\r\n\r\nok\r\n--f\r\n\r\n{big}{big}\r\n--f\r\n\r\nok2\r\n--f\r\n");
    check("f", 10, uncounted.as_bytes(), &[Big, p("ok"), Big, p("ok2")]);
    // Exactly the cap is fine.
    check("f", 2, b"--f\r\n\r\nok\r\n--f\r\n", &[p("ok")]);
}

#[test]
fn headerless_jpeg_parts() {
    check("f", 100, b"--f\r\n\xFF\xD8jpeg\xFF\xD9\r\n--f\r\n", &[P(b"\xFF\xD8jpeg\xFF\xD9".to_vec())]);
}

#[test]
fn endless_headers_are_malformed() {
    let mut stream = b"--f\r\n".to_vec();
    stream.extend(std::iter::repeat_n(b'h', MAX_HEADER_BYTES + 10));
    stream.extend_from_slice(b"\r\n--f\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(run("f", 100, &[&stream]), [Ev::Bad, p("ok")]);
}

#[test]
fn a_wrong_content_length_resynchronises() {
    // The camera claims 3 bytes for a 5-byte body: the rest is skipped up to the next boundary.
    check(
        "f",
        100,
        b"--f\r\nContent-Length: 3\r\n\r\nhello\r\n--f\r\nContent-Length: 2\r\n\r\nok\r\n",
        &[p("hel"), p("ok")],
    );
}

#[test]
fn buffering_stays_bounded_while_seeking() {
    let mut parser = MultipartParser::new("f", 10).expect("boundary");
    for _ in 0..1000 {
        parser.push(&[b'x'; 100]);
        assert_eq!(parser.next_event(), None);
    }
    assert!(parser.buffered() < 16, "{}", parser.buffered());
}

#[test]
fn content_types() {
    for (ct, expected) in [
        ("multipart/x-mixed-replace; boundary=frame", Some("frame")),
        ("multipart/x-mixed-replace;boundary=--myboundary", Some("--myboundary")),
        ("Multipart/X-Mixed-Replace; charset=x; Boundary=\"a b\"", Some("a b")),
        ("multipart/x-mixed-replace", None),
        ("multipart/x-mixed-replace; boundary=", None),
        ("image/jpeg", None),
        ("", None),
    ] {
        assert_eq!(boundary_from_content_type(ct).as_deref(), expected, "{ct}");
    }
    assert!(MultipartParser::new("--", 1).is_none());
}
