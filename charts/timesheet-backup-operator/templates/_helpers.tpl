{{- define "tsb.name" -}}timesheet-backup-operator{{- end -}}

{{- define "tsb.fullname" -}}
{{- if contains (include "tsb.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "tsb.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tsb.labels" -}}
app.kubernetes.io/name: {{ include "tsb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tsb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tsb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tsb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tsb.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tsb.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The operator's rules: exactly the calls in operator/timesheet_backup/kube.py and kopf's. */}}
{{- define "tsb.rules" -}}
- apiGroups: [backup.northstar.io]
  resources: [backups, backupschedules, restores]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [backup.northstar.io]
  resources: [backups/status, backupschedules/status, restores/status]
  verbs: [get, patch, update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* Labels of the hook and test pods: deliberately NOT the operator's selector labels, so
     the operator's Deployment (which would adopt a bare Pod matching its selector), its
     Services and its NetworkPolicy never select them. Argument: (list $ "component"). */}}
{{- define "tsb.auxLabels" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
app.kubernetes.io/name: {{ include "tsb.name" $ctx }}-{{ $component }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ $component }}
app.kubernetes.io/part-of: {{ include "tsb.name" $ctx }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $ctx.Chart.Name $ctx.Chart.Version }}
{{- end -}}

{{/*
What a schedule from values still lacks once the operator's defaults fill its template: the
same rules as the operator's resolve.missing_fields (tests/e2e/test_chart.py holds them
together). Input: (list $schedule $.Values.defaults); output: comma-separated field names,
empty when the schedule can run.
*/}}
{{- define "tsb.scheduleMissing" -}}
{{- $s := index . 0 -}}
{{- $d := index . 1 | default dict -}}
{{- $spec := ($s.template).spec | default dict -}}
{{- $components := $spec.components | default (list "database" "uploads") -}}
{{- $missing := list -}}
{{- if has "database" $components -}}
{{- $db := mergeOverwrite (deepCopy ($d.database | default dict)) ($spec.database | default dict) -}}
{{- range $f := list "host" "name" "user" -}}
{{- if not (index $db $f) }}{{ $missing = append $missing (printf "database.%s" $f) }}{{ end -}}
{{- end -}}
{{- if not (or $db.passwordSecretRef $db.clientCertSecretRef) -}}
{{- $missing = append $missing "database.passwordSecretRef (or clientCertSecretRef)" -}}
{{- end -}}
{{- end -}}
{{- if has "uploads" $components -}}
{{- $up := mergeOverwrite (deepCopy ($d.uploads | default dict)) ($spec.uploads | default dict) -}}
{{- if not $up.claimName }}{{ $missing = append $missing "uploads.claimName" }}{{ end -}}
{{- end -}}
{{- $st := mergeOverwrite (deepCopy ($d.storage | default dict)) ($spec.storage | default dict) -}}
{{- if not $st.bucket }}{{ $missing = append $missing "storage.bucket" }}{{ end -}}
{{- join ", " $missing -}}
{{- end -}}
