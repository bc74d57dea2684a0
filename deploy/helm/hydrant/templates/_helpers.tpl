{{- define "hydrant.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hydrant.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hydrant.headless" -}}
{{- printf "%s-headless" (include "hydrant.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hydrant.labels" -}}
app.kubernetes.io/name: {{ include "hydrant.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "hydrant.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hydrant.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Guards: invalid combinations fail rendering with a message naming the value. */}}
{{- define "hydrant.validate" -}}
{{- if not .Values.broker.url -}}
{{- fail "broker.url is required (e.g. kafka://kafka:9092)" -}}
{{- end -}}
{{- if not (hasPrefix "kafka://" .Values.broker.url) -}}
{{- fail (printf "broker.url must start with kafka:// (got %q)" .Values.broker.url) -}}
{{- end -}}
{{- if not .Values.pipeline -}}
{{- fail "pipeline is required: the pipeline spec YAML" -}}
{{- end -}}
{{- $sec := .Values.security -}}
{{- if hasPrefix "SASL_" $sec.protocol -}}
{{- if or (not $sec.sasl.username) (not $sec.sasl.passwordSecret.name) -}}
{{- fail (printf "security.protocol=%s needs security.sasl.username and security.sasl.passwordSecret.name" $sec.protocol) -}}
{{- end -}}
{{- end -}}
{{- if and (has $sec.protocol (list "SSL" "SASL_SSL")) (not $sec.tls.secretName) -}}
{{- fail (printf "security.protocol=%s needs security.tls.secretName (a Secret with the CA)" $sec.protocol) -}}
{{- end -}}
{{- if and (gt (int .Values.podDisruptionBudget.maxUnavailable) 0) (ge (int .Values.podDisruptionBudget.maxUnavailable) (int .Values.replicaCount)) .Values.podDisruptionBudget.enabled (gt (int .Values.replicaCount) 1) -}}
{{- fail (printf "podDisruptionBudget.maxUnavailable=%d must be below replicaCount=%d" (int .Values.podDisruptionBudget.maxUnavailable) (int .Values.replicaCount)) -}}
{{- end -}}
{{- end -}}
