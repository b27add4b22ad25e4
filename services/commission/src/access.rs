//! Who may read and change a case file (M:2409-2413, DOMAIN.md section 5): the curator appointed
//! to the case works it; the commission's secretary and chair read every case and act on any;
//! nobody else. A recommendation of placement or separation is a commission meeting's decision
//! (M:2518-2525), so only the secretary or the chair records it.

use referral_core::{ServiceError, directory::role_name};
use referral_proto::v1::{ActingUser, Role};

/// How a commission member relates to case files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A curator: their own cases only.
    Curator,
    /// The secretary or the chair: every case.
    Commission,
}

/// The caller's access, or `PERMISSION_DENIED` for a role that has none.
pub fn of(user: &ActingUser) -> Result<Access, ServiceError> {
    match Role::try_from(user.role).unwrap_or(Role::Unspecified) {
        Role::CommissionCurator => Ok(Access::Curator),
        Role::CommissionSecretary | Role::CommissionChair => Ok(Access::Commission),
        role => Err(ServiceError::PermissionDenied(format!(
            "case files are for the commission's curators, secretary and chair, not a {}",
            role_name(role)
        ))),
    }
}

/// Checks that the caller may read and work the case whose curator is `curator_user_id`.
pub fn check_case(user: &ActingUser, curator_user_id: &str) -> Result<(), ServiceError> {
    match of(user)? {
        Access::Commission => Ok(()),
        Access::Curator if user.user_id == curator_user_id => Ok(()),
        Access::Curator => Err(ServiceError::PermissionDenied(
            "a curator works only the cases they are appointed to".into(),
        )),
    }
}

/// Checks that the caller may record a recommendation of placement or separation.
pub fn check_placement(user: &ActingUser) -> Result<(), ServiceError> {
    match of(user)? {
        Access::Commission => Ok(()),
        Access::Curator => Err(ServiceError::PermissionDenied(
            "a recommendation of placement or separation is decided at a commission meeting: \
             only the commission's secretary or chair records it"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, role: Role) -> ActingUser {
        ActingUser {
            user_id: id.into(),
            agency_id: "commission".into(),
            role: role as i32,
            display_name: String::new(),
        }
    }

    #[test]
    fn curators_work_their_own_cases_and_the_secretary_every_case() {
        let curator = user("curator-1", Role::CommissionCurator);
        assert!(check_case(&curator, "curator-1").is_ok());
        assert!(matches!(
            check_case(&curator, "curator-2"),
            Err(ServiceError::PermissionDenied(_))
        ));
        assert!(check_case(&user("sec", Role::CommissionSecretary), "curator-2").is_ok());
        assert!(check_case(&user("chair", Role::CommissionChair), "curator-2").is_ok());
        assert!(matches!(
            check_case(&user("x", Role::SchoolDirector), "x"),
            Err(ServiceError::PermissionDenied(_))
        ));
    }

    #[test]
    fn only_a_commission_meeting_recommends_placement() {
        assert!(check_placement(&user("sec", Role::CommissionSecretary)).is_ok());
        assert!(check_placement(&user("chair", Role::CommissionChair)).is_ok());
        assert!(check_placement(&user("c", Role::CommissionCurator)).is_err());
    }
}
