//! Need to know at the commission (issue 4). The commission holds the case files, but what a
//! person sees of one is the gateway's decision: every read of a case file goes through the
//! gateway's `FilterCaseRead` (recorded in its ledger; the chair's break-the-glass alerts the
//! curator), the gateway reads files for other agencies through `CaseSource` (gateway only), and
//! grants and the disclosure history are the gateway's, asked for as the calling user.

use referral_agency::AgencyHost;
use referral_core::{ServiceError, ServiceResult};
use referral_proto::v1::{
    ActingUser, CaseFile, DisclosureGrant, ExportCaseRequest, FilterCaseReadRequest,
    GetCaseRequest, GrantDisclosureRequest, ListDisclosureGrantsRequest,
    ListDisclosureGrantsResponse, ListDisclosuresRequest, ListDisclosuresResponse,
    RevokeDisclosureRequest, case_source_server::CaseSource,
};
use tonic::{Request, Response, Status};

use crate::{case, read};

/// The gateway's status, as the caller's answer (its refusals are the caller's to see; an
/// unreachable gateway is `UNAVAILABLE`).
fn from_gateway(status: Status) -> ServiceError {
    match status.code() {
        tonic::Code::InvalidArgument
        | tonic::Code::PermissionDenied
        | tonic::Code::NotFound
        | tonic::Code::FailedPrecondition => ServiceError::Refused(status),
        code => {
            tracing::warn!(?code, "the gateway did not answer a case-file call");
            ServiceError::Unavailable("the gateway cannot be reached: try again".into())
        }
    }
}

/// Refuses, before anything is stored, to address an agency the case's report must never
/// reach (the residential institution a child disclosed about, the institution whose director
/// the report implicates). The gateway refuses such a message too; checking here tells the
/// curator at once instead of leaving a message that can never be delivered.
pub(crate) async fn check_may_reach<'a>(
    host: &AgencyHost,
    row: &case::CaseRow,
    agencies: impl IntoIterator<Item = &'a str>,
    field: &str,
) -> ServiceResult<()> {
    let mut conn = host.pool().acquire().await?;
    let Some(k) = read::help_request(&mut conn, &row.help_request_message_id).await? else {
        return Ok(());
    };
    let excluded: Vec<String> = match k.payload.and_then(|p| p.form) {
        Some(referral_proto::v1::payload::Form::HelpRequest(k)) => k
            .circumstances
            .map(|c| {
                [c.child_residence_agency_id, c.implicated_director_agency_id]
                    .into_iter()
                    .filter(|a| !a.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    if agencies
        .into_iter()
        .any(|a| excluded.iter().any(|e| e == a))
    {
        return Err(ServiceError::PermissionDenied(format!(
            "{field}: nothing of this case may reach that agency (the report concerns it)"
        )));
    }
    Ok(())
}

/// The case file as the policy lets `user` see it.
pub(crate) async fn filter_read(
    host: &AgencyHost,
    user: &ActingUser,
    request: &GetCaseRequest,
    file: CaseFile,
) -> ServiceResult<CaseFile> {
    let view = host
        .gateway()
        .filter_case_read(FilterCaseReadRequest {
            acting_user: Some(user.clone()),
            purpose_of_use: request.purpose_of_use,
            reason: request.reason.clone(),
            case_file: Some(file),
        })
        .await
        .map_err(from_gateway)?
        .into_inner();
    Ok(view.case_file.unwrap_or_default())
}

/// Asks the gateway whether `user` may see one section of a case (recorded as a read of the
/// case's summary with that section); `PERMISSION_DENIED` when not.
pub(crate) async fn check_section(
    host: &AgencyHost,
    user: &ActingUser,
    case_reference: &str,
    section: referral_proto::v1::Sensitivity,
) -> ServiceResult<()> {
    let view = host
        .gateway()
        .filter_case_read(FilterCaseReadRequest {
            acting_user: Some(user.clone()),
            purpose_of_use: referral_proto::v1::PurposeOfUse::CareManagement as i32,
            reason: String::new(),
            case_file: Some(CaseFile {
                summary: Some(referral_proto::v1::CaseSummary {
                    case_reference: case_reference.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .map_err(from_gateway)?
        .into_inner();
    if view.sections_shown.contains(&(section as i32)) {
        Ok(())
    } else {
        Err(ServiceError::PermissionDenied(
            "the case record is for the case team and explicit grants".into(),
        ))
    }
}

pub(crate) async fn grant(
    host: &AgencyHost,
    user: ActingUser,
    mut request: GrantDisclosureRequest,
) -> ServiceResult<DisclosureGrant> {
    request.acting_user = Some(user);
    Ok(host
        .gateway()
        .grant_disclosure(request)
        .await
        .map_err(from_gateway)?
        .into_inner())
}

pub(crate) async fn revoke(
    host: &AgencyHost,
    user: ActingUser,
    mut request: RevokeDisclosureRequest,
) -> ServiceResult<DisclosureGrant> {
    request.acting_user = Some(user);
    Ok(host
        .gateway()
        .revoke_disclosure(request)
        .await
        .map_err(from_gateway)?
        .into_inner())
}

pub(crate) async fn list_grants(
    host: &AgencyHost,
    user: ActingUser,
    mut request: ListDisclosureGrantsRequest,
) -> ServiceResult<ListDisclosureGrantsResponse> {
    request.acting_user = Some(user);
    Ok(host
        .gateway()
        .list_disclosure_grants(request)
        .await
        .map_err(from_gateway)?
        .into_inner())
}

pub(crate) async fn list_disclosures(
    host: &AgencyHost,
    user: ActingUser,
    mut request: ListDisclosuresRequest,
) -> ServiceResult<ListDisclosuresResponse> {
    request.acting_user = Some(user);
    Ok(host
        .gateway()
        .list_disclosures(request)
        .await
        .map_err(from_gateway)?
        .into_inner())
}

/// Called by the gateway only: the whole file, which the gateway filters before anyone sees it.
pub struct CaseSourceApi {
    pub(crate) host: AgencyHost,
}

#[tonic::async_trait]
impl CaseSource for CaseSourceApi {
    async fn export_case(
        &self,
        request: Request<ExportCaseRequest>,
    ) -> Result<Response<CaseFile>, Status> {
        let reference = request.into_inner().case_reference;
        let mut conn = self
            .host
            .pool()
            .acquire()
            .await
            .map_err(|e| Status::from(ServiceError::from(e)))?;
        let row = case::load(&mut conn, &reference)
            .await
            .map_err(Status::from)?
            .ok_or_else(|| Status::not_found("no such case"))?;
        let file = read::case_file(
            &mut conn,
            &row,
            self.host.directory(),
            self.host.agency_id(),
        )
        .await
        .map_err(Status::from)?;
        Ok(Response::new(file))
    }
}
