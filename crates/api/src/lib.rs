//! shoal-api: the object model shared by every part of Shoal.
//!
//! Objects travel as `serde_json::Value` (what the store keeps and the wire carries); the
//! Kubernetes types from k8s-openapi are the schema each kind is checked against. This crate
//! does no IO and knows no async runtime (`watch` names a stream type, from futures-core).

pub mod admission;
pub mod apply;
pub mod defaults;
pub mod error;
pub mod ingress;
pub mod meta;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod quantity;
pub mod resources;
pub mod selector;
pub mod strategic;
pub mod table;
pub mod token;
pub mod validation;
pub mod watch;
pub mod yaml;

pub use error::{ApiError, FieldError};
pub use resources::{ResourceInfo, RESOURCES};

/// The Kubernetes release whose types and behaviour Shoal serves.
pub const KUBERNETES_VERSION: (u32, u32, u32) = (1, 33, 0);
