//! Kubernetes' protobuf encoding of objects, decoded into the JSON form every other part of
//! Shoal works with.
//!
//! kubectl 1.32 and later send the imperative `kubectl create namespace|configmap|secret|service|
//! deployment|job|cronjob|ingress …` as protobuf (`Content-Type:
//! application/vnd.kubernetes.protobuf`) and do not retry with JSON. The body is the four bytes
//! `k8s\0`, then a `runtime.Unknown` message that carries the object's `apiVersion` and `kind` and
//! the object's own message in `raw`.
//!
//! The decoder walks the protobuf wire format with a table per message: field number → JSON name
//! and type. `tables.rs` is generated (see `generate.py`) from k8s-pb's field numbers and
//! k8s-openapi's JSON names. It decodes only the kinds that have a table ([`decodes`]); for any
//! other, and for a field number a table does not know, it says so rather than drop data.
//! Kubernetes' encoder writes every plain (non-pointer) field whether set or not, so what it
//! writes for "unset" is left out again (see `unset`); map values and list items are kept as they
//! are.

use std::fmt;

use serde_json::{Map, Value};

/// The prefix of every protobuf-encoded Kubernetes object.
const MAGIC: &[u8] = b"k8s\0";

/// How deep messages may nest. The tables nest a handful of levels; this bounds a hostile
/// body that repeats a message field inside itself.
const MAX_DEPTH: usize = 32;

/// Why a protobuf body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtobufError {
    /// The bytes are not a well-formed Kubernetes protobuf object.
    Malformed(String),
    /// Well formed, but of a kind (or with a field) this decoder has no table for.
    Unsupported(String),
}

impl fmt::Display for ProtobufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtobufError::Malformed(detail) => write!(f, "the protobuf body is malformed: {detail}"),
            ProtobufError::Unsupported(detail) => f.write_str(detail),
        }
    }
}

impl std::error::Error for ProtobufError {}

fn malformed(detail: impl Into<String>) -> ProtobufError {
    ProtobufError::Malformed(detail.into())
}

/// What a field holds.
#[derive(Clone, Copy)]
enum Type {
    Str,
    Int32,
    Int64,
    Bool,
    /// `meta.v1.Time`: seconds and nanoseconds, written as an RFC 3339 string.
    Time,
    /// `util.intstr.IntOrString`: written as a number or a string.
    IntOrString,
    /// `api.resource.Quantity`: a message around its string form, written as that string.
    Quantity,
    /// `map<string, Quantity>` (a `ResourceList`).
    QuantityMap,
    /// A Go struct embedded with `json:",inline"` (`VolumeSource` in `Volume`): a message on the
    /// wire whose fields JSON writes into the parent object.
    Inline(&'static Schema),
    /// A nested message.
    Msg(&'static Schema),
    /// `meta.v1.FieldsV1`: a message whose one field holds JSON, written as that JSON.
    FieldsV1,
    /// `map<string, string>`.
    StrMap,
    /// `map<string, bytes>`: the values written in base64, as Kubernetes' JSON writes bytes.
    BytesMap,
    /// `map<string, ExtraValue>` (a user's `extra`): each value a message of repeated strings,
    /// written as a list of strings.
    StrListMap,
}

#[derive(Clone, Copy)]
struct Field {
    number: u32,
    name: &'static str,
    ty: Type,
    repeated: bool,
    /// A number that Go holds as a plain `omitempty` field, so zero means unset.
    omit_zero: bool,
}

/// A field's number, JSON name and type (for the tables).
const fn one(number: u32, name: &'static str, ty: Type) -> Field {
    Field { number, name, ty, repeated: false, omit_zero: false }
}

/// A repeated field's number, JSON name and type (for the tables).
const fn list(number: u32, name: &'static str, ty: Type) -> Field {
    Field { number, name, ty, repeated: true, omit_zero: false }
}

/// A number whose zero means unset (for the tables).
const fn omit_zero(number: u32, name: &'static str, ty: Type) -> Field {
    Field { number, name, ty, repeated: false, omit_zero: true }
}

/// One message's fields.
struct Schema {
    name: &'static str,
    fields: &'static [Field],
}

impl Schema {
    fn field(&self, number: u32) -> Option<&Field> {
        self.fields.iter().find(|field| field.number == number)
    }
}

mod tables;

use tables::KINDS;
use Type::*;

/// The kinds this module decodes, as `apiVersion/kind`, for error messages.
pub fn decodes() -> Vec<String> {
    KINDS.iter().map(|(api_version, kind, _)| format!("{api_version}/{kind}")).collect()
}

/// Decodes a protobuf-encoded Kubernetes object (`k8s\0` + `runtime.Unknown`) into its JSON
/// form, with `apiVersion` and `kind` from the envelope.
pub fn decode_object(body: &[u8]) -> Result<Value, ProtobufError> {
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| malformed("it does not start with the bytes \"k8s\\0\""))?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    let mut reader = Reader(envelope);
    while let Some((number, wire)) = reader.key()? {
        match (number, wire) {
            (1, Wire::Len) => {
                let mut type_meta = Reader(reader.bytes()?);
                while let Some((number, wire)) = type_meta.key()? {
                    match (number, wire) {
                        (1, Wire::Len) => api_version = text(type_meta.bytes()?)?,
                        (2, Wire::Len) => kind = text(type_meta.bytes()?)?,
                        (_, wire) => type_meta.skip(wire)?,
                    }
                }
            }
            (2, Wire::Len) => raw = reader.bytes()?,
            (3, Wire::Len) => {
                let encoding = text(reader.bytes()?)?;
                if !encoding.is_empty() {
                    return Err(ProtobufError::Unsupported(format!("a protobuf body with content encoding {encoding:?} is not supported")));
                }
            }
            (4, Wire::Len) => {
                let content_type = text(reader.bytes()?)?;
                if !content_type.is_empty() && content_type != "application/vnd.kubernetes.protobuf" {
                    return Err(ProtobufError::Unsupported(format!("a protobuf envelope holding {content_type:?} is not supported")));
                }
            }
            (_, wire) => reader.skip(wire)?,
        }
    }
    if kind.is_empty() {
        return Err(malformed("the envelope names no kind"));
    }
    let Some((_, _, message)) = KINDS.iter().find(|(v, k, _)| *v == api_version && *k == kind) else {
        return Err(ProtobufError::Unsupported(format!(
            "Shoal decodes protobuf bodies only for {}, not {api_version}/{kind}",
            decodes().join(", ")
        )));
    };
    let mut object = Map::new();
    object.insert("apiVersion".into(), Value::String(api_version));
    object.insert("kind".into(), Value::String(kind));
    object.extend(decode_message(raw, message, 0)?);
    Ok(Value::Object(object))
}

fn decode_message(bytes: &[u8], message: &Schema, depth: usize) -> Result<Map<String, Value>, ProtobufError> {
    if depth > MAX_DEPTH {
        return Err(malformed(format!("messages nest deeper than {MAX_DEPTH} levels")));
    }
    let mut object = Map::new();
    let mut reader = Reader(bytes);
    while let Some((number, wire)) = reader.key()? {
        let Some(field) = message.field(number) else {
            return Err(ProtobufError::Unsupported(format!("field {number} of {} is not known to Shoal's protobuf decoder", message.name)));
        };
        let mismatch = || malformed(format!("{}.{} arrived with the wrong wire type", message.name, field.name));
        match field.ty {
            StrMap | BytesMap | QuantityMap | StrListMap => {
                if wire != Wire::Len {
                    return Err(mismatch());
                }
                let (key, value) = map_entry(reader.bytes()?, field.ty)?;
                let entry = object.entry(field.name).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(map) = entry {
                    map.insert(key, value);
                }
            }
            Inline(inner) => {
                if wire != Wire::Len {
                    return Err(mismatch());
                }
                object.extend(decode_message(reader.bytes()?, inner, depth + 1)?);
            }
            _ if field.repeated => {
                let items = object.entry(field.name).or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(items) = items else { continue };
                match (field.ty, wire) {
                    // A packed list of numbers: one length-delimited run of varints.
                    (Int32 | Int64 | Bool, Wire::Len) => {
                        let mut packed = Reader(reader.bytes()?);
                        while !packed.0.is_empty() {
                            items.push(scalar(field.ty, packed.varint()?));
                        }
                    }
                    _ => items.push(value(&mut reader, field, wire, depth)?.ok_or_else(mismatch)?),
                }
            }
            _ => {
                let decoded = value(&mut reader, field, wire, depth)?.ok_or_else(mismatch)?;
                if unset(field, &decoded) {
                    object.remove(field.name);
                } else {
                    object.insert(field.name.into(), decoded);
                }
            }
        }
    }
    Ok(object)
}

/// One value of `field`, or `None` when the wire type does not fit the field.
fn value(reader: &mut Reader<'_>, field: &Field, wire: Wire, depth: usize) -> Result<Option<Value>, ProtobufError> {
    Ok(Some(match (field.ty, wire) {
        (Int32 | Int64 | Bool, Wire::Varint) => scalar(field.ty, reader.varint()?),
        (Str, Wire::Len) => Value::String(text(reader.bytes()?)?),
        (Time, Wire::Len) => time(reader.bytes()?)?,
        (IntOrString, Wire::Len) => int_or_string(reader.bytes()?)?,
        (Quantity, Wire::Len) => Value::String(quantity(reader.bytes()?)?),
        (FieldsV1, Wire::Len) => fields_v1(reader.bytes()?)?,
        (Msg(inner), Wire::Len) => Value::Object(decode_message(reader.bytes()?, inner, depth + 1)?),
        _ => return Ok(None),
    }))
}

fn scalar(ty: Type, raw: u64) -> Value {
    match ty {
        Bool => Value::Bool(raw != 0),
        // An int32 is sign-extended to 64 bits on the wire.
        Int32 => Value::from(raw as i64 as i32),
        _ => Value::from(raw as i64),
    }
}

/// Whether a singular field's value is what Kubernetes' JSON leaves out. Its protobuf encoder
/// writes every plain (non-pointer) field, set or not: an empty string or a zero time means
/// unset, and so does a zero in the numbers marked `omit_zero`. Other zeros, `false` and empty
/// messages (`emptyDir: {}`) were set and are kept.
fn unset(field: &Field, value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(text) => text.is_empty(),
        Value::Number(number) => field.omit_zero && number.as_i64() == Some(0),
        _ => false,
    }
}

fn map_entry(bytes: &[u8], ty: Type) -> Result<(String, Value), ProtobufError> {
    let (mut key, mut value) = (String::new(), if matches!(ty, StrListMap) { Value::Array(Vec::new()) } else { Value::String(String::new()) });
    let mut reader = Reader(bytes);
    while let Some((number, wire)) = reader.key()? {
        match (number, wire) {
            (1, Wire::Len) => key = text(reader.bytes()?)?,
            (2, Wire::Len) => {
                let bytes = reader.bytes()?;
                value = match ty {
                    BytesMap => Value::String(base64(bytes)),
                    QuantityMap => Value::String(quantity(bytes)?),
                    StrListMap => Value::Array(string_list(bytes)?),
                    _ => Value::String(text(bytes)?),
                };
            }
            _ => return Err(malformed("a map entry holds a field other than its key and value")),
        }
    }
    Ok((key, value))
}

/// `ExtraValue{repeated string items = 1}`: its strings.
fn string_list(bytes: &[u8]) -> Result<Vec<Value>, ProtobufError> {
    let mut reader = Reader(bytes);
    let mut items = Vec::new();
    while let Some((number, wire)) = reader.key()? {
        match (number, wire) {
            (1, Wire::Len) => items.push(Value::String(text(reader.bytes()?)?)),
            _ => return Err(malformed("a list of strings holds a field other than its items")),
        }
    }
    Ok(items)
}

/// `Quantity{string = 1}`: its string form (`500m`, `1Gi`).
fn quantity(bytes: &[u8]) -> Result<String, ProtobufError> {
    let mut reader = Reader(bytes);
    let mut text_form = String::new();
    while let Some((number, wire)) = reader.key()? {
        match (number, wire) {
            (1, Wire::Len) => text_form = text(reader.bytes()?)?,
            _ => return Err(malformed("a Quantity holds a field other than its string")),
        }
    }
    Ok(text_form)
}

/// `FieldsV1{raw = 1}`: the raw bytes are the JSON of a field set.
fn fields_v1(bytes: &[u8]) -> Result<Value, ProtobufError> {
    let mut reader = Reader(bytes);
    let mut raw: &[u8] = b"{}";
    while let Some((number, wire)) = reader.key()? {
        match (number, wire) {
            (1, Wire::Len) => raw = reader.bytes()?,
            _ => return Err(malformed("a FieldsV1 holds a field other than raw")),
        }
    }
    serde_json::from_slice(raw).map_err(|e| malformed(format!("a FieldsV1 is not JSON: {e}")))
}

fn time(bytes: &[u8]) -> Result<Value, ProtobufError> {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    let mut reader = Reader(bytes);
    while let Some((number, wire)) = reader.key()? {
        match (number, wire) {
            (1, Wire::Varint) => seconds = reader.varint()? as i64,
            (2, Wire::Varint) => nanos = reader.varint()? as i64 as i32,
            _ => return Err(malformed("a Time holds a field other than seconds and nanos")),
        }
    }
    // Kubernetes encodes the zero time as an empty message; its JSON is null.
    if seconds == 0 && nanos == 0 {
        return Ok(Value::Null);
    }
    let timestamp = jiff::Timestamp::new(seconds, nanos).map_err(|e| malformed(format!("a Time out of range: {e}")))?;
    Ok(Value::String(crate::meta::format_time(timestamp)))
}

fn int_or_string(bytes: &[u8]) -> Result<Value, ProtobufError> {
    let (mut kind, mut number, mut string) = (0u64, 0i32, String::new());
    let mut reader = Reader(bytes);
    while let Some((field, wire)) = reader.key()? {
        match (field, wire) {
            (1, Wire::Varint) => kind = reader.varint()?,
            (2, Wire::Varint) => number = reader.varint()? as i64 as i32,
            (3, Wire::Len) => string = text(reader.bytes()?)?,
            _ => return Err(malformed("an IntOrString holds a field other than type, intVal and strVal")),
        }
    }
    match kind {
        0 => Ok(Value::from(number)),
        1 => Ok(Value::String(string)),
        other => Err(malformed(format!("an IntOrString of type {other}"))),
    }
}

fn text(bytes: &[u8]) -> Result<String, ProtobufError> {
    std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| malformed("a string field is not UTF-8"))
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

/// A cursor over protobuf wire bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// The next field's number and wire type, or `None` at the end.
    fn key(&mut self) -> Result<Option<(u32, Wire)>, ProtobufError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| malformed("a field number out of range"))?;
        if number == 0 {
            return Err(malformed("a field numbered 0"));
        }
        let wire = match key & 7 {
            0 => Wire::Varint,
            1 => Wire::Fixed64,
            2 => Wire::Len,
            5 => Wire::Fixed32,
            other => return Err(malformed(format!("wire type {other} (groups are not used by Kubernetes)"))),
        };
        Ok(Some((number, wire)))
    }

    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut value = 0u64;
        for (index, byte) in self.0.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                self.0 = &self.0[index + 1..];
                return Ok(value);
            }
        }
        Err(malformed("a varint runs past the end or past ten bytes"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtobufError> {
        let length = usize::try_from(self.varint()?).map_err(|_| malformed("a length out of range"))?;
        if length > self.0.len() {
            return Err(malformed("a length-delimited field runs past the end"));
        }
        let (taken, rest) = self.0.split_at(length);
        self.0 = rest;
        Ok(taken)
    }

    fn skip(&mut self, wire: Wire) -> Result<(), ProtobufError> {
        let width = match wire {
            Wire::Varint => return self.varint().map(drop),
            Wire::Len => return self.bytes().map(drop),
            Wire::Fixed64 => 8,
            Wire::Fixed32 => 4,
        };
        if width > self.0.len() {
            return Err(malformed("a fixed-width field runs past the end"));
        }
        self.0 = &self.0[width..];
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    // A minimal encoder, to write test messages field by field.
    fn varint(mut value: u64, out: &mut Vec<u8>) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    fn number(field: u32, value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(field) << 3, &mut out);
        varint(value, &mut out);
        out
    }

    fn bytes(field: u32, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint((u64::from(field) << 3) | 2, &mut out);
        varint(value.len() as u64, &mut out);
        out.extend_from_slice(value);
        out
    }

    fn message(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    fn entry(field: u32, key: &str, value: &[u8]) -> Vec<u8> {
        bytes(field, &message(&[bytes(1, key.as_bytes()), bytes(2, value)]))
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = message(&[bytes(1, api_version.as_bytes()), bytes(2, kind.as_bytes())]);
        let mut body = MAGIC.to_vec();
        body.extend(message(&[bytes(1, &type_meta), bytes(2, raw), bytes(3, b""), bytes(4, b"")]));
        body
    }

    /// ObjectMeta as Kubernetes' encoder writes it: every non-pointer field, empty or not.
    fn metadata(name: &str, namespace: &str) -> Vec<u8> {
        message(&[
            bytes(1, name.as_bytes()),
            bytes(2, b""),
            bytes(3, namespace.as_bytes()),
            bytes(4, b""),
            bytes(5, b""),
            bytes(6, b""),
            number(7, 0),
            bytes(8, b""),
            entry(11, "app", b"web"),
            entry(11, "empty", b""),
        ])
    }

    #[test]
    fn a_secret_decodes_to_its_json_form() {
        let raw = message(&[bytes(1, &metadata("password", "team")), entry(2, "p", b"s3cret"), entry(2, "binary", &[0, 255]), bytes(3, b"Opaque")]);
        let object = decode_object(&envelope("v1", "Secret", &raw)).expect("decodes");
        assert_eq!(
            object,
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "password", "namespace": "team", "labels": {"app": "web", "empty": ""}},
                "data": {"p": "czNjcmV0", "binary": "AP8="},
                "type": "Opaque",
            })
        );
    }

    #[test]
    fn a_service_decodes_ports_int_or_string_and_nested_messages() {
        let target = |kind: u64, int: u64, text: &str| message(&[number(1, kind), number(2, int), bytes(3, text.as_bytes())]);
        let port = |name: &str, port: u64, target_port: Vec<u8>| {
            message(&[bytes(1, name.as_bytes()), bytes(2, b"TCP"), number(3, port), bytes(4, &target_port), number(5, 0)])
        };
        let affinity = message(&[bytes(1, &message(&[number(1, 600)]))]);
        let spec = message(&[
            bytes(1, &port("http", 80, target(0, 8080, ""))),
            bytes(1, &port("admin", 81, target(1, 0, "admin"))),
            entry(2, "app", b"web"),
            bytes(3, b""),
            bytes(4, b"NodePort"),
            number(12, 0),
            number(13, 0),
            bytes(14, &affinity),
            bytes(19, b"IPv4"),
        ]);
        let created = message(&[number(1, 1_700_000_000), number(2, 0)]);
        let raw = message(&[bytes(1, &message(&[bytes(1, b"web"), bytes(8, &created)])), bytes(2, &spec), bytes(3, &message(&[bytes(1, b"")]))]);
        let object = decode_object(&envelope("v1", "Service", &raw)).expect("decodes");
        assert_eq!(
            object,
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "creationTimestamp": "2023-11-14T22:13:20Z"},
                "spec": {
                    "ports": [
                        {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
                        {"name": "admin", "protocol": "TCP", "port": 81, "targetPort": "admin"},
                    ],
                    "selector": {"app": "web"},
                    "type": "NodePort",
                    "publishNotReadyAddresses": false,
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
                    "ipFamilies": ["IPv4"],
                },
                "status": {"loadBalancer": {}},
            })
        );
    }

    #[test]
    fn a_namespace_and_a_config_map_decode() {
        let namespace = decode_object(&envelope("v1", "Namespace", &message(&[bytes(1, &metadata("team", "")), bytes(2, &[]), bytes(3, &[])]))).expect("decodes");
        // Empty messages were sent (Go writes every plain struct field) and stay, as in JSON.
        assert_eq!(
            namespace,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team", "labels": {"app": "web", "empty": ""}}, "spec": {}, "status": {}})
        );
        let raw = message(&[bytes(1, &metadata("settings", "team")), entry(2, "a", b"b"), entry(3, "blob", b"\x01"), number(4, 1)]);
        let config_map = decode_object(&envelope("v1", "ConfigMap", &raw)).expect("decodes");
        assert_eq!(config_map["data"], json!({"a": "b"}));
        assert_eq!(config_map["binaryData"], json!({"blob": "AQ=="}));
        assert_eq!(config_map["immutable"], json!(true));
    }

    #[test]
    fn a_deployment_keeps_set_zeros_and_writes_inline_structs_into_their_parent() {
        let quantity = |text: &str| bytes(1, text.as_bytes());
        let resources = message(&[entry(1, "cpu", &quantity("500m")), entry(2, "memory", &quantity("64Mi"))]);
        let http_get = message(&[bytes(1, b"/healthz"), bytes(2, &message(&[number(1, 1), number(2, 0), bytes(3, b"http")])), bytes(3, b""), bytes(4, b"")]);
        let probe = message(&[bytes(1, &message(&[bytes(2, &http_get)])), number(2, 0), number(3, 0), number(4, 5)]);
        let container = message(&[bytes(1, b"web"), bytes(2, b"shoal.local/web:1"), bytes(8, &resources), bytes(11, &probe), number(16, 0)]);
        // A volume's source is an inline struct: `emptyDir` sits beside `name`.
        let volume = message(&[bytes(1, b"scratch"), bytes(2, &message(&[bytes(2, &message(&[bytes(1, b"")]))]))]);
        // supplementalGroups, packed.
        let security = message(&[bytes(4, &[0x01, 0x02])]);
        let pod = message(&[bytes(1, &volume), bytes(2, &container), bytes(14, &security)]);
        let template = message(&[bytes(1, &message(&[entry(11, "app", b"web")])), bytes(2, &pod)]);
        let selector = message(&[entry(1, "app", b"web")]);
        let spec = message(&[number(1, 0), bytes(2, &selector), bytes(3, &template), number(5, 0), number(6, 0)]);
        let raw = message(&[bytes(1, &message(&[bytes(1, b"web")])), bytes(2, &spec)]);
        let object = decode_object(&envelope("apps/v1", "Deployment", &raw)).expect("decodes");
        assert_eq!(
            object["spec"],
            json!({
                "replicas": 0,
                "revisionHistoryLimit": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "volumes": [{"name": "scratch", "emptyDir": {}}],
                        "containers": [{
                            "name": "web",
                            "image": "shoal.local/web:1",
                            "resources": {"limits": {"cpu": "500m"}, "requests": {"memory": "64Mi"}},
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
                            "stdin": false,
                        }],
                        "securityContext": {"supplementalGroups": [1, 2]},
                    },
                },
            })
        );
    }

    #[test]
    fn the_self_reviews_of_kubectl_auth_decode() {
        // `kubectl auth can-i patch pods --subresource=status`: the spec, and `allowed: false`.
        let attributes = message(&[bytes(1, b"default"), bytes(2, b"patch"), bytes(3, b""), bytes(5, b"pods"), bytes(6, b"status"), bytes(7, b"")]);
        let raw = message(&[bytes(1, &message(&[])), bytes(2, &message(&[bytes(1, &attributes)])), bytes(3, &message(&[number(1, 0), bytes(2, b"")]))]);
        let object = decode_object(&envelope("authorization.k8s.io/v1", "SelfSubjectAccessReview", &raw)).expect("decodes");
        assert_eq!(
            object,
            json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "metadata": {},
                "spec": {"resourceAttributes": {"namespace": "default", "verb": "patch", "resource": "pods", "subresource": "status"}},
                "status": {"allowed": false},
            })
        );
        // A user's `extra`: a map of lists of strings.
        let extra = entry(4, "scopes", &message(&[bytes(1, b"a"), bytes(1, b"b")]));
        let user = message(&[bytes(1, b"someone"), bytes(3, b"team"), extra]);
        let raw = message(&[bytes(2, &message(&[bytes(1, &user)]))]);
        let object = decode_object(&envelope("authentication.k8s.io/v1", "SelfSubjectReview", &raw)).expect("decodes");
        assert_eq!(object["status"]["userInfo"], json!({"username": "someone", "groups": ["team"], "extra": {"scopes": ["a", "b"]}}));
    }

    #[test]
    fn kinds_and_fields_without_a_table_are_named_not_dropped() {
        let error = decode_object(&envelope("apps/v1", "StatefulSet", &[])).expect_err("no table");
        assert!(matches!(&error, ProtobufError::Unsupported(text) if text.contains("apps/v1/StatefulSet") && text.contains("apps/v1/Deployment")), "{error}");
        let raw = message(&[bytes(1, &metadata("x", "")), bytes(99, b"new")]);
        let error = decode_object(&envelope("v1", "ConfigMap", &raw)).expect_err("unknown field");
        assert_eq!(error, ProtobufError::Unsupported("field 99 of ConfigMap is not known to Shoal's protobuf decoder".into()));
    }

    #[test]
    fn malformed_bodies_are_refused_with_what_is_wrong() {
        let malformed = |body: &[u8]| match decode_object(body) {
            Err(ProtobufError::Malformed(detail)) => detail,
            other => panic!("expected a malformed body, got {other:?}"),
        };
        assert!(malformed(b"{\"kind\":\"ConfigMap\"}").contains("k8s"));
        let whole = envelope("v1", "ConfigMap", &message(&[bytes(1, &metadata("x", "")), entry(2, "a", b"b")]));
        for cut in 5..whole.len() {
            // Every truncation is refused or decodes a prefix; none panics.
            let _ = decode_object(&whole[..cut]);
        }
        assert!(malformed(&whole[..whole.len() - 1]).contains("runs past the end"));
        assert!(malformed(&envelope("v1", "ConfigMap", &number(1, 5))).contains("wrong wire type"));
        assert!(malformed(&envelope("v1", "ConfigMap", &bytes(2, &bytes(1, &[0xff])))).contains("UTF-8"));
        let mut runaway = MAGIC.to_vec();
        runaway.extend([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(malformed(&runaway).contains("varint"));
        assert!(malformed(&envelope("v1", "", &[])).contains("no kind"));
    }
}
