//! The path-parameter extractor of the switch's control API and the orchestrator's tenant API:
//! axum's `Path`, with a rejection (a segment that is not UTF-8, a number that does not parse)
//! answered in the API's own JSON error format instead of axum's plain text.

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, Path};
use axum::response::IntoResponse;

/// An API error type that can say a path parameter is bad.
pub trait PathRejection: IntoResponse + Send {
    /// The error for a bad path parameter; `message` says what is wrong with it.
    fn bad_path(message: String) -> Self;
}

/// A path parameter `T` whose rejection is the API error `E`. Each API names its own:
/// `type Param<T> = kangaroo_control::extract::Param<T, ApiError>;`, used as
/// `Param(name, _): Param<String>`.
pub struct Param<T, E>(pub T, pub PhantomData<fn() -> E>);

impl<S, T, E> FromRequestParts<S> for Param<T, E>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
    E: PathRejection,
{
    type Rejection = E;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, E> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Param(v, PhantomData))
            .map_err(|e| E::bad_path(e.body_text()))
    }
}
