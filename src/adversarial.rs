//! Proptest strategies for adversarial input, shared by the property tests of the decoders
//! that read bus messages and HTTP response bodies.
//!
//! The strategies favour what breaks parsers: numbers at and past the integer limits,
//! negative sizes, strings that name non-finite floats, control characters, joined emoji,
//! code fences, long runs without spaces, and nesting up to [`MAX_DEPTH`] levels. Each caller
//! passes the field names and words its decoder reads, so that generated objects get past
//! the first key and reach the decoder's inner paths.

use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// Nesting levels of a generated value: enough for objects in arrays in objects several
/// times over, and well under serde_json's parse limit of 128.
pub const MAX_DEPTH: u32 = 6;

/// Strings that decoders may treat specially, or that break naive text and number handling.
const TRICKY_STRINGS: &[&str] = &[
    "",
    " ",
    "\t\n",
    "\r\n",
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "-0",
    "1e400",
    "-1",
    "18446744073709551616",
    "null",
    "true",
    "{",
    "[",
    "\"",
    "\\",
    "\u{0}",
    "\u{7f}",
    "\u{1b}[31m",
    "\u{200d}",
    "\u{feff}",
    "\u{fffd}",
    "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
    "\u{1F1E9}\u{1F1EA}",
    "e\u{301}",
    "```",
    "```rust\n",
    "@everyone",
    "<@123>",
    "../..",
    "%00",
    "ping",
];

/// Number literals that no `serde_json::Value` can hold (out of the `f64` range, or wider
/// than 64 bits). [`with_raw_numbers`] puts them where a generated value has a [`RAW_MARKER`]
/// string.
const RAW_NUMBERS: &[&str] = &[
    "1e400",
    "-1e400",
    "1E+999",
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890.5",
    "1e-400",
    "-0",
];

/// Prefix of the placeholder strings that [`with_raw_numbers`] replaces by a [`RAW_NUMBERS`]
/// entry. A private-use character, so that serde_json writes it unescaped and no real input
/// contains it by chance.
const RAW_MARKER: char = '\u{E000}';

/// Returns integers and floats at the edges: the sentinels torrent clients use for "never",
/// the limits of `i64` and `u64`, and floats just below and above 1.
fn edge_numbers() -> Vec<Number> {
    let mut numbers: Vec<Number> = [i64::MIN, -1, 0, 1, i64::from(u32::MAX), i64::MAX]
        .into_iter()
        .map(Number::from)
        .collect();
    numbers.push(Number::from(u64::MAX));
    for float in [
        1e308,
        -1e308,
        0.5,
        -0.0,
        f64::MIN_POSITIVE,
        0.999_999_9,
        1.000_001,
    ] {
        numbers.extend(Number::from_f64(float));
    }
    numbers
}

/// Generates any JSON number, with the edge cases weighted up.
pub fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        any::<f64>().prop_filter_map("JSON has no NaN or infinity", Number::from_f64),
        prop::sample::select(edge_numbers()),
    ]
}

/// Generates any Unicode string, with tricky, control-character and very long strings
/// weighted up.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => prop::sample::select(TRICKY_STRINGS).prop_map(str::to_owned),
        1 => "[\\x00-\\x1f\\x7f]{0,16}",
        1 => (prop::sample::select(TRICKY_STRINGS), 0..3000usize)
            .prop_map(|(text, count)| text.repeat(count)),
        1 => (0..5000usize).prop_map(|count| "x".repeat(count)),
    ]
}

/// Generates a string value: adversarial text, one of the decoder's `words`, or a
/// raw-number marker.
fn string(words: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => text(),
        3 => prop::sample::select(words).prop_map(str::to_owned),
        1 => (0..RAW_NUMBERS.len()).prop_map(|index| format!("{RAW_MARKER}{index}")),
    ]
}

/// Generates an object key: mostly one of the decoder's `words`, sometimes anything.
fn key(words: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(words).prop_map(str::to_owned),
        1 => text(),
    ]
}

/// Generates a JSON value nested up to [`MAX_DEPTH`] levels, whose keys and strings favour
/// `words`.
pub fn json_value(words: &'static [&'static str]) -> impl Strategy<Value = Value> {
    nested_value(words, MAX_DEPTH, 256)
}

/// Generates a JSON value of at most `depth` levels and about `size` nodes.
fn nested_value(
    words: &'static [&'static str],
    depth: u32,
    size: u32,
) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number().prop_map(Value::Number),
        string(words).prop_map(Value::String),
    ];
    nest(leaf, words, depth, size)
}

/// Generates a scalar or a small array or object, without the very long strings, which
/// would make objects with many fields slow to generate and decode.
fn field_value(words: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let short_string = prop_oneof![
        any::<String>(),
        prop::sample::select(TRICKY_STRINGS).prop_map(str::to_owned),
        prop::sample::select(words).prop_map(str::to_owned),
        (0..RAW_NUMBERS.len()).prop_map(|index| format!("{RAW_MARKER}{index}")),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number().prop_map(Value::Number),
        short_string.prop_map(Value::String),
    ];
    nest(leaf, words, 2, 8)
}

fn nest(
    leaf: impl Strategy<Value = Value> + 'static,
    words: &'static [&'static str],
    depth: u32,
    size: u32,
) -> impl Strategy<Value = Value> {
    leaf.prop_recursive(depth, size, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key(words), inner), 0..8)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// Generates an object that has each of `fields` with probability 3/4, each with an
/// adversarial value, so that a decoder expecting those fields gets past most of them. The
/// values nest two levels at most and leave out the very long strings, which keeps objects
/// with many fields cheap: long strings and deep nesting are covered by [`json_value`].
pub fn object_with(
    fields: &'static [&'static str],
    words: &'static [&'static str],
) -> impl Strategy<Value = Value> {
    prop::collection::vec(
        prop::option::weighted(0.75, field_value(words)),
        fields.len(),
    )
    .prop_map(move |values| {
        let object: Map<String, Value> = fields
            .iter()
            .zip(values)
            .filter_map(|(field, value)| Some((field.to_string(), value?)))
            .collect();
        Value::Object(object)
    })
}

/// Writes `value` as JSON text, with every raw-number marker string replaced by its number
/// literal, so that the text carries numbers no `Value` can hold.
pub fn with_raw_numbers(value: &Value) -> String {
    let mut text = value.to_string();
    for (index, literal) in RAW_NUMBERS.iter().enumerate() {
        text = text.replace(&format!("\"{RAW_MARKER}{index}\""), literal);
    }
    text
}

/// Generates the JSON text of a value, raw-number literals included.
pub fn json_text(words: &'static [&'static str]) -> impl Strategy<Value = String> {
    json_value(words).prop_map(|value| with_raw_numbers(&value))
}

/// Returns bodies that are not valid JSON or sit at serde_json's limits: non-finite literals,
/// lone surrogates, a byte-order mark, duplicate keys and nesting past the recursion limit.
pub fn edge_bodies() -> Vec<String> {
    let mut bodies: Vec<String> = [
        "",
        " ",
        "NaN",
        "[NaN]",
        "{\"a\":Infinity}",
        "1e400",
        "[1e400]",
        "\"\\ud800\"",
        "\u{feff}[]",
        "{\"a\":1,\"a\":2}",
        "[] []",
        "{\"torrents\":null}",
        "<html>login</html>",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    bodies.push(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)));
    bodies.push(format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200)));
    bodies
}
