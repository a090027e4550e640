{{/* Names, labels and the pieces every Floe container shares. */}}

{{- define "floe.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "floe.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: floe.selector (dict "ctx" $ "component" "broker") */}}
{{- define "floe.selector" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "floe.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "floe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "floe.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The etcd endpoints, comma-separated. */}}
{{- define "floe.etcdEndpoints" -}}
{{- if .Values.etcd.bundled.enabled -}}
{{- $name := printf "%s-etcd" (include "floe.fullname" .) -}}
{{- $ns := .Release.Namespace -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.etcd.bundled.replicas) -}}
{{- $eps = append $eps (printf "http://%s-%d.%s.%s.svc:2379" $name $i $name $ns) -}}
{{- end -}}
{{- join "," $eps -}}
{{- else -}}
{{- join "," .Values.etcd.endpoints -}}
{{- end -}}
{{- end -}}

{{- define "floe.adminSecretName" -}}
{{- if .Values.admin.existingSecret -}}
{{- .Values.admin.existingSecret -}}
{{- else if .Values.admin.token -}}
{{- printf "%s-admin" (include "floe.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Environment every Floe process gets: etcd, logs, object store. */}}
{{- define "floe.commonEnv" -}}
- name: FLOE_ETCD
  value: {{ include "floe.etcdEndpoints" . | quote }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- range $k, $v := .Values.storage.env }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end -}}

{{/* The config file: [broker] and [proxy] settings from the values. Numbers
that are whole are written as integers (values arrive as JSON numbers). */}}
{{- define "floe.toml" -}}
{{- $lines := list -}}
{{- range $section, $settings := . -}}
{{- $lines = append $lines (printf "[%s]" $section) -}}
{{- range $k, $v := $settings -}}
{{- $lines = append $lines (printf "%s = %s" $k (include "floe.tomlValue" $v)) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $lines -}}
{{- end -}}

{{- define "floe.tomlValue" -}}
{{- if kindIs "string" . -}}
{{ toJson . }}
{{- else if kindIs "bool" . -}}
{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) -}}
{{- if eq (float64 .) (float64 (int64 .)) -}}
{{ int64 . }}
{{- else -}}
{{ . }}
{{- end -}}
{{- else -}}
{{ toJson . }}
{{- end -}}
{{- end -}}

{{/* Spread over zones and hosts: floe.spread (dict "ctx" $ "component" "broker") */}}
{{- define "floe.spread" -}}
{{- if .ctx.Values.topologySpread.enabled -}}
topologySpreadConstraints:
  - maxSkew: {{ .ctx.Values.topologySpread.maxSkew }}
    topologyKey: {{ .ctx.Values.topologySpread.topologyKey }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "floe.selector" . | nindent 8 }}
{{- end }}
{{- end -}}

{{/* Preferred anti-affinity by host unless the component's affinity is set. */}}
{{- define "floe.affinity" -}}
{{- $affinity := index .ctx.Values .component "affinity" -}}
affinity:
{{- if $affinity }}
  {{- toYaml $affinity | nindent 2 }}
{{- else }}
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "floe.selector" . | nindent 14 }}
{{- end }}
{{- end -}}

{{- define "floe.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* A FloeCluster component's placement from the chart's values of it. */}}
{{- define "floe.placement" -}}
nodeSelector:
  {{- toYaml (default (dict) .nodeSelector) | nindent 2 }}
tolerations:
  {{- toYaml (default (list) .tolerations) | nindent 2 }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
