//! Documents of the case file (scanned orders, letters, certificates, meeting minutes: M:2405):
//! PDF or image, streamed in and out, with a size limit and the type checked from the content.
//!
//! * Upload: the first chunk carries the metadata, the rest the bytes. The type is told by the
//!   first bytes (`%PDF-`, the PNG signature, the JPEG start of image), never by the name, and a
//!   stream whose first bytes are none of them is refused as soon as they arrive. A stream that
//!   passes [`MAX_DOCUMENT_BYTES`] is refused at the chunk that passes it, without reading more.
//!   Only a complete document is stored, in one statement with its SHA-256, so no partial
//!   document ever exists.
//! * Download: the document in [`DOWNLOAD_CHUNK_BYTES`] chunks, the first carrying its metadata.

use jiff::Timestamp;
use referral_core::{ServiceError, ServiceResult, db::Row as _, time};
use referral_proto::v1::{DocumentChunk, DocumentInfo};
use sqlx::AnyConnection;

/// The largest document, in bytes (10 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 10 * 1024 * 1024;

/// The size of a download chunk (64 KiB).
pub const DOWNLOAD_CHUNK_BYTES: usize = 64 * 1024;

/// The content types a document may have, with the bytes it starts with.
const SIGNATURES: &[(&[u8], &str)] = &[
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
];

/// The longest signature: once this many bytes have arrived, the type is known or refused.
pub const SIGNATURE_BYTES: usize = 8;

/// The content type told by the first bytes of a document, if it is one the case file keeps.
pub fn content_type(bytes: &[u8]) -> Option<&'static str> {
    SIGNATURES
        .iter()
        .find(|(signature, _)| bytes.starts_with(signature))
        .map(|(_, content_type)| *content_type)
}

/// Whether the first bytes received so far can still begin a document of a known type.
pub fn may_be_known(prefix: &[u8]) -> bool {
    SIGNATURES.iter().any(|(signature, _)| {
        let n = prefix.len().min(signature.len());
        prefix[..n] == signature[..n]
    })
}

/// The violation for content of another type.
pub fn wrong_type() -> ServiceError {
    ServiceError::invalid_field(
        "data",
        "must be a PDF, PNG or JPEG document (the type is read from the content)",
    )
}

/// The violation for a document over the limit.
pub fn too_large() -> ServiceError {
    ServiceError::invalid_field(
        "data",
        format!("must be at most {MAX_DOCUMENT_BYTES} bytes in total"),
    )
}

/// A document to store.
#[derive(Debug)]
pub struct NewDocument<'a> {
    pub document_id: &'a str,
    pub case_reference: &'a str,
    pub title: &'a str,
    pub file_name: &'a str,
    pub content_type: &'a str,
    pub content: &'a [u8],
    pub uploaded_by: &'a str,
    pub uploaded_at: Timestamp,
}

/// SHA-256 of the content, in hex.
pub fn sha256(content: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(content))
}

/// Stores a whole document; its metadata as the case file shows it.
pub async fn insert(
    conn: &mut AnyConnection,
    doc: &NewDocument<'_>,
) -> ServiceResult<DocumentInfo> {
    let sha = sha256(doc.content);
    let size = i64::try_from(doc.content.len()).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO case_documents (document_id, case_reference, title, file_name, content_type, \
         size_bytes, sha256, content, uploaded_by, uploaded_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(doc.document_id)
    .bind(doc.case_reference)
    .bind(doc.title)
    .bind(doc.file_name)
    .bind(doc.content_type)
    .bind(size)
    .bind(sha.as_str())
    .bind(doc.content)
    .bind(doc.uploaded_by)
    .bind(time::to_micros(doc.uploaded_at))
    .execute(&mut *conn)
    .await?;
    Ok(DocumentInfo {
        document_id: doc.document_id.to_owned(),
        title: doc.title.to_owned(),
        content_type: doc.content_type.to_owned(),
        size_bytes: doc.content.len() as u64,
        sha256: sha,
        uploaded_at: Some(time::to_proto(doc.uploaded_at)),
        uploaded_by: doc.uploaded_by.to_owned(),
    })
}

/// The columns [`info_from_row`] reads, in its order.
const INFO_COLUMNS: &str =
    "document_id, title, content_type, size_bytes, sha256, uploaded_at, uploaded_by";

fn info_from_row(row: &sqlx::any::AnyRow) -> ServiceResult<DocumentInfo> {
    Ok(DocumentInfo {
        document_id: row.try_get(0)?,
        title: row.try_get(1)?,
        content_type: row.try_get(2)?,
        size_bytes: u64::try_from(row.try_get::<i64, _>(3)?).unwrap_or_default(),
        sha256: row.try_get(4)?,
        uploaded_at: Some(time::micros_to_proto(row.try_get(5)?)),
        uploaded_by: row.try_get(6)?,
    })
}

/// The metadata of a case's documents, in the order they were uploaded.
pub async fn list(
    conn: &mut AnyConnection,
    case_reference: &str,
) -> ServiceResult<Vec<DocumentInfo>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {INFO_COLUMNS} FROM case_documents WHERE case_reference = $1 \
         ORDER BY uploaded_at, document_id"
    )))
    .bind(case_reference)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(info_from_row)
    .collect()
}

/// A document of a case, with its content.
pub async fn load(
    conn: &mut AnyConnection,
    case_reference: &str,
    document_id: &str,
) -> ServiceResult<Option<(DocumentInfo, Vec<u8>)>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {INFO_COLUMNS}, content FROM case_documents \
         WHERE case_reference = $1 AND document_id = $2"
    )))
    .bind(case_reference)
    .bind(document_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| Ok((info_from_row(&row)?, row.try_get::<Vec<u8>, _>(7)?)))
        .transpose()
}

/// A document cut into download chunks, the first carrying the metadata. An empty document (none
/// is ever stored) would still give one chunk.
pub fn chunks(info: DocumentInfo, content: &[u8]) -> Vec<DocumentChunk> {
    let mut info = Some(info);
    let mut chunks: Vec<DocumentChunk> = content
        .chunks(DOWNLOAD_CHUNK_BYTES)
        .map(|data| DocumentChunk {
            info: info.take(),
            data: data.to_vec(),
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(DocumentChunk {
            info: info.take(),
            data: Vec::new(),
        });
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_comes_from_the_first_bytes() {
        assert_eq!(content_type(b"%PDF-1.7\n..."), Some("application/pdf"));
        assert_eq!(
            content_type(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            Some("image/png")
        );
        assert_eq!(
            content_type(b"\xff\xd8\xff\xe0\0\x10JFIF"),
            Some("image/jpeg")
        );
        assert_eq!(content_type(b"GIF89a"), None);
        assert_eq!(content_type(b"MZ\x90\0"), None);
        assert_eq!(content_type(b"%PDF"), None);
    }

    #[test]
    fn a_stream_is_refused_as_soon_as_its_first_bytes_are_wrong() {
        assert!(may_be_known(b""));
        assert!(may_be_known(b"%P"));
        assert!(may_be_known(b"\x89PN"));
        assert!(may_be_known(b"\xff\xd8"));
        assert!(!may_be_known(b"<h"));
        assert!(!may_be_known(b"%PDX"));
    }

    #[test]
    fn downloads_come_in_64_kib_chunks_with_the_metadata_first() {
        let content = vec![7u8; DOWNLOAD_CHUNK_BYTES * 2 + 10];
        let info = DocumentInfo {
            document_id: "d-1".into(),
            ..Default::default()
        };
        let chunks = chunks(info, &content);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].info.as_ref().unwrap().document_id, "d-1");
        assert!(chunks[1].info.is_none() && chunks[2].info.is_none());
        assert_eq!(chunks[2].data.len(), 10);
        let joined: Vec<u8> = chunks.into_iter().flat_map(|c| c.data).collect();
        assert_eq!(joined, content);
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;
    use crate::testing::{self, CASE, now};

    #[tokio::test]
    async fn a_document_is_stored_whole_with_its_digest() {
        let (db, _dir) = testing::store().await;
        testing::open_case(&db, true).await;
        let content = b"%PDF-1.7\nhello".to_vec();
        let mut tx = db.begin().await.unwrap();
        let info = insert(
            &mut tx,
            &NewDocument {
                document_id: "doc-1",
                case_reference: CASE,
                title: "Бұйрық",
                file_name: "order.pdf",
                content_type: "application/pdf",
                content: &content,
                uploaded_by: "curator-1",
                uploaded_at: now(),
            },
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(info.size_bytes, content.len() as u64);
        assert_eq!(info.sha256, sha256(&content));

        let mut conn = db.pool().acquire().await.unwrap();
        assert_eq!(list(&mut conn, CASE).await.unwrap(), vec![info.clone()]);
        let (loaded, bytes) = load(&mut conn, CASE, "doc-1").await.unwrap().unwrap();
        assert_eq!(loaded, info);
        assert_eq!(bytes, content);
        assert!(
            load(&mut conn, "KTIZhK-2026-000002", "doc-1")
                .await
                .unwrap()
                .is_none()
        );
    }
}
