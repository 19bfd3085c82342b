//! Growing the pods' volumes when `spec.storage.size` grows.
//!
//! A StatefulSet's `volumeClaimTemplates` cannot change, so a larger size takes three
//! steps, as other stateful operators take them:
//! 1. each existing claim of the cluster (`data-NAME-N`) is patched to the new size; the
//!    StorageClass must allow expansion, or the API server refuses and the reconcile
//!    reports `Degraded`/`ApplyFailed` with its message;
//! 2. the StatefulSet is deleted with `propagationPolicy: Orphan`: its pods keep running;
//! 3. once the garbage collector has removed it, the StatefulSet is applied again with
//!    the new template and adopts the running pods (same selector, same pod template, so
//!    no restart). Claims of pods created later get the new size from the template.
//!
//! A claim the server refuses to expand (its class does not allow expansion, a storage
//! quota) does not wedge the cluster: every other change is applied with the volumes'
//! current size, and `Degraded` says `VolumeExpansionRefused` with the server's message.
//!
//! Shrinking and a change of StorageClass are refused at admission (CEL rules on
//! `spec.storage`).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;

use crate::builders;
use crate::controller::{publish_event, Context, Error};
use crate::crd::DedupCluster;

/// What to do with the wanted StatefulSet.
pub enum Prepared {
    /// Apply it.
    Apply,
    /// The old StatefulSet is being removed for a larger volume size: retry shortly.
    Wait,
    /// The server refused to expand a claim (a class without expansion, a storage
    /// quota): apply it with the claims' current `size`, and report `message`.
    KeepSize { size: String, message: String },
}

/// Makes way for `wanted` (see [`Prepared`]).
pub async fn prepare(
    ctx: &Context,
    cluster: &DedupCluster,
    namespace: &str,
    wanted: &StatefulSet,
) -> Result<Prepared, Error> {
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let name = cluster.name_any();
    let Some(live) = statefulsets.get_opt(&name).await? else {
        return Ok(Prepared::Apply);
    };
    if live.metadata.deletion_timestamp.is_some() {
        return Ok(Prepared::Wait);
    }
    let (Some(live_size), Some(wanted_size)) = (claim_size(&live), claim_size(wanted)) else {
        return Ok(Prepared::Apply);
    };
    match (bytes(&live_size), bytes(&wanted_size)) {
        (Some(old), Some(new)) if new > old => {}
        // Equal (in any spelling), smaller (refused at admission; the apply reports it),
        // or not a quantity this parser reads: nothing to do here.
        _ => return Ok(Prepared::Apply),
    }

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let prefix = format!("{}-{name}-", builders::DATA_VOLUME);
    let listed = claims
        .list(&ListParams::default().labels(&builders::selector_string(cluster)))
        .await?;
    let mut expanded = 0;
    for claim in listed.items {
        let claim_name = claim.name_any();
        let requested = claim_request(&claim).as_deref().and_then(bytes);
        if !claim_name.starts_with(&prefix)
            || requested.is_some_and(|r| r >= bytes(&wanted_size).unwrap_or(0.0))
        {
            continue;
        }
        let patch =
            serde_json::json!({"spec": {"resources": {"requests": {"storage": wanted_size}}}});
        let patched = claims
            .patch(&claim_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Apply {
                kind: "PersistentVolumeClaim".into(),
                name: claim_name.clone(),
                source,
            });
        match patched {
            Ok(_) => expanded += 1,
            Err(error) if error.is_refusal() => {
                return Ok(Prepared::KeepSize {
                    size: live_size.clone(),
                    message: format!(
                        "storage {live_size} → {wanted_size} not applied, the volumes keep their size: {error}"
                    ),
                })
            }
            Err(error) => return Err(error),
        }
    }
    statefulsets
        .delete(&name, &DeleteParams::orphan())
        .await
        .map_err(|source| Error::Apply {
            kind: "StatefulSet".into(),
            name: name.clone(),
            source,
        })?;
    let note = format!(
        "storage {live_size} → {wanted_size}: {expanded} volume(s) expanded; the StatefulSet is re-created around its running pods"
    );
    tracing::info!(%namespace, %name, %note, "expanding volumes");
    publish_event(ctx, cluster, EventType::Normal, "VolumesExpanded", &note).await;
    Ok(Prepared::Wait)
}

/// Sets the storage request of a StatefulSet's first claim template.
pub fn set_claim_size(statefulset: &mut StatefulSet, size: &str) {
    let request = statefulset
        .spec
        .as_mut()
        .and_then(|s| s.volume_claim_templates.as_mut())
        .and_then(|t| t.first_mut())
        .and_then(|c| c.spec.as_mut())
        .and_then(|s| s.resources.as_mut())
        .and_then(|r| r.requests.as_mut());
    if let Some(requests) = request {
        requests.insert(
            "storage".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity(size.into()),
        );
    }
}

/// The storage request of a StatefulSet's first claim template.
pub fn claim_size(statefulset: &StatefulSet) -> Option<String> {
    claim_request(
        statefulset
            .spec
            .as_ref()?
            .volume_claim_templates
            .as_ref()?
            .first()?,
    )
}

/// The storage request of a claim (or claim template).
pub fn claim_request(claim: &PersistentVolumeClaim) -> Option<String> {
    claim
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

/// Bytes of a Kubernetes quantity (`10Gi`, `500M`, `1.5Ti`, `1e9`), for comparing sizes
/// however the server spelled them.
pub fn bytes(quantity: &str) -> Option<f64> {
    let quantity = quantity.trim();
    let split = quantity
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    Some(number * factor)
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn quantities_compare_however_they_are_spelled() {
        assert_eq!(bytes("20Gi"), bytes("20480Mi"));
        assert_eq!(bytes("1.5Gi"), Some(1.5 * 1024f64.powi(3)));
        assert_eq!(bytes("1e9"), bytes("1G"));
        assert!(bytes("10Gi") < bytes("11G"));
        assert_eq!(bytes("10 potatoes"), None);
    }
}
