//! The S3 checkpoint remote (aws-sdk-s3), also for S3-compatible stores through an
//! endpoint override with path-style addressing. Credentials come from the standard
//! AWS chain (environment, profile, web identity, instance metadata) and are never
//! logged. Every request has a timeout and is retried by the SDK's standard policy.

use std::path::Path;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use tokio::io::AsyncWriteExt;

use super::remote::{CheckpointRemote, RemoteError};

/// Where and how to reach the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    /// `S3_REGION`; unset: the AWS chain's region, else us-east-1.
    pub region: Option<String>,
    /// `S3_ENDPOINT`, e.g. `http://minio:9000`; implies path-style addressing.
    pub endpoint: Option<String>,
    /// Bound of one attempt of one request.
    pub attempt_timeout: Duration,
    /// Attempts per request (the SDK backs off between them).
    pub max_attempts: u32,
}

impl S3Settings {
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            region: None,
            endpoint: None,
            attempt_timeout: Duration::from_secs(60),
            max_attempts: 3,
        }
    }
}

/// A bucket holding checkpoints.
#[derive(Clone)]
pub struct S3Remote {
    client: Client,
    bucket: String,
}

impl S3Remote {
    /// A remote using the standard AWS credential chain.
    pub async fn new(settings: &S3Settings) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            builder = builder.region(Region::new("us-east-1"));
        }
        Self::from_builder(builder, settings)
    }

    /// A remote from an explicit SDK configuration (e.g. static credentials), with the
    /// endpoint, timeouts and retries of `settings` applied.
    pub fn from_builder(builder: aws_sdk_s3::config::Builder, settings: &S3Settings) -> Self {
        let mut builder = builder
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(settings.attempt_timeout)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1)));
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.endpoint_url(endpoint).force_path_style(true);
        }
        Self {
            client: Client::from_conf(builder.build()),
            bucket: settings.bucket.clone(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates the bucket if it does not exist (for S3-compatible stores in development
    /// and tests; in production the bucket is provisioned with its policies).
    pub async fn ensure_bucket(&self) -> Result<(), RemoteError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| remote_err(&self.bucket, e))?;
        Ok(())
    }
}

impl S3Remote {
    /// The object at `key`, or `None` if there is no such key.
    async fn get_object(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>, RemoteError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => Ok(Some(output)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(remote_err(key, e)),
        }
    }
}

fn remote_err<E: std::error::Error>(key: &str, error: E) -> RemoteError {
    RemoteError::io(key, DisplayErrorContext(error))
}

impl CheckpointRemote for S3Remote {
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), RemoteError> {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| remote_err(key, e))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body)
            .send()
            .await
            .map_err(|e| remote_err(key, e))?;
        Ok(())
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), RemoteError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| remote_err(key, e))?;
        Ok(())
    }

    async fn get_file(&self, key: &str, path: &Path) -> Result<bool, RemoteError> {
        let Some(output) = self.get_object(key).await? else {
            return Ok(false);
        };
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| remote_err(key, e))?;
        let mut body = output.body.into_async_read();
        tokio::io::copy(&mut body, &mut file)
            .await
            .map_err(|e| remote_err(key, e))?;
        file.flush().await.map_err(|e| remote_err(key, e))?;
        Ok(true)
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        let Some(output) = self.get_object(key).await? else {
            return Ok(None);
        };
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|e| remote_err(key, e))?;
        Ok(Some(bytes.into_bytes().to_vec()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, RemoteError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| remote_err(prefix, e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), RemoteError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| remote_err(key, e))?;
        Ok(())
    }
}
