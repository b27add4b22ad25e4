//! `read-path`: what the gateway adds to a read against what a bare proxy adds.
//!
//! The gateway's one read that it forwards to a service is a case read: `ReadCase` (another
//! agency's staff read a case) authenticates the caller's certificate, checks the acting user,
//! asks the Cedar policy, fetches the file from the commission's `CaseSource.ExportCase`, filters
//! it to what the reader may see and records the read in the ledger. So the same service call,
//! `ExportCase` on the commission, is measured three ways: directly (mTLS, the gateway's
//! certificate), through nginx (`grpc_pass grpcs://`, mTLS on both hops) and through the gateway
//! (`ReadCase` as school 1, the referrer). The delivery-state query (`GetDeliveryStatus`), which
//! the gateway answers from its own store without an upstream hop, is measured beside them.
//! Calls are sequential (one in flight per path), in rounds that rotate the order of the paths,
//! so that a disturbance of the machine falls on every path alike.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use referral_core::pki::ComponentIdentity;
use referral_proto::v1::{
    DecideHelpRequestRequest, ExportCaseRequest, GetDeliveryStatusRequest, OpenCase, PurposeOfUse,
    ReadCaseRequest, SubmitHelpRequestRequest, agency_staff_client::AgencyStaffClient,
    case_source_client::CaseSourceClient, decide_help_request_request,
    gateway_client::GatewayClient, help_request_decision,
};
use serde_json::json;

use crate::{
    Options,
    durable_k::met,
    hub::HubSetup,
    load::{Load, k_about},
    nginx::{Nginx, ProxyPlan},
    stats::{Samples, Summary, added, ms, ratio, show_ratio},
};

const PATHS: [&str; 4] = ["direct", "nginx", "gateway", "gateway-local"];

pub async fn run(options: &Options) -> anyhow::Result<(serde_json::Value, String)> {
    let setup = HubSetup::new(None)?;
    let mut hub = setup.spawn()?;
    setup.wait_ready(&mut hub, Duration::from_secs(60)).await?;
    let (k_id, case) = open_case(&setup).await?;

    let commission = ComponentIdentity::Agency("commission".into());
    let commission_endpoint = setup.endpoint("commission")?;
    let commission_port: u16 = commission_endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("the commission's port")?;
    let nginx = Nginx::start(&ProxyPlan {
        server: &setup.tls_files(&commission),
        upstream_client: &setup.tls_files(&ComponentIdentity::Gateway),
        upstream_port: commission_port,
        upstream_name: &commission.server_name(),
    })
    .await?;
    let mut direct = CaseSourceClient::new(
        setup
            .mtls_channel(
                &ComponentIdentity::Gateway,
                &commission,
                &commission_endpoint,
            )
            .await?,
    );
    let mut proxied = CaseSourceClient::new(
        setup
            .mtls_channel(
                &ComponentIdentity::Gateway,
                &commission,
                &format!("https://127.0.0.1:{}", nginx.port),
            )
            .await?,
    );
    let mut gateway = GatewayClient::new(setup.school_1_gateway_channel().await?);
    let acting = setup.school_director()?;

    // One call of a path; its latency.
    let mut call = async |path: usize| -> anyhow::Result<Duration> {
        let started = Instant::now();
        match path {
            0 => {
                direct
                    .export_case(ExportCaseRequest {
                        case_reference: case.clone(),
                    })
                    .await?;
            }
            1 => {
                proxied
                    .export_case(ExportCaseRequest {
                        case_reference: case.clone(),
                    })
                    .await?;
            }
            2 => {
                gateway
                    .read_case(ReadCaseRequest {
                        acting_user: Some(acting.clone()),
                        case_reference: case.clone(),
                        purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
                        reason: String::new(),
                    })
                    .await?;
            }
            _ => {
                gateway
                    .get_delivery_status(GetDeliveryStatusRequest {
                        message_id: k_id.clone(),
                    })
                    .await?;
            }
        }
        Ok(started.elapsed())
    };

    // Warm-up: connections, TLS sessions, caches; not recorded.
    for (path, name) in PATHS.iter().enumerate() {
        for _ in 0..options.warmup_calls {
            call(path).await.with_context(|| format!("{name} path"))?;
        }
    }
    let mut samples = vec![Samples::new(); PATHS.len()];
    for round in 0..options.rounds {
        for offset in 0..PATHS.len() {
            let path = (round + offset) % PATHS.len();
            for _ in 0..options.calls_per_round {
                samples[path].record(call(path).await?);
            }
        }
    }
    drop(nginx);
    hub.stop()?;

    let s: Vec<Summary> = samples.iter().map(Samples::summary).collect();
    let (d, n, g, l) = (s[0], s[1], s[2], s[3]);
    let mut table = format!(
        "read-path: sequential calls, {} rounds x {} calls per path, {} warm-up calls per path\n",
        options.rounds, options.calls_per_round, options.warmup_calls
    );
    table.push_str(&format!(
        "{:<14} {:<60} {:>8} {:>8} {:>12} {:>12}\n",
        "PATH", "WHAT", "P50 ms", "P99 ms", "ADDED P50", "ADDED P99"
    ));
    let what = [
        "client -> commission ExportCase (mTLS)",
        "client -> nginx -> commission ExportCase (mTLS both hops)",
        "client -> gateway ReadCase -> commission ExportCase",
        "client -> gateway GetDeliveryStatus (its own store)",
    ];
    for (i, summary) in s.iter().enumerate() {
        table.push_str(&format!(
            "{:<14} {:<60} {:>8} {:>8} {:>12} {:>12}\n",
            PATHS[i],
            what[i],
            ms(summary.p50_us),
            ms(summary.p99_us),
            if i == 0 {
                "-".into()
            } else {
                ms(added(summary.p50_us, d.p50_us))
            },
            if i == 0 {
                "-".into()
            } else {
                ms(added(summary.p99_us, d.p99_us))
            },
        ));
    }
    let r = |a: u64, b: u64| ratio(a as f64, b as f64);
    table.push_str(&format!(
        "ratios p50/p99: gateway/direct {}/{}, nginx/direct {}/{}, gateway/nginx {}/{}\n",
        show_ratio(r(g.p50_us, d.p50_us)),
        show_ratio(r(g.p99_us, d.p99_us)),
        show_ratio(r(n.p50_us, d.p50_us)),
        show_ratio(r(n.p99_us, d.p99_us)),
        show_ratio(r(g.p50_us, n.p50_us)),
        show_ratio(r(g.p99_us, n.p99_us)),
    ));
    let p50_ok = g.p50_us <= n.p50_us;
    let p99_ok = g.p99_us <= n.p99_us;
    table.push_str(&format!(
        "target (the gateway adds no more than nginx): p50 {}, p99 {}\n",
        met(p50_ok),
        met(p99_ok)
    ));
    let paths: serde_json::Map<String, serde_json::Value> = PATHS
        .iter()
        .zip(&s)
        .map(|(name, summary)| ((*name).to_owned(), summary.to_json()))
        .collect();
    let json = json!({
        "rounds": options.rounds,
        "calls_per_round": options.calls_per_round,
        "warmup_calls": options.warmup_calls,
        "nginx": crate::nginx::version(),
        "paths": paths,
        "ratios": {
            "gateway_to_direct": {"p50": r(g.p50_us, d.p50_us), "p99": r(g.p99_us, d.p99_us)},
            "nginx_to_direct": {"p50": r(n.p50_us, d.p50_us), "p99": r(n.p99_us, d.p99_us)},
            "gateway_to_nginx": {"p50": r(g.p50_us, n.p50_us), "p99": r(g.p99_us, n.p99_us)},
            "gateway_local_to_direct": {"p50": r(l.p50_us, d.p50_us), "p99": r(l.p99_us, d.p99_us)},
        },
        "targets": {"gateway_p50_at_most_nginx": p50_ok, "gateway_p99_at_most_nginx": p99_ok},
    });
    Ok((json, table))
}

/// School 1's director submits a K; once delivered the commission's secretary opens a case on it
/// with curator 1. The K's message id and the case reference.
async fn open_case(setup: &HubSetup) -> anyhow::Result<(String, String)> {
    let drain = Load::prepare(setup, 0, crate::load::Entry::StaffApi).await?;
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::get("Asia/Almaty")?)
        .date();
    let mut school = AgencyStaffClient::new(setup.staff_channel("school-1").await?);
    let mut request = tonic::Request::new(SubmitHelpRequestRequest {
        idempotency_key: "read-path-k".into(),
        recipient_agency_id: String::new(),
        help_request: Some(k_about(0, today)),
    });
    bearer(&mut request, &setup.token("school-1", "director")?)?;
    let k_id = school
        .submit_help_request(request)
        .await?
        .into_inner()
        .message_id;
    drain
        .drained(Instant::now() + Duration::from_secs(60))
        .await?;
    let mut commission = AgencyStaffClient::new(setup.staff_channel("commission").await?);
    let mut request = tonic::Request::new(DecideHelpRequestRequest {
        message_id: k_id.clone(),
        idempotency_key: "read-path-decision".into(),
        outcome: Some(decide_help_request_request::Outcome::OpenCase(OpenCase {
            curator_user_id: "curator-1".into(),
        })),
    });
    bearer(&mut request, &setup.token("commission", "secretary")?)?;
    let decision = commission.decide_help_request(request).await?.into_inner();
    drain
        .drained(Instant::now() + Duration::from_secs(60))
        .await?;
    match decision.decision.and_then(|d| d.outcome) {
        Some(help_request_decision::Outcome::CaseOpened(c)) => Ok((k_id, c.case_reference)),
        other => bail!("expected a case, got {other:?}"),
    }
}

fn bearer<T>(request: &mut tonic::Request<T>, token: &str) -> anyhow::Result<()> {
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(())
}
