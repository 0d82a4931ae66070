{{/*
Named templates that add the in-pod agent to a workload. An application chart lists this chart
as a dependency (with controller.enabled=false when the controller is installed elsewhere) and
includes them in its pod template; docs/helm.md shows a whole Deployment.

Every template takes one dict:
  root          the including chart's root context ($), required
  chart         name or alias of the secrets-agent dependency, default "secrets-agent"
  declarations  name of the ConfigMap that holds the declarations (volumes only), required there
  refs          names of Secrets to mount under refsDir (tokenSecretRef, AppRole, caProvider)
and any key of the chart's `agent` values (outputDir, port, resources, env, image, ...), which
overrides that value for this call. Values come from the dependency's `agent` section, so a
platform team sets the image and defaults once for every service.

Volume names are fixed, so the templates fit together: secrets-agent-secrets (the in-memory
volume), secrets-agent-declarations, secrets-agent-tmp, and secrets-agent-ref-<Secret name>.
*/}}

{{/*
secrets-agent.agent.settings: the settings of one call as YAML, merged from the chart's `agent`
values and the call's keys (the call wins), with `imageRef` and `imagePullPolicy` resolved.
*/}}
{{- define "secrets-agent.agent.settings" -}}
{{- $root := required "secrets-agent templates: pass the chart's root context, e.g. (dict \"root\" $)" .root -}}
{{- $alias := .chart | default "secrets-agent" -}}
{{- $chartValues := dict -}}
{{- $appVersion := "" -}}
{{- if and (eq $root.Chart.Name "secrets-agent") (hasKey $root.Values "agent") -}}
{{- $chartValues = $root.Values -}}
{{- $appVersion = $root.Chart.AppVersion -}}
{{- else -}}
{{- $chartValues = index $root.Values $alias | default dict -}}
{{- if not (hasKey $chartValues "agent") -}}
{{- fail (printf "secrets-agent templates: no values of the secrets-agent chart under %q; add the chart as a dependency of this chart, or pass its alias as \"chart\"" $alias) -}}
{{- end -}}
{{- $subchart := index ($root.Subcharts | default dict) $alias -}}
{{- if $subchart -}}
{{- $appVersion = $subchart.Chart.AppVersion -}}
{{- end -}}
{{- end -}}
{{- $known := concat (keys $chartValues.agent) (list "root" "chart" "declarations" "refs") -}}
{{- range $key, $_ := . -}}
{{- if not (has $key $known) -}}
{{- fail (printf "secrets-agent templates: unknown key %q in the dict; use root, chart, declarations, refs or a key of the agent values: %s" $key (keys $chartValues.agent | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- with .fileMode -}}
{{- if not (and (kindIs "string" .) (regexMatch "^0?[0-7]{3}$" .)) -}}
{{- fail (printf "secrets-agent templates: fileMode must be a quoted octal string such as \"0440\", got %v; a Go template reads 0440 unquoted as the number 288" .) -}}
{{- end -}}
{{- end -}}
{{- with .fileGid -}}
{{- if not (regexMatch "^[0-9]+$" (toString .)) -}}
{{- fail (printf "secrets-agent templates: fileGid must be a numeric group id such as 1000, got %q" (toString .)) -}}
{{- end -}}
{{- end -}}
{{- $settings := mergeOverwrite (deepCopy $chartValues.agent) (deepCopy (omit . "root" "chart")) -}}
{{- $image := $settings.image | default dict -}}
{{- $topImage := $chartValues.image | default dict -}}
{{- $repository := $image.repository | default $topImage.repository -}}
{{- $tag := $image.tag | default $topImage.tag | default $appVersion -}}
{{- if not $tag -}}
{{- fail "secrets-agent templates: no image tag; set agent.image.tag or image.tag in the secrets-agent values" -}}
{{- end -}}
{{- $_ := set $settings "imageRef" (printf "%s:%s" $repository $tag) -}}
{{- $_ := set $settings "imagePullPolicy" ($image.pullPolicy | default $topImage.pullPolicy | default "IfNotPresent") -}}
{{- toYaml $settings -}}
{{- end -}}

{{/* Environment shared by the init container and both sidecars. */}}
{{- define "secrets-agent.agent.env" -}}
- name: SECRETS_AGENT_CONFIG
  value: {{ .configDir | quote }}
- name: SECRETS_AGENT_OUTPUT_DIR
  value: {{ .outputDir | quote }}
- name: SECRETS_AGENT_REFS_DIR
  value: {{ .refsDir | quote }}
- name: SECRETS_AGENT_LOG_LEVEL
  value: {{ .logLevel | quote }}
- name: SECRETS_AGENT_LOG_FORMAT
  value: {{ .logFormat | quote }}
{{- with .fileMode }}
- name: SECRETS_AGENT_FILE_MODE
  value: {{ . | toString | quote }}
{{- end }}
{{- with .fileGid }}
- name: SECRETS_AGENT_FILE_GID
  value: {{ . | toString | quote }}
{{- end }}
{{- end -}}

{{/* Mounts of every agent container: the in-memory volume read-write, the rest read-only. */}}
{{- define "secrets-agent.agent.volumeMounts" -}}
- name: secrets-agent-secrets
  mountPath: {{ .outputDir }}
- name: secrets-agent-declarations
  mountPath: {{ .configDir }}
  readOnly: true
- name: secrets-agent-tmp
  mountPath: /tmp
{{- $refsDir := .refsDir }}
{{- range .refs }}
- name: {{ printf "secrets-agent-ref-%s" . | trunc 63 | trimSuffix "-" }}
  mountPath: {{ printf "%s/%s" $refsDir . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Image, resources and security context of every agent container. */}}
{{- define "secrets-agent.agent.common" -}}
image: {{ .imageRef | quote }}
imagePullPolicy: {{ .imagePullPolicy }}
resources:
  {{- toYaml .resources | nindent 2 }}
securityContext:
  {{- toYaml .securityContext | nindent 2 }}
{{- end -}}

{{/*
secrets-agent.initContainer: one entry for initContainers. Runs `secrets-agent once`: fetches
every target, writes it, and exits 0 only when everything required is on disk, so the containers
after it start with a complete set of files.
*/}}
{{- define "secrets-agent.initContainer" -}}
{{- $s := include "secrets-agent.agent.settings" . | fromYaml -}}
- name: secrets-agent-init
  {{- include "secrets-agent.agent.common" $s | nindent 2 }}
  args: [once]
  env:
    {{- include "secrets-agent.agent.env" $s | nindent 4 }}
    - name: SECRETS_AGENT_TIMEOUT
      value: {{ $s.timeoutSeconds | toString | quote }}
    {{- with $s.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  volumeMounts:
    {{- include "secrets-agent.agent.volumeMounts" $s | nindent 4 }}
{{- end -}}

{{/* Container fields shared by both sidecars: `secrets-agent run` with its HTTP port. */}}
{{- define "secrets-agent.agent.run" -}}
{{- include "secrets-agent.agent.common" . }}
args: [run]
env:
  {{- include "secrets-agent.agent.env" . | nindent 2 }}
  - name: SECRETS_AGENT_LISTEN
    value: {{ printf "0.0.0.0:%d" (int .port) | quote }}
  {{- with .env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
ports:
  - name: agent-http
    containerPort: {{ int .port }}
    protocol: TCP
livenessProbe:
  httpGet:
    path: /livez
    port: agent-http
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
volumeMounts:
  {{- include "secrets-agent.agent.volumeMounts" . | nindent 2 }}
{{- end -}}

{{/*
secrets-agent.sidecar: one entry for initContainers, a Kubernetes native sidecar (1.29 and
later). `restartPolicy: Always` keeps it running beside the application, and the kubelet starts
the containers after it only once its startup probe on /readyz passed, which is after the
first complete write of every target.
*/}}
{{- define "secrets-agent.sidecar" -}}
{{- $s := include "secrets-agent.agent.settings" . | fromYaml -}}
- name: secrets-agent
  restartPolicy: Always
  {{- include "secrets-agent.agent.run" $s | nindent 2 }}
  startupProbe:
    httpGet:
      path: /readyz
      port: agent-http
    periodSeconds: {{ int $s.startupProbe.periodSeconds }}
    failureThreshold: {{ int $s.startupProbe.failureThreshold }}
{{- end -}}

{{/*
secrets-agent.classicSidecar: one entry for containers, for clusters older than 1.29. It starts
together with the application, so nothing holds the application back: pair it with
secrets-agent.initContainer. Its readiness probe on /readyz keeps the pod out of Service
endpoints until every target has been written.
*/}}
{{- define "secrets-agent.classicSidecar" -}}
{{- $s := include "secrets-agent.agent.settings" . | fromYaml -}}
- name: secrets-agent
  {{- include "secrets-agent.agent.run" $s | nindent 2 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: agent-http
    periodSeconds: 5
    timeoutSeconds: 3
    failureThreshold: 3
{{- end -}}

{{/*
secrets-agent.volumes: entries for volumes: the in-memory volume the agent writes and the
application reads, the declarations ConfigMap, a small in-memory /tmp (the root filesystem is
read-only; the Vault store writes a CA bundle there), and one volume per Secret in `refs`.
*/}}
{{- define "secrets-agent.volumes" -}}
{{- $s := include "secrets-agent.agent.settings" . | fromYaml -}}
{{- $declarations := required "secrets-agent.volumes: pass the declarations ConfigMap's name as \"declarations\"" $s.declarations -}}
- name: secrets-agent-secrets
  emptyDir:
    medium: Memory
    sizeLimit: {{ $s.volumeSizeLimit }}
- name: secrets-agent-declarations
  configMap:
    name: {{ $declarations }}
- name: secrets-agent-tmp
  emptyDir:
    medium: Memory
    sizeLimit: 8Mi
{{- range $s.refs }}
- name: {{ printf "secrets-agent-ref-%s" . | trunc 63 | trimSuffix "-" }}
  secret:
    secretName: {{ . }}
{{- end }}
{{- end -}}

{{/*
secrets-agent.volumeMount: the entry for the application container's volumeMounts: the
in-memory volume, read-only, at outputDir. The application finds target T in <outputDir>/T/.
*/}}
{{- define "secrets-agent.volumeMount" -}}
{{- $s := include "secrets-agent.agent.settings" . | fromYaml -}}
- name: secrets-agent-secrets
  mountPath: {{ $s.outputDir }}
  readOnly: true
{{- end -}}

{{/*
secrets-agent.declarationsConfigMap: a whole ConfigMap document with the declarations. Keys:
  name       the ConfigMap's name, required
  namespace  default: the release namespace
  documents  a list of declaration documents (SecretStore, ExternalSecret, NotifyTarget, ...),
             written together to declarations.yaml
  files      a dict of file name to text, for declarations kept as files in the chart
*/}}
{{- define "secrets-agent.declarationsConfigMap" -}}
{{- $root := required "secrets-agent.declarationsConfigMap: pass the chart's root context as \"root\"" .root -}}
{{- $name := required "secrets-agent.declarationsConfigMap: pass the ConfigMap's name as \"name\"" .name -}}
{{- if not (or .documents .files) -}}
{{- fail "secrets-agent.declarationsConfigMap: pass \"documents\" (a list) or \"files\" (a dict)" -}}
{{- end -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $name }}
  namespace: {{ .namespace | default $root.Release.Namespace }}
  labels:
    app.kubernetes.io/component: secrets-agent-declarations
    app.kubernetes.io/instance: {{ $root.Release.Name }}
    app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- $data := dict }}
{{- with .documents }}
{{- $texts := list }}
{{- range . }}
{{- $texts = append $texts (toYaml .) }}
{{- end }}
{{- $_ := set $data "declarations.yaml" (printf "%s\n" (join "\n---\n" $texts)) }}
{{- end }}
{{- range $file, $text := .files }}
{{- $_ := set $data $file $text }}
{{- end }}
data:
  {{- toYaml $data | nindent 2 }}
{{/* The closing newline keeps the last value's own final newline. */}}
{{ end -}}
