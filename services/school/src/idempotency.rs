//! Idempotent requests of the school's services: a request carries a client's idempotency key,
//! stored with its row beside the request's fingerprint; the same key with the same request again
//! answers with that row, the same key with another request is refused (ALREADY_EXISTS).

use referral_core::{ServiceError, ServiceResult, db::Row as _};
use sqlx::AnyConnection;

/// The fingerprint of a request, kept beside its idempotency key.
pub(crate) fn sha_of<M: prost::Message>(m: &M) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(m.encode_to_vec()))
}

/// The id (`id_column`) of the row of `table` recorded under the idempotency key `key` by the
/// same request (fingerprint `sha`), if any; ALREADY_EXISTS, saying the key "was already used
/// for another {what}", when the key was used for another request.
pub(crate) async fn replayed(
    conn: &mut AnyConnection,
    table: &'static str,
    id_column: &'static str,
    key: &str,
    sha: &str,
    what: &str,
) -> ServiceResult<Option<String>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {id_column} AS id, request_sha256 FROM {table} WHERE idempotency_key = $1"
    )))
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    if row.try_get::<String, _>("request_sha256")? != sha {
        return Err(ServiceError::AlreadyExists(format!(
            "this idempotency key was already used for another {what}"
        )));
    }
    Ok(Some(row.try_get("id")?))
}
