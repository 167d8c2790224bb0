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

/// The document.
pub fn spec() -> Value {
    json!({
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
    })
}

pub async fn document() -> Json<Value> {
    Json(spec())
}
