{{/*
Names, labels and the image of the controller. The agent's named templates, for use in other
charts, are in _agent.tpl.
*/}}

{{- define "secrets-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name, at most 63 characters (a DNS label). */}}
{{- define "secrets-agent.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "secrets-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "secrets-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "secrets-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "secrets-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "secrets-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "secrets-agent.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "secrets-agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
Several replicas need leader election, or every replica would write the same Secrets.
*/}}
{{- define "secrets-agent.checkController" -}}
{{- $controller := .Values.controller -}}
{{- if and (not $controller.leaderElection.enabled) (gt (int $controller.replicas) 1) -}}
{{- fail "controller.replicas above 1 needs controller.leaderElection.enabled=true; without it every replica would write the same Secrets" -}}
{{- end -}}
{{- end -}}
