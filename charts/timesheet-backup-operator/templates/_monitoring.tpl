{{/* Whether to render a monitoring.coreos.com/v1 object: `enabled` is true, false or "auto"
     (only when the cluster serves the Prometheus Operator's API). */}}
{{- define "tsb.monitoringEnabled" -}}
{{- $enabled := index . 0 -}}
{{- $ctx := index . 1 -}}
{{- if and $ctx.Values.metrics.enabled (or (eq (toString $enabled) "true") (and (eq (toString $enabled) "auto") ($ctx.Capabilities.APIVersions.Has "monitoring.coreos.com/v1"))) -}}
true
{{- end -}}
{{- end -}}
