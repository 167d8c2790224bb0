//! What the queue needs to know from the rest of the fleet: a device's site (from the device registry's tags) and
//! a model version's class names (from the model registry).

use std::collections::HashMap;
use std::fmt;

use outpost_common::protocol::ModelRef;

/// Implemented by the service from its device and model registries.
pub trait Catalog: Send + Sync + fmt::Debug + 'static {
    /// The site a device belongs to (its `site=...` tag), for balancing; `None` when it has none.
    fn site(&self, device: &str) -> Option<String>;
    /// The class names of a model version, indexed by class id; `None` when the registry does not know it.
    fn labels(&self, model: &ModelRef) -> Option<Vec<String>>;
}

/// A fixed catalog: for tests, the CLI, and a fleet without registries.
#[derive(Debug, Clone, Default)]
pub struct StaticCatalog {
    /// Device id → site.
    pub sites: HashMap<String, String>,
    /// Model name → class names (every version alike).
    pub labels: HashMap<String, Vec<String>>,
}

impl Catalog for StaticCatalog {
    fn site(&self, device: &str) -> Option<String> {
        self.sites.get(device).cloned()
    }

    fn labels(&self, model: &ModelRef) -> Option<Vec<String>> {
        self.labels.get(&model.name).cloned()
    }
}
