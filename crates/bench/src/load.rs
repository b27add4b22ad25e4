//! The K submission load: `clients` staff clients of school 1, each on its own TLS connection,
//! submitting help requests K (each about another child) back to back through the school's staff
//! API, which stores it and sends it through the gateway; then the wait until the gateway has
//! delivered every acknowledged one to the commission.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use referral_core::{db::Database, iin::Iin};
use referral_proto::v1::{
    ActingUser, HelpRequest, Role, SendRequest, Sex, SubmitHelpRequestRequest,
    agency_staff_client::AgencyStaffClient, gateway_client::GatewayClient,
};
use tonic::transport::Channel;

use crate::{hub::HubSetup, stats::Samples};

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct LoadRun {
    pub clients: usize,
    /// Submissions acknowledged (the gateway stored them) in the measured window.
    pub acknowledged: u64,
    /// Submissions refused or failed, by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// Acknowledgement latencies.
    pub latency: Samples,
    /// From the window's start until the last client's last answer.
    pub submit_elapsed: Duration,
    /// From the window's start until the gateway had delivered every acknowledged message.
    pub delivered_elapsed: Duration,
}

impl LoadRun {
    /// Acknowledged-and-delivered messages per second.
    pub fn delivered_per_second(&self) -> f64 {
        self.acknowledged as f64 / self.delivered_elapsed.as_secs_f64().max(1e-9)
    }

    /// Acknowledged messages per second (the submitting side alone).
    pub fn acknowledged_per_second(&self) -> f64 {
        self.acknowledged as f64 / self.submit_elapsed.as_secs_f64().max(1e-9)
    }
}

/// A valid K about the `n`-th invented child: the sample K with another IIN (and birthday).
pub fn k_about(n: u64, today: jiff::civil::Date) -> HelpRequest {
    let mut k = referral_core::validate::sample_help_request(today);
    let child = k.child.as_mut().expect("the sample K names a child");
    let born = today
        .saturating_sub(jiff::Span::new().years(12).months(3).days(10))
        .saturating_sub(jiff::Span::new().days(((n / 9_000) % 25) as i64));
    let iin = (0..10_000_u64)
        .map(|i| ((n % 9_000) + i) % 10_000)
        .find_map(|serial| Iin::generate(born, Sex::Female, serial as u16))
        .expect("some serial has a check digit");
    child.iin = iin.into_string();
    child.date_of_birth = Some(referral_proto::v1::CalendarDate {
        year: i32::from(born.year()),
        month: i32::from(born.month()),
        day: i32::from(born.day()),
    });
    k
}

/// Where the load's Ks enter the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// School 1's staff API (`SubmitHelpRequest`, a staff member's bearer token): the school's
    /// service stores the K, sends it through the gateway, and answers once the gateway has.
    StaffApi,
    /// The gateway's `Send`, as school 1's service calls it (its client certificate): the
    /// gateway alone acknowledges, then delivers to the commission.
    GatewaySend,
}

impl Entry {
    pub fn name(self) -> &'static str {
        match self {
            Self::StaffApi => "staff-api",
            Self::GatewaySend => "gateway",
        }
    }
}

/// One connection of the load.
#[derive(Clone)]
enum Client {
    Staff(AgencyStaffClient<Channel>),
    Gateway(GatewayClient<Channel>, ActingUser),
}

impl Client {
    /// Submits the K `n` under `key`; `Err` is the refusal's gRPC code.
    async fn submit(
        &mut self,
        token: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        key: String,
        k: HelpRequest,
    ) -> Result<(), tonic::Code> {
        let answer = match self {
            Self::Staff(client) => {
                let mut request = tonic::Request::new(SubmitHelpRequestRequest {
                    idempotency_key: key,
                    recipient_agency_id: String::new(),
                    help_request: Some(k),
                });
                request
                    .metadata_mut()
                    .insert("authorization", token.clone());
                client.submit_help_request(request).await.map(drop)
            }
            Self::Gateway(client, acting) => {
                let mut envelope = referral_tests::envelope(
                    &acting.agency_id,
                    &acting.user_id,
                    Role::SchoolDirector,
                    "commission",
                    &key,
                    k,
                );
                envelope.acting_user = Some(acting.clone());
                client
                    .send(SendRequest {
                        envelope: Some(envelope),
                    })
                    .await
                    .map(drop)
            }
        };
        answer.map_err(|status| status.code())
    }
}

/// A prepared load: connections open, token minted.
pub struct Load {
    clients: Vec<Client>,
    token: String,
    gateway_store: Database,
    next: Arc<AtomicU64>,
    run_id: String,
}

impl Load {
    pub async fn prepare(hub: &HubSetup, clients: usize, entry: Entry) -> anyhow::Result<Self> {
        let acting = hub.school_director()?;
        let mut connected = Vec::with_capacity(clients);
        for _ in 0..clients {
            connected.push(match entry {
                Entry::StaffApi => {
                    Client::Staff(AgencyStaffClient::new(hub.staff_channel("school-1").await?))
                }
                Entry::GatewaySend => Client::Gateway(
                    GatewayClient::new(hub.school_1_gateway_channel().await?),
                    acting.clone(),
                ),
            });
        }
        Ok(Self {
            clients: connected,
            token: hub.token("school-1", "director")?,
            gateway_store: hub.gateway_store().await?,
            next: Arc::new(AtomicU64::new(0)),
            run_id: format!("bench-{}", std::process::id()),
        })
    }

    /// Submits for `window` with every client; then waits (at most `drain_limit`) until the
    /// gateway has delivered everything it acknowledged.
    ///
    /// `pace: None` is a closed loop: each client submits again as soon as it is answered, so the
    /// clients saturate the hub and their latency is, by Little's law, clients / throughput.
    /// `pace: Some(rate)` is an open loop at `rate` submissions a second in all, spread evenly
    /// over the clients: client `i` of `c` submits its `j`-th K at `(i + j c) / rate` seconds
    /// after the start, and its latency runs from that scheduled moment, so a client held up by a
    /// slow answer counts the wait of the submissions it could not start on time (no
    /// coordinated omission).
    pub async fn run(
        &self,
        window: Duration,
        drain_limit: Duration,
        pace: Option<f64>,
    ) -> anyhow::Result<LoadRun> {
        let today = jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::get("Asia/Almaty")?)
            .date();
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let count = self.clients.len();
        for (index, client) in self.clients.iter().enumerate() {
            // When this client's `j`-th submission is due, in a paced run.
            let schedule = pace.map(|rate| {
                move |j: u64| {
                    started
                        + Duration::from_secs_f64((index as f64 + j as f64 * count as f64) / rate)
                }
            });
            let mut client = client.clone();
            let stop = stop.clone();
            let next = self.next.clone();
            let token =
                format!("Bearer {}", self.token).parse::<tonic::metadata::MetadataValue<_>>()?;
            let run_id = self.run_id.clone();
            tasks.spawn(async move {
                let mut latency = Samples::new();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                let mut acknowledged = 0_u64;
                let mut submitted = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    let sent = match &schedule {
                        Some(due) => {
                            let due = due(submitted);
                            if due >= started + window {
                                break;
                            }
                            tokio::time::sleep_until(due.into()).await;
                            due
                        }
                        None => Instant::now(),
                    };
                    submitted += 1;
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    match client
                        .submit(&token, format!("{run_id}-{n}"), k_about(n, today))
                        .await
                    {
                        Ok(()) => {
                            latency.record(sent.elapsed());
                            acknowledged += 1;
                        }
                        Err(code) => {
                            *errors.entry(format!("{code:?}")).or_default() += 1;
                        }
                    }
                }
                (acknowledged, latency, errors)
            });
        }
        tokio::time::sleep(window).await;
        stop.store(true, Ordering::Relaxed);
        let mut run = LoadRun {
            clients: self.clients.len(),
            acknowledged: 0,
            errors: BTreeMap::new(),
            latency: Samples::new(),
            submit_elapsed: Duration::ZERO,
            delivered_elapsed: Duration::ZERO,
        };
        while let Some(joined) = tasks.join_next().await {
            let (acknowledged, latency, errors) = joined?;
            run.acknowledged += acknowledged;
            run.latency.extend(latency);
            for (code, n) in errors {
                *run.errors.entry(code).or_default() += n;
            }
        }
        run.submit_elapsed = started.elapsed();
        self.drained(started + run.submit_elapsed + drain_limit)
            .await?;
        run.delivered_elapsed = started.elapsed();
        Ok(run)
    }

    /// Waits (at most until `deadline`) until the hub is idle: nothing queued, and the deadline
    /// engine has applied every ledger entry. A window that starts while the previous one's
    /// deadline work is still being applied would share the machine with it.
    pub async fn idle(&self, deadline: Instant) -> anyhow::Result<()> {
        self.drained(deadline).await?;
        loop {
            let (applied, newest): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT last_seq FROM deadline_cursor WHERE id = 1), \
                 (SELECT COALESCE(MAX(seq), 0) FROM ledger)",
            )
            .fetch_one(self.gateway_store.pool())
            .await
            .context("cannot read the deadline engine's cursor")?;
            if applied >= newest {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the deadline engine is {} ledger entries behind",
                    newest - applied
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the gateway holds no queued message. The hub is another process whose
    /// deliveries we cannot subscribe to, so this polls its store, for at most until `deadline`.
    pub async fn drained(&self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            // The outbox holds exactly the messages still to deliver, and stays small; counting
            // the queued rows of `messages` scanned the whole table every 10 ms.
            let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
                .fetch_one(self.gateway_store.pool())
                .await
                .context("cannot count the gateway's queued messages")?;
            if queued == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{queued} messages still queued at the drain deadline");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What the no-op call load measured.
#[derive(Debug, Clone)]
pub struct NoopRun {
    pub clients: usize,
    pub calls: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Samples,
}

impl NoopRun {
    pub fn calls_per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The price of one mTLS gRPC hop with nothing behind it: `clients` connections presenting
/// school 1's certificate, as the gateway-entry load does, calling the gateway's
/// `grpc.health.v1.Health/Check` back to back for `window`. The call passes the gateway's whole
/// server stack (TLS, HTTP/2, the tower layers) and does no work: a K crosses at least two such
/// hops (client to gateway, gateway to commission), so this bounds what a K can cost at least.
pub async fn noop_calls(
    hub: &HubSetup,
    clients: usize,
    window: Duration,
) -> anyhow::Result<NoopRun> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut connected = Vec::with_capacity(clients);
    for _ in 0..clients {
        connected.push(HealthClient::new(hub.school_1_gateway_channel().await?));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in connected {
        let stop = stop.clone();
        tasks.spawn(async move {
            let (mut calls, mut errors, mut latency) = (0_u64, 0_u64, Samples::new());
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let answer = client
                    .check(HealthCheckRequest {
                        service: "referral.v1.Gateway".into(),
                    })
                    .await;
                match answer {
                    Ok(_) => {
                        latency.record(sent.elapsed());
                        calls += 1;
                    }
                    Err(_) => errors += 1,
                }
            }
            (calls, errors, latency)
        });
    }
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    let mut run = NoopRun {
        clients,
        calls: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: Samples::new(),
    };
    while let Some(joined) = tasks.join_next().await {
        let (calls, errors, latency) = joined?;
        run.calls += calls;
        run.errors += errors;
        run.latency.extend(latency);
    }
    run.elapsed = started.elapsed();
    if run.calls == 0 {
        bail!("no health check answered ({} failed)", run.errors);
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_load_k_is_valid_and_about_another_child() {
        let today = jiff::civil::date(2026, 11, 20);
        let mut iins = std::collections::BTreeSet::new();
        for n in [0, 1, 2, 8_999, 9_000, 123_456] {
            let k = k_about(n, today);
            let mut v = referral_core::FieldViolations::new();
            let now: jiff::Timestamp = "2026-11-20T04:30:00Z".parse().unwrap();
            let tz = jiff::tz::TimeZone::get("Asia/Almaty").unwrap();
            referral_core::validate::help_request(&k, now, &tz, &mut v, "help_request");
            assert!(v.into_result().is_ok(), "K {n} is invalid");
            assert!(iins.insert(k.child.unwrap().iin), "K {n} repeats a child");
        }
    }
}
