//! The store's error type, shared by the master's [`Store`](super::Store) and the
//! worker's [`LocalStore`](super::LocalStore).

use std::path::PathBuf;

use crate::api::{Kind, ObjectKey};

/// What went wrong in a store call.
///
/// The first variants are the caller's problem (the request does not fit the stored
/// state) and carry the object's key; the others are the store's own problem (the file
/// cannot be opened, read or written) and carry the file's path. [`StoreError::reason`]
/// gives the Kubernetes `reason` a response should carry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{} \"{}\" already exists", resource(.0.kind), .0.name)]
    AlreadyExists(ObjectKey),

    #[error("{} \"{}\" not found", resource(.0.kind), .0.name)]
    NotFound(ObjectKey),

    /// The caller's resourceVersion (`expected`) is not the stored one (`actual`, 0 when
    /// the object no longer exists).
    #[error(
        "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
        resource(.key.kind), .key.name
    )]
    Conflict {
        key: ObjectKey,
        expected: u64,
        actual: u64,
    },

    /// The object cannot be stored as given (no name, a resourceVersion that is not a
    /// number).
    #[error("{} \"{}\" is invalid: {reason}", resource(.key.kind), .key.name)]
    Invalid {
        key: ObjectKey,
        reason: &'static str,
    },

    /// The database file cannot be opened: locked by another process, not a redb file,
    /// corrupt beyond repair, or its directory cannot be created.
    #[error("opening store {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },

    /// Reading or writing the file failed (I/O error, disk full, corruption found while
    /// reading). Nothing of the failed call was applied to memory.
    #[error("store {}: {source}", .path.display())]
    Storage {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },

    /// A stored object cannot be decoded.
    #[error("store {}: decoding stored object {key}: {source}", .path.display())]
    Decode {
        path: PathBuf,
        key: String,
        #[source]
        source: ciborium::de::Error<std::io::Error>,
    },

    /// The file holds something the store never writes (an object under another
    /// object's key).
    #[error("store {}: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },
}

impl StoreError {
    /// The Kubernetes status `reason` (`AlreadyExists`, `NotFound`, `Conflict`,
    /// `Invalid`, `InternalError`), as kubectl prints it in `Error from server (…)`.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::AlreadyExists(_) => "AlreadyExists",
            StoreError::NotFound(_) => "NotFound",
            StoreError::Conflict { .. } => "Conflict",
            StoreError::Invalid { .. } => "Invalid",
            _ => "InternalError",
        }
    }

    /// Whether the error is about the request rather than the store itself: retrying
    /// the same request cannot help, changing it can.
    pub fn is_client_error(&self) -> bool {
        self.reason() != "InternalError"
    }
}

/// `deployments.apps`, `pods`: the resource name the API server puts in its messages.
fn resource(kind: Kind) -> String {
    match kind.api_version().split_once('/') {
        Some((group, _)) => format!("{}.{group}", kind.plural()),
        None => kind.plural().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_like_the_api_server() {
        let web = ObjectKey::new(Kind::Deployment, "default", "web");
        assert_eq!(
            StoreError::AlreadyExists(web.clone()).to_string(),
            "deployments.apps \"web\" already exists"
        );
        assert_eq!(
            StoreError::NotFound(ObjectKey::new(Kind::Pod, "default", "p")).to_string(),
            "pods \"p\" not found"
        );
        let conflict = StoreError::Conflict {
            key: web,
            expected: 3,
            actual: 4,
        };
        assert_eq!(
            conflict.to_string(),
            "Operation cannot be fulfilled on deployments.apps \"web\": the object has been \
             modified; please apply your changes to the latest version and try again"
        );
        assert_eq!(conflict.reason(), "Conflict");
        assert!(conflict.is_client_error());
    }
}
