{{/*
The chart's name.
*/}}
{{- define "kafka-deduplicator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The operator's full name: the Deployment, ServiceAccount, ClusterRole, ... (release
`kafka-deduplicator` → `kafka-deduplicator-operator`, as in manifests/).
*/}}
{{- define "kafka-deduplicator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "kafka-deduplicator.name" . }}
{{- if contains $name .Release.Name }}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s-operator" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The leader-election Role and RoleBinding.
*/}}
{{- define "kafka-deduplicator.leaderElectionName" -}}
{{- printf "%s-leader-election" (include "kafka-deduplicator.fullname" .) }}
{{- end }}

{{/*
The operator pods' selector labels. Fixed: the operator's pods are
`app.kubernetes.io/name: kafka-deduplicator-operator` whatever the release is called.
*/}}
{{- define "kafka-deduplicator.selectorLabels" -}}
app.kubernetes.io/name: kafka-deduplicator-operator
{{- end }}

{{/*
Labels of the objects manifests/ labels (Namespace, Deployment): the selector labels and
`commonLabels`.
*/}}
{{- define "kafka-deduplicator.labels" -}}
{{- $labels := merge (include "kafka-deduplicator.selectorLabels" . | fromYaml) (deepCopy .Values.commonLabels) }}
{{- toYaml $labels }}
{{- end }}

{{/*
Labels of the optional objects (PodMonitors, PrometheusRule, dashboard, NetworkPolicy):
the operator's name label, `commonLabels` and the given extra labels.
Call with (dict "root" $ "extra" .Values.x.labels).
*/}}
{{- define "kafka-deduplicator.extraLabels" -}}
{{- $labels := merge (include "kafka-deduplicator.selectorLabels" .root | fromYaml) (deepCopy .root.Values.commonLabels) (deepCopy (.extra | default dict)) }}
{{- toYaml $labels }}
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "kafka-deduplicator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kafka-deduplicator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator's image.
*/}}
{{- define "kafka-deduplicator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs: exactly the verbs it uses (the ClusterRole of
manifests/rbac.yaml; a Role in the watched namespace with `watchNamespace`).
*/}}
{{- define "kafka-deduplicator.rules" -}}
rules:
  # Watch DedupClusters (the controller's list/watch stream); get one before a
  # scale-down's LeaveGroup (its replicas now).
  - apiGroups: ["kafka-deduplicator.dev"]
    resources: ["dedupclusters"]
    verbs: ["get", "list", "watch"]
  # Write their status (merge patch on the status subresource).
  - apiGroups: ["kafka-deduplicator.dev"]
    resources: ["dedupclusters/status"]
    verbs: ["patch"]
  # The lag autoscaler reads and sets replicas through the scale subresource
  # (spec.autoscaling).
  - apiGroups: ["kafka-deduplicator.dev"]
    resources: ["dedupclusters/scale"]
    verbs: ["get", "patch"]
  # Children: watched (owns) and server-side applied (create when absent, patch after;
  # an unchanged child is not written by the server). Deletion is left to the garbage
  # collector through owner references.
  # StatefulSets are also read and, to grow the volumes, deleted with orphaned pods and
  # applied again (docs/operator.md, "Changing storage").
  - apiGroups: ["apps"]
    resources: ["statefulsets"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  # The pods: listed after a scale-down, so that the removed pods' static members leave
  # the consumer group once they are gone (and only then).
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["list"]
  # The pods' volume claims: listed and patched to a larger size.
  - apiGroups: [""]
    resources: ["persistentvolumeclaims"]
    verbs: ["list", "patch"]
  - apiGroups: [""]
    resources: ["configmaps", "services"]
    verbs: ["list", "watch", "create", "patch"]
  - apiGroups: ["policy"]
    resources: ["poddisruptionbudgets"]
    verbs: ["list", "watch", "create", "patch"]
  # Secrets a DedupCluster references: watched (metadata only) so that a changed Secret
  # rolls the pods. Their data is read only for the operator's own Kafka client
  # (kafka.secretProperties, kafka.credentialsSecret): the lag autoscaler's readings and
  # a scale-down's LeaveGroup.
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "list", "watch"]
  # Kubernetes Events about DedupClusters (the recorder creates, then patches series).
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
{{- end }}

{{/*
Name of the PodMonitor of the DedupClusters' deduplicator pods (`kafka-deduplicator` by
default).
*/}}
{{- define "kafka-deduplicator.dedupMonitorName" -}}
{{- $full := include "kafka-deduplicator.fullname" . }}
{{- if hasSuffix "-operator" $full }}
{{- trimSuffix "-operator" $full }}
{{- else }}
{{- printf "%s-dedupclusters" $full | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
