//! The admin's requests about tenants and tokens: create, list and change
//! tenants; make join tokens; list and revoke tokens.

use super::*;

pub(super) async fn create_tenant(
    State(app): State<App>,
    headers: HeaderMap,
    text: String,
) -> ApiResult {
    admin(&app, &headers)?;
    let t: api::NewTenant = body(&text)?;
    let token = app.cluster.create_tenant(&t.name, t.quota, &t.runtimes)?;
    // Nobody holds the token yet: nothing is deployed between the two writes.
    if t.internet == Some(false) {
        app.cluster
            .update_tenant(&t.name, Default::default(), None, Some(false))?;
    }
    ok(api::TenantCreated {
        name: t.name,
        token,
    })
}

pub(super) async fn tenants(State(app): State<App>, headers: HeaderMap) -> ApiResult {
    admin(&app, &headers)?;
    ok(app.cluster.tenants()?)
}

pub(super) async fn update_tenant(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
    text: String,
) -> ApiResult {
    admin(&app, &headers)?;
    let u: api::TenantUpdate = body(&text)?;
    ok(app
        .cluster
        .update_tenant(&name, u.quota, u.runtimes.as_deref(), u.internet)?)
}

pub(super) async fn join_token(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    admin(&app, &headers)?;
    let ttl_ms = match q.as_deref() {
        None | Some("") => Some(crate::cluster::auth::JOIN_TOKEN_TTL_MS),
        Some(q) => match q.strip_prefix("ttl_s=").and_then(|n| n.parse::<u64>().ok()) {
            Some(0) => None,
            Some(s) => Some(s.saturating_mul(1000)),
            None => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("query {q:?}: only ttl_s=N (seconds; 0: until revoked)"),
                ))
            }
        },
    };
    let (token, expires_ms) = app.cluster.create_join_token(app.clock.now_ms(), ttl_ms)?;
    // The CA's hash rides along: the node pins it (kubeadm's discovery).
    let token = match &app.discovery {
        Some(hash) => format!("{token}.{hash}"),
        None => token,
    };
    ok(api::TokenAnswer { token, expires_ms })
}

pub(super) async fn tokens(State(app): State<App>, headers: HeaderMap) -> ApiResult {
    admin(&app, &headers)?;
    ok(app.cluster.list_tokens(app.clock.now_ms())?)
}

pub(super) async fn revoke_token(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    admin(&app, &headers)?;
    ok(app.cluster.revoke_token(&id, app.clock.now_ms())?)
}
