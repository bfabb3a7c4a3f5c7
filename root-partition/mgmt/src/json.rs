//! A minimal JSON writer: objects and arrays built in order, strings escaped.

use alloc::string::String;
use core::fmt::Write;

/// Append `s` as a JSON string literal.
pub fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// An object being written: `{"k":v,...}`.
pub struct Object<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Object<'a> {
    /// Open an object.
    pub fn new(out: &'a mut String) -> Self {
        out.push('{');
        Self { out, first: true }
    }

    fn key(&mut self, k: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        string(self.out, k);
        self.out.push(':');
        self.out
    }

    /// `"k":"v"`.
    pub fn str(mut self, k: &str, v: &str) -> Self {
        let out = self.key(k);
        string(out, v);
        self
    }

    /// `"k":n`.
    pub fn num(mut self, k: &str, v: u64) -> Self {
        let out = self.key(k);
        let _ = write!(out, "{v}");
        self
    }

    /// `"k":true|false`.
    pub fn bool(mut self, k: &str, v: bool) -> Self {
        let out = self.key(k);
        out.push_str(if v { "true" } else { "false" });
        self
    }

    /// `"k":null`.
    pub fn null(mut self, k: &str) -> Self {
        self.key(k).push_str("null");
        self
    }

    /// `"k":<raw JSON>` (already well-formed).
    pub fn raw(mut self, k: &str, json: &str) -> Self {
        self.key(k).push_str(json);
        self
    }

    /// Close the object.
    pub fn end(self) {
        self.out.push('}');
    }
}

/// `[a,b,...]` from already-written JSON values.
pub fn array<'a>(out: &mut String, items: impl IntoIterator<Item = &'a str>) {
    out.push('[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_valid_json() {
        let mut inner = String::new();
        Object::new(&mut inner).num("n", 3).end();
        let mut s = String::new();
        Object::new(&mut s)
            .str("name", "a\"b\\c\n\u{1}")
            .num("id", 7)
            .bool("ok", true)
            .null("none")
            .raw("inner", &inner)
            .end();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["name"], "a\"b\\c\n\u{1}");
        assert_eq!(v["id"], 7);
        assert_eq!(v["inner"]["n"], 3);
        let mut a = String::new();
        array(&mut a, [s.as_str(), "1"]);
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(v[1], 1);
    }
}
