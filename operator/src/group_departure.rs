//! Pods removed by a scale-down leave the consumer group at once.
//!
//! The deduplicator joins its group as a static member (`group.instance.id` = the pod's
//! name), so that a restarted pod gets its partitions back without a rebalance. A static
//! member never leaves on shutdown, though: the coordinator gives its partitions away
//! only when its session times out (`session.timeout.ms`, 45 s by default), and librdkafka
//! has no call to remove one (`RemoveMembersFromConsumerGroup` is Java's admin client).
//! So once the pods of a scale-down are gone (their final offsets committed and final
//! checkpoints uploaded), the operator sends the coordinator a `LeaveGroup` (v3+) naming
//! their instance ids, as that admin call does, and the partitions move at once.
//!
//! The client speaks just enough of the Kafka protocol, with the `kafka-protocol` crate's
//! messages: `ApiVersions`, `FindCoordinator`, `LeaveGroup`, and `SaslHandshake` +
//! `SaslAuthenticate` for SASL/PLAIN; over TCP or TLS (`security.protocol` SSL or
//! SASL_SSL: the server verified against `ssl.ca.location` or the system's roots). Other
//! set-ups (SCRAM, OAUTHBEARER, GSSAPI, client certificates) are refused with a reason:
//! their partitions then wait for the session timeout, as before.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::FindCoordinatorResponse;
use kafka_protocol::messages::leave_group_request::{LeaveGroupRequest, MemberIdentity};
use kafka_protocol::messages::leave_group_response::LeaveGroupResponse;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, GroupId, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{
    encode_request_header_into_buffer, Decodable, Encodable, HeaderVersion, StrBytes,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::controller::Context;
use crate::crd::DedupCluster;
use crate::kafka_lag::KafkaAccess;

/// Bound of each Kafka call of a departure.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// After a reconcile: once the pods a scale-down removed are gone, their static members
/// leave the group (on a task of its own, so the reconcile does not wait for Kafka).
/// `true` while a departure is pending (pods still terminating): reconcile again soon.
pub async fn after_reconcile(ctx: &Arc<Context>, cluster: &DedupCluster) -> bool {
    use kube::api::{Api, ListParams};
    use kube::ResourceExt;
    let namespace = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    let key = format!("{namespace}/{name}");
    let desired = cluster.spec.replicas.max(0);
    let high = {
        let mut seen = ctx.members_seen.lock().unwrap_or_else(|p| p.into_inner());
        let high = seen.entry(key.clone()).or_insert(desired);
        *high = (*high).max(desired);
        *high
    };
    if high <= desired {
        return false;
    }
    // A scale-down: wait until its pods are gone (their last commit and checkpoint done).
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(ctx.client.clone(), &namespace);
    let selector = crate::builders::selector_string(cluster);
    let listed = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(listed) => listed,
        Err(error) => {
            tracing::debug!(%error, cluster = %key, "listing the pods for a departure failed");
            return true;
        }
    };
    let prefix = format!("{name}-");
    let remaining = listed.items.iter().any(|pod| {
        pod.name_any()
            .strip_prefix(&prefix)
            .and_then(|ordinal| ordinal.parse::<i32>().ok())
            .is_some_and(|ordinal| ordinal >= desired)
    });
    if remaining {
        return true;
    }
    ctx.members_seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.clone(), desired);
    let instance_ids: Vec<String> = (desired..high).map(|o| format!("{name}-{o}")).collect();
    let (ctx, cluster) = (Arc::clone(ctx), cluster.clone());
    tokio::spawn(async move {
        let result = match KafkaAccess::for_cluster(&ctx.client, &cluster).await {
            Ok(access) => {
                // A LeaveGroup by instance id removes whoever holds the id now: a pod of
                // a scale-up since then would be sent out. Only ids still departed go.
                let instance_ids = still_departed(&ctx, &cluster, instance_ids).await;
                if instance_ids.is_empty() {
                    return;
                }
                let result = leave(&access, &instance_ids, CALL_TIMEOUT).await;
                report(&ctx, &cluster, &instance_ids, result).await;
                return;
            }
            Err(error) => Err(error),
        };
        report(&ctx, &cluster, &instance_ids, result).await;
    });
    false
}

/// Of `instance_ids`, those whose ordinal is still at or above the cluster's replicas and
/// whose pod does not exist, read from the API server just before the LeaveGroup.
async fn still_departed(
    ctx: &Context,
    cluster: &DedupCluster,
    instance_ids: Vec<String>,
) -> Vec<String> {
    use kube::api::{Api, ListParams};
    use kube::ResourceExt;
    let namespace = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    let clusters: Api<DedupCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(ctx.client.clone(), &namespace);
    let replicas = match clusters.get_opt(&name).await {
        Ok(Some(now)) => now.spec.replicas,
        // Deleted: every pod is going; none will come back under these ids.
        Ok(None) => 0,
        Err(_) => return Vec::new(),
    };
    let existing: Vec<String> = match pods
        .list(&ListParams::default().labels(&crate::builders::selector_string(cluster)))
        .await
    {
        Ok(listed) => listed.items.iter().map(|p| p.name_any()).collect(),
        Err(_) => return Vec::new(),
    };
    let prefix = format!("{name}-");
    instance_ids
        .into_iter()
        .filter(|id| {
            id.strip_prefix(&prefix)
                .and_then(|o| o.parse::<i32>().ok())
                .is_some_and(|ordinal| ordinal >= replicas)
                && !existing.contains(id)
        })
        .collect()
}

async fn report(
    ctx: &Context,
    cluster: &DedupCluster,
    instance_ids: &[String],
    result: Result<Departed, String>,
) {
    use kube::runtime::events::EventType;
    use kube::ResourceExt;
    let count = |result: &'static str, n: usize| {
        ctx.metrics
            .group_departures
            .get_or_create(&crate::metrics::ResultLabels { result })
            .inc_by(n as u64);
    };
    match result {
        Ok(departed) => {
            count("removed", departed.removed.len());
            count("unknown", departed.unknown.len());
            count("failed", departed.refused.len());
            tracing::info!(cluster = %cluster.name_any(), removed = ?departed.removed, unknown = ?departed.unknown,
                refused = ?departed.refused, "scaled-down pods left the consumer group");
            if !departed.refused.is_empty() {
                let why = format!(
                    "the coordinator refused to remove {:?} (Kafka error codes)",
                    departed.refused
                );
                leave_failed(ctx, cluster, &why).await;
            }
            crate::controller::publish_event(
                ctx,
                cluster,
                EventType::Normal,
                "MembersLeftGroup",
                &format!(
                    "{} left the consumer group after the scale-down (their partitions move now, not after session.timeout.ms){}",
                    departed.removed.join(", "),
                    if departed.unknown.is_empty() {
                        String::new()
                    } else {
                        format!("; already gone: {}", departed.unknown.join(", "))
                    }
                ),
            )
            .await;
        }
        Err(error) => {
            count("failed", instance_ids.len());
            tracing::warn!(cluster = %cluster.name_any(), ?instance_ids, %error,
                "cannot remove the scaled-down pods from the consumer group; their partitions move after session.timeout.ms");
            leave_failed(
                ctx,
                cluster,
                &format!("{}: {error}", instance_ids.join(", ")),
            )
            .await;
        }
    }
}

/// The Warning Event of a departure that did not happen.
async fn leave_failed(ctx: &Context, cluster: &DedupCluster, why: &str) {
    crate::controller::publish_event(
        ctx,
        cluster,
        kube::runtime::events::EventType::Warning,
        "GroupLeaveFailed",
        &format!("{why}; their partitions move after session.timeout.ms"),
    )
    .await;
}

/// The largest response these calls can get; a larger size is a protocol mismatch (TLS
/// spoken to a plaintext listener, or the reverse).
const MAX_RESPONSE_BYTES: i32 = 1 << 20;

/// Kafka's error code for a member the coordinator does not know (already gone).
const UNKNOWN_MEMBER_ID: i16 = 25;

/// What a departure did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Departed {
    /// Instance ids the coordinator removed.
    pub removed: Vec<String>,
    /// Instance ids it did not know (already timed out, or never joined).
    pub unknown: Vec<String>,
    /// Instance ids it refused, with the Kafka error code.
    pub refused: Vec<(String, i16)>,
}

/// Removes the static members `instance_ids` from the access's group. Every call is
/// bounded by `timeout`.
pub async fn leave(
    access: &KafkaAccess,
    instance_ids: &[String],
    timeout: Duration,
) -> Result<Departed, String> {
    let security = Security::from(access)?;
    let mut last_error = String::from("no bootstrap server");
    // A coordinator that moved or is loading (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS)
    // answers again after a new FindCoordinator: the servers are tried in turn, twice.
    let servers: Vec<&str> = access
        .bootstrap_servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for (attempt, bootstrap) in servers.iter().chain(servers.iter()).enumerate() {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        match tokio::time::timeout(
            timeout * 4,
            leave_via(bootstrap, access, &security, instance_ids, timeout),
        )
        .await
        {
            Ok(Ok(departed)) => return Ok(departed),
            Ok(Err(error)) => last_error = format!("{bootstrap}: {error}"),
            Err(_) => last_error = format!("{bootstrap}: no answer within {:?}", timeout * 4),
        }
    }
    Err(last_error)
}

async fn leave_via(
    bootstrap: &str,
    access: &KafkaAccess,
    security: &Security,
    instance_ids: &[String],
    timeout: Duration,
) -> Result<Departed, String> {
    let mut broker = Connection::open(bootstrap, security, timeout).await?;
    let find_version = broker.version(ApiKey::FindCoordinator, 0, 4)?;
    let group = StrBytes::from_string(access.group.clone());
    let coordinator = if find_version >= 4 {
        let request = FindCoordinatorRequest::default()
            .with_key_type(0)
            .with_coordinator_keys(vec![group.clone()]);
        let response: FindCoordinatorResponse = broker
            .call(ApiKey::FindCoordinator, find_version, &request)
            .await?;
        let coordinator = response
            .coordinators
            .into_iter()
            .next()
            .ok_or("FindCoordinator answered no coordinator")?;
        check(coordinator.error_code, "FindCoordinator")?;
        (coordinator.host.to_string(), coordinator.port)
    } else {
        let request = FindCoordinatorRequest::default()
            .with_key(group.clone())
            .with_key_type(0);
        let response: FindCoordinatorResponse = broker
            .call(ApiKey::FindCoordinator, find_version, &request)
            .await?;
        check(response.error_code, "FindCoordinator")?;
        (response.host.to_string(), response.port)
    };
    let address = format!("{}:{}", coordinator.0, coordinator.1);
    let mut coordinator = if address == bootstrap {
        broker
    } else {
        Connection::open(&address, security, timeout).await?
    };
    let version = coordinator.version(ApiKey::LeaveGroup, 3, 5)?;
    let members = instance_ids
        .iter()
        .map(|id| {
            MemberIdentity::default()
                .with_member_id(StrBytes::from_static_str(""))
                .with_group_instance_id(Some(StrBytes::from_string(id.clone())))
                .with_reason(Some(StrBytes::from_static_str(
                    "the pod was removed by a scale-down (kafka-deduplicator operator)",
                )))
        })
        .collect();
    let request = LeaveGroupRequest::default()
        .with_group_id(GroupId(group))
        .with_members(members);
    let response: LeaveGroupResponse = coordinator
        .call(ApiKey::LeaveGroup, version, &request)
        .await?;
    check(response.error_code, "LeaveGroup")?;
    let mut departed = Departed::default();
    for member in response.members {
        let id = member
            .group_instance_id
            .map(|id| id.to_string())
            .unwrap_or_default();
        match member.error_code {
            0 => departed.removed.push(id),
            UNKNOWN_MEMBER_ID => departed.unknown.push(id),
            code => departed.refused.push((id, code)),
        }
    }
    Ok(departed)
}

fn check(code: i16, call: &str) -> Result<(), String> {
    if code == 0 {
        Ok(())
    } else {
        Err(format!("{call} failed with Kafka error code {code}"))
    }
}

/// How to reach the brokers, from the librdkafka properties.
enum Security {
    Plaintext,
    SaslPlain {
        username: String,
        password: String,
    },
    Tls {
        sasl: Option<(String, String)>,
        config: Arc<rustls::ClientConfig>,
    },
}

impl Security {
    fn from(access: &KafkaAccess) -> Result<Self, String> {
        let property = |key: &str| {
            access
                .properties
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let protocol = property("security.protocol")
            .unwrap_or_else(|| "plaintext".into())
            .to_ascii_lowercase();
        let sasl = || -> Result<(String, String), String> {
            let mechanism = property("sasl.mechanism")
                .or_else(|| property("sasl.mechanisms"))
                .unwrap_or_else(|| "GSSAPI".into());
            if !mechanism.eq_ignore_ascii_case("PLAIN") {
                return Err(format!(
                    "sasl.mechanism {mechanism} is not supported by the operator's LeaveGroup client (PLAIN only)"
                ));
            }
            match (property("sasl.username"), property("sasl.password")) {
                (Some(username), Some(password)) => Ok((username, password)),
                _ => Err("SASL/PLAIN without sasl.username and sasl.password".into()),
            }
        };
        let client_certificate = property("ssl.certificate.location").is_some()
            || property("ssl.key.location").is_some();
        if client_certificate && protocol.contains("ssl") {
            return Err(
                "TLS client certificates are not supported by the operator's LeaveGroup client"
                    .into(),
            );
        }
        match protocol.as_str() {
            "plaintext" => Ok(Self::Plaintext),
            "sasl_plaintext" => {
                let (username, password) = sasl()?;
                Ok(Self::SaslPlain { username, password })
            }
            "ssl" | "sasl_ssl" => {
                let sasl = if protocol == "sasl_ssl" {
                    Some(sasl()?)
                } else {
                    None
                };
                Ok(Self::Tls {
                    sasl,
                    config: Arc::new(tls_config(property("ssl.ca.location").as_deref())?),
                })
            }
            other => Err(format!("security.protocol {other} is not supported")),
        }
    }

    fn sasl(&self) -> Option<(&str, &str)> {
        match self {
            Self::Plaintext => None,
            Self::SaslPlain { username, password } => Some((username, password)),
            Self::Tls { sasl, .. } => sasl.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
        }
    }
}

/// Server authentication against `ca` (a PEM file) or the system's roots.
fn tls_config(ca: Option<&str>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("ssl.ca.location {path}: {e}"))?
            {
                let cert = cert.map_err(|e| format!("ssl.ca.location {path}: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ssl.ca.location {path}: {e}"))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS set-up: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One broker connection: requests in order, one at a time.
struct Connection {
    stream: Box<dyn Stream>,
    timeout: Duration,
    correlation: i32,
    versions: Vec<(i16, i16, i16)>,
}

impl Connection {
    async fn open(address: &str, security: &Security, timeout: Duration) -> Result<Self, String> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| format!("connecting to {address} timed out"))?
            .map_err(|e| format!("connecting to {address}: {e}"))?;
        let stream: Box<dyn Stream> = match security {
            Security::Tls { config, .. } => {
                let host = address
                    .rsplit_once(':')
                    .map_or(address, |(host, _)| host)
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let name = rustls::pki_types::ServerName::try_from(host)
                    .map_err(|e| format!("{address}: {e}"))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {address}: {e}"))?;
                Box::new(tls)
            }
            _ => Box::new(tcp),
        };
        let mut connection = Self {
            stream,
            timeout,
            correlation: 0,
            versions: Vec::new(),
        };
        let versions: ApiVersionsResponse = connection
            .call(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default())
            .await?;
        check(versions.error_code, "ApiVersions")?;
        connection.versions = versions
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        if let Some((username, password)) = security.sasl() {
            connection.authenticate(username, password).await?;
        }
        Ok(connection)
    }

    /// The highest version of `key` both sides speak, within `ours`.
    fn version(&self, key: ApiKey, min: i16, max: i16) -> Result<i16, String> {
        let (_, broker_min, broker_max) = self
            .versions
            .iter()
            .find(|(k, _, _)| *k == key as i16)
            .copied()
            .ok_or_else(|| format!("the broker does not support {key:?}"))?;
        let version = max.min(broker_max);
        if version < min.max(broker_min) {
            return Err(format!(
                "no common version of {key:?} (broker {broker_min}..{broker_max}, client {min}..{max})"
            ));
        }
        Ok(version)
    }

    async fn authenticate(&mut self, username: &str, password: &str) -> Result<(), String> {
        let handshake_version = self.version(ApiKey::SaslHandshake, 1, 1)?;
        let handshake: SaslHandshakeResponse = self
            .call(
                ApiKey::SaslHandshake,
                handshake_version,
                &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
            )
            .await?;
        check(handshake.error_code, "SaslHandshake (PLAIN)")?;
        let version = self.version(ApiKey::SaslAuthenticate, 0, 2)?;
        let mut token = BytesMut::new();
        token.put_u8(0);
        token.put_slice(username.as_bytes());
        token.put_u8(0);
        token.put_slice(password.as_bytes());
        let response: SaslAuthenticateResponse = self
            .call(
                ApiKey::SaslAuthenticate,
                version,
                &SaslAuthenticateRequest::default().with_auth_bytes(token.freeze()),
            )
            .await?;
        if response.error_code != 0 {
            return Err(format!(
                "SASL/PLAIN authentication failed: {}",
                response
                    .error_message
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| format!("error code {}", response.error_code))
            ));
        }
        Ok(())
    }

    async fn call<Q, R>(&mut self, key: ApiKey, version: i16, request: &Q) -> Result<R, String>
    where
        Q: Encodable + HeaderVersion,
        R: Decodable + HeaderVersion,
    {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str(
                "kafka-deduplicator-operator",
            )));
        let mut body = BytesMut::new();
        encode_request_header_into_buffer(&mut body, &header)
            .map_err(|e| format!("encoding the {key:?} header: {e}"))?;
        request
            .encode(&mut body, version)
            .map_err(|e| format!("encoding {key:?} v{version}: {e}"))?;
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.put_slice(&body);
        let exchange = async {
            self.stream.write_all(&frame).await?;
            self.stream.flush().await?;
            let size = self.stream.read_i32().await?;
            if !(0..=MAX_RESPONSE_BYTES).contains(&size) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a response of {size} bytes (is security.protocol right?)"),
                ));
            }
            let mut response = vec![0u8; size as usize];
            self.stream.read_exact(&mut response).await?;
            Ok::<_, std::io::Error>(response)
        };
        let response = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("{key:?}: no answer within {:?}", self.timeout))?
            .map_err(|e| format!("{key:?}: {e}"))?;
        let mut response = Bytes::from(response);
        let header = ResponseHeader::decode(&mut response, R::header_version(version))
            .map_err(|e| format!("decoding the {key:?} response header: {e}"))?;
        if header.correlation_id != self.correlation {
            return Err(format!(
                "{key:?}: answer to request {} while waiting for {}",
                header.correlation_id, self.correlation
            ));
        }
        let decoded = R::decode(&mut response, version)
            .map_err(|e| format!("decoding the {key:?} v{version} response: {e}"))?;
        if response.has_remaining() {
            tracing::debug!(
                ?key,
                left = response.remaining(),
                "bytes left after a response"
            );
        }
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(properties: &[(&str, &str)]) -> KafkaAccess {
        KafkaAccess {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group: "g".into(),
            topic: "t".into(),
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn plaintext_and_sasl_plain_are_spoken_and_other_set_ups_are_refused_with_a_reason() {
        assert!(matches!(
            Security::from(&access(&[])),
            Ok(Security::Plaintext)
        ));
        let plain = Security::from(&access(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
        ]));
        assert!(matches!(plain, Ok(Security::SaslPlain { .. })));
        let refused = |properties: &[(&str, &str)]| match Security::from(&access(properties)) {
            Err(reason) => reason,
            Ok(_) => panic!("{properties:?} accepted"),
        };
        assert!(refused(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
        ])
        .contains("PLAIN only"));
        assert!(refused(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN")
        ])
        .contains("sasl.username"));
        assert!(refused(&[
            ("security.protocol", "SSL"),
            ("ssl.certificate.location", "/c.pem"),
            ("ssl.key.location", "/k.pem")
        ])
        .contains("client certificates"));
        assert!(refused(&[
            ("security.protocol", "SSL"),
            ("ssl.ca.location", "/nonexistent.pem")
        ])
        .contains("ssl.ca.location"));
    }
}
