//! Authentication (api.md §1): an API key, an HS256 JWT or the loopback bypass gives the
//! principal and its role; `X-USER-ID` then picks the acting user within what the role allows.
//! kalamd checks HTTP requests itself and WebSocket upgrades for kalam-lived
//! (`Engine::authenticate`), so the rules live only here.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use kalam_types::auth::{Identity, Presented, Role};
use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::ids::UserId;
use serde::Deserialize;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::users::{self, UserRecord};

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    user_id: Option<String>,
}

fn invalid_token() -> KalamError {
    KalamError::new(ErrorCode::InvalidToken, "Invalid token")
}

fn disabled() -> KalamError {
    KalamError::new(ErrorCode::UserDisabled, "User is disabled")
}

/// Who the request runs as, or the refusal to send (401 / 403).
pub fn authenticate(engine: &Engine, presented: &Presented) -> Result<Identity, EngineError> {
    let (principal, role) = if let Some(key) = &presented.api_key {
        // API key wins over a token.
        let user = users::by_api_key(&engine.store, key)?
            .ok_or_else(|| KalamError::new(ErrorCode::InvalidApiKey, "Invalid API key"))?;
        principal_of(&user)?
    } else if let Some(token) = &presented.bearer {
        from_token(engine, token)?
    } else if presented.malformed_authorization {
        return Err(KalamError::new(
            ErrorCode::InvalidToken,
            "Invalid token: expected 'Authorization: Bearer <token>'",
        )
        .into());
    } else if presented.bypass {
        (UserId::parse(&engine.cfg.auth.localhost_default_user)?, Role::System)
    } else {
        return Err(KalamError::new(ErrorCode::Unauthorized, "Authentication required").into());
    };
    let acting = match presented.acting.as_deref().filter(|a| !a.is_empty()) {
        None => principal.clone(),
        Some(requested) => {
            let requested = UserId::parse(requested)?;
            if role == Role::User && requested != principal {
                return Err(KalamError::new(
                    ErrorCode::PermissionDenied,
                    "permission denied: users may only act as themselves",
                )
                .into());
            }
            requested
        }
    };
    Ok(Identity { principal, role, acting })
}

fn principal_of(user: &UserRecord) -> Result<(UserId, Role), EngineError> {
    if user.deleted_at_us.is_some() {
        return Err(disabled().into());
    }
    let role = Role::parse(&user.role).ok_or_else(|| EngineError::corrupt("system_users", "unknown role"))?;
    Ok((UserId::parse(&user.user_id)?, role))
}

/// Verifies an HS256 token: signature, `exp`, and a user that exists and is not deleted.
fn from_token(engine: &Engine, token: &str) -> Result<(UserId, Role), EngineError> {
    let secret = &engine.cfg.auth.jwt_secret;
    if secret.is_empty() {
        return Err(KalamError::new(ErrorCode::InvalidToken, "Invalid token: JWT authentication is not enabled").into());
    }
    // The header names the algorithm; only HS256 is accepted (`none`, RS/ES confusion, HS512…).
    let header = jsonwebtoken::decode_header(token).map_err(|_| invalid_token())?;
    if header.alg != Algorithm::HS256 {
        return Err(invalid_token().into());
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp"]);
    validation.leeway = 0;
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => KalamError::new(ErrorCode::TokenExpired, "Token expired"),
            _ => invalid_token(),
        })?;
    let id = data.claims.user_id.or(data.claims.sub).ok_or_else(invalid_token)?;
    let id = UserId::parse(&id).map_err(|_| invalid_token())?;
    match users::get(&engine.store, id.as_str())? {
        Some(user) => principal_of(&user),
        None if engine.cfg.auth.jwt_auto_create_users => {
            let new = users::NewUser { user_id: id.as_str().to_owned(), apikey: Some(None), ..Default::default() };
            match users::create(&engine.store, new, crate::clock::wall_clock_us()) {
                Ok(_) => {}
                // Two first requests of the same new user: the other one created it.
                Err(EngineError::User(e)) if e.code == ErrorCode::UserExists => {}
                Err(e) => return Err(e),
            }
            tracing::info!(user_id = %id, "user created from a JWT");
            Ok((id, Role::User))
        }
        None => Err(invalid_token().into()),
    }
}
