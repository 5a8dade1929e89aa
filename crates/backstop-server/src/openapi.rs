//! The OpenAPI 3.1 document (`/api/v1/openapi.json`), built from the route
//! table (`router.rs`): every route with its token, its query parameters,
//! its body and its answers, and the JSON Schemas of the API's types as
//! their serde derives define them (`schemars`), so the document is the
//! contract the server keeps — `scripts/api-contract` holds it to that with
//! schemathesis in CI.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::router::{Answer, Route, routes};

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No content",
        400 => "The request is malformed: a field, a parameter or the body is wrong (the message says which)",
        401 => "No token, or not a valid one",
        403 => "The token may not do this",
        404 => "No such object (or another tenant's)",
        405 => "The endpoint does not take this method",
        409 => "A conflict: the object exists, is in use, or the attempt lost its job",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "The Idempotency-Key was used for a different request",
        429 => "Too many event streams for this token",
        503 => "The catalog is busy or down; try again",
        _ => "",
    }
}

/// A query struct's schema as OpenAPI parameters: one per property.
fn query_parameters(schema: &Value) -> Vec<Value> {
    let required: Vec<&str> =
        schema["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let Some(props) = schema["properties"].as_object() else { return Vec::new() };
    props
        .iter()
        .map(|(name, prop)| {
            let mut prop = prop.clone();
            // A query parameter is absent, never null.
            if let Some(types) = prop.get("type").and_then(Value::as_array).cloned() {
                let types: Vec<Value> = types.into_iter().filter(|t| t != "null").collect();
                prop["type"] = if types.len() == 1 { types[0].clone() } else { Value::Array(types) };
            }
            if let Some(any) = prop.get("anyOf").and_then(Value::as_array).cloned() {
                let kept: Vec<Value> = any.into_iter().filter(|s| s.get("type") != Some(&json!("null"))).collect();
                prop = if kept.len() == 1 { kept[0].clone() } else { json!({"anyOf": kept}) };
            }
            let description = prop.as_object_mut().and_then(|p| p.remove("description"));
            let mut p =
                json!({"name": name, "in": "query", "required": required.contains(&name.as_str()), "schema": prop});
            if let Some(d) = description {
                p["description"] = d;
            }
            p
        })
        .collect()
}

fn operation(route: &Route, generator: &mut schemars::SchemaGenerator) -> Value {
    let mut op = Map::new();
    op.insert("summary".into(), json!(route.summary));
    op.insert("operationId".into(), json!(format!("{} {}", route.method, route.path)));
    match route.role {
        Some(role) => {
            op.insert("security".into(), json!([{"bearer": []}]));
            op.insert("x-backstop-role".into(), json!(role.as_str()));
        }
        None => {
            op.insert("security".into(), json!([]));
        }
    }
    let mut params: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            json!({"name": name, "in": "path", "required": true, "description": "An id, or a name of the caller's tenant",
                   "schema": {"type": "string", "minLength": 1}})
        })
        .collect();
    if let Some(query) = route.query {
        params.extend(query_parameters(&query(generator).to_value()));
    }
    if route.keyed {
        params.push(json!({
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Makes a repeated request return the first one's job (200) instead of a new one",
            "schema": {"type": "string", "pattern": backstop_types::IDEMPOTENCY_KEY_PATTERN}
        }));
    }
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    if let Some(body) = route.body {
        op.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": body(generator).to_value()}}}),
        );
    }
    let error = json!({"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}});
    let mut responses = Map::new();
    for status in route.statuses() {
        let mut response = json!({"description": reason(status)});
        if status >= 400 {
            if route.path.starts_with("/api/") || status != 503 {
                response["content"] = error.clone();
            } else {
                response["content"] = json!({"text/plain": {"schema": {"type": "string"}}});
            }
        } else if status == route.status || (status == 200 && route.also.contains(&200)) {
            match route.answer {
                Answer::Json(schema) => {
                    response["content"] = json!({"application/json": {"schema": schema(generator).to_value()}});
                }
                Answer::Text => response["content"] = json!({"text/plain": {"schema": {"type": "string"}}}),
                Answer::Events => response["content"] = json!({"text/event-stream": {"schema": {"type": "string"}}}),
                Answer::Bytes => {
                    response["content"] =
                        json!({"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}})
                }
                Answer::Empty => {}
            }
        }
        responses.insert(status.to_string(), response);
    }
    op.insert("responses".into(), Value::Object(responses));
    Value::Object(op)
}

/// The bounds an integer's format implies, written out: a client (or a
/// fuzzer) reads `maximum`, not `format: uint32`.
fn integer_bounds(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let bounds: Option<(i128, i128)> = match map.get("format").and_then(Value::as_str) {
                Some("uint8") => Some((0, u8::MAX as i128)),
                Some("uint16") => Some((0, u16::MAX as i128)),
                Some("uint32") => Some((0, u32::MAX as i128)),
                Some("uint64") => Some((0, u64::MAX as i128)),
                Some("int32") => Some((i32::MIN as i128, i32::MAX as i128)),
                Some("int64") => Some((i64::MIN as i128, i64::MAX as i128)),
                _ => None,
            };
            if let Some((min, max)) = bounds {
                let number = |n: i128| serde_json::from_str::<Value>(&n.to_string()).unwrap_or(Value::Null);
                map.entry("minimum").or_insert_with(|| number(min));
                map.entry("maximum").or_insert_with(|| number(max));
            }
            map.values_mut().for_each(integer_bounds);
        }
        Value::Array(items) => items.iter_mut().for_each(integer_bounds),
        _ => {}
    }
}

/// A source to register is one of the kinds, each with its packager's
/// `config` schema (`backstop_source::config_schema`, from its fields).
fn source_spec_by_kind(schemas: &mut Map<String, Value>) {
    let Some(base) = schemas.get("SourceSpec").cloned() else { return };
    let variants: Vec<Value> = backstop_types::SourceKind::ALL
        .into_iter()
        .map(|kind| {
            let mut variant = base.clone();
            variant["title"] = json!(format!("a {} source", kind.as_str()));
            variant["properties"]["kind"] = json!({"const": kind.as_str()});
            variant["properties"]["config"] = backstop_source::config_schema(kind);
            variant.as_object_mut().map(|v| v.remove("description"));
            variant
        })
        .collect();
    let mut by_kind = json!({"oneOf": variants});
    if let Some(description) = base.get("description") {
        by_kind["description"] = description.clone();
    }
    schemas.insert("SourceSpec".into(), by_kind);
}

pub fn document() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut generator = settings.into_generator();
    generator.subschema_for::<backstop_types::ErrorBody>();
    let mut paths = Map::new();
    for (route, _) in routes() {
        let op = operation(&route, &mut generator);
        let entry = paths.entry(route.path.to_string()).or_insert_with(|| json!({}));
        entry[route.method] = op;
    }
    let mut schemas: Map<String, Value> =
        generator.take_definitions(true).into_iter().map(|(name, schema)| (name, schema.clone())).collect();
    source_spec_by_kind(&mut schemas);
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Backstop",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The Backstop coordinator's API. Authenticate with `Authorization: Bearer <token>`. \
                            Every error has the body {\"error\": {\"code\", \"message\"}}; request bodies with \
                            unknown fields are refused."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    });
    integer_bounds(&mut doc);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_document_with_its_schemas_resolved() {
        let doc = document();
        let text = doc.to_string();
        for (route, _) in routes() {
            let op = &doc["paths"][route.path][route.method];
            assert!(op.is_object(), "{} {}", route.method, route.path);
            for status in route.statuses() {
                assert!(op["responses"][status.to_string()].is_object(), "{} {} {status}", route.method, route.path);
            }
        }
        // Every reference points at a schema that is there.
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(doc["components"]["schemas"][name].is_object(), "schema {name}");
        }
        // Nullable fields say so; request bodies take no unknown fields.
        let job = &doc["components"]["schemas"]["Job"]["properties"];
        assert!(job["deadline_seconds"].to_string().contains("null"), "{}", job["deadline_seconds"]);
        assert_eq!(doc["components"]["schemas"]["PlanSpec"]["additionalProperties"], json!(false));
        // A source's config is described by its kind's packager.
        let kinds = doc["components"]["schemas"]["SourceSpec"]["oneOf"].as_array().unwrap();
        assert_eq!(kinds.len(), backstop_types::SourceKind::ALL.len());
        let fs = kinds.iter().find(|k| k["properties"]["kind"]["const"] == "fs").unwrap();
        assert_eq!(fs["properties"]["config"]["required"], json!(["paths"]));
        assert_eq!(fs["additionalProperties"], json!(false));
        let pg = kinds.iter().find(|k| k["properties"]["kind"]["const"] == "postgres").unwrap();
        assert!(pg["properties"]["config"]["properties"]["url"].is_object(), "{pg}");
        assert!(pg["properties"]["config"]["properties"]["password"].is_null(), "a secret, not config: {pg}");
        let plans = &doc["paths"]["/api/v1/plans"]["get"]["parameters"];
        assert!(plans.to_string().contains("\"maximum\":1000"), "{plans}");
    }
}
