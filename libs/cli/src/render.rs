//! How the CLI prints a response. `--output json` is the protobuf JSON mapping of the response message with
//! the .proto's field names (what `protoc --json_name=false`-style tools and the other languages' clients
//! print), so scripts depend on the API's own, versioned schema rather than on a shape invented here. The
//! table form is for people: generated from the same message by reflection, so a field added to the API shows
//! up without a CLI change; times in RFC 3339, enum values without their type prefix, default values left out.

use std::{fmt::Write as _, sync::OnceLock};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use keymesh_client::ClientError;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, SerializeOptions,
    Value,
};

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned text for people (RFC 3339 times).
    #[default]
    Table,
    /// The protobuf JSON mapping of the response, with the .proto field names; stable for scripts.
    Json,
}

/// The API's descriptors, as the services serve them over reflection.
fn pool() -> Result<&'static DescriptorPool, ClientError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(keymesh_proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| ClientError::Setup(format!("the API descriptors do not load: {e}")))
}

fn descriptor<M: prost::Name>() -> Result<MessageDescriptor, ClientError> {
    pool()?
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| ClientError::Setup(format!("{} is not in the API descriptors", M::full_name())))
}

/// `message` as a reflected message of its .proto type. Only messages with a `Debug` impl: those that carry secrets
/// have none (libs/proto's SECRET_MESSAGES), so the compiler keeps them out of the generic printers.
pub fn dynamic<M: prost::Message + prost::Name + std::fmt::Debug>(message: &M) -> Result<DynamicMessage, ClientError> {
    DynamicMessage::decode(descriptor::<M>()?, message.encode_to_vec().as_slice())
        .map_err(|e| ClientError::Setup(format!("{}: {e}", M::full_name())))
}

/// The protobuf JSON mapping of `message` (proto field names, every field even at its default, enums by name).
pub fn to_json<M: prost::Message + prost::Name + std::fmt::Debug>(
    message: &M,
) -> Result<serde_json::Value, ClientError> {
    let options = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false);
    dynamic(message)?
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| ClientError::Setup(format!("{}: {e}", M::full_name())))
}

/// A message of type `M` from JSON in the protobuf mapping (proto or JSON field names), e.g. a `KeyPolicy`
/// given on the command line. `what` names the flag in the error.
pub fn from_json<M: prost::Message + prost::Name + Default>(what: &str, text: &str) -> Result<M, ClientError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let message = DynamicMessage::deserialize(descriptor::<M>()?, &mut deserializer)
        .map_err(|e| ClientError::Setup(format!("{what}: not a {} in JSON: {e}", M::NAME)))?;
    deserializer.end().map_err(|e| ClientError::Setup(format!("{what}: {e}")))?;
    message.transcode_to::<M>().map_err(|e| ClientError::Setup(format!("{what}: {e}")))
}

/// Prints `message` as `output` asks. A table lists the first repeated message field named in `list` (if
/// any) one row per entry with `columns`, then the other fields.
pub fn print<M: prost::Message + prost::Name + std::fmt::Debug>(
    output: Output,
    message: &M,
    list: Option<(&str, &[&str])>,
) -> Result<(), ClientError> {
    let text = match output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(&to_json(message)?).unwrap_or_default()),
        Output::Table => table(&dynamic(message)?, list),
    };
    crate::write_stdout(text.as_bytes())
}

/// Prints several messages of one type (pages of a list, a stream's messages): a JSON array, or one table.
pub fn print_all<M: prost::Message + prost::Name + std::fmt::Debug>(
    output: Output,
    messages: &[M],
    columns: &[&str],
) -> Result<(), ClientError> {
    let text = match output {
        Output::Json => {
            let values = messages.iter().map(to_json).collect::<Result<Vec<_>, _>>()?;
            format!("{}\n", serde_json::to_string_pretty(&values).unwrap_or_default())
        }
        Output::Table => {
            let rows = messages.iter().map(dynamic).collect::<Result<Vec<_>, _>>()?;
            rows_table(&rows, &descriptor::<M>()?, columns, "")
        }
    };
    crate::write_stdout(text.as_bytes())
}

/// One field of a response that carries a secret.
pub enum Field<'a> {
    /// A string: base64, an id, a JWT, an RFC 3339 time (escaped for JSON should it ever need it).
    Text(&'a str),
    /// A number.
    Number(u64),
    /// JSON already (a nested message from [`to_json`]); the table form leaves it out.
    Json(&'a str),
}

/// A response that carries a secret (a plaintext, a data key, a shared secret, a client secret, tokens), printed
/// from one zeroizing buffer: such messages have no `Debug` and never pass through the reflection printer, whose
/// copies would outlive the call. JSON keeps the protobuf mapping's field names; the table is `name: value`
/// lines, with `table_only` lines after them.
pub fn print_secret(output: Output, fields: &[(&str, Field<'_>)], table_only: &str) -> Result<(), ClientError> {
    crate::write_stdout(secret_text(output, fields, table_only).as_bytes())
}

/// What [`print_secret`] prints.
fn secret_text(output: Output, fields: &[(&str, Field<'_>)], table_only: &str) -> zeroize::Zeroizing<String> {
    let mut text = zeroize::Zeroizing::new(String::new());
    match output {
        Output::Json => {
            text.push_str("{\n");
            for (i, (name, value)) in fields.iter().enumerate() {
                let comma = if i + 1 < fields.len() { "," } else { "" };
                let value = match value {
                    Field::Text(s) if s.chars().all(|c| c != '"' && c != '\\' && !c.is_control()) => format!("\"{s}\""),
                    Field::Text(s) => serde_json::to_string(s).unwrap_or_default(),
                    Field::Number(n) => n.to_string(),
                    Field::Json(json) => json.replace('\n', "\n  "),
                };
                let _ = writeln!(text, "  \"{name}\": {}{comma}", zeroize::Zeroizing::new(value).as_str());
            }
            text.push_str("}\n");
        }
        Output::Table => {
            for (name, value) in fields {
                match value {
                    Field::Text(s) => {
                        let _ = writeln!(text, "{name}: {s}");
                    }
                    Field::Number(n) => {
                        let _ = writeln!(text, "{name}: {n}");
                    }
                    Field::Json(_) => {}
                }
            }
            text.push_str(table_only);
        }
    }
    text
}

/// The human form of a message.
pub fn table(message: &DynamicMessage, list: Option<(&str, &[&str])>) -> String {
    let mut out = String::new();
    if let Some((field, columns)) = list
        && let Some(field) = message.descriptor().get_field_by_name(field)
        && let Kind::Message(element) = field.kind()
    {
        let rows: Vec<DynamicMessage> = match &*message.get_field(&field) {
            Value::List(items) => items.iter().filter_map(|v| v.as_message().cloned()).collect(),
            _ => Vec::new(),
        };
        out.push_str(&rows_table(&rows, &element, columns, ""));
        let rest = message.fields().filter(|(f, _)| f.number() != field.number());
        lines(&mut out, rest, "", "");
        return out;
    }
    lines(&mut out, message.fields(), "", "");
    out
}

/// `name: value` lines for set fields, nested messages flattened as `outer.inner`, repeated messages as an
/// indented table.
fn lines<'a>(out: &mut String, fields: impl Iterator<Item = (FieldDescriptor, &'a Value)>, prefix: &str, indent: &str) {
    for (field, value) in fields {
        let name = format!("{prefix}{}", field.name());
        match (field.kind(), value) {
            (Kind::Message(m), Value::Message(inner)) if !is_well_known(&m) => {
                lines(out, inner.fields(), &format!("{name}."), indent);
            }
            (Kind::Message(m), Value::List(items)) if !is_well_known(&m) => {
                let rows: Vec<DynamicMessage> = items.iter().filter_map(|v| v.as_message().cloned()).collect();
                let _ = writeln!(out, "{indent}{name}:");
                out.push_str(&rows_table(&rows, &m, &[], &format!("{indent}  ")));
            }
            _ => {
                let _ = writeln!(out, "{indent}{name}: {}", cell(&field, value));
            }
        }
    }
}

/// A table of messages of one type: the given columns, or every field that fits in a cell.
fn rows_table(rows: &[DynamicMessage], element: &MessageDescriptor, columns: &[&str], indent: &str) -> String {
    let fields: Vec<FieldDescriptor> = if columns.is_empty() {
        element.fields().filter(fits_a_cell).collect()
    } else {
        columns.iter().filter_map(|c| element.get_field_by_name(c)).collect()
    };
    let mut grid: Vec<Vec<String>> = vec![fields.iter().map(|f| f.name().to_ascii_uppercase()).collect()];
    for row in rows {
        grid.push(
            fields.iter().map(|f| if row.has_field(f) { cell(f, &row.get_field(f)) } else { String::new() }).collect(),
        );
    }
    let widths: Vec<usize> =
        (0..fields.len()).map(|i| grid.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in grid {
        let mut line = String::from(indent);
        for (i, text) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(text);
            } else {
                let _ = write!(line, "{text:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn fits_a_cell(field: &FieldDescriptor) -> bool {
    match field.kind() {
        Kind::Message(m) => is_well_known(&m) && !field.is_list(),
        Kind::Bytes => false,
        _ => !field.is_list() || field.is_map(),
    }
}

fn is_well_known(message: &MessageDescriptor) -> bool {
    message.full_name().starts_with("google.protobuf.")
}

/// One value as text: RFC 3339 times, durations in seconds, enum names without their type's prefix, bytes
/// in base64, lists and maps joined.
fn cell(field: &FieldDescriptor, value: &Value) -> String {
    match value {
        Value::List(items) => items.iter().map(|v| cell(field, v)).collect::<Vec<_>>().join(","),
        Value::Map(map) => {
            let mut entries: Vec<String> = map.iter().map(|(k, v)| format!("{}={}", map_key(k), scalar(v))).collect();
            entries.sort();
            entries.join(",")
        }
        Value::EnumNumber(number) => match field.kind() {
            Kind::Enum(e) => match e.get_value(*number) {
                Some(v) => {
                    let prefix = format!("{}_", screaming_snake(e.name()));
                    v.name().strip_prefix(&prefix).unwrap_or(v.name()).to_owned()
                }
                None => number.to_string(),
            },
            _ => number.to_string(),
        },
        Value::Message(m) if m.descriptor().full_name() == "google.protobuf.Timestamp" => {
            m.transcode_to::<prost_types::Timestamp>().map(|t| t.to_string()).unwrap_or_default()
        }
        Value::Message(m) if m.descriptor().full_name() == "google.protobuf.Duration" => {
            m.transcode_to::<prost_types::Duration>().map(|d| d.to_string()).unwrap_or_default()
        }
        other => scalar(other),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Bool(b) => b.to_string(),
        Value::I32(n) | Value::EnumNumber(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        Value::U32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        Value::F32(n) => n.to_string(),
        Value::F64(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Bytes(b) => B64.encode(b),
        Value::Message(_) | Value::List(_) | Value::Map(_) => String::from("…"),
    }
}

fn map_key(key: &MapKey) -> String {
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

/// `KeyVersionState` → `KEY_VERSION_STATE`, the prefix protobuf's style guide gives enum values.
fn screaming_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use keymesh_proto::v1 as pb;

    use super::*;

    fn sample_key() -> pb::Key {
        pb::Key {
            key_id: "k_1".into(),
            name: "user-pii".into(),
            state: pb::KeyState::Enabled as i32,
            purpose: pb::KeyPurpose::Encrypt as i32,
            labels: [("team".to_owned(), "payments".to_owned())].into(),
            create_time: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            versions: vec![pb::KeyVersion {
                version: 1,
                state: pb::KeyVersionState::Active as i32,
                algorithm: pb::Algorithm::Aes256Gcm as i32,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn tables_show_rfc3339_times_and_short_enum_names() {
        let text = table(&dynamic(&pb::GetKeyResponse { key: Some(sample_key()) }).unwrap(), None);
        assert!(text.contains("key.create_time: 2023-11-14T22:13:20Z"), "{text}");
        assert!(text.contains("key.state: ENABLED"), "{text}");
        assert!(text.contains("key.labels: team=payments"), "{text}");
        assert!(text.contains("key.versions:\n  VERSION"), "{text}");
        assert!(text.contains("ACTIVE"), "{text}");
        assert!(!text.contains("description"), "default fields are left out: {text}");
    }

    #[test]
    fn json_uses_proto_field_names_and_keeps_defaults() {
        let json = to_json(&pb::GetKeyResponse { key: Some(sample_key()) }).unwrap();
        assert_eq!(json["key"]["key_id"], "k_1");
        assert_eq!(json["key"]["state"], "KEY_STATE_ENABLED");
        assert_eq!(json["key"]["create_time"], "2023-11-14T22:13:20Z");
        assert_eq!(json["key"]["description"], "", "default values are printed: a script's key is always there");
    }

    #[test]
    fn lists_are_one_row_per_entry() {
        let list = pb::ListKeysResponse { keys: vec![sample_key(), sample_key()], next_page_token: "next".into() };
        let text = table(&dynamic(&list).unwrap(), Some(("keys", &["name", "state", "create_time"])));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["NAME", "STATE", "CREATE_TIME"]);
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["user-pii", "ENABLED", "2023-11-14T22:13:20Z"]);
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[3], "next_page_token: next");
    }

    #[test]
    fn secret_fields_print_as_json_or_lines() {
        let nested = serde_json::to_string_pretty(&serde_json::json!({"name": "app"})).unwrap();
        let fields = [
            ("plaintext", Field::Text("c2VjcmV0")),
            ("key_version", Field::Number(2)),
            ("odd", Field::Text("a\"b\n")),
            ("application", Field::Json(&nested)),
        ];
        let json: serde_json::Value = serde_json::from_str(&secret_text(Output::Json, &fields, "")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"plaintext": "c2VjcmV0", "key_version": 2, "odd": "a\"b\n", "application": {"name": "app"}})
        );
        let table = secret_text(Output::Table, &fields[..2], "(shown once)\n");
        assert_eq!(table.as_str(), "plaintext: c2VjcmV0\nkey_version: 2\n(shown once)\n");
    }

    #[test]
    fn json_input_names_the_flag_when_it_is_wrong() {
        let policy: pb::KeyPolicy =
            from_json("--policy", r#"{"rotation_period": "86400s", "enforcement": "POLICY_ENFORCEMENT_WARN"}"#)
                .unwrap();
        assert_eq!(policy.rotation_period.map(|d| d.seconds), Some(86_400));
        let Err(e) = from_json::<pb::KeyPolicy>("--policy", r#"{"rotation": 1}"#) else { panic!("accepted") };
        assert!(e.to_string().starts_with("--policy: not a KeyPolicy"), "{e}");
    }
}
