//! `received_messages`: what the gateway delivered to this agency, exactly once per message id.

use jiff::Timestamp;
use referral_core::{ServiceResult, db::Row as _, time};
use referral_proto::v1::{Envelope, FormKind, ReferralStatus};

use super::{Cursor, Page, Store, decode, encode, form_kind, kind_filter, referral_status};
use crate::{
    extension::{AgencyExtension, AgencyHost},
    forms::received_status,
};

/// The columns [`ReceivedRow::from_row`] reads, in its order.
macro_rules! received_columns {
    () => {
        "message_id, sender_agency_id, form_kind, envelope, received_at, referral_status"
    };
}

/// One message this agency received.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReceivedRow {
    pub(crate) message_id: String,
    pub(crate) sender_agency_id: String,
    pub(crate) form_kind: FormKind,
    pub(crate) envelope: Envelope,
    pub(crate) received_at: Timestamp,
    pub(crate) referral_status: ReferralStatus,
}

impl ReceivedRow {
    fn from_row(row: &sqlx::any::AnyRow) -> ServiceResult<Self> {
        Ok(Self {
            message_id: row.try_get(0)?,
            sender_agency_id: row.try_get(1)?,
            form_kind: form_kind(&row.try_get::<String, _>(2)?),
            envelope: decode(&row.try_get::<Vec<u8>, _>(3)?)?,
            received_at: time::from_micros(row.try_get(4)?),
            referral_status: referral_status(&row.try_get::<String, _>(5)?),
        })
    }

    fn cursor(&self) -> Cursor {
        Cursor::after(time::to_micros(self.received_at), &self.message_id)
    }
}

impl Store {
    /// Stores a delivered message unless its id was received before; true when it was (a
    /// duplicate delivery, which changes nothing). An answer to a message this agency sent also
    /// updates that sent message, and the extension's hook runs, in the same transaction.
    pub(crate) async fn receive(
        &self,
        envelope: &Envelope,
        now: Timestamp,
        hook: Option<(&dyn AgencyExtension, &AgencyHost)>,
    ) -> ServiceResult<bool> {
        let kind = FormKind::try_from(envelope.form_kind).unwrap_or(FormKind::Unspecified);
        let in_reply_to = Some(envelope.in_reply_to.as_str()).filter(|s| !s.is_empty());
        let now_micros = time::to_micros(now);
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO received_messages (message_id, sender_agency_id, form_kind, in_reply_to, \
             case_reference, envelope, received_at, referral_status, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(envelope.message_id.as_str())
        .bind(envelope.sender_agency_id.as_str())
        .bind(kind.as_str_name())
        .bind(in_reply_to)
        .bind(envelope.case_reference.as_str())
        .bind(encode(envelope))
        .bind(now_micros)
        .bind(received_status(envelope).as_str_name())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(true);
        }
        super::sent::apply_answer(&mut tx, envelope, now).await?;
        if let Some((extension, host)) = hook {
            extension.on_received(host, &mut tx, envelope, now).await?;
        }
        tx.commit().await?;
        Ok(false)
    }

    pub(crate) async fn received(&self, message_id: &str) -> ServiceResult<Option<ReceivedRow>> {
        sqlx::query(concat!(
            "SELECT ",
            received_columns!(),
            " FROM received_messages WHERE message_id = $1"
        ))
        .bind(message_id)
        .fetch_optional(self.db.pool())
        .await?
        .as_ref()
        .map(ReceivedRow::from_row)
        .transpose()
    }

    /// Received messages, newest first.
    pub(crate) async fn list_inbox(
        &self,
        kind: FormKind,
        page: &Page,
    ) -> ServiceResult<(Vec<ReceivedRow>, Option<Cursor>)> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            received_columns!(),
            " FROM received_messages WHERE ($1 = '' OR form_kind = $1) \
             AND (received_at < $2 OR (received_at = $2 AND message_id < $3)) \
             ORDER BY received_at DESC, message_id DESC LIMIT $4"
        ))
        .bind(kind_filter(kind))
        .bind(page.after.at)
        .bind(page.after.id.as_str())
        .bind(page.limit())
        .fetch_all(self.db.pool())
        .await?;
        let mut rows = rows
            .iter()
            .map(ReceivedRow::from_row)
            .collect::<ServiceResult<Vec<_>>>()?;
        let next = page.finish(&mut rows, ReceivedRow::cursor);
        Ok((rows, next))
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;
    use referral_proto::v1::{HelpRequest, Payload, payload::Form};

    use super::*;
    use crate::store::testing;

    fn k(id: &str) -> Envelope {
        Envelope {
            message_id: id.into(),
            sender_agency_id: "school-1".into(),
            recipient_agency_id: "commission".into(),
            form_kind: FormKind::HelpRequest as i32,
            payload: Some(Payload {
                form: Some(Form::HelpRequest(HelpRequest::default())),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_repeated_delivery_is_stored_once() {
        let (store, _dir) = testing::store().await;
        let now: Timestamp = "2026-03-02T05:00:00Z".parse().unwrap();
        assert!(!store.receive(&k("m-1"), now, None).await.unwrap());
        assert!(
            store
                .receive(&k("m-1"), now + SignedDuration::from_secs(5), None)
                .await
                .unwrap()
        );
        let row = store.received("m-1").await.unwrap().unwrap();
        assert_eq!(row.received_at, now);
        assert_eq!(row.referral_status, ReferralStatus::Received);
        let (rows, next) = store
            .list_inbox(FormKind::Unspecified, &Page::from_request(0, "").unwrap())
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert!(next.is_none());
    }

    #[tokio::test]
    async fn the_inbox_pages_newest_first_even_with_equal_instants() {
        let (store, _dir) = testing::store().await;
        let now: Timestamp = "2026-03-02T05:00:00Z".parse().unwrap();
        for id in ["m-a", "m-b", "m-c"] {
            store.receive(&k(id), now, None).await.unwrap();
        }
        store
            .receive(&k("m-0"), now + SignedDuration::from_secs(1), None)
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = Page::from_request(1, &token).unwrap();
            let (rows, next) = store
                .list_inbox(FormKind::HelpRequest, &page)
                .await
                .unwrap();
            seen.extend(rows.into_iter().map(|r| r.message_id));
            match next {
                Some(cursor) => token = cursor.token(),
                None => break,
            }
        }
        assert_eq!(seen, ["m-0", "m-c", "m-b", "m-a"]);
    }
}
