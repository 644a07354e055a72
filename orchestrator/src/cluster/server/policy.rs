//! What a tenant's deploy must respect beyond its spec: the runtimes
//! its admin allows, the cluster's published ports (one service each),
//! and its internet policy.

use super::*;

pub(super) fn check_deploy(
    app: &App,
    t: &str,
    record: &crate::cluster::auth::Tenant,
    svc: &spec::Service,
) -> Result<(), ApiError> {
    if !record.runtimes.contains(&svc.spec.runtime) {
        let allowed: Vec<String> = record
            .runtimes
            .iter()
            .map(|r| format!("{r:?}").to_lowercase())
            .collect();
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "runtime {:?} is not allowed for tenant {t} (it may use {}): an admin allows it with `tenant update --runtimes`",
                format!("{:?}", svc.spec.runtime).to_lowercase(),
                allowed.join(", ")
            ),
        ));
    }
    if let Some(why) = app
        .cluster
        .ingress_clash(t, &svc.spec.name, &svc.spec.ports)?
    {
        return Err(ApiError(StatusCode::CONFLICT, format!("ports: {why}")));
    }
    if !record.internet {
        if let Some(what) = svc.spec.egress.breaks_no_internet() {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("egress {what}: tenant {t} may not reach the internet (its admin's policy; `tenant update --internet allow` changes it)"),
            ));
        }
    }
    Ok(())
}
