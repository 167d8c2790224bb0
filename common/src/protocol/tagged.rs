//! Deserializing a `body` tagged by `kind` without buffering it.
//!
//! Design: serde's derived internally tagged enums buffer the whole body into an intermediate tree before they
//! look at the tag; for telemetry that was most of the decoding cost on the fleet's ingest path. Every sender this
//! project ships writes `kind` first (serde's derived serializer does), so [`deserialize`] reads the first key and,
//! when it is `kind`, deserializes the variant straight from the rest of the map. Any other order is still valid
//! JSON and is accepted through a [`serde_json::Value`], with the same errors (unknown and duplicate fields,
//! unknown kinds).

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

/// A body enum whose variant is named by a `kind` field next to the variant's own fields. (`pub` in a private
/// module: the public body types implement it, and nothing outside the crate can name it.)
pub trait Tagged<'de>: Sized {
    /// The `kind` values, deserialized from a string.
    type Kind: Deserialize<'de>;
    /// What the body is, for error messages ("a telemetry body").
    const WHAT: &'static str;

    /// Deserializes the variant `kind` names from the body's other fields.
    fn variant<D: Deserializer<'de>>(kind: Self::Kind, fields: D) -> Result<Self, D::Error>;
}

/// See the module documentation.
pub(crate) fn deserialize<'de, T: Tagged<'de>, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
    deserializer.deserialize_map(BodyVisitor(PhantomData))
}

struct BodyVisitor<T>(PhantomData<T>);

impl<'de, T: Tagged<'de>> Visitor<'de> for BodyVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} (an object with a `kind`)", T::WHAT)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Err(de::Error::missing_field("kind"));
        };
        if first == "kind" {
            let kind = map.next_value::<T::Kind>()?;
            return T::variant(kind, MapAccessDeserializer::new(map));
        }
        // `kind` comes later: gather the fields, then take it out.
        let mut fields = serde_json::Map::new();
        let mut entry = Some((first, map.next_value::<serde_json::Value>()?));
        while let Some((key, value)) = entry {
            if fields.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            fields.insert(key, value);
            entry = map.next_entry()?;
        }
        let kind = fields.remove("kind").ok_or_else(|| de::Error::missing_field("kind"))?;
        let kind = T::Kind::deserialize(kind).map_err(de::Error::custom)?;
        T::variant(kind, serde_json::Value::Object(fields)).map_err(de::Error::custom)
    }
}
