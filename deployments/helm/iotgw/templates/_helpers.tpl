{{/*
iotgw.fullname is the prefix of every object's name.
*/}}
{{- define "iotgw.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains "iotgw" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-iotgw" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
iotgw.labels are the labels of every object; pass (dict "ctx" $ "name" "apiserver").
app.kubernetes.io/name is the service, as in deployments/k8s, so that
deployments/monitoring/prometheus-k8s.yml selects the same pods.
*/}}
{{- define "iotgw.labels" -}}
{{ include "iotgw.selectorLabels" . }}
app.kubernetes.io/part-of: iotgw
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Values.image.tag | default .ctx.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "iotgw.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end -}}

{{- define "iotgw.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
iotgw.secretName is the Secret the containers read: existingSecret, or the
one the chart creates.
*/}}
{{- define "iotgw.secretName" -}}
{{- .Values.existingSecret | default (printf "%s-secrets" (include "iotgw.fullname" .)) -}}
{{- end -}}

{{/*
iotgw.secretEnv gives a container the Secret keys it reads; pass
(dict "ctx" $ "keys" (list "GW_AMQP_URL" …)).
*/}}
{{- define "iotgw.secretEnv" -}}
{{- $name := include "iotgw.secretName" .ctx -}}
{{- range .keys }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ . }}
{{- end }}
{{- end -}}

{{/*
iotgw.podSpec is what every pod shares: no service account token, non-root,
the default seccomp profile, preferred spreading over nodes.
Pass (dict "ctx" $ "name" "apiserver" "values" .Values.apiserver).
*/}}
{{- define "iotgw.podSpec" -}}
automountServiceAccountToken: false
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: 65534
  runAsGroup: 65534
  seccompProfile:
    type: RuntimeDefault
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "iotgw.selectorLabels" . | nindent 14 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
iotgw.containerSecurity: read-only root filesystem, no capabilities.
*/}}
{{- define "iotgw.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
{{- end -}}

{{/*
iotgw.extraEnv renders a service's env values as ConfigMap data. Each
name must be a GW_* variable, and not one the chart sets itself (those
come from gateway, secrets or the chart's fixed ports).
*/}}
{{- define "iotgw.extraEnv" -}}
{{- $reserved := list "GW_NAMESPACE" "GW_QUEUES" "GW_PARTITIONS" "GW_DURABILITY" "GW_REDIS_WAIT_REPLICAS" "GW_RETENTION" "GW_LOG_LEVEL" "GW_LOG_FORMAT" "GW_HTTP_ADDR" "GW_MQTT_ADDR" "GW_METRICS_ADDR" "GW_NODE_ID" "GW_ADVERTISE_URL" "GW_AUTH_SECRET" "GW_AMQP_URL" "GW_AMQP_MGMT_URL" "GW_REDIS_URL" -}}
{{- range $k, $v := . }}
{{- if not (regexMatch "^GW_[A-Z0-9_]+$" $k) }}
{{- fail (printf "env: %q is not a GW_* variable" $k) }}
{{- end }}
{{- if has $k $reserved }}
{{- fail (printf "env: %s is set by the chart (see values.yaml: gateway, secrets, pushserver.advertiseURL)" $k) }}
{{- end }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end -}}
