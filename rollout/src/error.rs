//! The service's one error type: every refusal carries the HTTP status it is answered with, a
//! stable kebab-case `kind` (the `error.kind` of the JSON body) and a sentence naming the
//! node, pool, release or setting involved.

use crate::store::StoreError;

/// A refused or failed request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No credentials, or credentials the server does not know.
    #[error("{0}")]
    Unauthenticated(String),
    /// Known credentials that may not do this (wrong kind, another node, another pool).
    #[error("{0}")]
    Forbidden(String),
    /// The request body does not parse or breaks a rule; nothing was changed.
    #[error("{what}: {message}")]
    BadRequest { what: &'static str, message: String },
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (a rollout already running, a node already
    /// enrolled, a release sequence not above the channel's newest …).
    #[error("{0}")]
    Conflict(String),
    /// A release that does not verify against the trusted keys.
    #[error("release refused: {0}")]
    Unsigned(#[source] basalt_manifest::Error),
    /// The database failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// Something on the server side failed (randomness, a blocking task).
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Error::Unauthenticated(_) => 401,
            Error::Forbidden(_) => 403,
            Error::BadRequest { .. } => 400,
            Error::NotFound(_) => 404,
            Error::Conflict(_) | Error::Store(StoreError::Conflict(_)) => 409,
            Error::Unsigned(_) => 422,
            Error::Store(_) | Error::Internal(_) => 500,
        }
    }

    /// The stable name of the failure class.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unauthenticated(_) => "unauthenticated",
            Error::Forbidden(_) => "forbidden",
            Error::BadRequest { .. } => "bad-request",
            Error::NotFound(_) => "not-found",
            Error::Conflict(_) | Error::Store(StoreError::Conflict(_)) => "conflict",
            Error::Unsigned(_) => "release-not-trusted",
            Error::Store(_) => "storage",
            Error::Internal(_) => "internal",
        }
    }

    pub(crate) fn bad(what: &'static str, message: impl std::fmt::Display) -> Self {
        Error::BadRequest {
            what,
            message: message.to_string(),
        }
    }
}

/// Result alias of the service.
pub type Result<T, E = Error> = std::result::Result<T, E>;
