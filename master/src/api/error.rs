//! API errors: one type, converted once into a status and `{"error": "…"}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::supervisor::SupError;

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("Method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("Request body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Internal(String),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(why) = self {
            tracing::error!(cause = %why, "request failed");
        }
        super::json(
            self.status_code(),
            &serde_json::json!({ "error": self.to_string() }),
        )
    }
}

impl From<SupError> for ApiError {
    fn from(e: SupError) -> Self {
        match e {
            SupError::NotFound => ApiError::NotFound("Instance not found".into()),
            SupError::Invalid(m) => ApiError::BadRequest(m),
            SupError::Conflict(m) => ApiError::Conflict(m),
            SupError::Store(m) => ApiError::Internal(m),
        }
    }
}
