//! Deadlines from the command line, as the gateway's deadline engine keeps them and the agency's
//! staff API passes them on: `deadlines` (yours, your agency's, or for a commission its
//! district's), `overview` (a commission's counts per kind and state), `overdue` (most late
//! first) and `watch` (alerts as they are raised, until Ctrl-C).

use std::collections::BTreeMap;

use jiff::Timestamp;
use referral_proto::v1::{
    Deadline, DeadlineKind, DeadlineOverviewRequest, DeadlineState, ListDeadlinesRequest,
    ListOverdueRequest, WatchDeadlinesRequest,
};
use serde_json::json;

use crate::{
    case_view::{
        alert_json, alert_line, days_late, deadline_json, deadline_kind_label, deadline_kind_name,
        deadline_kind_text, deadline_responsible, deadline_state_name, deadline_state_text,
        deadline_subject, due_text,
    },
    cli::{PAGE_SIZE, Staff, all_pages},
    form_case::DeadlineStateArg,
    output::{Format, Table, print_json},
};

impl Staff {
    /// `deadlines [--mine] [--case <ref>] [--state …]`.
    pub async fn deadlines(
        self,
        mine: bool,
        case_reference: Option<String>,
        states: Vec<DeadlineStateArg>,
    ) -> anyhow::Result<()> {
        let items: Vec<Deadline> = all_pages(|page_token| {
            let mut client = self.client.clone();
            let request = self.request(ListDeadlinesRequest {
                responsible_user_id: if mine {
                    self.user.clone()
                } else {
                    String::new()
                },
                states: states.iter().map(|s| s.to_proto() as i32).collect(),
                case_reference: case_reference.clone().unwrap_or_default(),
                page_size: PAGE_SIZE,
                page_token,
            });
            async move {
                let reply = client.list_deadlines(request).await?.into_inner();
                Ok((reply.deadlines, reply.next_page_token))
            }
        })
        .await
        .map_err(|s| self.fail(s, "request"))?;
        match self.format {
            Format::Json => print_json(&json!(items.iter().map(deadline_json).collect::<Vec<_>>())),
            Format::Human => {
                if items.is_empty() {
                    let whose = if mine {
                        format!("{}/{}", self.agency, self.user)
                    } else {
                        self.agency.clone()
                    };
                    let which = if states.is_empty() { "open " } else { "" };
                    outln!("no {which}deadlines for {whose}");
                    return Ok(());
                }
                out!("{}", self.deadline_table(&items, None));
            }
        }
        Ok(())
    }

    /// A table of deadlines; with `now`, a column of how late each is.
    fn deadline_table(&self, items: &[Deadline], now: Option<Timestamp>) -> String {
        let tz = self.tz();
        let mut headers = vec!["KIND", "CASE", "RESPONSIBLE", "DUE", "STATE"];
        if now.is_some() {
            headers.push("LATE");
        }
        let mut table = Table::new(headers);
        for d in items {
            let mut row = vec![
                deadline_kind_text(d.kind, d.action_number),
                deadline_subject(d),
                deadline_responsible(d),
                due_text(d, &tz),
                deadline_state_text(d.state),
            ];
            if let Some(now) = now {
                row.push(days_text(days_late(d, now, &tz)));
            }
            table.row(row);
        }
        table.render()
    }

    /// `overview`: the commission's counts per kind and state.
    pub async fn overview(mut self) -> anyhow::Result<()> {
        let reply = self
            .client
            .deadline_overview(self.request(DeadlineOverviewRequest {}))
            .await
            .map_err(|s| self.fail(s, "request"))?
            .into_inner();
        // kind -> state -> count, both in the order of their enumerations.
        let mut counts: BTreeMap<i32, BTreeMap<i32, u64>> = BTreeMap::new();
        for c in &reply.counts {
            *counts
                .entry(c.kind)
                .or_default()
                .entry(c.state)
                .or_default() += c.count;
        }
        match self.format {
            Format::Json => print_json(&json!(
                reply
                    .counts
                    .iter()
                    .map(|c| json!({
                        "kind": deadline_kind_name(c.kind),
                        "state": deadline_state_name(c.state),
                        "count": c.count,
                    }))
                    .collect::<Vec<_>>()
            )),
            Format::Human => {
                if counts.is_empty() {
                    outln!("no deadlines in the district of {}", self.agency);
                    return Ok(());
                }
                let states: Vec<i32> = (1..)
                    .map_while(|i| DeadlineState::try_from(i).ok().map(|_| i))
                    .filter(|s| counts.values().any(|by_state| by_state.contains_key(s)))
                    .collect();
                let mut headers = vec!["KIND".to_owned()];
                headers.extend(
                    states
                        .iter()
                        .map(|s| deadline_state_name(*s).to_uppercase()),
                );
                headers.push("TOTAL".into());
                let mut table = Table::new(headers);
                let mut totals = vec![0_u64; states.len()];
                for (kind, by_state) in &counts {
                    let label = deadline_kind_label(*kind);
                    let mut row = vec![format!(
                        "{} — {} / {}",
                        deadline_kind_name(*kind),
                        label.kk,
                        label.ru
                    )];
                    for (i, state) in states.iter().enumerate() {
                        let n = by_state.get(state).copied().unwrap_or(0);
                        totals[i] += n;
                        row.push(n.to_string());
                    }
                    row.push(by_state.values().sum::<u64>().to_string());
                    table.row(row);
                }
                let mut row = vec!["total".to_owned()];
                row.extend(totals.iter().map(u64::to_string));
                row.push(totals.iter().sum::<u64>().to_string());
                table.row(row);
                out!("{}", table.render());
                outln!(
                    "states: {}",
                    states
                        .iter()
                        .map(|s| deadline_state_text(*s))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                if counts.contains_key(&(DeadlineKind::Unspecified as i32)) {
                    outln!("(some deadlines are of a kind this CLI does not know)");
                }
            }
        }
        Ok(())
    }

    /// `overdue`: overdue and escalated deadlines, most late first.
    pub async fn overdue(self) -> anyhow::Result<()> {
        let mut items: Vec<Deadline> = all_pages(|page_token| {
            let mut client = self.client.clone();
            let request = self.request(ListOverdueRequest {
                page_size: PAGE_SIZE,
                page_token,
            });
            async move {
                let reply = client.list_overdue(request).await?.into_inner();
                Ok((reply.deadlines, reply.next_page_token))
            }
        })
        .await
        .map_err(|s| self.fail(s, "request"))?;
        // The service sends them most late first; keep that order whatever the paging did.
        items.sort_by_key(|d| {
            d.due_at
                .as_ref()
                .map_or((i64::MAX, i32::MAX), |t| (t.seconds, t.nanos))
        });
        let now = Timestamp::now();
        let tz = self.tz();
        match self.format {
            Format::Json => print_json(&json!(
                items
                    .iter()
                    .map(|d| {
                        let mut value = deadline_json(d);
                        value["days_late"] = json!(days_late(d, now, &tz));
                        value
                    })
                    .collect::<Vec<_>>()
            )),
            Format::Human => {
                if items.is_empty() {
                    outln!("nothing is overdue for {}", self.agency);
                    return Ok(());
                }
                out!("{}", self.deadline_table(&items, Some(now)));
            }
        }
        Ok(())
    }

    /// `watch [--mine]`: alerts as they are raised, until Ctrl-C or the service ends the stream.
    pub async fn watch(mut self, mine: bool) -> anyhow::Result<()> {
        let mut stream = self
            .client
            .watch_deadlines(self.request(WatchDeadlinesRequest {
                responsible_user_id: if mine {
                    self.user.clone()
                } else {
                    String::new()
                },
            }))
            .await
            .map_err(|s| self.fail(s, "request"))?
            .into_inner();
        let tz = self.tz();
        if self.format == Format::Human {
            let whose = if mine {
                format!("{}/{}", self.agency, self.user)
            } else {
                self.agency.clone()
            };
            // On stderr, so that stdout holds only alerts.
            eprintln!("watching the deadline alerts of {whose}; stop with Ctrl-C");
        }
        loop {
            let next = tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                next = stream.message() => next,
            };
            match next {
                Ok(Some(alert)) => match self.format {
                    // One JSON object per line, for scripts that read a stream.
                    Format::Json => outln!("{}", alert_json(&alert)),
                    Format::Human => outln!("{}", alert_line(&alert, &tz)),
                },
                Ok(None) => {
                    anyhow::bail!(
                        "{} ended the watch (is it stopping?); start it again",
                        self.agency
                    )
                }
                Err(status) => return Err(self.fail(status, "request")),
            }
        }
    }
}

fn days_text(days: i64) -> String {
    match days {
        0 => String::new(),
        1 => "1 day".into(),
        n => format!("{n} days"),
    }
}
