{{/* Names and labels shared by every template. */}}

{{- define "wo.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's objects are named after the release; "workspace-operator" when installed under that name. */}}
{{- define "wo.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wo.serviceAccountName" -}}
{{- default (include "wo.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "wo.claimName" -}}
{{- default (printf "%s-workspaces" (include "wo.fullname" .)) .Values.volume.existingClaim -}}
{{- end -}}

{{/* Selector labels: never change after install (a Deployment's selector is immutable). */}}
{{- define "wo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of every object; pass a dict with "root" (the chart context) and "component". */}}
{{- define "wo.labels" -}}
app.kubernetes.io/name: {{ include "wo.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: workspace-operator
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "wo.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The operator's rules on Workspaces, their status, the Secrets they name and
Events. The same list as the ClusterRole in manifests/base/rbac.yaml (a test
compares them); docs/operations.md ("RBAC") explains each rule.
*/}}
{{- define "wo.workspaceRules" -}}
- apiGroups: ["crafting.dev"]
  resources: ["workspaces"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["crafting.dev"]
  resources: ["workspaces/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{- define "wo.validate" -}}
{{- if not (has .Values.rbac.scope (list "cluster" "namespaced")) -}}
{{- fail "rbac.scope must be cluster or namespaced" -}}
{{- end -}}
{{- if and (eq .Values.rbac.scope "namespaced") (not .Values.watchNamespaces) -}}
{{- fail "rbac.scope=namespaced needs watchNamespaces: the operator would watch every namespace without the rights to" -}}
{{- end -}}
{{- if lt (int .Values.replicaCount) 1 -}}
{{- fail "replicaCount must be at least 1" -}}
{{- end -}}
{{- end -}}
