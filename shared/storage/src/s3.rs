//! S3 storages (storage.md §7): `s3://bucket/[prefix/]` URIs and the object store built from a
//! storage's credentials (`access_key_id`, `secret_access_key`, `session_token`, `region`,
//! `endpoint` for S3-compatible servers). kalam-flushd PUTs files; kalamd reads and deletes
//! them. The operations here are synchronous: callers run on blocking threads.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

/// A bucket and a key prefix (empty, or ending with `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub prefix: String,
}

impl S3Location {
    /// `s3://bucket/` or `s3://bucket/prefix/` (the trailing `/` is required).
    pub fn parse(uri: &str) -> Result<S3Location, String> {
        let invalid = || format!("Invalid S3 URI '{uri}': expected s3://bucket/ or s3://bucket/prefix/");
        let rest = uri.strip_prefix("s3://").ok_or_else(invalid)?;
        let (bucket, prefix) = rest.split_once('/').ok_or_else(invalid)?;
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        let prefix_ok = prefix.is_empty()
            || (prefix.ends_with('/') && !prefix.starts_with('/') && !prefix.split('/').any(|s| s == ".." || s == "."));
        if !bucket_ok || !prefix_ok || prefix.contains("//") {
            return Err(invalid());
        }
        Ok(S3Location { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
    }

    /// The URI of the location (what manifest entries record as their base).
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// The object key of `path` (relative to the location).
    pub fn key(&self, path: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{path}", self.prefix))
    }
}

/// A connection to one bucket.
#[derive(Clone)]
pub struct S3Store {
    pub location: S3Location,
    store: Arc<dyn ObjectStore>,
}

fn text(credentials: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<String> {
    credentials.get(key).and_then(|v| v.as_str()).map(str::to_owned)
}

impl S3Store {
    /// Builds the client; `credentials` is the storage's JSON object (may be empty: the
    /// default AWS environment is used then).
    pub fn open(
        location: S3Location,
        credentials: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<S3Store, String> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            .with_region(text(credentials, "region").unwrap_or_else(|| "us-east-1".to_owned()))
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
            });
        if let Some(key) = text(credentials, "access_key_id") {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = text(credentials, "secret_access_key") {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = text(credentials, "session_token") {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = text(credentials, "endpoint") {
            let http = endpoint.starts_with("http://");
            builder = builder.with_endpoint(endpoint).with_allow_http(http);
        }
        let store = builder.build().map_err(|e| e.to_string())?;
        Ok(S3Store { location, store: Arc::new(store) })
    }

    fn block_on<T>(fut: impl std::future::Future<Output = T>) -> Result<T, String> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        Ok(handle.block_on(fut))
    }

    /// One PUT of a whole file.
    pub fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), String> {
        let key = self.location.key(path);
        Self::block_on(self.store.put(&key, PutPayload::from(bytes)))?.map(|_| ()).map_err(|e| e.to_string())
    }

    pub fn get(&self, path: &str) -> Result<Bytes, String> {
        let key = self.location.key(path);
        let result = Self::block_on(async { self.store.get(&key).await?.bytes().await })?;
        result.map_err(|e| e.to_string())
    }

    /// Paths (relative to the storage base) of the objects directly under directory `dir`.
    pub fn list(&self, dir: &str) -> Result<Vec<String>, String> {
        let prefix = self.location.key(dir);
        let base = self.location.key("");
        let listed = Self::block_on(self.store.list_with_delimiter(Some(&prefix)))?.map_err(|e| e.to_string())?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|o| {
                let key = o.location.as_ref();
                key.strip_prefix(base.as_ref()).map(|p| p.trim_start_matches('/').to_owned())
            })
            .collect())
    }

    /// Deletes an object; a missing one is not an error.
    pub fn delete(&self, path: &str) -> Result<(), String> {
        let key = self.location.key(path);
        match Self::block_on(self.store.delete(&key))? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_uris_name_a_bucket_and_a_prefix() {
        let l = S3Location::parse("s3://kalamdb-prod/data/").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("kalamdb-prod", "data/"));
        assert_eq!(l.key("app/t/a.parquet").as_ref(), "data/app/t/a.parquet");
        assert_eq!(S3Location::parse("s3://b1b/").unwrap().prefix, "");
        assert_eq!(l.uri(), "s3://kalamdb-prod/data/");
        for bad in ["s3://b", "s3://bucket/prefix", "http://b/", "s3://UP/", "s3:///x/", "s3://bk/../", "s3://bk//x/"] {
            assert!(S3Location::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
