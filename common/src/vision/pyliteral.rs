//! Readers for the Python literals Ultralytics writes into ONNX metadata: `names` is a dict literal such as
//! `{0: 'scratch', 1: "dent's"}`, `imgsz` a list such as `[640, 640]`, `end2end` a bool such as `True`.
//! A tiny tokenizer, not an evaluator: anything outside these shapes is an error.

/// Why a literal could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} at byte {at}")]
pub struct LiteralError {
    pub reason: String,
    pub at: usize,
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Cursor { text, pos: 0 }
    }

    fn err<T>(&self, reason: impl Into<String>) -> Result<T, LiteralError> {
        Err(LiteralError { reason: reason.into(), at: self.pos })
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.rest().chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), LiteralError> {
        if self.eat(c) { Ok(()) } else { self.err(format!("expected `{c}`")) }
    }

    fn end(&mut self) -> Result<(), LiteralError> {
        if self.peek().is_some() { self.err("unexpected trailing text") } else { Ok(()) }
    }

    fn int(&mut self) -> Result<i64, LiteralError> {
        self.skip_ws();
        let rest = self.rest();
        let len =
            rest.char_indices().take_while(|&(i, c)| c.is_ascii_digit() || (i == 0 && (c == '-' || c == '+'))).count();
        match rest[..len].parse::<i64>() {
            Ok(v) => {
                self.pos += len;
                Ok(v)
            }
            Err(_) => self.err("expected an integer"),
        }
    }

    fn string(&mut self) -> Result<String, LiteralError> {
        let quote = match self.peek() {
            Some(q @ ('\'' | '"')) => q,
            _ => return self.err("expected a quoted string"),
        };
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                c if c == quote => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => {
                    let Some((_, e)) = chars.next() else { break };
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        'x' | 'u' | 'U' => {
                            let digits = match e {
                                'x' => 2,
                                'u' => 4,
                                _ => 8,
                            };
                            let hex: String = chars.by_ref().take(digits).map(|(_, c)| c).collect();
                            match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                                Some(ch) if hex.len() == digits => out.push(ch),
                                _ => {
                                    self.pos += i;
                                    return self.err("bad escape sequence");
                                }
                            }
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
        self.err("unterminated string")
    }
}

/// Reads a class-name table: a dict `{0: 'a', 1: 'b'}` with keys 0..n in any order, or a list `['a', 'b']`.
pub fn parse_names(text: &str) -> Result<Vec<String>, LiteralError> {
    let mut c = Cursor::new(text);
    if c.eat('[') {
        let mut names = Vec::new();
        while !c.eat(']') {
            names.push(c.string()?);
            if !c.eat(',') {
                c.expect(']')?;
                break;
            }
        }
        c.end()?;
        return Ok(names);
    }
    c.expect('{')?;
    let mut pairs: Vec<(i64, String)> = Vec::new();
    while !c.eat('}') {
        let key = c.int()?;
        c.expect(':')?;
        let value = c.string()?;
        pairs.push((key, value));
        if !c.eat(',') {
            c.expect('}')?;
            break;
        }
    }
    c.end()?;
    pairs.sort_by_key(|(k, _)| *k);
    for (i, (k, _)) in pairs.iter().enumerate() {
        if usize::try_from(*k).ok() != Some(i) {
            return Err(LiteralError { reason: format!("class ids must be 0..{} without gaps", pairs.len()), at: 0 });
        }
    }
    Ok(pairs.into_iter().map(|(_, v)| v).collect())
}

/// Reads `[640, 640]`, `(640, 640)` or `640`.
pub fn parse_int_list(text: &str) -> Result<Vec<i64>, LiteralError> {
    let mut c = Cursor::new(text);
    let close = if c.eat('[') {
        ']'
    } else if c.eat('(') {
        ')'
    } else {
        let v = c.int()?;
        c.end()?;
        return Ok(vec![v]);
    };
    let mut values = Vec::new();
    while !c.eat(close) {
        values.push(c.int()?);
        if !c.eat(',') {
            c.expect(close)?;
            break;
        }
    }
    c.end()?;
    Ok(values)
}

/// Reads `True` / `False` (also lower case).
pub fn parse_bool(text: &str) -> Result<bool, LiteralError> {
    match text.trim() {
        "True" | "true" | "1" => Ok(true),
        "False" | "false" | "0" => Ok(false),
        _ => Err(LiteralError { reason: format!("`{text}` is not True or False"), at: 0 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_names(text: &str, expected: Result<&[&str], &str>) {
        match (parse_names(text), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(e), Err(fragment)) => {
                assert!(e.to_string().contains(fragment), "`{e}` lacks `{fragment}`")
            }
            (got, want) => panic!("{text}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn names() {
        check_names("{0: 'scratch', 1: 'dent', 2: 'stain'}", Ok(&["scratch", "dent", "stain"]));
        check_names("{1: 'b', 0: 'a'}", Ok(&["a", "b"]));
        check_names(
            r#"{0: "it's", 1: 'say \'hi\'', 2: 'caf\xe9', 3: '\u00e9t\u00e9'}"#,
            Ok(&["it's", "say 'hi'", "café", "été"]),
        );
        check_names("{0: 'a',}", Ok(&["a"]));
        check_names("{}", Ok(&[]));
        check_names("['x', \"y\"]", Ok(&["x", "y"]));
        check_names("{0: 'a', 2: 'c'}", Err("without gaps"));
        check_names("{0: 'a'", Err("expected `}`"));
        check_names("{0: 'a} ", Err("unterminated string"));
        check_names("{0: a}", Err("expected a quoted string"));
        check_names("{0: 'a'} x", Err("trailing"));
        check_names("{-1: 'a'}", Err("without gaps"));
        check_names("{0: '\\x4'}", Err("bad escape"));
        check_names("", Err("expected `{`"));
    }

    #[test]
    fn int_lists_and_bools() {
        assert_eq!(parse_int_list("[320, 320]"), Ok(vec![320, 320]));
        assert_eq!(parse_int_list("(480, 640)"), Ok(vec![480, 640]));
        assert_eq!(parse_int_list(" 224 "), Ok(vec![224]));
        assert!(parse_int_list("[320, x]").is_err());
        assert!(parse_int_list("[99999999999999999999]").is_err());
        assert_eq!(parse_bool("True"), Ok(true));
        assert_eq!(parse_bool("False"), Ok(false));
        assert!(parse_bool("maybe").is_err());
    }
}
