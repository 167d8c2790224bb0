//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`, written by hand next to the routes it describes.

use axum::Json;
use serde_json::{Value, json};

fn op(summary: &str, role: &str, body: Option<&str>) -> Value {
    let mut op = json!({
        "summary": summary,
        "x-outpost-role": role,
        "security": [{"bearer": []}],
        "responses": {
            "200": {"description": "OK"},
            "401": {"$ref": "#/components/responses/Error"},
            "403": {"$ref": "#/components/responses/Error"}
        }
    });
    if let Some(schema) = body {
        op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": schema}}}});
    }
    op
}

/// The model registry's paths (docs/PROTOCOL.md, "Model registry"); a separate value keeps `json!` within its
/// recursion limit.
fn model_paths() -> Value {
    json!({
            "/models": {
                "get": op("Stored model versions, in (name, version) order (?name=)", "operator", None),
                "post": {
                    "summary": "Push a signed model: multipart `manifest` (signed envelope), `artifact` (ONNX), `golden` images (filename = image name), optional `golden_labels` (JSON: image name → label or labels). Verified, checked and run before anything is stored (docs/PROTOCOL.md, \"Model registry\")",
                    "x-outpost-role": "operator",
                    "security": [{"bearer": []}],
                    "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {"type": "object",
                        "required": ["manifest", "artifact"],
                        "properties": {
                            "manifest": {"type": "string", "format": "binary"},
                            "artifact": {"type": "string", "format": "binary"},
                            "golden": {"type": "array", "items": {"type": "string", "format": "binary"}},
                            "golden_labels": {"type": "string", "format": "binary"}
                        }}}}},
                    "responses": {"200": {"description": "this exact version was stored before; nothing written"},
                        "201": {"description": "stored"},
                        "401": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"},
                        "409": {"$ref": "#/components/responses/Error"}, "413": {"$ref": "#/components/responses/Error"},
                        "422": {"$ref": "#/components/responses/Error"}, "503": {"$ref": "#/components/responses/Error"}}
                }
            },
            "/models/{name}/{version}": {
                "get": op("One stored version: manifest fields, signers, golden results, deprecation", "operator", None),
                "delete": op("Delete a version; 409 `in_use` while a rollout uses it", "admin", None)
            },
            "/models/{name}/{version}/manifest": {"get": op("The signed manifest envelope exactly as pushed", "device, operator", None)},
            "/models/{name}/{version}/artifact": {"get": {
                "summary": "The ONNX artifact; one `Range: bytes=` range gives 206 with Content-Range, anything else unsatisfiable 416 with `Content-Range: bytes */length`; ETag is the quoted sha256; Accept-Ranges: bytes",
                "x-outpost-role": "device, operator",
                "security": [{"bearer": []}],
                "parameters": [{"name": "Range", "in": "header", "required": false, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the whole artifact"}, "206": {"description": "the range asked for"},
                    "401": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"},
                    "404": {"$ref": "#/components/responses/Error"}, "416": {"$ref": "#/components/responses/Error"}}
            }},
            "/models/{name}/{version}/deprecate": {"post": op("Deprecate a version (optional body {reason}); it stays downloadable", "operator", None)}
    })
}

/// Rollouts and the devices' assignment check.
fn rollout_paths() -> Value {
    json!({
        "/rollouts": {
            "get": op("Every rollout's header (plan, state, stage, history, last gate report), newest first", "operator", None),
            "post": op("Create a rollout from a plan: model, version, target {tags, devices}, stages [{size: 1 | \"25%\", min_dwell_secs, min_reporting, approval}], gates {install, quality, latency, drift}, spread_tag", "operator", None)
        },
        "/rollouts/{id}": {"get": op("A rollout's status: its stages with their devices (phase, online, active version, target) and the gate figures, canary against control", "operator", None)},
        "/rollouts/{id}/pause": {"post": op("Stop promoting stages; assigned devices still converge", "operator", None)},
        "/rollouts/{id}/resume": {"post": op("Continue a paused rollout", "operator", None)},
        "/rollouts/{id}/approve": {"post": op("Promote a stage that passed its gates and awaits approval", "operator", None)},
        "/rollouts/{id}/abort": {"post": op("Abort (optional body {reason}): devices that got the new version go back to their previous one", "operator", None)},
        "/devices/{id}/assignment": {"get": {
            "summary": "What the device should run: an assign_model body (200) or nothing (204). The device itself, or an operator",
            "x-outpost-role": "device, operator",
            "security": [{"bearer": []}],
            "responses": {"200": {"description": "assign_model"}, "204": {"description": "nothing assigned"},
                "401": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"}}
        }}
    })
}

/// The document.
pub fn spec() -> Value {
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "Outpost fleet API", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": "/api/v1"}],
        "paths": {
            "/devices": {
                "get": op("List enrolled devices", "operator", None),
                "post": op("Enroll a device: credentials (shown once) and an agent config", "admin", Some("#/components/schemas/EnrollRequest"))
            },
            "/devices/{id}": {"get": op("One device", "operator", None)},
            "/devices/{id}/revoke": {"post": op("Revoke a device: no more connections, uploads or trusted messages", "admin", None)},
            "/fleet/devices": {"get": op("Devices with their online state, last status and totals from telemetry", "operator", None)},
            "/fleet/devices/{id}/windows": {"get": op("Stored window summaries of a device for one model version (?model=&version=&from=&to=&limit=)", "operator", None)},
            "/drift": {"get": op("Drift status per model version and tag group (?model=&version=)", "operator", None)},
            "/drift/alerts": {"get": op("Drift alerts, oldest first (?after=&limit=)", "operator", None)},
            "/ingest": {"get": op("Messages accepted and dropped, by reason", "operator", None)},
            "/samples/{sha256}": {"put": {
                "summary": "Upload a flagged sample: multipart `meta` (SampleMeta JSON) and `image` (docs/PROTOCOL.md)",
                "x-outpost-role": "device",
                "security": [{"bearer": []}],
                "responses": {"200": {"description": "already stored"}, "201": {"description": "stored"},
                    "413": {"$ref": "#/components/responses/Error"}, "422": {"$ref": "#/components/responses/Error"}}
            }},
            "/annotate/claim": {"post": op("Claim up to `count` samples of `model` (least confident first, balanced over classes and sites)", "annotator", Some("#/components/schemas/ClaimRequest"))},
            "/annotate/counts": {"get": op("Samples per state (?model=)", "annotator", None)},
            "/annotate/samples/{sha256}": {"get": op("A sample with its pre-annotations and state", "annotator", None)},
            "/annotate/samples/{sha256}/image": {"get": op("The sample's image, as the camera encoded it", "annotator", None)},
            "/annotate/samples/{sha256}/label": {"post": op("Label a claimed sample: {kind: classify, class} or {kind: detect, boxes: [{class, bbox}]}", "annotator", None)},
            "/annotate/samples/{sha256}/skip": {"post": op("Give a claimed sample back", "annotator", None)},
            "/annotate/samples/{sha256}/reject": {"post": op("Reject a claimed sample as unusable ({reason})", "annotator", None)},
            "/annotate/samples/{sha256}/review": {"post": op("Accept a label or send it back ({decision: accept} | {decision: send_back, note})", "operator", None)},
            "/exports": {"post": op("Export labelled samples (yolo, coco, imagenet, label-studio) into a folder on the fleet's machine", "operator", None)},
            "/imports/label-studio": {"post": op("Apply a Label Studio JSON export as labels", "operator", None)},
            "/users": {"post": op("Create an API token for a user with a role (annotator, operator, admin)", "admin", Some("#/components/schemas/UserRequest"))},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OK"}}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "EnrollRequest": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": false,
                    "properties": {
                        "name": {"type": "string"},
                        "tags": {"type": "object", "additionalProperties": {"type": "string"}}
                    }
                },
                "ClaimRequest": {
                    "type": "object",
                    "required": ["model"],
                    "additionalProperties": false,
                    "properties": {"model": {"type": "string"}, "count": {"type": "integer", "minimum": 1}}
                },
                "UserRequest": {
                    "type": "object",
                    "required": ["name", "role"],
                    "additionalProperties": false,
                    "properties": {
                        "name": {"type": "string"},
                        "role": {"type": "string", "enum": ["annotator", "operator", "admin"]}
                    }
                },
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}
                }
            },
            "responses": {
                "Error": {"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        }
    });
    for extra in [model_paths(), rollout_paths()] {
        if let (Some(paths), Value::Object(extra)) = (doc["paths"].as_object_mut(), extra) {
            paths.extend(extra);
        }
    }
    doc
}

pub async fn document() -> Json<Value> {
    Json(spec())
}
